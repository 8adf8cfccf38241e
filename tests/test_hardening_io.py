"""Hardening audit, input and output (each test failed before its fix): export refusing to write into a
run's checkpoints, the warning of a reader that skips a damaged newest checkpoint, a missing
``--checkpoint`` step listing the steps that exist, a closed stdout ending quietly, ``lm.evaluate`` scoring
all of a short text, and the training progress bar before its first measurement."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import hpcrnn
from hpcrnn.cli import guarded
from hpcrnn.config import load_config
from hpcrnn.data.build import run_preprocess
from hpcrnn.data.corpus import encode_file
from hpcrnn.errors import InputError
from hpcrnn.run import checkpoints as ckpt
from hpcrnn.train.loop import run_train
from tests.helpers import ROOT, make_recipes, run_module, start_module, tiny_config

torch.set_num_threads(1)

_SHORT = "Title: BEAN SOUP\nCategories: Soups\nYield: 4 Servings\n2 c  Beans\n1 ts Salt\nBoil the beans.\n"


def _one_line(msg: str, *words: str) -> str:
    msg = str(msg).strip()
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run with complete checkpoints at steps 4, 8 and 12 (12 the newest)."""
    d = tmp_path_factory.mktemp("hardening-io")
    (d / "recipes.txt").write_text(make_recipes(200))
    train = {"max_steps": 12, "checkpoint_every": 4, "eval_every": 4, "keep_last": 10, "device": "cpu"}
    cfg_path = tiny_config(d, d / "recipes.txt", data={"split": [0.8, 0.1, 0.1]}, train=train)
    cfg = load_config(cfg_path)
    run_preprocess(cfg)
    run_train(cfg)
    assert [c.step for c in ckpt.list_complete(cfg.checkpoint_dir)] == [4, 8, 12]
    return cfg_path, cfg


# ------------------------------------------------------------------ A: export into a run's checkpoints


def test_export_refuses_an_output_inside_a_runs_checkpoints(run, tmp_path, capsys):
    from hpcrnn import export

    _, cfg = run
    newest = cfg.checkpoint_dir / "step-00000012" / "model.pt"
    before = newest.read_bytes()
    # another run's checkpoints folder (a config.yaml beside it), an unmarked step folder, a symlink into one
    other = tmp_path / "other-run"
    (other / "checkpoints" / "step-00000003").mkdir(parents=True)
    (other / "config.yaml").write_text("run: {name: other}\n")
    (tmp_path / "link.pt").symlink_to(newest)
    for out in (
        newest,
        cfg.checkpoint_dir / "step-00000008" / "other.pt",
        cfg.checkpoint_dir / "model.pt",
        other / "checkpoints" / "step-00000003" / "model.pt",
        other / "checkpoints" / "new.pt",
        tmp_path / "link.pt",
    ):
        assert export.main([str(cfg.run_dir), "-o", str(out)]) == 2, out
        err = capsys.readouterr().err
        _one_line(err, "hpcrnn.export: error:", "checkpoints", "model file elsewhere")
    assert newest.read_bytes() == before
    assert not (cfg.checkpoint_dir / "model.pt").exists() and not (other / "checkpoints" / "new.pt").exists()
    # a folder that happens to be called checkpoints, of no run, is a place like any other
    mine = tmp_path / "checkpoints" / "lstm.pt"
    mine.parent.mkdir()
    assert export.main([str(cfg.run_dir), "-o", str(mine)]) == 0, capsys.readouterr().err
    assert mine.is_file()


