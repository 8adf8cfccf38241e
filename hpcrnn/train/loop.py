"""The training loop behind `python -m hpcrnn.train CONFIG [key=value ...]`.

``_train`` reads top to bottom: set-up (threads, data, model + optimizer + scheduler as a TrainState, resume
through the Checkpointer), then one loop whose every step boundary is a safe place to stop, evaluate and
checkpoint; the steps of the loop are the functions after it. Stopping never happens inside a signal handler: the
handler sets a flag, and at the next step boundary all ranks agree (an all-reduce) so that every rank stops
at the same step and rank 0 writes one complete checkpoint.

Exit statuses (hpcrnn/errors.py): 0 done; 75 checkpointed on the stop signal or the time limit, requeue
me; 76 checkpointed on SIGTERM, stopped (a cancelled job must not come back); 3 non-finite loss;
4 an output could not be written (disk full): the previous checkpoint is intact.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpcrnn import __version__
from hpcrnn.cli import main_for
from hpcrnn.config import Config, save_resolved
from hpcrnn.data.batches import WindowBatches, batch_iterator
from hpcrnn.data.corpus import Corpus, open_corpus
from hpcrnn.data.sequences import PAD, DocumentBatches, StreamBatches, document_token_id, split_documents
from hpcrnn.errors import EXIT_OK, EXIT_REQUEUE, EXIT_STOPPED, DivergedError, InputError, LockedError, StorageError
from hpcrnn.fsutil import append_jsonl
from hpcrnn.lock import RunLock
from hpcrnn.model.precision import autocast, resolve_precision
from hpcrnn.progress import use_bar
from hpcrnn.train import checkpoint as ckpt
from hpcrnn.train import distributed as D
from hpcrnn.train import heap
from hpcrnn.train.evaluate import Scoring, evaluate_split, mode_protocol
from hpcrnn.train.model import build_model, count_parameters, token_loss
from hpcrnn.train.precision import grad_scaler
from hpcrnn.train.stopflag import FLAG, STOP_REQUEUE, STOP_STOPPED, StopFlag
from hpcrnn.train.tensorboard import EventLog, summary_writer_class

# Called at every step boundary with (step, the stop flag) before the ranks agree on stopping, so it may
# request a stop there: tests stop a run at a chosen step this way.
StepBoundaryHook = Callable[[int, StopFlag], None]


@dataclass
class TrainResult:
    status: str  # done | requeue | stopped
    step: int
    exit_code: int
    checkpoint: Path | None = None
    final: dict = field(default_factory=dict)  # final val/test metrics when done


def total_steps(cfg: Config, batches_per_epoch: int) -> int:
    if cfg.train.max_steps:
        return cfg.train.max_steps
    return max(1, math.ceil(cfg.train.epochs * batches_per_epoch))


def lr_factor(cfg: Config, total: int):
    t = cfg.train
    floor = t.min_lr / t.lr

    def f(step: int) -> float:
        if t.warmup_steps and step < t.warmup_steps and t.schedule != "plateau":
            return (step + 1) / t.warmup_steps
        if t.schedule == "cosine":
            span = max(1, total - t.warmup_steps)
            progress = min(1.0, (step - t.warmup_steps) / span)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return f


def make_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    cls = torch.optim.Adam if t.optimizer == "adam" else torch.optim.AdamW
    return cls(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def make_scheduler(cfg: Config, opt: torch.optim.Optimizer, total: int):
    if cfg.train.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=cfg.train.plateau_factor, patience=cfg.train.plateau_patience, min_lr=cfg.train.min_lr
        )
    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, total))


def lm_loss(model, batch: torch.Tensor, loss_mode: str, state=None):
    """(mean loss, logits, targets, new state). ``all``: every position; ``last``: only the word after the
    window, as the lecture's Keras script (one-hot 50-word windows, LSTM(256)) trains."""
    x, y = batch[:, :-1], batch[:, 1:]
    if loss_mode == "last":
        logits, state = model(x, state, last_only=True)
        y = y[:, -1]
    else:
        logits, state = model(x, state)
        logits, y = logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
    return token_loss(model, logits, y), logits, y, state


def detach_state(state):
    """The carried recurrent state without its history: truncated back-propagation through time."""
    if state is None:
        return None
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def rng_state() -> dict:
    """Every RNG's state as tensors and plain values, so a checkpoint loads with weights_only=True (a
    pickled object in a shared run's checkpoints would run code in whoever resumes it)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    s = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    kind, keys, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Progress:
    """A bar on a terminal; plain periodic lines (step, loss, tokens/s, ETA) in a batch log."""

    def __init__(self, cfg: Config, total: int, enabled: bool):
        mode = cfg.train.progress
        self.bar = enabled and use_bar(mode)
        self.enabled, self.total = enabled, total
        self.last_loss = float("nan")  # shown by the bar between log points

    def update(self, step: int, loss: float, tps: float, eta: float, lr: float, force_line: bool) -> None:
        if not self.enabled:
            return
        eta_s = time.strftime("%H:%M:%S", time.gmtime(max(eta, 0)))
        if self.bar:
            done = int(30 * step / self.total)
            sys.stderr.write(
                f"\r[{'#' * done}{'.' * (30 - done)}] {step}/{self.total} loss {loss:.3f} {tps:,.0f} tok/s eta {eta_s} "
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


# ------------------------------------------------------------------------------------------------ set-up


def configure_torch(cfg: Config) -> None:
    """Threads (train.threads, else Slurm's CPUs per task) and, with train.deterministic, bitwise-repeatable
    kernels."""
    t = cfg.train
    threads = t.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", 0) or 0)
    if threads:
        torch.set_num_threads(threads)
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


@dataclass
class TrainData:
    """The corpus as the loop reads it: the token stream in memory (about 2 bytes a token), this rank's
    batches in the run's mode (data.sequences), the protocol that scores that mode, and the final step."""

    corpus: Corpus
    tokens: np.ndarray
    batches: WindowBatches | StreamBatches | DocumentBatches
    protocol: str
    total: int

    def tokens_of_step(self, step: int, batch_size: int, loss: str) -> int:
        """Target tokens of the global batch of ``step`` (documents vary; padding does not count)."""
        if isinstance(self.batches, DocumentBatches):
            return self.batches.global_tokens(step)
        return batch_size * (self.batches.window if loss == "all" else 1)


def load_data(cfg: Config, info: D.DistInfo) -> TrainData:
    t = cfg.train
    if t.batch_size % info.world_size:
        raise InputError(
            f"{cfg.source}: train.batch_size: {t.batch_size} is not divisible by the {info.world_size} ranks"
        )
    corpus = open_corpus(cfg.h5_path)
    if corpus.window != cfg.data.window:
        raise InputError(
            f"{cfg.h5_path}: built with window {corpus.window}, config says data.window "
            f"{cfg.data.window}: preprocess again"
        )
    batches = make_batches(cfg, corpus, info.rank, info.world_size)
    if batches.batches_per_epoch == 0:
        raise InputError(
            f"{cfg.h5_path}: the train split holds less than one global batch of {t.batch_size} "
            f"{'windows' if cfg.data.sequences == 'windows' else cfg.data.sequences}: lower train.batch_size"
        )
    total = total_steps(cfg, batches.batches_per_epoch)
    return TrainData(corpus, corpus.tokens(), batches, mode_protocol(cfg.data.sequences), total)


def make_batches(cfg: Config, corpus: Corpus, rank: int, world: int):
    """This rank's training batches in the mode of data.sequences (hpcrnn/data/sequences.py)."""
    t, d = cfg.train, cfg.data
    if d.sequences == "stream":
        lo, hi = corpus.split_ranges["train"]
        return StreamBatches(lo, hi, t.batch_size, d.window, rank, world)
    if d.sequences == "documents":
        starts, ends = split_documents(corpus, "train")
        return DocumentBatches(starts, ends, t.batch_size, t.seed, document_token_id(corpus), rank, world)
    return WindowBatches(corpus.windows("train"), t.batch_size, rank, world, t.seed, d.window)


@dataclass
class TrainState:
    """What a checkpoint restores besides the weights: optimizer, scheduler, fp16's gradient scaler, step,
    best val loss (its step, and the validations since: early stopping), and in stream mode the recurrent
    state carried into the next step (this rank's rows of it)."""

    model: torch.nn.Module  # unwrapped: its state_dict loads without DDP
    opt: torch.optim.Optimizer
    sched: Any
    scaler: torch.amp.GradScaler | None = None  # enabled for fp16 only
    step: int = 0
    best_val: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    carry: Any = None  # stream mode: (h, c) or h, [layers, local rows, hidden]; None: a zero state

    def state_dict(self, batches, rngs: list[dict], carries: list) -> dict:
        """The train_state.pt content; ``rngs`` and ``carries``: every rank's, in rank order."""
        epoch, pos = batches.position(self.step)
        return {
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "step": self.step,
            "epoch": epoch,
            "position": pos,
            "rng": rngs,
            "best_val": self.best_val,
            "best_step": self.best_step,
            "evals_since_best": self.evals_since_best,
            "carry": join_rows(carries),
            # a disabled scaler's state is empty, and an empty state does not load into an enabled one
            "scaler": self.scaler.state_dict() if self.scaler is not None and self.scaler.is_enabled() else {},
        }

    def load_state_dict(self, state: dict, rank: int, world: int, device) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        # an fp16 run's scale; empty when saved in another precision (it then starts afresh)
        if state.get("scaler") and self.scaler is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.best_val = state["step"], state.get("best_val")
        self.best_step, self.evals_since_best = state.get("best_step"), int(state.get("evals_since_best", 0))
        self.carry = rows_of(state.get("carry"), rank, world, device)


def join_rows(carries: list):
    """The global carried state from each rank's rows (rank order), on the CPU; None when none is carried."""
    if any(c is None for c in carries):
        return None
    if isinstance(carries[0], tuple):
        return tuple(torch.cat([c[i] for c in carries], dim=1) for i in range(len(carries[0])))
    return torch.cat(carries, dim=1)


def rows_of(carry, rank: int, world: int, device):
    """This rank's rows of a global carried state: a checkpoint resumes at any world size."""
    if carry is None:
        return None
    if isinstance(carry, tuple):
        return tuple(rows_of(c, rank, world, device) for c in carry)
    n = carry.shape[1] // world
    return carry[:, rank * n : (rank + 1) * n].contiguous().to(device)


def _cpu(carry):
    if carry is None:
        return None
    return tuple(c.cpu() for c in carry) if isinstance(carry, tuple) else carry.cpu()


def build_state(cfg: Config, info: D.DistInfo, data: TrainData, precision: str = "fp32") -> TrainState:
    """Model, optimizer, scheduler and gradient scaler, seeded identically on every rank (DDP also
    broadcasts rank 0's weights)."""
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model, len(data.corpus.vocab), document_token_id(data.corpus)).to(info.device)
    opt = make_optimizer(cfg, model)
    return TrainState(model, opt, make_scheduler(cfg, opt, data.total), grad_scaler(precision, info.device))


