"""Writing checkpoints (the trainer's side of the format in hpcrnn/run/checkpoints.py) and reading back
the training state.

A checkpoint is written into a temporary folder, every file fsynced, the folder renamed to its final name,
and only then marked complete, so a reader never sees a partial one. The index (list, verify, newest,
retain, done) is torch-free in hpcrnn/run/checkpoints.py, the compatibility rules in hpcrnn/run/compat.py,
and loading a trained model in hpcrnn/model/restore.py; their names are re-exported here for the trainer.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from hpcrnn.errors import InputError
from hpcrnn.fsutil import atomic_write_text, fsync_dir, sha256_file
from hpcrnn.model.restore import load_model, load_model_state, open_checked, open_latest
from hpcrnn.run.checkpoints import (
    MARKER,
    CheckpointInfo,
    clean_temporaries,
    latest,
    list_complete,
    resolve,
    retain,
    step_dir_name,
    training_done,
    verify,
)
from hpcrnn.run.compat import check_compatible

__all__ = [
    "MARKER",
    "CheckpointInfo",
    "check_compatible",
    "clean_temporaries",
    "latest",
    "list_complete",
    "load_model",
    "load_model_state",
    "load_train_state",
    "open_checked",
    "open_latest",
    "resolve",
    "retain",
    "save_checkpoint",
    "step_dir_name",
    "training_done",
    "verify",
]

# Called after each file of a checkpoint is written, before the next one. None in production; the fault
# tests set it (tests/slow_checkpoint_train.py) to widen the window in which a kill lands mid-write.
after_file_written: Callable[[Path], None] | None = None


def save_checkpoint(ckpt_dir: Path, step: int, model_state: dict, train_state: dict, meta: dict) -> Path:
    """Write a complete checkpoint for ``step`` and return its folder. Raises OSError (e.g. disk full)
    with nothing left under the final name."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / step_dir_name(step)
    tmp = ckpt_dir / f".tmp-{step_dir_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        meta = dict(meta)
        meta["step"], meta["files"] = step, {}
        # serialise in memory, then write with plain file I/O: a full disk then raises OSError(ENOSPC)
        # (torch.save straight to a file reports it as an opaque RuntimeError), and the checksum comes
        # from the bytes we wrote rather than from reading them back
        for name, obj in (("model.pt", model_state), ("train_state.pt", train_state)):
            buf = io.BytesIO()
            torch.save(obj, buf)
            data = buf.getbuffer()
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            meta["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
            if after_file_written is not None:
                after_file_written(tmp / name)
        with open(tmp / "meta.json", "w") as f:
            f.write(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        _clear_the_way(final)
        os.rename(tmp, final)
        fsync_dir(ckpt_dir)
        atomic_write_text(final / MARKER, sha256_file(final / "meta.json") + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _clear_the_way(final: Path) -> None:
    """A folder of this step is in the way: an unmarked leftover of a killed writer was never a checkpoint
    and goes; a marked one (a damaged checkpoint, or a re-save of the step) is kept, renamed aside, since
    a complete checkpoint is never deleted except by retention."""
    if not final.exists():
        return
    if (final / MARKER).exists():
        os.rename(final, final.with_name(f"{final.name}.replaced-{time.time_ns()}"))
    else:
        shutil.rmtree(final)


def load_train_state(c: CheckpointInfo) -> dict:
    """Tensors and plain values only (weights_only): loading never runs code from a shared folder."""
    try:
        return torch.load(c.path / "train_state.pt", map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise InputError(
            f"{c.path / 'train_state.pt'}: holds objects other than tensors and plain values, which are not "
            f"loaded (they could run code): {str(e).splitlines()[-1][:120]}"
        ) from None
