"""Holes an audit found (issue 14) in training and preprocessing, each pinned by a test that failed before."""

from __future__ import annotations

import pytest
import torch

from hpcrnn.train.loop import run_train
from tests.helpers import prepared, stop_at
from tests.test_train import model_bytes

torch.set_num_threads(1)


def test_resume_with_dataloader_workers_and_dropout_is_bitwise_identical(tmp_path, tiny_corpus):
    """The DataLoader seeded its workers from the global torch RNG, which resume restores: a run stopped at
    step 5 and resumed to 12 ended elsewhere than the uninterrupted run."""
    extra = dict(model={"dropout": 0.2, "layers": 2}, train={"num_workers": 1, "max_steps": 12})
    _, ref = prepared(tmp_path / "ref", tiny_corpus, **extra)
    assert run_train(ref).status == "done"
    _, cfg = prepared(tmp_path / "cut", tiny_corpus, **extra)
    assert run_train(cfg, stop_at(5)).step == 5
    assert run_train(cfg).status == "done"
    assert model_bytes(cfg) == model_bytes(ref)


# ---- item 1: a rebuilt corpus under existing checkpoints


def _edit_corpus_keeping_vocabulary(corpus):
    text = corpus.read_text()
    edited = text.replace("Categories: Desserts", "Categories: Breads", 1)
    assert edited != text
    corpus.write_text(edited)


def test_preprocess_never_replaces_a_corpus_that_checkpoints_were_trained_on(tmp_path, tiny_corpus):
    import pytest

    from hpcrnn.data.build import run_preprocess
    from hpcrnn.errors import InputError

    _, cfg = prepared(tmp_path, tiny_corpus, train={"max_steps": 5})
    run_train(cfg)
    before = cfg.h5_path.read_bytes()
    _edit_corpus_keeping_vocabulary(tiny_corpus)
    with pytest.raises(InputError, match=r"checkpoints of run 'tiny' .* were trained on it: give a new run\.name"):
        run_preprocess(cfg)
    assert cfg.h5_path.read_bytes() == before


@pytest.mark.slow
def test_launch_refuses_changed_inputs_under_checkpoints_before_submitting(tmp_path, tiny_corpus):
    from tests.helpers import run_module, tiny_config

    cfg_path = tiny_config(tmp_path, tiny_corpus, train={"max_steps": 5})
    assert (
        run_module("hpcrnn.launch", str(cfg_path), "--cluster", "debug", "--stages", "preprocess,train").returncode == 0
    )
    _edit_corpus_keeping_vocabulary(tiny_corpus)
    r = run_module("hpcrnn.launch", str(cfg_path), "--cluster", "debug", "train.max_steps=8")
    assert r.returncode == 2 and "corpus inputs changed" in r.stderr and "run.name" in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0


def test_resume_on_another_corpus_is_refused(tmp_path, tiny_corpus):
    """The same vocabulary but another token stream (a corpus.h5 put there by hand): not resumed."""
    import shutil

    import pytest

    from hpcrnn.errors import InputError

    _, cfg = prepared(tmp_path / "a", tiny_corpus, train={"max_steps": 5})
    run_train(cfg)
    _edit_corpus_keeping_vocabulary(tiny_corpus)
    _, other = prepared(tmp_path / "b", tiny_corpus)
    shutil.copyfile(other.h5_path, cfg.h5_path)
    with pytest.raises(InputError, match=r"trained on corpus .*\(rebuilt .*new run\.name"):
        run_train(cfg)


# ---- item 4: a refused or failed run leaves config.yaml as it was


@pytest.mark.slow
def test_refused_or_failed_trainer_leaves_config_yaml_alone(tmp_path, tiny_corpus):
    from hpcrnn.run.lock import RunLock
    from tests.helpers import run_module

    cfg_path, cfg = prepared(tmp_path, tiny_corpus, train={"max_steps": 3})
    run_train(cfg)
    saved = (cfg.run_dir / "config.yaml").read_text()
    with RunLock(cfg.run_dir, "train"):
        r = run_module("hpcrnn.train", str(cfg_path), "model.hidden=999", "train.max_steps=6")
    assert r.returncode == 2 and "lock" in r.stderr.lower(), r.stderr
    r = run_module("hpcrnn.train", str(cfg_path), "model.hidden=999", "train.max_steps=6")  # shape mismatch
    assert r.returncode == 2 and "model.hidden: 16 -> 999" in r.stderr, r.stderr
    assert (cfg.run_dir / "config.yaml").read_text() == saved