# ------------------------------------------------------------------------------------ checkpoints, metrics


def nonfinite_check_every(cfg: Config, device: torch.device) -> int:
    """train.nonfinite_check_every resolved: 0 (auto) is every step on the CPU, where reading the loss costs
    nothing, and every train.log_every steps on CUDA, where the loss is read back for the log anyway."""
    n = cfg.train.nonfinite_check_every
    return n if n else (cfg.train.log_every if device.type == "cuda" else 1)


@dataclass
class FiniteWatch:
    """The non-finite-loss guard without a host sync at every step (on CUDA a sync stalls the queue of
    kernels). Each step's loss is folded into one device tensor, the first step whose loss was not finite
    (-1: none); the host reads it every ``every`` steps, before every checkpoint is written and before the
    final evaluation, so a checkpoint never holds weights trained past a non-finite loss: the run raises
    DivergedError instead, and its newest checkpoint stays the last good one."""

    every: int = 1
    first: torch.Tensor | None = None

    def note(self, loss: torch.Tensor, step: int) -> None:
        """``loss``: that of the step that brought the run to ``step`` (no sync)."""
        bad = torch.isfinite(loss.detach()).logical_not()
        if self.first is None:
            self.first = torch.full((), -1, dtype=torch.int64, device=loss.device)
        self.first = torch.where(bad & (self.first < 0), step, self.first)

    def due(self, step: int, total: int) -> bool:
        return self.every <= 1 or step % self.every == 0 or step >= total

    def read(self) -> int:
        """The first step of this rank whose loss was not finite, -1: none (a host sync)."""
        return -1 if self.first is None else int(self.first.item())


def diverged_error(cfg: Config, state: TrainState, first: int, every: int) -> DivergedError:
    """The one-line DivergedError: the step of the non-finite loss (``first``; -1: another rank's) and,
    when found later (train.nonfinite_check_every), the step where it was found."""
    step = state.step
    at = f"at step {first if first >= 0 else step}"
    if 0 <= first < step:
        at += f" (found at step {step}: train.nonfinite_check_every {every})"
    elif first < 0:
        at += " (on another rank)"
    good = ckpt.latest(cfg.checkpoint_dir)
    return DivergedError(
        f"non-finite loss {at} (lr {state.opt.param_groups[0]['lr']:.3g}); the last good checkpoint is "
        f"{good.path if good else 'none'}: lower train.lr or set train.clip_grad"
    )


