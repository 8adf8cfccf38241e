"""What a checkpoint restores besides the weights (TrainState: optimizer, scheduler, scaler, step, best
validation, the carried recurrent state), every RNG's state, and the carried state's rows across ranks."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


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


def cpu_rows(carry):
    if carry is None:
        return None
    return tuple(c.cpu() for c in carry) if isinstance(carry, tuple) else carry.cpu()