# ---- item 6: a failed metrics write ends every rank with exit 4, at once


@pytest.mark.slow
def test_metrics_write_failure_is_exit_4_on_every_rank(tmp_path, tiny_corpus):
    import time

    from tests.test_train import _launch_ranks

    cfg_path, cfg = prepared(tmp_path, tiny_corpus, train={"max_steps": 200, "log_every": 2})
    cfg.metrics_path.mkdir(parents=True)  # appending to a directory fails like a full disk would
    t0 = time.time()
    codes, outs = _launch_ranks(cfg_path, 2)
    assert codes == [4, 4], outs
    assert "cannot append metrics" in outs[0]
    assert time.time() - t0 < 120  # not the 600 s process-group timeout


# ---- item 8: nothing in a checkpoint runs code when loaded


class _Payload:
    def __init__(self, canary):
        self.canary = str(canary)

    def __reduce__(self):
        return (open, (self.canary, "w"))


def test_a_checkpoint_carrying_code_is_refused_without_running_it(tmp_path, tiny_corpus):
    import hashlib
    import io
    import json

    import pytest

    from hpcrnn.errors import InputError
    from hpcrnn.fsutil import sha256_file
    from hpcrnn.train import checkpoint as ckpt

    _, cfg = prepared(tmp_path, tiny_corpus, train={"max_steps": 3})
    run_train(cfg, stop_at(2))
    c = ckpt.latest(cfg.checkpoint_dir)
    canary = tmp_path / "pwned"
    state = ckpt.load_train_state(c)
    state["rng"] = [_Payload(canary)]
    buf = io.BytesIO()
    torch.save(state, buf)
    (c.path / "train_state.pt").write_bytes(buf.getvalue())
    meta = json.loads((c.path / "meta.json").read_text())  # a writer of the folder can fix the checksums
    meta["files"]["train_state.pt"] = {
        "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
        "bytes": len(buf.getvalue()),
    }
    (c.path / "meta.json").write_text(json.dumps(meta))
    (c.path / "COMPLETE").write_text(sha256_file(c.path / "meta.json") + "\n")
    with pytest.raises(InputError, match=r"train_state\.pt: holds objects other than tensors"):
        run_train(cfg)
    assert not canary.exists()


# ---- items 7 and 11: torn metrics lines, group-readable files


def test_a_torn_metrics_line_does_not_swallow_the_next_record(tmp_path):
    from hpcrnn.fsutil import append_jsonl, read_jsonl

    p = tmp_path / "metrics.jsonl"
    append_jsonl(p, {"step": 1})
    with open(p, "ab") as f:
        f.write(b'{"step": 2, "lo')  # kill -9 mid-append
    append_jsonl(p, {"step": 3})
    assert read_jsonl(p) == [{"step": 1}, {"step": 3}]
    assert p.read_text().endswith('{"step": 3}\n')