@dataclass
class Checkpointer:
    """Resumes from and saves the run's checkpoints. A save is collective: every rank hands in its RNG state
    and learns whether rank 0's write worked, so no rank waits forever for a peer that gave up."""

    cfg: Config
    info: D.DistInfo
    data: TrainData
    last_saved: int | None = None  # the step of the newest checkpoint this run wrote or resumed from
    seconds: float = 0.0  # how long the last save took: the time-limit check leaves room for one
    finite: FiniteWatch = field(default_factory=FiniteWatch)  # read before every save

    def check_finite(self, state: TrainState) -> None:
        """Collective: DivergedError on every rank when any rank has seen a non-finite loss since the start."""
        first = self.finite.read()
        bad = D.all_reduce(torch.tensor([1.0 if first >= 0 else 0.0]), op=torch.distributed.ReduceOp.MAX)
        if bad.item() > 0:
            raise diverged_error(self.cfg, state, first, self.finite.every)

    def resume(self, state: TrainState) -> ckpt.CheckpointInfo | None:
        """Load the newest complete checkpoint into ``state`` and set this rank's RNG streams; None when the
        run starts afresh. Raises InputError when the checkpoint does not fit the corpus or config."""
        cfg, info = self.cfg, self.info
        if info.is_main:
            ckpt.clean_temporaries(cfg.checkpoint_dir)
        D.barrier()
        last = ckpt.latest(cfg.checkpoint_dir)
        rank_seed = cfg.train.seed + 1000003 * info.rank  # per-rank dropout streams
        if last is None:
            if cfg.train.init_from:  # a new run starts from another run's (or a model file's) weights
                from hpcrnn.api import initial_weights  # noqa: PLC0415

                state.model.load_state_dict(initial_weights(cfg, self.data.corpus))
            seed_everything(rank_seed)
            return None
        corpus = self.data.corpus
        ckpt.check_compatible(
            last.meta, cfg, corpus.vocab_hash, last.path, len(corpus.vocab), corpus_fingerprint=corpus.fingerprint
        )
        state.model.load_state_dict(ckpt.load_model_state(last, map_location=info.device))
        saved = ckpt.load_train_state(last)
        state.load_state_dict(saved, info.rank, info.world_size, info.device)
        if len(saved["rng"]) == info.world_size:
            set_rng_state(saved["rng"][info.rank])
        else:  # another world size: data order is step-determined; reseed dropout per rank
            seed_everything(rank_seed + state.step)
        self.last_saved = last.step
        return last

    def save(
        self,
        state: TrainState,
        done: bool = False,
        val: dict | None = None,
        final: dict | None = None,
        early_stop: dict | None = None,
    ):
        """Write the checkpoint of ``state.step``; its folder on rank 0, None on the others. Raises
        StorageError on every rank when the write failed, naming the intact previous checkpoint, and
        DivergedError, writing nothing, when a loss since the start was not finite."""
        self.check_finite(state)
        started = time.time()
        rngs = D.all_gather_object(rng_state())
        carries = D.all_gather_object(_cpu(state.carry))
        path, failed = None, None
        if self.info.is_main:
            try:
                path = self._write(state, rngs, carries, done, val, final or {}, early_stop)
            except OSError as e:
                failed = e
        ok = D.all_reduce(torch.tensor([0.0 if failed else 1.0]), op=torch.distributed.ReduceOp.MIN)
        if ok.item() < 1:
            prev = ckpt.latest(self.cfg.checkpoint_dir)
            why = f"{failed.strerror or failed}" if failed else "rank 0 could not write it"
            raise StorageError(
                f"{self.cfg.checkpoint_dir}: cannot write checkpoint {ckpt.step_dir_name(state.step)}: {why}; "
                f"the previous checkpoint {prev.path if prev else '(none)'} is intact"
            )
        self.last_saved, self.seconds = state.step, time.time() - started
        return path

    def _write(
        self,
        state: TrainState,
        rngs: list,
        carries: list,
        done: bool,
        val: dict | None,
        final: dict,
        early_stop: dict | None = None,
    ) -> Path:
        cfg, data = self.cfg, self.data
        epoch, pos = data.batches.position(state.step)
        meta = {
            "run": cfg.run.name,
            "epoch": epoch,
            "position": pos,
            "done": done,
            "total_steps": data.total,
            "time": time.time(),
            "world_size": self.info.world_size,
            "vocab_hash": data.corpus.vocab_hash,
            "corpus_fingerprint": data.corpus.fingerprint,
            "vocab_size": len(data.corpus.vocab),
            "val_loss": val["loss"] if val else None,
            "best_step": state.best_step,  # retention keeps it
            "config": cfg.to_dict(),
            "final": final,
            "hpcrnn_version": __version__,
        }
        if early_stop:
            meta["early_stop"] = early_stop
        train_state = state.state_dict(data.batches, rngs, carries)
        path = ckpt.save_checkpoint(cfg.checkpoint_dir, state.step, state.model.state_dict(), train_state, meta)
        ckpt.retain(cfg.checkpoint_dir, cfg.train.keep_last)
        return path


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


