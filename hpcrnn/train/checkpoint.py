"""The checkpoint format: save, list, verify, load, retain; and what a checkpoint says about its run.

``<run dir>/checkpoints/step-00000500/`` holds

    model.pt         the model's state_dict (unwrapped from DDP), loadable with plain torch.load
    train_state.pt   optimizer and scheduler states, step, epoch, position in the epoch, the RNG states
                     of every rank (python, numpy, torch, cuda), best val loss (files written before the
                     grad-scaler was dropped also hold a "scaler" entry, which readers ignore)
    meta.json        human-readable: step, epoch, time, metrics, resolved config, vocab hash and size,
                     world size, "done" (training reached its target), sha256 and size of each file
    COMPLETE         the completion marker: the sha256 of meta.json, written last

A checkpoint is written into a temporary folder, every file fsynced, the folder renamed to its final name,
and only then marked complete. Readers list marked checkpoints only and verify the checksums before loading,
so a reader never sees a partial one (even while a trainer writes beside it), and a truncated or flipped
file is reported in one line and skipped in favour of the previous checkpoint — never loaded, never
deleted silently.

``training_done`` and ``check_compatible`` are the one rule for "has this run reached its target" and
"does this checkpoint fit this corpus and config", shared by the trainer, the launcher and generation.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hpcrnn.config import Config, ModelConfig
from hpcrnn.errors import InputError
from hpcrnn.fsutil import atomic_write_text, fsync_dir, sha256_file
from hpcrnn.train.model import build_model

MARKER = "COMPLETE"
# Called after each file of a checkpoint is written, before the next one. None in production; the fault
# tests set it (tests/slow_checkpoint_train.py) to widen the window in which a kill lands mid-write.
after_file_written: Callable[[Path], None] | None = None
_NAME = re.compile(r"^step-(\d{8,})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


@dataclass
class CheckpointInfo:
    step: int
    path: Path
    meta: dict = field(default_factory=dict)


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


def verify(path: Path) -> str | None:
    """None if the checkpoint folder is complete and intact, else a short reason."""
    path = Path(path)
    if not (path / MARKER).is_file():
        return "no completion marker"
    if not (path / "meta.json").is_file():
        return "meta.json is missing"
    try:
        want = (path / MARKER).read_text().strip()
        if sha256_file(path / "meta.json") != want:
            return "meta.json does not match its checksum"
        meta = json.loads((path / "meta.json").read_text())
        for name, rec in meta["files"].items():
            f = path / name
            if not f.is_file():
                return f"{name} is missing"
            if f.stat().st_size != rec["bytes"]:
                return f"{name} is truncated ({f.stat().st_size} of {rec['bytes']} bytes)"
            if sha256_file(f) != rec["sha256"]:
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
    why = verify(path) if path.exists() else "not found"
    if why:
        raise InputError(f"{path}: not a usable checkpoint: {why}")
    meta = json.loads((path / "meta.json").read_text())
    return CheckpointInfo(int(meta["step"]), path, meta)


def load_model_state(c: CheckpointInfo, map_location: Any = "cpu") -> dict:
    return torch.load(c.path / "model.pt", map_location=map_location, weights_only=True)


def load_train_state(c: CheckpointInfo) -> dict:
    """Tensors and plain values only (weights_only): loading never runs code from a shared folder."""
    try:
        return torch.load(c.path / "train_state.pt", map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise InputError(
            f"{c.path / 'train_state.pt'}: holds objects other than tensors and plain values, which are not "
            f"loaded (they could run code): {str(e).splitlines()[-1][:120]}"
        ) from None


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
    mcfg = ModelConfig(**c.meta["config"]["model"])
    model = build_model(mcfg, int(c.meta["vocab_size"]))
    model.load_state_dict(load_model_state(c, map_location="cpu"))
    return model.to(device).eval(), c.meta


def retain(ckpt_dir: Path, keep_last: int) -> list[Path]:
    """Delete verified checkpoints beyond the newest ``keep_last`` verified ones, except the best by val
    loss and the step of the best validation named by the newest. A damaged checkpoint (marked, but failing
    its checksums) neither counts nor is deleted: it stays for inspection, as do unmarked folders. Returns
    what was deleted."""
    good = [c for c in list_complete(ckpt_dir, check=False, warn=False) if verify(c.path) is None]
    keep = {c.path for c in good[-keep_last:]}
    scored = [c for c in good if c.meta.get("val_loss") is not None]
    if scored:
        keep.add(min(scored, key=lambda c: (c.meta["val_loss"], -c.step)).path)
    if good and good[-1].meta.get("best_step") is not None:  # the trainer's best validation (early stopping)
        keep.update(c.path for c in good if c.step == good[-1].meta["best_step"])
    gone = []
    for c in good:
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


def open_checked(cfg: Config, corpus, which: str | None = None, device: Any = "cpu"):
    """A complete checkpoint of ``cfg``'s run (the newest, or ``which``) in its own model shape, refused
    unless it was trained on ``corpus`` (vocabulary, size, fingerprint): (info, model, meta). What every
    reader of a finished run (evaluate, export, ``hpcrnn.load``) opens."""
    info, model, meta = open_latest(cfg.checkpoint_dir, which, device)
    check_compatible(
        meta,
        cfg,
        corpus.vocab_hash,
        info.path,
        len(corpus.vocab),
        model_shape=False,
        corpus_fingerprint=corpus.fingerprint,
    )
    return info, model, meta


def check_compatible(
    meta: dict,
    cfg: Config,
    vocab_hash: str,
    path: Path,
    vocab_size: int | None = None,
    model_shape: bool = True,
    corpus_fingerprint: str | None = None,
) -> None:
    """Refuse (InputError, saying which) a checkpoint whose vocabulary is not the corpus' (hash, and size
    when ``vocab_size`` is given) or, with ``model_shape``, whose model shape differs from ``cfg.model``
    (dropout aside: it changes no weight). Generation builds the checkpoint's own shape: model_shape=False."""
    theirs, ours = meta.get("corpus_fingerprint"), corpus_fingerprint
    if theirs and ours and theirs != ours:
        raise InputError(
            f"{path}: checkpoint was trained on corpus {theirs[:12]}, but {cfg.h5_path} is {ours[:12]} "
            f"(rebuilt from changed inputs or settings): give a new run.name to train on it"
        )
    if meta.get("vocab_hash") != vocab_hash:
        raise InputError(
            f"{path}: checkpoint vocabulary {str(meta.get('vocab_hash'))[:12]} does not match "
            f"the corpus {cfg.h5_path} ({vocab_hash[:12]}): use a new run.name or the same data"
        )
    if vocab_size is not None and int(meta.get("vocab_size", -1)) != vocab_size:
        raise InputError(
            f"{path}: checkpoint vocabulary size {meta.get('vocab_size')} != corpus {vocab_size} ({cfg.h5_path})"
        )
    if not model_shape:
        return
    old = meta.get("config", {}).get("model", {})
    diff = [
        f"model.{k}: {old.get(k)!r} -> {v!r}"
        for k, v in cfg.to_dict()["model"].items()
        if k != "dropout" and old.get(k) != v
    ]
    if diff:
        raise InputError(
            f"{path}: checkpoint model shape does not fit the config ({'; '.join(diff)}): use a new run.name"
        )


def training_done(cfg: Config) -> bool:
    """Has this run's training reached the target of ``cfg`` (not only the target it was started with)?
    The newest intact checkpoint must be marked done; then a raised target (max_steps, or epochs with the
    same batch size) continues the run, an unchanged or lowered one is done."""
    c = latest(cfg.checkpoint_dir)
    if not (c and c.meta.get("done")):
        return False
    if c.meta.get("early_stop"):  # stopped for want of a better validation loss: more steps would not help
        return True
    if cfg.train.max_steps:
        return c.step >= cfg.train.max_steps
    old = c.meta.get("config", {}).get("train", {})
    same_plan = not old.get("max_steps") and old.get("batch_size") == cfg.train.batch_size
    return same_plan and old.get("epochs", 0) >= cfg.train.epochs