def test_run_files_respect_the_umask(tmp_path, tiny_corpus):
    import os
    import stat

    old = os.umask(0o002)
    try:
        _, cfg = prepared(tmp_path, tiny_corpus, train={"max_steps": 2})
        run_train(cfg)
    finally:
        os.umask(old)
    c = cfg.checkpoint_dir / "step-00000002"
    for f in (cfg.run_dir / "config.yaml", c / "COMPLETE", c / "meta.json", c / "model.pt"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o664, f


# ---- items 5 and 12: preprocess takes the run lock, names its temporaries by host, reads regular files only


def test_a_fifo_or_device_as_corpus_is_a_one_line_error(tmp_path):
    import os

    from tests.helpers import run_module, tiny_config

    fifo = tmp_path / "corpus.txt"
    os.mkfifo(fifo)
    for corpus in (fifo, "/dev/zero"):
        cfg_path = tiny_config(tmp_path / "x", corpus)
        for module in ("hpcrnn.preprocess", "hpcrnn.status"):
            r = run_module(module, str(cfg_path), timeout=60)
            if module == "hpcrnn.preprocess":
                assert r.returncode == 2, r.stderr
                assert f"{corpus}: not a regular file or directory (data.corpus)" in r.stderr
                assert r.stderr.strip().count("\n") == 0


def test_preprocess_waits_for_no_one_and_refuses_a_held_run(tmp_path, tiny_corpus):
    import pytest

    from hpcrnn.config import load_config
    from hpcrnn.data.build import run_preprocess
    from hpcrnn.errors import LockedError
    from hpcrnn.run.lock import RunLock
    from tests.helpers import tiny_config

    cfg = load_config(tiny_config(tmp_path, tiny_corpus))
    with RunLock(cfg.run_dir, "train"):
        with pytest.raises(LockedError):
            run_preprocess(cfg)
    assert not cfg.h5_path.exists()
    run_preprocess(cfg)
    assert cfg.h5_path.exists()


def test_preprocess_reaps_only_its_own_hosts_dead_temporaries(tmp_path, tiny_corpus):
    import socket
    import subprocess

    from hpcrnn.config import load_config
    from hpcrnn.data.build import run_preprocess
    from tests.helpers import tiny_config

    cfg = load_config(tiny_config(tmp_path, tiny_corpus))
    cfg.run_dir.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    mine = cfg.run_dir / f".corpus.h5.{socket.gethostname()}-{dead.pid}.tmp"
    mine_map = cfg.run_dir / f".corpus.h5.{socket.gethostname()}-{dead.pid}-map.tmp"  # its token map's copy
    other = cfg.run_dir / f".corpus.h5.node-b-{dead.pid}.tmp"  # another node's live build: never ours to reap
    for p in (mine, mine_map, other):
        p.write_text("partial")
    run_preprocess(cfg)
    assert not mine.exists() and not mine_map.exists() and other.exists()
    assert not list(cfg.run_dir.glob(".corpus.h5.*-map.tmp"))  # this run's copy became the token map


# ---- retention: a damaged checkpoint is never deleted


def test_retention_neither_counts_nor_deletes_a_damaged_checkpoint(tmp_path, tiny_corpus):
    from hpcrnn.train import checkpoint as ckpt

    _, cfg = prepared(tmp_path, tiny_corpus, train={"max_steps": 30, "checkpoint_every": 5, "eval_every": 1000})
    run_train(cfg, stop_at(10))
    damaged = cfg.checkpoint_dir / "step-00000005"
    data = bytearray((damaged / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (damaged / "model.pt").write_bytes(bytes(data))
    run_train(cfg)
    names = sorted(p.name for p in cfg.checkpoint_dir.iterdir())
    assert "step-00000005" in names  # kept for inspection
    good = [c.step for c in ckpt.list_complete(cfg.checkpoint_dir, check=True, warn=False)]
    assert good[-2:] == [25, 30]  # keep_last counts verified checkpoints only


def test_a_damaged_checkpoint_in_the_way_of_a_save_is_moved_aside(tmp_path, tiny_corpus):
    from hpcrnn.train import checkpoint as ckpt

    _, cfg = prepared(tmp_path, tiny_corpus, train={"max_steps": 10, "checkpoint_every": 5, "eval_every": 1000})
    run_train(cfg, stop_at(10))
    newest = cfg.checkpoint_dir / "step-00000010"
    (newest / "train_state.pt").write_bytes(b"garbage")  # damaged: resume falls back to step 5
    run_train(cfg)  # trains 5 -> 10 again and saves step 10
    aside = [p for p in cfg.checkpoint_dir.iterdir() if p.name.startswith("step-00000010.replaced-")]
    assert len(aside) == 1 and (aside[0] / "train_state.pt").read_bytes() == b"garbage"
    assert ckpt.latest(cfg.checkpoint_dir).step == 10


# ---- item 6 (generation): a failed output write is exit 4


def test_a_failed_recipe_write_is_a_storage_error(tmp_path, tiny_corpus, monkeypatch):
    import errno

    import pytest

    from hpcrnn.errors import EXIT_STORAGE, StorageError
    from hpcrnn.generate.job import run_generate
    from hpcrnn.run import generated as folder

    _, cfg = prepared(tmp_path, tiny_corpus, train={"max_steps": 3})
    run_train(cfg)

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(folder, "atomic_write_text", full)
    with pytest.raises(StorageError, match=r"recipe-00001\.txt: cannot write: No space left on device") as e:
        run_generate(cfg)
    assert e.value.exit_code == EXIT_STORAGE