# ------------------------------------------------------------------------------------------------ the run


def run_train(cfg: Config, on_step_boundary: StepBoundaryHook | None = None) -> TrainResult:
    """Train (or resume) the run of ``cfg``. ``on_step_boundary``: see StepBoundaryHook."""
    flag = FLAG.install(cfg.train.stop_signal)  # early: a signal during set-up still ends in a checkpoint
    info = D.init_distributed(cfg.train.device)
    lock, refused, ok = None, None, False
    try:
        if info.is_main:  # one trainer per run directory, across nodes (hpcrnn/lock.py)
            try:
                lock = RunLock(cfg.run_dir, "train").acquire()
            except LockedError as e:
                refused = e
        held = D.all_reduce(torch.tensor([0.0 if refused else 1.0]), op=torch.distributed.ReduceOp.MIN)
        if refused or held.item() < 1:  # every rank leaves, none waits for a peer that never comes
            raise refused or LockedError(f"{cfg.run_dir}: rank 0 could not take the run lock")
        result = _train(cfg, info, flag, lock, on_step_boundary)
        ok = True
        return result
    finally:
        flag.restore()
        flag.code, flag.reason = 0, ""  # the process-wide flag is spent with this run
        if lock:
            lock.release()
        D.shutdown(together=ok)


@dataclass
class Training:
    """The parts of one training run, as the steps of the loop below use them."""

    cfg: Config
    info: D.DistInfo
    data: TrainData
    state: TrainState
    saver: Checkpointer
    log: MetricsLog
    progress: Progress
    precision: str = "fp32"  # train.precision as this device trains it (hpcrnn/model/precision.py)
    finite: FiniteWatch = field(default_factory=FiniteWatch)  # the non-finite-loss guard (the saver's too)

    def autocast(self):
        return autocast(self.precision, self.info.device)


def _train(
    cfg: Config, info: D.DistInfo, flag: StopFlag, lock: RunLock | None, hook: StepBoundaryHook | None
) -> TrainResult:
    started = time.time()
    configure_torch(cfg)
    precision = resolve_precision(cfg.train.precision, info.device, "train", cfg.source)
    if cfg.train.tensorboard:  # a missing optional package fails now, on every rank, not after set-up
        summary_writer_class(cfg.source)
    data = load_data(cfg, info)
    state = build_state(cfg, info, data, precision)
    finite = FiniteWatch(nonfinite_check_every(cfg, info.device))
    saver = Checkpointer(cfg, info, data, finite=finite)
    last = saver.resume(state)
    if info.is_main:  # the run is ours and its inputs fit: only now does its config.yaml become this one
        save_resolved(cfg)
    if last is not None and last.meta.get("done") and (state.step >= data.total or last.meta.get("early_stop")):
        if info.is_main:
            how = "stopped early" if last.meta.get("early_stop") else "done"
            print(f"hpcrnn.train: {cfg.run.name} already {how} at step {state.step} ({last.path})", flush=True)
        return TrainResult("done", state.step, EXIT_OK, last.path, last.meta.get("final", {}))
    net = _wrap_ddp(state.model, info)
    events = EventLog(cfg.run_dir, state.step, cfg.source) if cfg.train.tensorboard and info.is_main else None
    log = MetricsLog(cfg.metrics_path, info.is_main, lock, events=events)
    run = Training(cfg, info, data, state, saver, log, Progress(cfg, data.total, info.is_main), precision, finite)
    _announce(run, last)
    try:
        return _loop(run, net, flag, started, hook)
    finally:
        log.close()


