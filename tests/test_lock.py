"""The run lock: one holder, whatever the timing (issue 14, item 3)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest

from hpcrnn.errors import LockedError
from hpcrnn.run.lock import LOCK_NAME, RunLock


def _dead_holder(run_dir):
    p = subprocess.Popen(["true"])
    p.wait()
    lock = run_dir / LOCK_NAME
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": p.pid, "start": "1", "stage": "train"}))
    return lock


def test_takeover_race_leaves_exactly_one_holder(tmp_path, monkeypatch):
    """B judges the dead holder stale; before B removes it, A takes it over. B must not remove A's lock."""
    lock = _dead_holder(tmp_path)
    a, b = RunLock(tmp_path, "train"), RunLock(tmp_path, "launch")
    judge = RunLock._stale_reason

    def slow_judge(self, holder):
        verdict = judge(self, holder)
        if self is b and not a.held:
            a.acquire()  # A wins between B's verdict and B's takeover
        return verdict

    monkeypatch.setattr(RunLock, "_stale_reason", slow_judge)
    try:
        with pytest.raises(LockedError, match="in use by train pid"):
            b.acquire()
        assert a.held and not b.held
        assert json.loads(lock.read_text())["stage"] == "train"  # A's lock is still there
        assert not list(tmp_path.glob(f".{LOCK_NAME}*"))  # nothing left aside
    finally:
        a.release()
    assert not lock.exists()


@pytest.mark.parametrize(
    "content",
    ["", "{", "\x00\x00", "null", "[1]", '"x"', '{"x": 1}', '{"host": "HOST", "pid": "abc"}', '{"host": 1, "pid": 1}'],
)
def test_an_empty_or_unreadable_lock_is_stale(tmp_path, content):
    """JSON that names no holder (no object, no host, no integer pid) can belong to no live process."""
    (tmp_path / LOCK_NAME).write_text(content.replace("HOST", socket.gethostname()))
    with RunLock(tmp_path, "train") as lk:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid() and lk.held


def test_the_lock_is_never_visible_empty(tmp_path, monkeypatch):
    """The content exists before the lock does: a reader at any moment sees a whole holder."""
    seen = []
    real_link = os.link

    def link(src, dst):
        seen.append(json.loads(open(src).read()))  # what becomes visible, at the moment it does
        return real_link(src, dst)

    monkeypatch.setattr(os, "link", link)
    with RunLock(tmp_path, "train"):
        assert seen and seen[0]["pid"] == os.getpid()


def test_heartbeat_runs_while_the_holder_is_busy(tmp_path):
    with RunLock(tmp_path, "train", stale_after=2.0):
        lock = tmp_path / LOCK_NAME
        os.utime(lock, (time.time() - 100, time.time() - 100))
        time.sleep(0.5)  # the holder does nothing: no metrics, no explicit heartbeat
        assert time.time() - lock.stat().st_mtime < 1.0


def test_a_live_holder_is_refused_and_named(tmp_path):
    with RunLock(tmp_path, "train"):
        with pytest.raises(LockedError, match=rf"in use by train pid {os.getpid()} on {socket.gethostname()}"):
            RunLock(tmp_path, "preprocess").acquire()


@pytest.mark.slow
def test_a_second_launch_of_a_run_is_refused_while_the_first_runs(tmp_path, tiny_corpus):
    """Two launches of one config both submitted whole pipelines; now the second is refused, naming the
    first, and after the first ends a launch goes ahead."""
    from hpcrnn.run.lock import LAUNCH_LOCK_NAME
    from tests.helpers import run_module, start_module, tiny_config

    cfg_path = tiny_config(tmp_path, tiny_corpus, train={"max_steps": 400, "eval_every": 1000})
    first = start_module("hpcrnn.launch", str(cfg_path), "--cluster", "local")
    lock = tmp_path / "scratch" / "tiny" / LAUNCH_LOCK_NAME
    deadline = time.time() + 60
    while not lock.exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert lock.exists(), first.communicate()
    second = run_module("hpcrnn.launch", str(cfg_path), "--cluster", "local", "train.max_steps=400")
    assert second.returncode == 2, second.stderr
    assert f"in use by launch pid {first.pid}" in second.stderr
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert not lock.exists()
    again = run_module("hpcrnn.launch", str(cfg_path), "--cluster", "local")
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr
