"""The loop's checkpointing: resume from the newest complete checkpoint, save at a step boundary (rank 0
writes, every rank agrees), and the non-finite-loss guard that keeps a diverged step out of every checkpoint."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hpcrnn import __version__
from hpcrnn.config import Config
from hpcrnn.errors import DivergedError, LockedError, StorageError
from hpcrnn.run.checkpoints import best_of
from hpcrnn.run.lock import RunLock
from hpcrnn.train import checkpoint as ckpt
from hpcrnn.train import distributed as D
from hpcrnn.train.setup import TrainData
from hpcrnn.train.state import TrainState, cpu_rows, rng_state, seed_everything, set_rng_state


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
    lock: RunLock | None = None  # rank 0's run lock: checked still ours before every write
    after_save: Callable[[int], None] | None = None  # rank 0, with the step, after each complete save

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
                from hpcrnn.train.init_from import initial_weights  # noqa: PLC0415 -- reads a run or model file

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
        if cfg.train.early_stop_patience:
            moved = best_on_disk(state, cfg.checkpoint_dir)
            if moved and info.is_main:
                print(f"hpcrnn.train: {moved}", flush=True)
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
        carries = D.all_gather_object(cpu_rows(state.carry))
        path, failed = None, None
        if self.info.is_main:
            try:
                if self.lock is not None:
                    self.lock.check()
                path = self._write(state, rngs, carries, done, val, final or {}, early_stop)
            except (OSError, LockedError) as e:
                failed = e
        ok = D.all_reduce(torch.tensor([0.0 if failed else 1.0]), op=torch.distributed.ReduceOp.MIN)
        if isinstance(failed, LockedError):
            raise failed
        if ok.item() < 1:
            prev = ckpt.latest(self.cfg.checkpoint_dir)
            why = f"{failed.strerror or failed}" if failed else "rank 0 could not write it"
            raise StorageError(
                f"{self.cfg.checkpoint_dir}: cannot write checkpoint {ckpt.step_dir_name(state.step)}: {why}; "
                f"the previous checkpoint {prev.path if prev else '(none)'} is intact"
            )
        if path is not None and self.after_save is not None:
            self.after_save(state.step)
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


def best_on_disk(state: TrainState, ckpt_dir: Path) -> str | None:
    """Early stopping keeps the weights of the best validation, so the best step must have a checkpoint. A
    run trained without early stopping may name a best step that was never saved (or that retention
    deleted): the best becomes the best validated checkpoint on disk, or none (the next validation), and
    the count of validations without a better one starts again. Returns what changed, or None."""
    done = ckpt.list_complete(ckpt_dir, warn=False)
    if state.best_step is None or any(c.step == state.best_step for c in done):
        return None
    old = state.best_step
    best = best_of(done)
    if best is not None:
        state.best_val, state.best_step = float(best.meta["val_loss"]), best.step
        now = f"step {best.step} (val loss {state.best_val:.4f}), the best validated checkpoint"
    else:
        state.best_val = state.best_step = None
        now = "the next validation"
    state.evals_since_best = 0
    return f"early stopping: the best step {old} has no checkpoint to return to; counting from {now}"