def _loop(
    run: Training, net: torch.nn.Module, flag: StopFlag, started: float, hook: StepBoundaryHook | None
) -> TrainResult:
    """The loop: every iteration boundary is a safe point to stop."""
    cfg, data, state, saver = run.cfg, run.data, run.state, run.saver
    net.train()
    t = cfg.train
    batches = batch_iterator(data.tokens, data.batches, state.step, t.num_workers, str(cfg.h5_path))
    pace = Pace()
    while True:
        code = _agree_on_stop(run, flag, pace, started, hook)
        if code:
            return _stop(run, code, flag.reason)
        if state.step >= data.total:
            return _finish(run, started)
        step_started = time.time()
        tokens = data.tokens_of_step(state.step, t.batch_size, t.loss)
        loss, logits, y = _optimise(run, net, next(batches))
        run.finite.note(loss, state.step)
        pace.tick(step_started, tokens)
        _log_step(run, pace, loss, logits, y)
        val = _validate(run) if state.step % t.eval_every == 0 and state.step < data.total else None
        # a save (and _finish) first reads the non-finite guard: weights past a non-finite loss are never saved
        if val is not None and t.early_stop_patience:
            if state.evals_since_best >= t.early_stop_patience:
                return _finish(run, started, early_stop=True)
            if state.evals_since_best == 0:  # a new best: on disk, so that early stopping can keep it
                saver.save(state, val=val)
                continue
        if state.step % t.checkpoint_every == 0 and state.step < data.total:
            saver.save(state, val=val)


def _wrap_ddp(model: torch.nn.Module, info: D.DistInfo) -> torch.nn.Module:
    if not info.distributed:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[info.device.index] if info.device.type == "cuda" else None
    )


def _mode_text(cfg: Config) -> str:
    d = cfg.data
    if d.sequences == "documents":
        return f"whole documents in chunks of {d.max_len}"
    return f"{d.window}-token windows" if d.sequences == "windows" else f"streams, {d.window} tokens a step"


def _announce(run: Training, last: ckpt.CheckpointInfo | None) -> None:
    cfg, info, data = run.cfg, run.info, run.data
    if info.is_main:
        run.progress.line(
            f"hpcrnn.train: {cfg.run.name}: {cfg.model.cell.upper()} {cfg.model.layers}x"
            f"{cfg.model.hidden}, {count_parameters(run.state.model):,} parameters, vocab {len(data.corpus.vocab):,}, "
            f"{_mode_text(cfg)}, "
            f"{data.total} steps from step {run.state.step}, "
            f"{info.world_size} rank(s) on {info.device} ({info.launcher})"
            + (", malloc heap tuned" if heap.heap_tuned() else "")
            + (f", resumed from {last.path.name}" if last else "")
        )


def _agree_on_stop(run: Training, flag: StopFlag, pace: Pace, started: float, hook: StepBoundaryHook | None) -> int:
    """The stop code every rank agrees on at this step boundary (0: go on): the flag of any rank, the hook
    or the time budget stops all of them. A non-finite loss on any rank raises DivergedError on all, at the
    first boundary where the guard is read (FiniteWatch: every step on the CPU)."""
    t, step = run.cfg.train, run.state.step
    if hook is not None:
        hook(step, flag)
    if t.time_limit and time.time() - started + 2 * pace.step_s + run.saver.seconds + 5 >= t.time_limit:
        flag.request(STOP_REQUEUE, "time_limit")
    first = run.finite.read() if run.finite.due(step, run.data.total) else -1
    diverged = 1.0 if first >= 0 else 0.0
    agreed = torch.tensor([float(flag.code), diverged, 1.0 if run.log.failure else 0.0], dtype=torch.float64)
    if run.info.distributed:
        D.all_reduce(agreed, op=torch.distributed.ReduceOp.MAX)
    run.log.raise_failure(agreed[2] > 0)
    if agreed[1] > 0:
        raise diverged_error(run.cfg, run.state, first, run.finite.every)
    return int(agreed[0])


def _stop(run: Training, code: int, reason: str) -> TrainResult:
    """Checkpoint (unless this step already has one) and say how the job should end."""
    step = run.state.step
    path = run.saver.save(run.state) if run.saver.last_saved != step else ckpt.latest(run.cfg.checkpoint_dir).path
    status = "stopped" if code == STOP_STOPPED else "requeue"
    run.log.append(event="stop", step=step, reason=reason or "requested", status=status)
    run.log.agree()
    if run.info.is_main:
        run.progress.line(
            f"hpcrnn.train: stopped at step {step} ({reason or 'requested'}), "
            f"checkpoint {path}: {'requeue me' if status == 'requeue' else 'stopped'}"
        )
    return TrainResult(status, step, EXIT_STOPPED if status == "stopped" else EXIT_REQUEUE, path)


