"""Fault injection: kill -9, corrupt checkpoints, disk full, concurrent launches, readers beside writers,
signals at awkward moments. Each test states the promise it checks; FAULTS counts what was tried."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from hpcrnn.config import load_config
from hpcrnn.errors import EXIT_REQUEUE, EXIT_STOPPED, EXIT_STORAGE, EXIT_USAGE, InputError
from hpcrnn.train import checkpoint as ckpt
from tests.helpers import ROOT, prepared, run_module, start_python, stop_at, tiny_config

torch.set_num_threads(1)


def start_train(cfg_path, *overrides, env=None, slow_checkpoint=0.0):
    """``python -m hpcrnn.train``; with ``slow_checkpoint``, a pause of that many seconds after each checkpoint
    file is written (tests/slow_checkpoint_train.py)."""
    slow = [ROOT / "tests" / "slow_checkpoint_train.py", slow_checkpoint]
    entry = slow if slow_checkpoint else ["-m", "hpcrnn.train"]
    return start_python(*entry, cfg_path, *overrides, env={"OMP_NUM_THREADS": "1", **(env or {})})


def last_step(metrics: Path) -> int:
    """The newest step in metrics.jsonl, read while the trainer appends to it: a line still being written
    can show up half-written, and is skipped (as hpcrnn.status does)."""
    from hpcrnn.fsutil import read_jsonl

    return max((r.get("step", 0) for r in read_jsonl(metrics)), default=0)


def model_bytes(cfg) -> bytes:
    return (ckpt.latest(cfg.checkpoint_dir).path / "model.pt").read_bytes()


# ---------------------------------------------------------------- kill -9


@pytest.mark.slow
def test_kill9_at_random_moments_resumes_bitwise(tmp_path, tiny_corpus):
    """20 seeded kill -9 trials (some at start-up, some mid-step, some mid-checkpoint-write): every relaunch
    resumes from the newest complete checkpoint and the finished model is bitwise identical."""
    steps = 400
    over = {
        "train": {"max_steps": steps, "checkpoint_every": 7, "log_every": 1, "eval_every": 50, "keep_last": 2},
        "model": {"dropout": 0.1},
    }
    _, ref = prepared(tmp_path / "ref", tiny_corpus, **over)
    r = run_module("hpcrnn.train", str(tiny_config(tmp_path / "ref", tiny_corpus, **over)))
    assert r.returncode == 0, r.stderr
    want = model_bytes(ref)

    cfg_path, cfg = prepared(tmp_path / "kill", tiny_corpus, **over)
    rng = random.Random(20261126)
    kinds = {"startup": 0, "mid-step": 0, "mid-checkpoint": 0}
    kills = 0
    while kills < 20:
        before = ckpt.latest(cfg.checkpoint_dir)
        kind = rng.choice(["startup", "mid-step", "mid-step", "mid-checkpoint"])
        p = start_train(cfg_path, slow_checkpoint=0.3 if kind == "mid-checkpoint" else 0.0)
        t0 = time.time()
        if kind == "startup":
            time.sleep(rng.uniform(0.05, 1.0))
        elif kind == "mid-step":
            target = last_step(cfg.metrics_path) + rng.randint(1, 25)
            while last_step(cfg.metrics_path) < target and p.poll() is None and time.time() - t0 < 60:
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.02))
        else:
            while p.poll() is None and time.time() - t0 < 60 and not any(cfg.checkpoint_dir.glob(".tmp-step-*")):
                time.sleep(0.002)
        if p.poll() is not None:
            break  # finished before the kill: the remaining trials have nothing to interrupt
        p.kill()
        p.wait()
        kills += 1
        kinds[kind] += 1
        after = ckpt.latest(cfg.checkpoint_dir)
        # the newest complete checkpoint is never older than before the kill, and always verifies
        if before is not None:
            assert after is not None and after.step >= before.step
        if after is not None:
            assert ckpt.verify(after.path) is None
    r = run_module("hpcrnn.train", str(cfg_path))
    assert r.returncode == 0, r.stderr
    assert kills == 20 and kinds["mid-checkpoint"] >= 2, kinds
    assert model_bytes(cfg) == want, f"after {kills} kill -9 ({kinds}) the model differs"


# ---------------------------------------------------------------- corrupt checkpoints


def _flip(path: Path) -> None:
    b = bytearray(path.read_bytes())
    b[len(b) // 3] ^= 0x5A
    path.write_bytes(bytes(b))


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["missing-marker", "truncated-model", "flipped-optimizer", "missing-meta"])
def test_damaged_newest_checkpoint_is_skipped_not_deleted(tmp_path, tiny_corpus, damage):
    cfg_path, cfg = prepared(tmp_path, tiny_corpus, train={"keep_last": 3, "max_steps": 15})
    from hpcrnn.train.loop import run_train

    run_train(cfg, stop_at(10))
    newest = cfg.checkpoint_dir / "step-00000010"
    if damage == "missing-marker":
        (newest / ckpt.MARKER).unlink()
    elif damage == "truncated-model":
        data = (newest / "model.pt").read_bytes()
        (newest / "model.pt").write_bytes(data[: len(data) // 2])
    elif damage == "flipped-optimizer":
        _flip(newest / "train_state.pt")
    else:
        (newest / "meta.json").unlink()
    r = run_module("hpcrnn.train", str(cfg_path))
    assert r.returncode == 0, r.stderr
    warn = [line for line in r.stderr.splitlines() if "step-00000010" in line]
    assert len(warn) >= 1 and "skipping" in warn[0], r.stderr
    assert "resumed from step-00000005" in r.stdout
    assert newest.exists(), "a damaged checkpoint must never be deleted silently"


# ---------------------------------------------------------------- disk full


@pytest.fixture
def small_tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root (CI runs as root)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
def test_disk_full_while_checkpointing(tmp_path, tiny_corpus, small_tmpfs):
    """The run stops with a one-line error; the previous checkpoint is intact and loadable."""
    h5 = tmp_path / "corpus.h5"
    over = {
        "paths": {"scratch": str(small_tmpfs)},
        "data": {"h5_path": str(h5)},
        "model": {"hidden": 48, "embedding": 48},
        "train": {"max_steps": 200, "checkpoint_every": 5},
    }
    cfg_path, cfg = prepared(tmp_path, tiny_corpus, **over)
    r = run_module("hpcrnn.train", str(cfg_path))
    assert r.returncode == EXIT_STORAGE, (r.stdout, r.stderr)
    line = r.stderr.strip()
    assert "\n" not in line and "No space left on device" in line and "is intact" in line, line
    c = ckpt.latest(cfg.checkpoint_dir)
    assert c is not None and ckpt.verify(c.path) is None and str(c.path) in line
    model, meta = ckpt.load_model(c)
    assert meta["step"] == c.step
    assert not list(cfg.checkpoint_dir.glob(".tmp-*")), "no half-written folder left behind"
    for line in cfg.metrics_path.read_text().splitlines():
        json.loads(line)  # metrics.jsonl stays one valid object per line


# ---------------------------------------------------------------- two launches at once


@pytest.mark.slow
def test_second_trainer_is_refused_and_stale_lock_recognised(tmp_path, tiny_corpus):
    cfg_path, cfg = prepared(tmp_path, tiny_corpus, train={"max_steps": 100000, "log_every": 1, "checkpoint_every": 50})
    a = start_train(cfg_path)
    try:
        t0 = time.time()
        while last_step(cfg.metrics_path) < 2 and time.time() - t0 < 60:
            assert a.poll() is None, a.communicate()
            time.sleep(0.05)
        r = run_module("hpcrnn.train", str(cfg_path))
        assert r.returncode == EXIT_USAGE
        assert f"pid {a.pid}" in r.stderr and "in use by train" in r.stderr, r.stderr
    finally:
        a.kill()
        a.wait()
    # the holder died without releasing: its lock is stale and the next trainer takes over
    assert (cfg.run_dir / "lock.json").exists()
    r = run_module("hpcrnn.train", str(cfg_path), "train.max_steps=60")
    assert r.returncode == 0, r.stderr
    assert not (cfg.run_dir / "lock.json").exists()


def test_lock_from_another_host_with_fresh_heartbeat_is_respected(tmp_path):
    from hpcrnn.errors import LockedError
    from hpcrnn.run.lock import RunLock

    (tmp_path / "lock.json").write_text(json.dumps({"host": "node-that-is-not-here", "pid": 1, "stage": "train"}))
    with pytest.raises(LockedError, match="node-that-is-not-here"):
        RunLock(tmp_path, "train").acquire()
    old = time.time() - 7200
    os.utime(tmp_path / "lock.json", (old, old))
    with RunLock(tmp_path, "train"):  # no heartbeat for 2 h: stale
        assert json.loads((tmp_path / "lock.json").read_text())["pid"] == os.getpid()
    assert not (tmp_path / "lock.json").exists()


# ---------------------------------------------------------------- reader beside a writer


@pytest.mark.slow
def test_reader_never_sees_a_partial_checkpoint(tmp_path, tiny_corpus):
    """A generation-style reader polls the newest checkpoint while a trainer writes and deletes them."""
    cfg_path, cfg = prepared(
        tmp_path, tiny_corpus, train={"max_steps": 400, "checkpoint_every": 1, "keep_last": 2, "eval_every": 1000}
    )
    p = start_train(cfg_path)
    loads, errors = 0, []
    t0 = time.time()
    while p.poll() is None and time.time() - t0 < 120:
        try:
            c, model, meta = ckpt.open_latest(cfg.checkpoint_dir)
            assert meta["step"] == c.step
            loads += 1
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            if "no complete checkpoint" in str(e) and loads == 0:
                continue
            errors.append(repr(e))
    out, err = p.communicate()
    assert p.returncode == 0, err
    assert not errors, errors[:3]
    assert loads >= 20


# ---------------------------------------------------------------- signals at awkward moments


def _await_moment(p, reached, when: str, poll: float, timeout: float = 60) -> None:
    """Poll until ``reached()``. A run that ends first, or a moment that never comes, fails the test: a
    signal sent then would land somewhere else and test nothing."""
    t0 = time.time()
    while not reached():
        assert p.poll() is None, f"the run ended before the {when} moment: {p.communicate()}"
        assert time.time() - t0 < timeout, f"no {when} moment in {timeout} s"
        time.sleep(poll)


def _signal_run(cfg_path, cfg, sig, when, slow_checkpoint=0.0, *overrides):
    p = start_train(cfg_path, *overrides, slow_checkpoint=slow_checkpoint)
    if when == "startup":
        time.sleep(0.3)  # inside the torch import: the early handler must already be there
    elif when == "eval":  # the step-10 train record is written right before the step-10 evaluation
        _await_moment(p, lambda: last_step(cfg.metrics_path) >= 10, when, 0.0005)
    elif when == "checkpoint":
        _await_moment(p, lambda: any(cfg.checkpoint_dir.glob(".tmp-step-*")), when, 0.001)
    elif when == "dataloader":
        time.sleep(0.01)
        lock = cfg.run_dir / "lock.json"
        _await_moment(p, lambda: cfg.metrics_path.exists() or lock.exists(), when, 0.005)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    return p.returncode, out, err


@pytest.mark.slow
@pytest.mark.parametrize("when", ["startup", "eval", "checkpoint", "dataloader"])
@pytest.mark.parametrize("sig,code", [(signal.SIGUSR2, EXIT_REQUEUE), (signal.SIGTERM, EXIT_STOPPED)])
def test_signal_moments_end_in_checkpoint_and_resume_exactly(tmp_path, tiny_corpus, when, sig, code):
    over = {"train": {"max_steps": 60, "log_every": 1, "checkpoint_every": 5, "eval_every": 10, "eval_batches": 0}}
    if when == "dataloader":
        over["train"]["num_workers"] = 2
    _, ref = prepared(tmp_path / "ref", tiny_corpus, **over)
    r = run_module("hpcrnn.train", str(tiny_config(tmp_path / "ref", tiny_corpus, **over)))
    assert r.returncode == 0, r.stderr
    cfg_path, cfg = prepared(tmp_path / "sig", tiny_corpus, **over)
    rc, out, err = _signal_run(cfg_path, cfg, sig, when, 0.3 if when == "checkpoint" else 0.0)
    assert rc == code, f"the {when} signal did not stop the run (exit {rc}; 0: it ended first): {out} {err}"
    c = ckpt.latest(cfg.checkpoint_dir)
    assert c is not None and ckpt.verify(c.path) is None
    r = run_module("hpcrnn.train", str(cfg_path))
    assert r.returncode == 0, r.stderr
    assert model_bytes(cfg) == model_bytes(ref)


# ---------------------------------------------------------------- damaged data


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "garbled", "format-version"])
def test_damaged_corpus_one_line_error(tmp_path, tiny_corpus, damage):
    import h5py

    cfg_path, cfg = prepared(tmp_path, tiny_corpus)
    h5 = cfg.h5_path
    data = h5.read_bytes()
    if damage == "truncated":
        h5.write_bytes(data[: len(data) * 2 // 3])
    elif damage == "garbled":
        b = bytearray(data)
        lo, hi = len(b) // 4, len(b) * 3 // 4
        b[lo:hi] = bytes((i * 151 + 7) % 256 for i in range(hi - lo))
        h5.write_bytes(bytes(b))
    else:
        with h5py.File(h5, "r+") as f:
            f.attrs["format_version"] = 99
    r = run_module("hpcrnn.train", str(cfg_path))
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(h5) in lines[0], r.stderr
    if damage == "format-version":
        assert "format version 99" in lines[0]


@pytest.mark.slow
def test_vocabulary_mismatch_with_checkpoint(tmp_path, tiny_corpus):
    from hpcrnn.data.build import run_preprocess
    from hpcrnn.train.loop import run_train

    cfg_path, cfg = prepared(tmp_path, tiny_corpus)
    run_train(cfg, stop_at(5))
    changed = load_config(cfg_path, ["data.min_count=3"])  # a smaller vocabulary, same file name
    with pytest.raises(InputError, match="were trained on it: give a new run.name"):
        run_preprocess(changed)  # preprocess never replaces a corpus that checkpoints were trained on
    elsewhere = load_config(cfg_path, ["data.min_count=3", f"paths.scratch={tmp_path / 'other'}"])
    run_preprocess(elsewhere)
    shutil.copyfile(elsewhere.h5_path, cfg.h5_path)  # put there by hand: the trainer still refuses it
    r = run_module("hpcrnn.train", str(cfg_path), "data.min_count=3")
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "vocabulary" in line and str(cfg.h5_path) in line and "step-00000005" in line, line
    assert (cfg.checkpoint_dir / "step-00000005" / ckpt.MARKER).exists()  # nothing touched
