"""The checkpoint format: save, list, verify, load, retain.

``<run dir>/checkpoints/step-00000500/`` holds

    model.pt         the model's state_dict (unwrapped from DDP), loadable with plain torch.load
    train_state.pt   optimizer, scheduler and grad-scaler states, step, epoch, position in the epoch,
                     the RNG states of every rank (python, numpy, torch, cuda), best val loss
    meta.json        human-readable: step, epoch, time, metrics, resolved config, vocab hash and size,
                     world size, "done" (training reached its target), sha256 and size of each file
    COMPLETE         the completion marker: the sha256 of meta.json, written last

A checkpoint is written into a temporary folder, every file fsynced, the folder renamed to its final name,
and only then marked complete. Readers list marked checkpoints only and verify the checksums before loading,
so a reader never sees a partial one (even while a trainer writes beside it), and a truncated or flipped
file is reported in one line and skipped in favour of the previous checkpoint — never loaded, never
deleted silently.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hpcrnn.errors import InputError
from hpcrnn.fsutil import atomic_write_text, fsync_dir

MARKER = "COMPLETE"
_SLOW = float(os.environ.get("HPCRNN_FAULT_SLOW_CHECKPOINT", "0") or 0)
_NAME = re.compile(r"^step-(\d{8,})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


@dataclass
class CheckpointInfo:
    step: int
    path: Path
    meta: dict = field(default_factory=dict)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
            if _SLOW:  # fault-injection point: widen the window in which a kill lands mid-write (tests)
                time.sleep(_SLOW)
        with open(tmp / "meta.json", "w") as f:
            f.write(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        if final.exists():  # an unmarked leftover of a killed writer, or a re-save of the same step
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(ckpt_dir)
        atomic_write_text(final / MARKER, _sha256(final / "meta.json") + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def verify(path: Path) -> str | None:
    """None if the checkpoint folder is complete and intact, else a short reason."""
    path = Path(path)
    if not (path / MARKER).is_file():
        return "no completion marker"
    if not (path / "meta.json").is_file():
        return "meta.json is missing"
    try:
        want = (path / MARKER).read_text().strip()
        if _sha256(path / "meta.json") != want:
            return "meta.json does not match its checksum"
        meta = json.loads((path / "meta.json").read_text())
        for name, rec in meta["files"].items():
            f = path / name
            if not f.is_file():
                return f"{name} is missing"
            if f.stat().st_size != rec["bytes"]:
                return f"{name} is truncated ({f.stat().st_size} of {rec['bytes']} bytes)"
            if _sha256(f) != rec["sha256"]:
                return f"{name} does not match its checksum"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable ({e.__class__.__name__}: {e})"
    return None


def _warn(msg: str) -> None:
    print(f"hpcrnn: warning: {msg}", file=sys.stderr, flush=True)


def list_complete(ckpt_dir: Path, check: bool = False, warn: bool = True) -> list[CheckpointInfo]:
    """Marked checkpoints, oldest first. With ``check`` every one is verified and the corrupt ones are
    reported (one line each) and left out — but left on disk for a person to look at."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    out = []
    for p in sorted(ckpt_dir.iterdir()):
        m = _NAME.match(p.name)
        if not m or not (p / MARKER).is_file():
            continue
        if check:
            why = verify(p)
            if why:
                if warn:
                    _warn(f"skipping corrupt checkpoint {p}: {why}")
                continue
        try:
            meta = json.loads((p / "meta.json").read_text())
        except (OSError, ValueError):
            if warn and not check:
                _warn(f"skipping checkpoint {p}: meta.json unreadable")
            continue
        out.append(CheckpointInfo(int(m.group(1)), p, meta))
    out.sort(key=lambda c: c.step)
    return out


