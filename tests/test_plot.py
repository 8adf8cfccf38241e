"""python -m hpcrnn.plot: the curves of one or more runs as one PNG; one-line errors."""

import builtins

import pytest

from hpcrnn import plot
from hpcrnn.train.loop import run_train
from tests.helpers import prepared


@pytest.fixture
def two_runs(tmp_path, tiny_corpus):
    runs = []
    for name in ("a", "b"):
        _, cfg = prepared(tmp_path / name, tiny_corpus, run={"name": name}, train={"max_steps": 10, "eval_every": 5})
        run_train(cfg)
        runs.append(cfg.run_dir)
    return runs


@pytest.mark.slow
def test_draws_several_runs_on_one_figure(two_runs, tmp_path):
    name, curves = plot.run_curves(str(two_runs[0]))
    assert name == "a" and len(curves["train"]) >= 2 and len(curves["val"]) == 2
    assert all(r.get("protocol") != "standard" for r in curves["val"])  # the run's own protocol only
    out = tmp_path / "figs" / "curves.png"
    assert plot.main([str(r) for r in two_runs] + ["-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert plot.main([str(two_runs[0])]) == 0 and (two_runs[0] / "curves.png").is_file()


def test_a_run_without_metrics_is_one_line_error(tmp_path, tiny_corpus, capsys):
    cfg_path, _ = prepared(tmp_path, tiny_corpus)
    assert plot.main([str(cfg_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "metrics.jsonl" in err


def test_missing_matplotlib_is_one_line_error(two_runs, tmp_path, monkeypatch, capsys):
    real = builtins.__import__

    def no_matplotlib(name, *a, **kw):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    assert plot.main([str(two_runs[0]), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install -e '.[plot]'" in err and not (tmp_path / "x.png").exists()
