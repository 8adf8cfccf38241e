"""What the loop reports while it runs: metrics.jsonl (and TensorBoard), the progress bar or log lines,
and the tokens-per-second pace."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hpcrnn.config import Config
from hpcrnn.errors import StorageError
from hpcrnn.fsutil import append_jsonl
from hpcrnn.progress import use_bar
from hpcrnn.run.lock import RunLock
from hpcrnn.train import distributed as D
from hpcrnn.train.tensorboard import EventLog

_NONE = "–"  # the bar's figure before its first measurement


class Progress:
    """A bar on a terminal; plain periodic lines (step, loss, tokens/s, ETA) in a batch log.

    Between log points the loop reads nothing back (no sync on a GPU): it passes the last logged loss
    (``last_loss``) and a rate of 0 ("not measured"). The bar then shows the last measured figures, and
    "–" before the first one, never ``nan`` or ``0 tok/s``, which would read as a diverged or hung run."""

    def __init__(self, cfg: Config, total: int, enabled: bool):
        mode = cfg.train.progress
        self.bar = enabled and use_bar(mode)
        self.enabled, self.total = enabled, total
        self.last_loss: float | None = None  # shown by the bar between log points; None: none logged yet
        self.last_tps: float | None = None  # the last measured tokens/s

    def update(self, step: int, loss: float | None, tps: float, eta: float, lr: float, force_line: bool) -> None:
        if not self.enabled:
            return
        if tps and tps > 0:
            self.last_tps = tps
        eta_s = time.strftime("%H:%M:%S", time.gmtime(max(eta, 0)))
        if self.bar:
            done = int(30 * min(step, self.total) / max(self.total, 1))
            loss_s = _NONE if loss is None else f"{loss:.3f}"
            tps_s = _NONE if self.last_tps is None else f"{self.last_tps:,.0f}"
            sys.stderr.write(
                f"\r[{'#' * done}{'.' * (30 - done)}] {step}/{self.total} loss {loss_s} {tps_s} tok/s eta {eta_s} "
            )
            sys.stderr.flush()
        elif force_line:
            print(
                f"step {step}/{self.total} loss {loss:.4f} ppl {math.exp(min(loss, 50)):.1f} "
                f"lr {lr:.3g} {tps:,.0f} tok/s eta {eta_s}",
                flush=True,
            )

    def line(self, text: str) -> None:
        if self.enabled:
            if self.bar:
                sys.stderr.write("\n")
            print(text, flush=True)


@dataclass
class MetricsLog:
    """metrics.jsonl, appended by rank 0 only. A failed append is remembered, not raised on rank 0 alone
    (the other ranks would wait for it at the next collective until the process-group timeout):
    ``raise_failure`` raises it on every rank together. Each append also renews the run lock's heartbeat."""

    path: Path
    is_main: bool
    lock: RunLock | None = None
    failure: str = ""
    events: EventLog | None = None  # train.tensorboard: the same records as TensorBoard scalars

    def append(self, **rec) -> None:
        if not self.is_main or self.failure:
            return
        rec.setdefault("time", time.time())
        try:
            append_jsonl(self.path, rec)
        except OSError as e:
            self.failure = f"{self.path}: cannot append metrics: {e.strerror or e}"
            return
        if self.lock:
            self.lock.heartbeat()
        if self.events:
            try:
                self.events.add(rec)
            except OSError as e:  # a view of metrics.jsonl, which is intact: training goes on without it
                print(f"hpcrnn.train: warning: TensorBoard events stop here: {e.strerror or e}", flush=True)
                self.events = None

    def close(self) -> None:
        if self.events:
            self.events.close()

    def raise_failure(self, failed_anywhere: bool) -> None:
        """Every rank calls it with the all-reduced "some rank failed": StorageError on all of them."""
        if failed_anywhere:
            raise StorageError(self.failure or f"{self.path}: rank 0 could not append metrics")

    def agree(self) -> None:
        """Collective: raise a failed append on every rank (used where no step boundary follows)."""
        failed = D.all_reduce(torch.tensor([1.0 if self.failure else 0.0]), op=torch.distributed.ReduceOp.MAX)
        self.raise_failure(failed.item() > 0)


@dataclass
class Pace:
    """The step time (a moving average: ETA and the time-limit check) and the tokens/s since the last log."""

    step_s: float = 0.0
    since: float = field(default_factory=time.time)
    tokens: int = 0

    def tick(self, started: float, tokens: int) -> None:
        took = time.time() - started
        self.step_s = 0.9 * self.step_s + 0.1 * took if self.step_s else took
        self.tokens += tokens

    def tokens_per_s(self) -> float:
        """Supervised tokens a second since the previous call (or the start); starts the next interval."""
        now = time.time()
        tps = self.tokens / max(now - self.since, 1e-9)
        self.since, self.tokens = now, 0
        return tps

    def running_tokens_per_s(self) -> float:
        """Tokens a second so far in the current interval, which goes on (for the bar between log points);
        0.0 ("not measured") before a step of it is done."""
        if not self.tokens:
            return 0.0
        return self.tokens / max(time.time() - self.since, 1e-9)
