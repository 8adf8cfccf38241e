"""Progress of long jobs: a bar on a terminal, periodic lines in a batch log (preprocess, generate, train)."""

import sys

import torch

from hpcrnn import progress
from hpcrnn.config import load_config
from hpcrnn.data import build
from hpcrnn.data.build import run_preprocess
from hpcrnn.generate.job import run_generate
from hpcrnn.train.loop import run_train
from tests.helpers import make_recipes, prepared, tiny_config

torch.set_num_threads(1)


def test_meter_lines_and_bar(monkeypatch, capsys):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)
    m = progress.Meter("job", total=4, unit="recipes")
    for i in range(1, 5):
        m.update(i)
    m.finish()
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert len(lines) == 4 and lines[0].startswith("job: 1/4 recipes (25%)") and "recipes/s" in lines[0]
    assert "eta" in lines[0] and "(100%)" in lines[-1] and out.err == ""

    monkeypatch.setattr(progress, "LINE_EVERY_S", 30.0)  # a short job in a batch log: no lines at all
    m = progress.Meter("job", total=4)
    m.update(4)
    assert capsys.readouterr().out == ""

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setattr(progress, "_BAR_EVERY_S", 0.0)
    m = progress.Meter("job", total=4, unit="recipes")
    m.update(2)
    m.finish()
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("\r[" + "#" * 15 + "." * 15 + "] job: 2/4") and out.err.endswith("\n")
    assert progress.use_bar("lines") is False and progress.use_bar("bar") is True


def test_preprocess_of_a_large_corpus_reports_in_a_batch_log(tmp_path, monkeypatch, capsys):
    corpus = tmp_path / "recipes.txt"
    corpus.write_text(make_recipes(600))
    monkeypatch.setattr(build, "_BATCH_CHARS", 20_000)  # several batches, as a large corpus has
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)
    run_preprocess(load_config(tiny_config(tmp_path, corpus)))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("preprocess: read:")]
    assert len(lines) >= 3, lines
    # the text is read in chunks of megabytes: this small file is read whole before its first batch
    assert lines[0].startswith("preprocess: read: 0.1/0.1 MB (100%)") and "documents" in lines[0]
    assert [int(ln.split(", ")[2].split()[0]) for ln in lines] == sorted(
        {int(ln.split(", ")[2].split()[0]) for ln in lines}
    )


def test_generation_of_many_recipes_reports_in_a_batch_log(tmp_path, tiny_corpus, monkeypatch, capsys):
    _, cfg = prepared(tmp_path, tiny_corpus, generate={"num_recipes": 6, "batch_size": 2})
    run_train(cfg)
    capsys.readouterr()
    monkeypatch.setattr(progress, "LINE_EVERY_S", 0.0)
    run_generate(cfg)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("hpcrnn.generate: ") and "/6" in ln]
    assert [ln.split(",")[0] for ln in lines] == [
        f"hpcrnn.generate: {i}/6 recipes ({100 * i / 6:.0f}%)" for i in range(1, 7)
    ]
    assert "tokens/s" in lines[0]
