"""What the loop reports while it runs: metrics.jsonl (and its views: metrics.csv, TensorBoard, W&B), the
progress bar or log lines, and the pace (tokens and steps a second over the recent steps)."""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hpcrnn.config import Config
from hpcrnn.data.sequences import document_token_id
from hpcrnn.errors import StorageError
from hpcrnn.fsutil import append_jsonl, atomic_write_text, read_jsonl, records_csv
from hpcrnn.progress import clock, use_bar
from hpcrnn.run.lock import RunLock
from hpcrnn.text.detokenize import detokenize
from hpcrnn.train import distributed as D
from hpcrnn.train.tensorboard import EventLog
from hpcrnn.train.wandb_log import WandbLog

_NONE = "–"  # the bar's figure before its first measurement
_BAR_EVERY_S = 0.2  # the bar is redrawn between log points at most this often
RUNNING_DECAY = 0.98  # the running loss's weight of the past, per step: it averages the last ~50 steps
WINDOW_STEPS = 50  # the pace's rates are over the last steps: at most these many ...
WINDOW_S = 60.0  # ... and those that ended in the last minute (at least one step)
CSV_NAME = "metrics.csv"
SAMPLES, SAMPLE_TOKENS, SAMPLE_TEMPERATURE = 2, 80, 0.8  # the recipes sampled at a checkpoint (TensorBoard)


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else (f"{x:.1f}" if x >= 10 else f"{x:.2f}")


class Progress:
    """A bar on a terminal; plain periodic lines (step, running loss, tokens/s, it/s, elapsed, ETA) in a
    batch log, one every train.log_every steps.

    The loss shown is a running loss (``note_loss``: a debiased moving average of the losses the loop
    reads, per step on the CPU, where a read is free, and at log points (and the first step) on a GPU,
    where a read is a sync). The bar shows the last measured figures, and "–" before the first one,
    never ``nan`` or ``0 tok/s``, which would read as a diverged or hung run."""

    def __init__(self, cfg: Config, total: int, enabled: bool):
        mode = cfg.train.progress
        self.bar = enabled and use_bar(mode)
        self.enabled, self.total = enabled, total
        self.last_loss: float | None = None  # the running loss; None: none read yet
        self.last_tps: float | None = None  # the last measured tokens/s
        self.started = time.time()
        self.drawn = 0.0  # when the bar was last drawn
        self.read_step: int | None = None  # the step of the last loss read back
        self._avg = self._weight = 0.0

    def note_loss(self, loss: float, step: int) -> None:
        """Fold the loss read back at ``step`` into the running loss, weighing the past by the steps since
        the previous read, so that the average spans about the same steps however often the loss is read.
        A non-finite loss is not shown (the non-finite guard stops the run)."""
        steps = 1 if self.read_step is None else max(step - self.read_step, 1)
        self.read_step = step
        if not math.isfinite(loss):
            return
        keep = RUNNING_DECAY**steps
        self._avg = keep * self._avg + (1 - keep) * loss
        self._weight = keep * self._weight + (1 - keep)
        self.last_loss = self._avg / self._weight

    def due(self) -> bool:
        """Whether the bar is due a redraw between log points."""
        return self.bar and time.time() - self.drawn >= _BAR_EVERY_S

    def update(
        self,
        step: int,
        loss: float | None,
        tps: float,
        eta: float,
        lr: float,
        force_line: bool,
        ips: float = 0.0,
    ) -> None:
        """Draw the bar (or, with ``force_line``, print a line in a batch log). ``tps``/``ips``: tokens and
        steps a second, 0 when not measured."""
        if not self.enabled:
            return
        if tps and tps > 0:
            self.last_tps = tps
        eta_s, elapsed = clock(eta), clock(time.time() - self.started)
        ips_s = _NONE if not ips or ips <= 0 else _rate(ips)
        if self.bar:
            self.drawn = time.time()
            done = int(30 * min(step, self.total) / max(self.total, 1))
            loss_s = _NONE if loss is None else f"{loss:.3f}"
            tps_s = _NONE if self.last_tps is None else f"{self.last_tps:,.0f}"
            sys.stderr.write(
                f"\r[{'#' * done}{'.' * (30 - done)}] {step}/{self.total} loss {loss_s} {tps_s} tok/s "
                f"{ips_s} it/s elapsed {elapsed} eta {eta_s} "
            )
            sys.stderr.flush()
        elif force_line:
            loss_s = _NONE if loss is None else f"{loss:.4f} ppl {math.exp(min(loss, 50)):.1f}"
            print(
                f"step {step}/{self.total} loss {loss_s} lr {lr:.3g} {tps:,.0f} tok/s {ips_s} it/s "
                f"elapsed {elapsed} eta {eta_s}",
                flush=True,
            )

    def line(self, text: str) -> None:
        if self.enabled:
            if self.bar:
                sys.stderr.write("\n")
            print(text, flush=True)


def _warn(text: str) -> None:
    print(f"hpcrnn.train: warning: {text}", flush=True)