def _optimise(run: Training, net: torch.nn.Module, batch: torch.Tensor):
    """One optimisation step on this rank's batch: (loss, logits, targets) of its last forward pass."""
    t, state = run.cfg.train, run.state
    batch = batch.to(run.info.device, non_blocking=True)
    state.opt.zero_grad(set_to_none=True)
    if isinstance(run.data.batches, DocumentBatches):
        loss, logits, y = _documents_backward(run, net, batch)
    else:
        carry = None if run.data.batches.resets(state.step) else state.carry
        with run.autocast():
            loss, logits, y, carry = lm_loss(net, batch, t.loss, carry)
        _backward(run, loss)
        state.carry = detach_state(carry) if run.cfg.data.sequences == "stream" else None
    scaler = state.scaler
    if scaler is not None and scaler.is_enabled():  # fp16: unscaled gradients are clipped, inf/nan steps skipped
        scaler.unscale_(state.opt)
    if t.clip_grad:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), t.clip_grad)
    if scaler is not None and scaler.is_enabled():
        scaler.step(state.opt)
        scaler.update()
    else:
        state.opt.step()
    if t.schedule != "plateau":
        state.sched.step()
    state.step += 1
    return loss, logits, y


def _backward(run: Training, loss: torch.Tensor) -> None:
    scaler = run.state.scaler
    (scaler.scale(loss) if scaler is not None and scaler.is_enabled() else loss).backward()


def _documents_backward(run: Training, net: torch.nn.Module, batch: torch.Tensor):
    """Whole documents in chunks of data.max_len, the state carried (detached) from chunk to chunk, one
    backward per chunk. Each rank's loss is its token-loss sum over the global batch's token count times
    the world size, so DDP's gradient average is the global per-token mean: 2 ranks train what 1 trains.
    Every rank runs as many chunks as the global batch's longest document needs (rows are padded to it),
    so the ranks' gradient all-reduces pair up."""
    chunk, step = run.cfg.data.max_len, run.state.step
    scale = run.info.world_size / max(1, run.data.batches.global_tokens(step))
    starts = list(range(0, batch.shape[1] - 1, chunk))
    state, total, count = None, 0.0, 0
    for i, a in enumerate(starts):
        part = batch[:, a : a + chunk + 1]
        sync = i == len(starts) - 1 or not hasattr(net, "no_sync")
        with contextlib.nullcontext() if sync else net.no_sync(), run.autocast():
            logits, state = net(part[:, :-1].clamp_min(0), state)
            logits = logits.reshape(-1, logits.shape[-1])
            y = part[:, 1:].reshape(-1)
            loss_sum = token_loss(net, logits, y, ignore_index=PAD, reduction="sum")
            _backward(run, loss_sum * scale)
        state = detach_state(state)
        total, count = total + loss_sum.detach(), count + int((y != PAD).sum())
    return total / max(count, 1), logits, y


