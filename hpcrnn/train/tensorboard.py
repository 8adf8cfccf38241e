"""train.tensorboard: the scalars of metrics.jsonl also as TensorBoard events, in <run dir>/tensorboard/.

metrics.jsonl stays the record; this is a view of it for people who watch runs in TensorBoard. Rank 0
writes. A resumed run (a requeue, or a restart after a kill) opens the writer with ``purge_step`` one past
its checkpoint's step: TensorBoard then hides what an earlier attempt logged beyond that step, so the
curves continue without the steps that were trained twice. ``tensorboard`` is an optional extra: asking
for it without the package is a one-line error before training starts.

Besides the scalars (``tags``): the resolved config as text (at the start of each attempt), a few sampled
recipes as text at each checkpoint, and at the end of a finished run the config flattened to
``section.key`` hyperparameters with the final figures as their metrics (TensorBoard's HPARAMS tab).
"""

from __future__ import annotations

import importlib
import json
import math
import shlex
from pathlib import Path
from typing import Any

import yaml

from hpcrnn.errors import ConfigError, StorageError

FOLDER = "tensorboard"
_SKIP = {"step", "time"}  # the x axis and the wall clock, not curves
_FINAL_SKIP = {"epoch", "lr"}  # of the final figures: the same for every split and protocol, not results
_HPARAM_METRICS = ("loss", "ppl", "acc", "top5")  # the final figures the HPARAMS tab compares runs by
_HPARAM_TEXT = 250  # characters of a string hyperparameter kept (a file: prompt is a whole text)


def summary_writer_class(src: str = "") -> type:
    """torch's SummaryWriter; ConfigError when the tensorboard package is missing."""
    try:
        return importlib.import_module("torch.utils.tensorboard").SummaryWriter
    except ImportError:
        raise ConfigError(
            f"{src + ': ' if src else ''}train.tensorboard: true needs the tensorboard package: "
            f"pip install 'hpcrnn[tensorboard]' (or tensorboard), or set train.tensorboard: false"
        ) from None


def tags(rec: dict, protocol: str = "") -> dict[str, float]:
    """A metrics.jsonl record's scalars by tag: ``train/loss``, ``val/ppl``, and for the final figures
    ``final/<split>/<protocol>/acc`` (without ``epoch`` and ``lr``, which are no results). ``protocol``:
    the run's own; its final val figures also continue the ``val/`` curve at the last step. Records
    without a split (events) have none."""
    split = rec.get("split")
    if not split:
        return {}
    final = bool(rec.get("final"))
    prefix = f"final/{split}/{rec.get('protocol') or 'run'}" if final else split
    nums = {k: float(v) for k, v in rec.items() if k not in _SKIP and _finite(v)}
    out = {f"{prefix}/{k}": v for k, v in nums.items() if not (final and k in _FINAL_SKIP)}
    if final and split == "val" and protocol and rec.get("protocol") == protocol:
        out.update({f"val/{k}": v for k, v in nums.items()})
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config mapping as ``section.key`` values: numbers, bools and strings as they are, lists
    as JSON, None left out (TensorBoard's hyperparameters have no null)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, (bool, int, float)):
            out[key] = v
        elif isinstance(v, str):
            out[key] = v if len(v) <= _HPARAM_TEXT else v[:_HPARAM_TEXT] + "…"
        elif v is not None:
            out[key] = json.dumps(v)
    return out


def code_block(text: str) -> str:
    """Text shown verbatim by TensorBoard's markdown text plugin (indented four spaces)."""
    return "\n".join("    " + line for line in text.splitlines())


def logdir_line(run_dir: Path) -> str:
    """The line that tells where the events are and how to look at them."""
    folder = Path(run_dir) / FOLDER
    return f"hpcrnn.train: TensorBoard events in {folder}/: tensorboard --logdir {shlex.quote(str(folder))}"


class EventLog:
    """The run's TensorBoard writer, continuing after ``resume_step``. ``protocol``: the run's own (see
    ``tags``); ``config``: the resolved config (``Config.to_dict()``), as text now, as hparams at the end."""

    def __init__(self, run_dir: Path, resume_step: int, src: str = "", *, protocol: str = "", config=None):
        cls = summary_writer_class(src)
        folder = Path(run_dir) / FOLDER
        self.protocol, self.config = protocol, config
        self.final: dict[str, float] = {}  # the final figures' tags logged by this attempt
        try:  # an output that cannot be written is exit 4 (StorageError), like every other output
            folder.mkdir(parents=True, exist_ok=True)
            self.writer: Any = cls(log_dir=str(folder), purge_step=resume_step + 1)
            if config is not None:
                text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False, allow_unicode=True)
                self.writer.add_text("config", code_block(text), resume_step)
                self.writer.flush()
        except OSError as e:
            raise StorageError(f"{folder}: cannot write TensorBoard events: {e.strerror or e}") from None

    def add(self, rec: dict) -> None:
        step = rec.get("step")
        if step is None:
            return
        for tag, value in tags(rec, self.protocol).items():
            self.writer.add_scalar(tag, value, int(step), walltime=rec.get("time"))
            if tag.startswith("final/") and tag.rsplit("/", 1)[1] in _HPARAM_METRICS:
                self.final[tag] = value
        self.writer.flush()  # a job killed or requeued right after keeps what metrics.jsonl has

    def add_samples(self, step: int, samples: list[str]) -> None:
        """Recipes sampled from the model at ``step`` (a checkpoint), as one text entry."""
        text = "\n\n---\n\n".join(code_block(s) for s in samples if s.strip())
        self.writer.add_text("samples", text or "(empty)", int(step))
        self.writer.flush()

    def finish(self, step: int) -> None:
        """A finished run: the config as hyperparameters, the final figures (already logged as scalars)
        as their metrics, so that the HPARAMS tab compares runs by them."""
        if self.config is None:
            return
        from torch.utils.tensorboard.summary import hparams  # noqa: PLC0415 -- the optional extra, present here

        for summary in hparams(flatten(self.config), dict(self.final)):
            self.writer.file_writer.add_summary(summary, int(step))
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
