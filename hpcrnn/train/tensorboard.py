"""train.tensorboard: the scalars of metrics.jsonl also as TensorBoard events, in <run dir>/tensorboard/.

metrics.jsonl stays the record; this is a view of it for people who watch runs in TensorBoard. Rank 0
writes. A resumed run (a requeue, or a restart after a kill) opens the writer with ``purge_step`` one past
its checkpoint's step: TensorBoard then hides what an earlier attempt logged beyond that step, so the
curves continue without the steps that were trained twice. ``tensorboard`` is an optional extra: asking
for it without the package is a one-line error before training starts.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

from hpcrnn.errors import ConfigError, StorageError

FOLDER = "tensorboard"
_SKIP = {"step", "time"}  # the x axis and the wall clock, not curves


def summary_writer_class(src: str = "") -> type:
    """torch's SummaryWriter; ConfigError when the tensorboard package is missing."""
    try:
        return importlib.import_module("torch.utils.tensorboard").SummaryWriter
    except ImportError:
        raise ConfigError(
            f"{src + ': ' if src else ''}train.tensorboard: true needs the tensorboard package: "
            f"pip install 'hpcrnn[tensorboard]' (or tensorboard), or set train.tensorboard: false"
        ) from None


def tags(rec: dict) -> dict[str, float]:
    """A metrics.jsonl record's scalars by TensorBoard tag: ``train/loss``, ``val/ppl``, and for the final
    figures ``final/<split>/<protocol>/acc``. Records without a split (events) have none."""
    split = rec.get("split")
    if not split:
        return {}
    prefix = f"final/{split}/{rec.get('protocol') or 'run'}" if rec.get("final") else split
    out = {}
    for k, v in rec.items():
        if k in _SKIP or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        out[f"{prefix}/{k}"] = float(v)
    return out


class EventLog:
    """The run's TensorBoard writer, continuing after ``resume_step``."""

    def __init__(self, run_dir: Path, resume_step: int, src: str = ""):
        cls = summary_writer_class(src)
        folder = Path(run_dir) / FOLDER
        try:  # an output that cannot be written is exit 4 (StorageError), like every other output
            folder.mkdir(parents=True, exist_ok=True)
            self.writer: Any = cls(log_dir=str(folder), purge_step=resume_step + 1)
        except OSError as e:
            raise StorageError(f"{folder}: cannot write TensorBoard events: {e.strerror or e}") from None

    def add(self, rec: dict) -> None:
        step = rec.get("step")
        if step is None:
            return
        for tag, value in tags(rec).items():
            self.writer.add_scalar(tag, value, int(step), walltime=rec.get("time"))
        self.writer.flush()  # a job killed or requeued right after keeps what metrics.jsonl has

    def close(self) -> None:
        self.writer.close()
