"""The trainer: exact resume, DDP equivalence, signals, divergence, compatibility, metrics, retention."""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from hpcrnn.config import load_config
from hpcrnn.errors import EXIT_DIVERGED, EXIT_REQUEUE, EXIT_STOPPED, InputError
from hpcrnn.fsutil import read_jsonl
from hpcrnn.train import checkpoint as ckpt
from tests.helpers import prepared, run_module, run_python, start_module, stop_at, tiny_config

torch.set_num_threads(1)


def model_bytes(cfg) -> bytes:
    c = ckpt.latest(cfg.checkpoint_dir)
    return (c.path / "model.pt").read_bytes()


@pytest.mark.slow
def test_exact_resume_bitwise_at_several_steps(tmp_path, tiny_corpus):
    from hpcrnn.train.loop import run_train

    # dropout and a cosine schedule make the RNG and scheduler state matter; 24 steps cross epochs
    extra = dict(model={"dropout": 0.2, "layers": 2}, train={"schedule": "cosine", "warmup_steps": 3})
    _, ref = prepared(tmp_path / "ref", tiny_corpus, **extra)
    assert run_train(ref).status == "done"
    want = model_bytes(ref)
    bpe = None
    for k in (1, 7, 13):
        _, cfg = prepared(tmp_path / f"k{k}", tiny_corpus, **extra)
        r = run_train(cfg, stop_at(k))
        assert (r.status, r.step, r.exit_code) == ("requeue", k, EXIT_REQUEUE)
        assert ckpt.latest(cfg.checkpoint_dir).step == k
        assert run_train(cfg).status == "done"
        assert model_bytes(cfg) == want, f"resume after step {k} is not bitwise identical"
        bpe = ckpt.latest(cfg.checkpoint_dir).meta
    assert bpe["done"] and bpe["step"] == 24


def test_metrics_records_and_retention(tmp_path, tiny_corpus):
    from hpcrnn.train.loop import run_train

    _, cfg = prepared(tmp_path, tiny_corpus)
    r = run_train(cfg)
    recs = [json.loads(line) for line in cfg.metrics_path.read_text().splitlines()]
    train = [x for x in recs if x.get("split") == "train"]
    assert [x["step"] for x in train] == [5, 10, 15, 20, 24]
    for x in recs:
        if "split" in x:
            for key in ("step", "epoch", "split", "loss", "ppl", "acc", "top5", "tokens_per_s", "lr", "time"):
                assert key in x, (key, x)
    assert {x["split"] for x in recs} == {"train", "val", "test"}
    assert r.final["test"]["ppl"] > 1
    steps = [c.step for c in ckpt.list_complete(cfg.checkpoint_dir)]
    # keep_last 2 (20, 24) plus the best by val loss among the checkpoints that carry one
    assert steps[-2:] == [20, 24] and len(steps) <= 3
    meta = json.loads((cfg.checkpoint_dir / "step-00000024" / "meta.json").read_text())
    assert meta["done"] is True and meta["vocab_size"] > 10 and meta["config"]["model"]["hidden"] == 16
    # a second run of a finished training does nothing
    assert run_train(cfg).status == "done"
    assert [c.step for c in ckpt.list_complete(cfg.checkpoint_dir)] == steps


@pytest.mark.parametrize("cell,loss", [("gru", "all"), ("rnn", "last")])
def test_cells_and_last_word_loss(tmp_path, tiny_corpus, cell, loss):
    from hpcrnn.train.loop import run_train

    _, cfg = prepared(tmp_path, tiny_corpus, model={"cell": cell}, train={"loss": loss, "max_steps": 6})
    r = run_train(cfg)
    assert r.status == "done" and r.step == 6
    c = ckpt.latest(cfg.checkpoint_dir)
    assert any(k.startswith("rnn.weight_ih") for k in ckpt.load_model_state(c))


def test_incompatible_checkpoint_is_refused(tmp_path, tiny_corpus):
    from hpcrnn.train.loop import run_train

    cfg_path, cfg = prepared(tmp_path, tiny_corpus)
    run_train(cfg, stop_at(5))
    bigger = load_config(cfg_path, ["model.hidden=32"])
    with pytest.raises(InputError, match=r"model.hidden: 16 -> 32"):
        run_train(bigger)