@pytest.mark.slow
def test_evaluate_says_which_checkpoint_it_used_instead_of_an_overwritten_newest(run, tmp_path):
    _, cfg = run
    newest = cfg.checkpoint_dir / "step-00000012"
    model = newest / "model.pt"
    before = model.read_bytes()
    try:
        # what `export -o <run>/checkpoints/step-N/model.pt` did: a bigger, valid torch file in its place
        torch.save({"format": "hpcrnn-model", "weights": torch.load(model, weights_only=True)}, model)
        r = run_module("hpcrnn.evaluate", str(cfg.run_dir), "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["step"] == 8
        lines = [ln for ln in r.stderr.splitlines() if "step-00000012" in ln]
        assert len(lines) == 1, r.stderr
        line = _one_line(lines[0], "warning", "skipping corrupt checkpoint", str(newest), "step-00000008")
        assert "truncated" not in line, line  # it grew: a wrong size, not a truncation
        # the API says so too, on stderr
        with subprocess.Popen(
            [sys.executable, "-c", f"import hpcrnn; print(hpcrnn.load({str(cfg.run_dir)!r}).step)"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as p:
            out, err = p.communicate(timeout=300)
        assert out.strip() == "8" and "step-00000012" in err and "step-00000008" in err, err
    finally:
        model.write_bytes(before)
    assert ckpt.verify(newest) is None


# ------------------------------------------------------------------ B: a missing step lists those that exist


def test_a_missing_step_lists_the_complete_ones(run, capsys):
    from hpcrnn.evaluate.command import main

    _, cfg = run
    with pytest.raises(InputError) as e:
        ckpt.resolve(cfg.checkpoint_dir, "99")
    _one_line(e.value, "step-00000099", "no such checkpoint", "complete checkpoints: 4, 8, 12")
    assert main([str(cfg.run_dir), "--checkpoint", "99"]) == 2
    _one_line(capsys.readouterr().err, "hpcrnn.evaluate: error:", "step-00000099", "complete checkpoints: 4, 8, 12")
    with pytest.raises(InputError) as e:
        ckpt.resolve(cfg.checkpoint_dir, str(cfg.run_dir / "nowhere"))
    _one_line(e.value, "nowhere", "no such checkpoint", "4, 8, 12")


def test_a_long_list_of_steps_is_abbreviated(tmp_path):
    d = tmp_path / "checkpoints"
    for step in range(1, 11):
        p = d / ckpt.step_dir_name(step * 100)
        p.mkdir(parents=True)
        (p / "meta.json").write_text(json.dumps({"step": step * 100}))
        (p / ckpt.MARKER).write_text("x\n")
    with pytest.raises(InputError) as e:
        ckpt.resolve(d, "7")
    _one_line(e.value, "complete checkpoints (10): 100, 200, 300, …, 800, 900, 1000")
    with pytest.raises(InputError) as e:
        ckpt.resolve(tmp_path / "empty", "7")
    _one_line(e.value, "no such checkpoint", "no complete checkpoint")


# ------------------------------------------------------------------ C: stdout closed early


@pytest.mark.parametrize("extra", [[], ["--print-config"]])
def test_a_closed_stdout_ends_quietly(run, extra):
    """`python -m hpcrnn.status RUN | head -0`: the reader is gone before the first line (a flushed print,
    and output left in the buffer until exit)."""
    _, cfg = run
    p = start_module("hpcrnn.status", str(cfg.run_dir), *extra)
    p.stdout.close()  # before the child (still importing) writes anything
    err = p.stderr.read()
    assert p.wait(timeout=300) == 0, err
    assert err == "", err


def test_a_closed_pipe_in_a_shell_pipeline_is_quiet(run):
    _, cfg = run
    cmd = f"{sys.executable} -m hpcrnn.status {cfg.run_dir} --print-config | (exec 0<&-; true)"
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_a_broken_pipe_that_is_not_stdout_is_still_an_internal_error(capsys):
    def body():
        raise BrokenPipeError(32, "Broken pipe")  # a socket, say: stdout is fine

    assert guarded("hpcrnn.x", False, body) == 1
    _one_line(capsys.readouterr().err, "hpcrnn.x: internal error: BrokenPipeError")


# ------------------------------------------------------------------ D: lm.evaluate scores all of a short text


@pytest.mark.slow
def test_evaluate_scores_every_token_of_a_short_text(run, tmp_path):
    _, cfg = run
    lm = hpcrnn.load(cfg.run_dir)
    f = tmp_path / "short.txt"
    f.write_text(_SHORT)
    n = len(encode_file(f, lm.vocab))
    assert 20 < n < 100
    for got in (lm.evaluate(_SHORT), lm.evaluate(f)):
        assert got["tokens"] == n - 1, (got, n)  # every token after the first
    r = run_module("hpcrnn.evaluate", str(cfg.run_dir), "--text", str(f), "--json")
    assert r.returncode == 0, r.stderr
    want = json.loads(r.stdout)["results"][0]
    assert want["tokens"] == n - 1 and want["ppl"] == pytest.approx(lm.evaluate(f)["ppl"], rel=1e-9)


# ------------------------------------------------------------------ E: the progress bar before its first log


def test_the_bar_never_shows_nan_or_zero_tokens_per_s(tmp_path, capsys, monkeypatch):
    from hpcrnn.train import metrics

    cfg = load_config(tiny_config(tmp_path, tmp_path / "none.txt", train={"progress": "bar"}))
    p = metrics.Progress(cfg, total=20, enabled=True)
    # between log points the loop passes the last logged loss and no rate (0.0), as _log_step does
    p.update(1, p.last_loss, 0.0, 10.0, 0.01, False)
    first = capsys.readouterr().err
    assert "nan" not in first and " 0 tok/s" not in first, first
    assert "loss – – tok/s" in first, first
    p.update(5, 4.25, 1234.0, 8.0, 0.01, True)  # a log point
    p.last_loss = 4.25
    capsys.readouterr()
    p.update(6, p.last_loss, 0.0, 7.0, 0.01, False)
    later = capsys.readouterr().err
    assert "loss 4.250 1,234 tok/s" in later, later

    monkeypatch.setattr(metrics.time, "time", iter([101.0, 102.0, 104.0]).__next__)
    pace = metrics.Pace(since=100.0)
    assert pace.running_tokens_per_s() == 0.0  # nothing measured yet (clock not read)
    pace.tick(100.0, 500)  # took 101 - 100
    assert pace.step_s == 1.0
    assert pace.running_tokens_per_s() == 250.0  # at 102: 500 tokens in 2 s, the interval goes on
    assert pace.tokens_per_s() == 125.0  # at 104: 500 tokens in 4 s, and a new interval starts
    assert pace.tokens == 0 and pace.running_tokens_per_s() == 0.0
