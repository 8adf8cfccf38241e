"""Training's set-up from the config: threads, the data as the loop reads it (this rank's batches in the
run's mode), the optimizer and its schedule, and the TrainState they make."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from hpcrnn.config import Config
from hpcrnn.data.batches import WindowBatches
from hpcrnn.data.corpus import Corpus, open_corpus
from hpcrnn.data.sequences import DocumentBatches, StreamBatches, document_token_id, split_documents
from hpcrnn.errors import InputError
from hpcrnn.evaluate.metrics import mode_protocol
from hpcrnn.model.rnn import build_model
from hpcrnn.train import distributed as D
from hpcrnn.train.precision import grad_scaler
from hpcrnn.train.state import TrainState, seed_everything


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
        boundary = document_token_id(corpus)
        if boundary is None:  # a data.vocab_from vocabulary without one
            raise InputError(
                f"{cfg.h5_path}: its vocabulary has no end-of-document token (<eor> or <eos>), which "
                f"data.sequences: documents starts every sequence from: use stream or windows"
            )
        starts, ends = split_documents(corpus, "train")
        return DocumentBatches(starts, ends, t.batch_size, t.seed, boundary, rank, world)
    return WindowBatches(corpus.window_range("train"), t.batch_size, rank, world, t.seed, d.window)


def build_state(cfg: Config, info: D.DistInfo, data: TrainData, precision: str = "fp32") -> TrainState:
    """Model, optimizer, scheduler and gradient scaler, seeded identically on every rank (DDP also
    broadcasts rank 0's weights)."""
    seed_everything(cfg.train.seed)
    model = build_model(cfg.model, len(data.corpus.vocab), document_token_id(data.corpus)).to(info.device)
    opt = make_optimizer(cfg, model)
    return TrainState(model, opt, make_scheduler(cfg, opt, data.total), grad_scaler(precision, info.device))
