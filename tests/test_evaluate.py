"""`python -m hpcrnn.evaluate`: a checkpoint's figures on its splits, or on any text read like the corpus."""

from __future__ import annotations

import json

import pytest

from hpcrnn.config import load_config
from hpcrnn.data.build import run_preprocess
from hpcrnn.train.loop import run_train
from tests.helpers import make_recipes, run_module, tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained on {train, val, test} files, so each split's own text exists as a file."""
    d = tmp_path_factory.mktemp("ev")
    docs = make_recipes(160).split("\n\nTitle:")
    files = {}
    for name, part in (("train", docs[:120]), ("val", docs[120:140]), ("test", docs[140:])):
        text = "\n\nTitle:".join(part)
        files[name] = d / f"{name}.txt"
        files[name].write_text(text if text.startswith("Title:") else "Title:" + text)
    splits = {k: str(v) for k, v in files.items()}
    cfg_path = tiny_config(d, files["train"], data={"corpus": splits}, train={"max_steps": 10, "checkpoint_every": 5})
    cfg = load_config(cfg_path)
    run_preprocess(cfg)
    run_train(cfg)
    return cfg, files


def _evaluate(*args):
    r = run_module("hpcrnn.evaluate", *map(str, args), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.slow
def test_splits_in_the_runs_protocol_and_the_standard_one(trained):
    cfg, _ = trained
    res = _evaluate(cfg.run_dir)
    assert res["step"] == 10
    got = {(r["source"], r["protocol"]) for r in res["results"]}
    assert got == {("val", "windows"), ("val", "standard"), ("test", "windows"), ("test", "standard")}
    for r in res["results"]:
        assert r["ppl"] > 1 and 0 <= r["acc"] <= r["top5"] <= 1 and 0 <= r["unk"] <= 1 and r["tokens"] > 0
    final = {(x["split"], x["protocol"]): x for x in _final_records(cfg)}
    for r in res["results"]:  # the trainer's own final figures, recomputed
        assert r["ppl"] == pytest.approx(final[(r["source"], r["protocol"])]["ppl"], rel=1e-9)


def _final_records(cfg):
    from hpcrnn.fsutil import read_jsonl

    return [x for x in read_jsonl(cfg.metrics_path) if x.get("final")]


@pytest.mark.slow
def test_text_of_a_split_scores_what_the_split_scores(trained):
    cfg, files = trained
    splits = {r["source"]: r for r in _evaluate(cfg.run_dir)["results"] if r["protocol"] == "standard"}
    texts = _evaluate(cfg.run_dir, "--text", files["val"], files["test"])["results"]
    assert [r["source"] for r in texts] == [str(files["val"]), str(files["test"])]
    for r, split in zip(texts, ("val", "test"), strict=True):
        assert r["tokens"] == splits[split]["tokens"]
        assert r["ppl"] == pytest.approx(splits[split]["ppl"], rel=1e-9) and r["acc"] == splits[split]["acc"]


@pytest.mark.slow
def test_chosen_protocols_and_windows_of_another_length(trained):
    """--protocol picks the protocols; windows of another data.window are laid like the corpus' own (every
    window tokens inside the split), so the lecture's 50-token windows can score a stream-trained run."""
    import numpy as np

    from hpcrnn.data.corpus import open_corpus
    from hpcrnn.evaluate.metrics import window_starts

    cfg, _ = trained
    res = _evaluate(cfg.run_dir, "--protocol", "documents", "--protocol", "windows", "data.window=7")
    assert [(r["source"], r["protocol"]) for r in res["results"]] == [
        ("val", "documents"),
        ("val", "windows"),
        ("test", "documents"),
        ("test", "windows"),
    ]
    c = open_corpus(cfg.h5_path)
    lo, hi = c.split_ranges["val"]
    assert np.array_equal(window_starts(c, "val", c.window), c.windows("val"))
    assert np.array_equal(window_starts(c, "val", 7), np.arange(lo, hi - 7, 7))
    val = next(r for r in res["results"] if r["protocol"] == "windows")
    assert val["tokens"] == 7 * len(np.arange(lo, hi - 7, 7))  # every window scored, whole


@pytest.mark.slow
def test_an_earlier_checkpoint_by_step(trained):
    cfg, _ = trained
    assert _evaluate(cfg.run_dir, "--checkpoint", "5")["step"] == 5


@pytest.mark.slow
@pytest.mark.parametrize("case", ["no document", "missing file", "directory", "missing checkpoint"])
def test_bad_input_is_a_one_line_error(trained, tmp_path, case):
    cfg, _ = trained
    args = [str(cfg.run_dir)]
    if case == "no document":
        (tmp_path / "x.txt").write_text("zzzz qqqq\n\nwwww vvvv xxxx\n")
        args += ["--text", str(tmp_path / "x.txt")]
        want = "no document starts here"
    elif case == "missing file":
        args += ["--text", str(tmp_path / "nope.txt")]
        want = "not a readable text file"
    elif case == "directory":
        args += ["--text", str(tmp_path)]
        want = "not a readable text file"
    else:
        args += ["--checkpoint", "7"]
        want = "not a usable checkpoint"
    r = run_module("hpcrnn.evaluate", *args)
    assert r.returncode == 2, r.stderr
    assert want in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr


@pytest.mark.slow
def test_a_run_without_checkpoint_is_a_one_line_error(tmp_path, tiny_corpus):
    cfg = load_config(tiny_config(tmp_path, tiny_corpus))
    run_preprocess(cfg)
    r = run_module("hpcrnn.evaluate", str(tiny_config(tmp_path, tiny_corpus)))
    assert r.returncode == 2 and "no complete checkpoint" in r.stderr, r.stderr


def test_a_text_with_no_known_word_is_refused(tmp_path):
    from hpcrnn.data.corpus import open_corpus
    from hpcrnn.errors import InputError
    from hpcrnn.evaluate.metrics import score_file as _score_file

    (tmp_path / "c.txt").write_text("the cat sat on the mat . the dog sat on the cat .\n" * 20)
    cfg = load_config(tiny_config(tmp_path, tmp_path / "c.txt", data={"document_start": None}))
    run_preprocess(cfg)
    (tmp_path / "x.txt").write_text("zzzz qqqq wwww\n")
    with pytest.raises(InputError, match="holds no word the vocabulary"):
        _score_file(None, open_corpus(cfg.h5_path), tmp_path / "x.txt")