def test_corrupt_newest_checkpoint_falls_back(tmp_path, tiny_corpus, capfd):
    from hpcrnn.train.loop import run_train

    _, cfg = prepared(tmp_path, tiny_corpus, train={"keep_last": 3})
    run_train(cfg, stop_at(10))
    newest = cfg.checkpoint_dir / "step-00000010" / "model.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    c = ckpt.latest(cfg.checkpoint_dir)
    assert c.step == 5
    assert "step-00000010" in capfd.readouterr().err
    assert newest.exists()  # never deleted silently


def _env_rank(rank, world, port):
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(rank),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "OMP_NUM_THREADS": "1",
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_ranks(cfg_path, world, *overrides):
    port = _free_port()
    procs = [
        start_module("hpcrnn.train", str(cfg_path), *overrides, env=_env_rank(r, world, port), stderr=subprocess.STDOUT)
        for r in range(world)
    ]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    return [p.returncode for p in procs], outs


@pytest.mark.slow
def test_two_ranks_match_one_rank_gloo(tmp_path, tiny_corpus):
    """Same global batch and seed: 2 gloo ranks reach the 1-rank weights within float tolerance."""
    _, one = prepared(tmp_path / "one", tiny_corpus, train={"max_steps": 12})
    two_path, two = prepared(tmp_path / "two", tiny_corpus, train={"max_steps": 12})
    codes, outs = _launch_ranks(tiny_config(tmp_path / "one", tiny_corpus, train={"max_steps": 12}), 1)
    assert codes == [0], outs
    codes, outs = _launch_ranks(two_path, 2)
    assert codes == [0, 0], outs
    assert "2 rank(s)" in outs[0]
    a = ckpt.load_model_state(ckpt.latest(one.checkpoint_dir))
    b = ckpt.load_model_state(ckpt.latest(two.checkpoint_dir))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    # and a 2-rank checkpoint resumes on 1 rank (another world size)
    codes, outs = _launch_ranks(two_path, 1, "train.max_steps=16")
    assert codes == [0], outs
    assert ckpt.latest(two.checkpoint_dir).step == 16


