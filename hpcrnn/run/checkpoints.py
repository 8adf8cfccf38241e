"""The torch-free checkpoint index: list, verify, pick the newest, retain, and "has training reached its target".

``<run dir>/checkpoints/step-00000500/`` holds

    model.pt         the model's state_dict (unwrapped from DDP), loadable with plain torch.load
    train_state.pt   optimizer and scheduler states, step, epoch, position in the epoch, the RNG states
                     of every rank (python, numpy, torch, cuda), best val loss, and the grad scaler's
                     state (empty unless the run trains in fp16)
    meta.json        human-readable: step, epoch, time, metrics, resolved config, vocab hash and size,
                     world size, "done" (training reached its target), sha256 and size of each file
    COMPLETE         the completion marker: the sha256 of meta.json, written last

The writer (hpcrnn/train/checkpoint.py) writes into a temporary folder, renames it to its final name and
only then marks it complete. Readers here list marked checkpoints only and verify the checksums before a
checkpoint is used, so a reader never sees a partial one (even while a trainer writes beside it), and a
truncated or flipped file is reported in one line and skipped in favour of the previous checkpoint —
never loaded, never deleted silently.

A reader chooses a checkpoint (``--checkpoint``, ``generate.checkpoint``, ``hpcrnn.load(checkpoint=...)``) by
a step, a folder or a name (``resolve``): ``last`` the newest complete checkpoint (the default), ``best``
the one with the lowest validation loss (meta.json's ``val_loss``: the run's own protocol, the figure
retention keeps it by). A name wins over a file or folder of that name in the current directory
(``./best`` names that one).

Nothing here imports torch: the launcher and ``status`` ask these questions on a login node.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hpcrnn.config import Config
from hpcrnn.errors import InputError
from hpcrnn.fsutil import sha256_file

MARKER = "COMPLETE"
_NAME = re.compile(r"^step-(\d{8,})$")
NAMES = ("best", "last")  # a checkpoint chosen by name (``resolve``)


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


@dataclass
class CheckpointInfo:
    step: int
    path: Path
    meta: dict = field(default_factory=dict)


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
            size = f.stat().st_size
            if size < rec["bytes"]:
                return f"{name} is truncated ({size} of {rec['bytes']} bytes)"
            if size != rec["bytes"]:
                return f"{name} was replaced or appended to ({size} bytes, {rec['bytes']} recorded)"
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
    skipped = []
    found = None
    for p in folders:  # newest first: a long history costs one checksum pass, not one per checkpoint
        why = verify(p)
        if why is None:
            found = CheckpointInfo(int(_NAME.match(p.name).group(1)), p, json.loads((p / "meta.json").read_text()))
            break
        skipped.append((p, "incomplete" if why == "no completion marker" else "corrupt", why))
    # one line for each folder skipped, naming the one used instead: what a reader reads is never a guess
    instead = f"using {found.path.name} (step {found.step}) instead" if found else "no earlier complete checkpoint"
    for p, kind, why in skipped:
        _warn(f"skipping {kind} checkpoint {p}: {why}; {instead}")
    return found


def is_name(which) -> bool:
    """Whether ``which`` chooses a checkpoint by name (``best``, ``last``) rather than by step or path."""
    return isinstance(which, str) and which in NAMES


def names_file(which) -> bool:
    """Whether ``which`` (``generate.checkpoint``) names an existing file, a model file: not a step and not
    a name (``best``/``last`` win over a file so named in the current directory; ``./best`` is the file)."""
    return bool(which) and not str(which).isdigit() and not is_name(which) and Path(which).is_file()


def best_of(cks: list[CheckpointInfo]) -> CheckpointInfo | None:
    """The checkpoint with the lowest validation loss (meta.json's ``val_loss``, the run's own protocol),
    the newest of equals; None when none records one."""
    scored = [c for c in cks if c.meta.get("val_loss") is not None]
    return min(scored, key=lambda c: (c.meta["val_loss"], -c.step)) if scored else None


def retained(good: list[CheckpointInfo], keep_last: int) -> set[Path]:
    """The folders retention keeps of ``good`` (intact checkpoints, oldest first): the newest ``keep_last``,
    the best by validation loss (``best_of``), and the step of the best validation named by the newest
    (``best_step``: early stopping returns to it). The one rule of ``retain`` and ``status --checkpoints``."""
    keep = {c.path for c in good[-keep_last:]}
    top = best_of(good)
    if top is not None:
        keep.add(top.path)
    if good and good[-1].meta.get("best_step") is not None:  # the trainer's best validation (early stopping)
        keep.update(c.path for c in good if c.step == good[-1].meta["best_step"])
    return keep


def best(ckpt_dir: Path) -> CheckpointInfo:
    """The complete checkpoint with the lowest validation loss that verifies (a damaged one is named in one
    line and the next best used). Raises InputError when no complete checkpoint records a validation loss."""
    ckpt_dir = Path(ckpt_dir)
    cks = list_complete(ckpt_dir, warn=False)
    scored = [c for c in cks if c.meta.get("val_loss") is not None]
    what = "records a validation loss" if not scored else "with a validation loss verifies (see above)"
    while scored:
        c = best_of(scored)
        why = verify(c.path)
        if why is None:
            return c
        _warn(f"skipping corrupt checkpoint {c.path}: {why}; choosing the best of the others")
        scored.remove(c)
    if not cks:
        raise InputError(f"{ckpt_dir}: no complete checkpoint (train first)")
    raise InputError(
        f"{ckpt_dir}: no complete checkpoint {what} to choose 'best' by; choose 'last' (the newest) or a "
        f"step ({_complete_steps(ckpt_dir)})"
    )


def resolve(ckpt_dir: Path, which: str | None = None) -> CheckpointInfo:
    """``which``: None or ``last`` (the newest complete checkpoint that verifies), ``best`` (the one with the
    lowest validation loss, see ``best``), a step number, or a checkpoint folder. Raises InputError."""
    ckpt_dir = Path(ckpt_dir)
    if which is None or which == "" or which == "last":
        c = latest(ckpt_dir)
        if c is None:
            raise InputError(f"{ckpt_dir}: no complete checkpoint (train first)")
        return c
    if which == "best":
        return best(ckpt_dir)
    path = ckpt_dir / step_dir_name(int(which)) if str(which).isdigit() else Path(which)
    why = verify(path) if path.exists() else "no such checkpoint"
    if why:
        raise InputError(f"{path}: not a usable checkpoint: {why}; {_complete_steps(ckpt_dir)}")
    meta = json.loads((path / "meta.json").read_text())
    return CheckpointInfo(int(meta["step"]), path, meta)


def _complete_steps(ckpt_dir: Path, show: int = 3) -> str:
    """The steps a reader could ask for instead, on one line: all of them, or the first and last ``show``."""
    steps = [str(c.step) for c in list_complete(ckpt_dir, warn=False)]
    if not steps:
        return "no complete checkpoint (train first)"
    if len(steps) <= 2 * show:
        return f"complete checkpoints: {', '.join(steps)}"
    return f"complete checkpoints ({len(steps)}): {', '.join(steps[:show])}, …, {', '.join(steps[-show:])}"


def retain(ckpt_dir: Path, keep_last: int) -> list[Path]:
    """Delete verified checkpoints beyond the newest ``keep_last`` verified ones, except the best by val
    loss and the step of the best validation named by the newest (the rule: ``retained``). A damaged
    checkpoint (marked, but failing its checksums) neither counts nor is deleted: it stays for inspection,
    as do unmarked folders. Returns what was deleted."""
    good = [c for c in list_complete(ckpt_dir, check=False, warn=False) if verify(c.path) is None]
    keep = retained(good, keep_last)
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