def latest(ckpt_dir: Path) -> CheckpointInfo | None:
    """The newest complete checkpoint that verifies, or None. Newer folders that are incomplete or
    corrupt are reported in one line each and skipped (left on disk)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    folders = sorted((p for p in ckpt_dir.iterdir() if _NAME.match(p.name)), reverse=True)
    for p in folders:  # newest first: a long history costs one checksum pass, not one per checkpoint
        why = verify(p)
        if why is None:
            return CheckpointInfo(int(_NAME.match(p.name).group(1)), p, json.loads((p / "meta.json").read_text()))
        kind = "incomplete" if why == "no completion marker" else "corrupt"
        _warn(f"skipping {kind} checkpoint {p}: {why}")
    return None


def resolve(ckpt_dir: Path, which: str | None = None) -> CheckpointInfo:
    """``which``: None (newest complete), a step number, or a checkpoint folder. Raises InputError."""
    if which is None or which == "":
        c = latest(ckpt_dir)
        if c is None:
            raise InputError(f"{ckpt_dir}: no complete checkpoint (train first)")
        return c
    path = ckpt_dir / step_dir_name(int(which)) if str(which).isdigit() else Path(which)
    why = verify(path)
    if why:
        raise InputError(f"{path}: not a usable checkpoint: {why}")
    meta = json.loads((path / "meta.json").read_text())
    return CheckpointInfo(int(meta["step"]), path, meta)


def load_model_state(c: CheckpointInfo, map_location: Any = "cpu") -> dict:
    return torch.load(c.path / "model.pt", map_location=map_location, weights_only=True)


def load_train_state(c: CheckpointInfo) -> dict:
    # our own file, holding numpy/python RNG states: not weights_only
    return torch.load(c.path / "train_state.pt", map_location="cpu", weights_only=False)


def open_latest(ckpt_dir: Path, which: str | None = None, device: Any = "cpu", tries: int = 5):
    """``resolve`` + ``load_model`` for a reader running beside a trainer: if the checkpoint it picked is
    deleted by the trainer's retention before it is read, pick again. Returns (info, model, meta)."""
    for attempt in range(tries):
        c = resolve(Path(ckpt_dir), which)
        try:
            model, meta = load_model(c, device)
            return c, model, meta
        except FileNotFoundError:
            if which or attempt == tries - 1:
                raise InputError(f"{c.path}: checkpoint vanished while being read") from None
    raise AssertionError("unreachable")


def load_model(c: CheckpointInfo, device: Any = "cpu"):
    """The trained model of a checkpoint, in eval mode, and its meta."""
    from hpcrnn.config import ModelConfig
    from hpcrnn.train.model import build_model

    mcfg = ModelConfig(**c.meta["config"]["model"])
    model = build_model(mcfg, int(c.meta["vocab_size"]))
    model.load_state_dict(load_model_state(c, map_location="cpu"))
    return model.to(device).eval(), c.meta


def retain(ckpt_dir: Path, keep_last: int) -> list[Path]:
    """Delete complete checkpoints beyond the newest ``keep_last`` except the best by val loss.
    Corrupt and unmarked folders are never touched here. Returns what was deleted."""
    complete = list_complete(ckpt_dir, check=False, warn=False)
    keep = {c.path for c in complete[-keep_last:]}
    scored = [c for c in complete if c.meta.get("val_loss") is not None]
    if scored:
        keep.add(min(scored, key=lambda c: (c.meta["val_loss"], -c.step)).path)
    gone = []
    for c in complete:
        if c.path not in keep:
            # unmark first: a crash mid-delete leaves an unmarked (ignored) folder, never a half one
            (c.path / MARKER).unlink(missing_ok=True)
            shutil.rmtree(c.path, ignore_errors=True)
            gone.append(c.path)
    return gone


def clean_temporaries(ckpt_dir: Path) -> None:
    """Remove ``.tmp-*`` folders left by a killed writer (only one trainer holds a run: see lock.py)."""
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.is_dir():
        for p in ckpt_dir.glob(".tmp-step-*"):
            shutil.rmtree(p, ignore_errors=True)