def _log_step(run: Training, pace: Pace, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
    """At log points a train record and a progress line: the loss is read back only there, keeping the hot
    loop free of syncs on GPU. In between only a terminal bar moves."""
    step, total, progress = run.state.step, run.data.total, run.progress
    eta = (total - step) * pace.step_s
    if step % run.cfg.train.log_every and step != total:
        if progress.bar:
            progress.update(step, progress.last_loss, 0.0, eta, run.state.opt.param_groups[0]["lr"], False)
        return
    lv = loss.item()
    tps = pace.tokens_per_s()
    with torch.no_grad():
        keep = y != PAD
        logits, y = logits[keep], y[keep]
        top5 = logits.float().topk(min(5, logits.shape[-1]), -1).indices
        acc = (top5[:, 0] == y).float().mean().item()
        acc5 = (top5 == y[:, None]).any(-1).float().mean().item()
    lr = run.state.opt.param_groups[0]["lr"]
    epoch = run.data.batches.position(step)[0]
    rec = dict(loss=lv, ppl=math.exp(min(lv, 50)), acc=acc, top5=acc5, tokens_per_s=tps, lr=lr)
    run.log.append(step=step, epoch=epoch, split="train", **rec)
    progress.update(step, lv, tps, eta, lr, force_line=True)
    progress.last_loss = lv


def _evaluate(run: Training, split: str, protocol: str, max_batches: int = 0) -> dict:
    info = run.info
    how = Scoring(info.rank, info.world_size, info.device, D.all_reduce, autocast=run.autocast)
    return evaluate_split(
        run.state.model, run.data.corpus, run.data.tokens, split, protocol, run.cfg, how=how, max_batches=max_batches
    )


def _validate(run: Training) -> dict:
    """The periodic validation, in the run's own protocol: recorded, fed to the plateau schedule, kept as
    the best val loss (and its step) or counted as one more validation without a better one."""
    cfg, state = run.cfg, run.state
    val = _evaluate(run, "val", run.data.protocol, cfg.train.eval_batches)
    if cfg.train.schedule == "plateau":
        state.sched.step(val["loss"])
    if state.best_val is None or val["loss"] < state.best_val:
        state.best_val, state.best_step, state.evals_since_best = val["loss"], state.step, 0
    else:
        state.evals_since_best += 1
    _record_eval(run, "val", val, protocol=run.data.protocol)
    if run.info.is_main:
        run.progress.line(
            f"step {state.step} val loss {val['loss']:.4f} ppl {val['ppl']:.1f} "
            f"acc {val['acc']:.3f} top5 {val['top5']:.3f}"
        )
    return val


def _record_eval(run: Training, split: str, result: dict, **extra) -> None:
    run.log.append(
        step=run.state.step,
        epoch=run.data.batches.position(run.state.step)[0],
        split=split,
        lr=run.state.opt.param_groups[0]["lr"],
        tokens_per_s=None,
        **extra,
        **{k: v for k, v in result.items() if k != "tokens"},
    )


def _restore_best(run: Training) -> dict:
    """Early stopping: load the weights of the best validation into the model (every rank reads the best
    checkpoint, which was written when it was found); what the done checkpoint records about it."""
    state, t = run.state, run.cfg.train
    best = ckpt.resolve(run.cfg.checkpoint_dir, str(state.best_step))
    state.model.load_state_dict(ckpt.load_model_state(best, map_location=run.info.device))
    info = {"step": state.step, "best_step": state.best_step, "best_val_loss": state.best_val}
    info["patience"] = t.early_stop_patience
    run.log.append(event="early_stop", **info)
    if run.info.is_main:
        run.progress.line(
            f"hpcrnn.train: stopping early at step {state.step}: no better validation loss in "
            f"{state.evals_since_best} evaluations; the best ({state.best_val:.4f}) was at step {state.best_step}, "
            f"whose weights the final checkpoint keeps"
        )
    return info


def _finish(run: Training, started: float, early_stop: bool = False) -> TrainResult:
    """Full val and test evaluation in the run's own protocol and in the standard one, then the final
    checkpoint, marked done. ``final[split]`` holds the run's own protocol, ``final["standard"][split]``
    the standard protocol's figures, comparable with published word-LM results. An early stop evaluates
    and saves the best validation's weights (the best checkpoint itself stays too)."""
    run.saver.check_finite(run.state)  # not a word of evaluation for weights past a non-finite loss
    stopped = _restore_best(run) if early_stop else None
    final, standard = {}, {}
    for split in ("val", "test"):
        lo, hi = run.data.corpus.split_ranges[split]
        if hi - lo < 2:
            continue
        for protocol in dict.fromkeys([run.data.protocol, "standard"]):
            r = _evaluate(run, split, protocol)
            if r["tokens"]:
                _record_eval(run, split, r, final=True, protocol=protocol)
                (standard if protocol == "standard" else final)[split] = r
        if run.data.protocol == "standard" and split in standard:
            final[split] = standard[split]
    final["standard"] = standard
    run.log.agree()
    path = run.saver.save(run.state, done=True, val=final.get("val"), final=final, early_stop=stopped)
    if run.info.is_main:
        msg = ", ".join(f"{k} ppl {v['ppl']:.2f} acc {v['acc']:.3f}" for k, v in final.items() if k != "standard")
        took = time.time() - started
        run.progress.line(f"hpcrnn.train: done at step {run.state.step} in {took:.0f} s: {msg}; {path}")
    return TrainResult("done", run.state.step, EXIT_OK, path, final)


def main(argv: list[str] | None = None) -> int:
    code = main_for(
        "hpcrnn.train",
        "Train (or resume) a recurrent language model on the run's HDF5 windows.",
        lambda cfg, args: run_train(cfg),
        argv,
    )
    return D.exit_process(code)  # after a multi-rank run: os._exit (see there)
