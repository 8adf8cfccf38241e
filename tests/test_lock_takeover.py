"""The lock takeover race with three processes: B judges an old lock stale, A takes it over first, B renames
A's fresh lock aside and, before B can put it back, C takes the empty place. A must notice that the lock is
no longer its own and stop before any checkpoint write or retention, so two processes never write one run."""

import json
import os
import socket

import pytest
import torch

from hpcrnn.errors import LockedError
from hpcrnn.run import lock as lockmod
from hpcrnn.run.lock import RunLock
from hpcrnn.train import checkpoint as ckpt
from hpcrnn.train import loop
from tests.helpers import prepared

torch.set_num_threads(1)


def _dead_lock(run_dir):
    run_dir.mkdir(parents=True, exist_ok=True)
    dead = {"host": socket.gethostname(), "pid": 2**22 + 7, "start": "1", "job_id": None, "stage": "train"}
    (run_dir / "lock.json").write_text(json.dumps(dead))


def test_a_then_b_then_c(tmp_path, monkeypatch):
    _dead_lock(tmp_path)
    b = RunLock(tmp_path, "train")
    seen = b._read()  # B reads the dead holder's lock and will judge it stale ...
    a = RunLock(tmp_path, "train").acquire()  # ... but A takes it over first
    c = RunLock(tmp_path, "train")
    c.me = dict(c.me, pid=os.getpid() + 1)  # a third process
    real_rename = os.rename

    def rename_then_c_takes(src, dst):  # B renames A's lock aside; C links into the empty place at once
        real_rename(src, dst)
        monkeypatch.setattr(lockmod.os, "rename", real_rename)
        c.acquire()

    monkeypatch.setattr(b, "_read", lambda: seen)
    monkeypatch.setattr(lockmod.os, "rename", rename_then_c_takes)
    b._take_over_if_stale()  # B's put-back of A's lock fails: C is there
    assert c.held and json.loads((tmp_path / "lock.json").read_text())["pid"] == os.getpid() + 1
    with pytest.raises(LockedError, match="no longer this process's"):
        a.check()
    a.heartbeat()  # A never renews C's lock
    c.check()  # C holds it
    a.release()  # and A's release leaves C's lock in place
    assert (tmp_path / "lock.json").exists()
    c.release()


def test_training_stops_before_writing_when_its_lock_was_lost(tmp_path, tiny_corpus):
    _, cfg = prepared(tmp_path, tiny_corpus, train={"max_steps": 12, "checkpoint_every": 5, "eval_every": 100})

    def steal(step, flag):
        if step == 3:  # another process's lock file takes the place of ours
            other = cfg.run_dir / "other.json"
            other.write_text(json.dumps({"host": "elsewhere", "pid": 1, "stage": "train"}))
            os.replace(other, cfg.run_dir / "lock.json")

    with pytest.raises(LockedError, match="no longer this process's"):
        loop.run_train(cfg, steal)
    assert [c.step for c in ckpt.list_complete(cfg.checkpoint_dir)] == []  # nothing written after the loss