@dataclass
class MetricsLog:
    """metrics.jsonl, appended by rank 0 only. A failed append is remembered, not raised on rank 0 alone
    (the other ranks would wait for it at the next collective until the process-group timeout):
    ``raise_failure`` raises it on every rank together. Each append also renews the run lock's heartbeat.

    Its views, which may fail without stopping training (metrics.jsonl stays the record): metrics.csv,
    rewritten from metrics.jsonl at each checkpoint and at the end; TensorBoard events; a W&B run."""

    path: Path
    is_main: bool
    lock: RunLock | None = None
    failure: str = ""
    events: EventLog | None = None  # train.tensorboard: the same records as TensorBoard scalars
    wandb: WandbLog | None = None  # train.wandb: the same records in Weights & Biases

    @property
    def csv_path(self) -> Path:
        return self.path.with_name(CSV_NAME)

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
                _warn(f"TensorBoard events stop here: {e.strerror or e}")
                self.events = None
        if self.wandb and not self.wandb.add(rec):
            self.wandb = None

    def write_csv(self) -> None:
        """Rewrite metrics.csv from metrics.jsonl (rank 0; atomically, so a spreadsheet never reads half)."""
        if not self.is_main or not self.path.exists():  # nothing recorded yet: no empty metrics.csv either
            return
        try:
            atomic_write_text(self.csv_path, records_csv(read_jsonl(self.path)))
        except OSError as e:
            _warn(f"{self.csv_path}: cannot write: {e.strerror or e}")

    def checkpoint(self, step: int, samples: Callable[[], list[str]] | None = None) -> None:
        """After a checkpoint (rank 0): metrics.csv, and with TensorBoard a few recipes sampled now."""
        self.write_csv()
        if self.events and samples is not None:
            try:
                self.events.add_samples(step, samples())
            except (OSError, RuntimeError) as e:
                _warn(f"no TensorBoard samples at step {step}: {e}")

    def finish(self, step: int) -> None:
        """A finished run: the final figures with the config as hyperparameters (TensorBoard, W&B)."""
        if self.events:
            try:
                self.events.finish(step)
            except OSError as e:
                _warn(f"no TensorBoard hparams: {e.strerror or e}")
        if self.wandb:
            self.wandb.finish(step)

    def close(self) -> None:
        self.write_csv()
        if self.events:
            self.events.close()
        if self.wandb:
            self.wandb.close()

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
    """The step time (a moving average: the time-limit check), the tokens/s since the last log (the train
    record's), and tokens and steps a second over the recent steps (the bar's and the lines')."""

    step_s: float = 0.0
    since: float = field(default_factory=time.time)
    tokens: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=WINDOW_STEPS))  # (end, seconds, tokens)

    def tick(self, started: float, tokens: int) -> None:
        now = time.time()
        took = now - started
        self.step_s = 0.9 * self.step_s + 0.1 * took if self.step_s else took
        self.tokens += tokens
        self.recent.append((now, took, tokens))

    def window(self) -> tuple[float, float]:
        """(tokens/s, steps/s) over the recent steps (the time they took, not the evaluations and saves
        between them); (0.0, 0.0), "not measured", before the first step."""
        if not self.recent:
            return 0.0, 0.0
        last = self.recent[-1][0]
        while len(self.recent) > 1 and last - self.recent[0][0] > WINDOW_S:
            self.recent.popleft()
        took = max(sum(s for _, s, _ in self.recent), 1e-9)
        return sum(n for _, _, n in self.recent) / took, len(self.recent) / took

    def tokens_per_s(self) -> float:
        """Supervised tokens a second since the previous call (or the start); starts the next interval."""
        now = time.time()
        tps = self.tokens / max(now - self.since, 1e-9)
        self.since, self.tokens = now, 0
        return tps

    def running_tokens_per_s(self) -> float:
        """Tokens a second so far in the current interval, which goes on; 0.0 ("not measured") before a
        step of it is done."""
        if not self.tokens:
            return 0.0
        return self.tokens / max(time.time() - self.since, 1e-9)


@torch.no_grad()
def sample_recipes(model, corpus, device, seed: int, n: int = SAMPLES, max_tokens: int = SAMPLE_TOKENS) -> list[str]:
    """``n`` short recipes sampled from ``model`` (``max_tokens`` steps of ``model.step``, cheap), each
    from the end-of-document token as generation starts, with a generator of their own: the training
    RNG streams (and so a resumed run) are untouched."""
    start = document_token_id(corpus)
    start = corpus.unk_id if start is None else start  # a vocabulary without an end-of-document token
    gen = torch.Generator(device=device).manual_seed(seed)
    was = model.training
    model.eval()
    try:
        tok, state, out = torch.full((n,), start, dtype=torch.long, device=device), None, []
        for _ in range(max_tokens):
            logits, state = model.step(tok, state)
            logits = logits.float() / SAMPLE_TEMPERATURE
            logits[:, corpus.unk_id] = -math.inf
            tok = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)[:, 0]
            out.append(tok)
        rows = torch.stack(out, 1).cpu().tolist()
    finally:
        model.train(was)
    return [detokenize(corpus.decode(r[: r.index(start)] if start in r else r), corpus.tokenizer) for r in rows]