def _wait_for_step(metrics: Path, step: int, proc, timeout=120):
    """Until the running trainer has logged ``step`` (read beside the writer: a torn last line is skipped)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if any(rec.get("step", 0) >= step for rec in read_jsonl(metrics)):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("training made no progress")


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig,code,status", [(signal.SIGUSR2, EXIT_REQUEUE, "requeue"), (signal.SIGTERM, EXIT_STOPPED, "stopped")]
)
def test_signal_checkpoints_and_exits_with_status(tmp_path, tiny_corpus, sig, code, status):
    cfg_path, cfg = prepared(
        tmp_path, tiny_corpus, train={"max_steps": 100000, "log_every": 1, "checkpoint_every": 100000}
    )
    p = start_module("hpcrnn.train", str(cfg_path), stderr=subprocess.STDOUT)
    _wait_for_step(cfg.metrics_path, 3, p)
    p.send_signal(sig)
    out = p.communicate(timeout=60)[0]
    assert p.returncode == code, out
    c = ckpt.latest(cfg.checkpoint_dir)
    assert c is not None and c.step >= 3 and ckpt.verify(c.path) is None
    stops = [rec for rec in read_jsonl(cfg.metrics_path) if "event" in rec]
    assert stops[-1]["status"] == status and stops[-1]["step"] == c.step


@pytest.mark.slow
def test_resume_after_real_signal_is_bitwise_identical(tmp_path, tiny_corpus):
    """SIGUSR2 sent once step 7 is logged, far from the end of the run: it must stop the run midway (exit 75,
    a stop event), and the resumed run ends bitwise identical to the uninterrupted one."""
    steps = 200  # the signal lands at step 7 or soon after, far from the end even on a loaded machine
    train = {"max_steps": steps, "log_every": 1}
    _, ref = prepared(tmp_path / "ref", tiny_corpus, train=train)
    r = run_module("hpcrnn.train", str(tiny_config(tmp_path / "ref", tiny_corpus, train=train)))
    assert r.returncode == 0, r.stderr
    cfg_path, cfg = prepared(tmp_path / "sig", tiny_corpus, train=train)
    p = start_module("hpcrnn.train", str(cfg_path), stderr=subprocess.STDOUT)
    _wait_for_step(cfg.metrics_path, 7, p)
    p.send_signal(signal.SIGUSR2)
    out = p.communicate(timeout=60)[0]
    assert p.returncode == EXIT_REQUEUE, (p.returncode, out)  # 0 would mean the run ended before the signal
    stopped = ckpt.latest(cfg.checkpoint_dir).step
    assert 7 <= stopped < steps
    assert [rec["step"] for rec in read_jsonl(cfg.metrics_path) if "event" in rec][-1] == stopped
    r = run_module("hpcrnn.train", str(cfg_path))
    assert r.returncode == 0, r.stderr
    assert model_bytes(cfg) == model_bytes(ref)


@pytest.mark.slow
def test_non_finite_loss_stops_with_last_good_checkpoint(tmp_path, tiny_corpus):
    cfg_path, cfg = prepared(tmp_path, tiny_corpus)
    r = run_module(
        "hpcrnn.train",
        str(cfg_path),
        "train.max_steps=40",
        "train.lr=1e38",
        "train.clip_grad=0",
        "train.checkpoint_every=1",
        "train.optimizer=sgd",
    )
    assert r.returncode == EXIT_DIVERGED, (r.stdout, r.stderr)
    line = r.stderr.strip()
    assert "non-finite loss at step" in line and "\n" not in line
    c = ckpt.latest(cfg.checkpoint_dir)
    assert c is not None and ckpt.verify(c.path) is None
    assert str(c.path) in line
    state = ckpt.load_model_state(c)
    assert all(torch.isfinite(v).all() for v in state.values())
    assert not (cfg.checkpoint_dir / f"step-{c.step + 1:08d}").exists()


@pytest.mark.parametrize(
    "env,want",
    [
        ({}, (0, 1, 0, "single")),
        ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, (3, 4, 1, "torchrun")),
        ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0"}, (5, 8, 1, "slurm")),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}, (0, 1, 0, "single")),  # the batch script, not a task
        (
            {"SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_LOCALID": "1"},
            (1, 2, 1, "submitit-local"),
        ),
    ],
)
def test_rank_detection(monkeypatch, env, want):
    from hpcrnn.train import distributed

    for k in list(os.environ):
        if k.startswith(("SLURM_", "SUBMITIT_")) or k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert distributed.detect() == want


def test_training_done_follows_the_config_target(tmp_path, tiny_corpus):
    from hpcrnn.train.checkpoint import training_done
    from hpcrnn.train.loop import run_train

    cfg_path, cfg = prepared(tmp_path, tiny_corpus, train={"max_steps": 6})
    assert not training_done(cfg)
    run_train(cfg)
    assert training_done(cfg)
    longer = load_config(cfg_path, ["train.max_steps=9"])
    assert not training_done(longer)
    assert run_train(longer).step == 9 and training_done(longer)


def test_training_done_by_epochs_raised_continues_lowered_is_done(tmp_path, tiny_corpus):
    from hpcrnn.train.checkpoint import training_done
    from hpcrnn.train.loop import run_train

    cfg_path, cfg = prepared(tmp_path, tiny_corpus, train={"max_steps": 0, "epochs": 1})
    run_train(cfg)
    assert training_done(cfg)
    assert training_done(load_config(cfg_path, ["train.epochs=0.5"]))
    assert not training_done(load_config(cfg_path, ["train.epochs=2"]))
    assert not training_done(load_config(cfg_path, ["train.batch_size=4"]))  # another plan: the trainer decides


def test_exit_process_after_a_multi_rank_run_keeps_the_status_and_the_output():
    """After a multi-rank run the entry point leaves with os._exit (hpcrnn.distributed.exit_process): the
    exit status must still be the entry point's, and buffered output must reach the stream."""
    code = (
        "import sys; from hpcrnn.train import distributed as D; print('last words', end=''); "
        "D._GROUP_USED = True; D.exit_process(76); print('never')"
    )
    r = run_python("-c", code, timeout=120)
    assert r.returncode == 76 and r.stdout == "last words", (r.returncode, r.stdout, r.stderr)
    from hpcrnn.train import distributed as D

    assert D.exit_process(3) == 3  # no group in this process: an ordinary return
