"""Per-rank window batches with a resumable position.

The global batch at training step ``s`` is fully determined by (seed, epoch, position): epoch and position
come from ``divmod(s, batches_per_epoch)``, the epoch's order is a permutation seeded by (seed, epoch) and the
same on every rank, and rank ``r`` of ``W`` takes the r-th contiguous slice of the global batch. So a
checkpoint needs only the step to resume the data exactly, at any world size, and 2 ranks see together
exactly what 1 rank sees. The incomplete last batch of an epoch is dropped so every step has the full
global batch.

Windows are gathered from the token stream held in memory (about 2 bytes a token) with one numpy fancy
index per batch: no per-window copies are ever stored. With ``train.num_workers > 0`` a DataLoader does the
gathering; each worker opens the HDF5 file itself, read-only, after the fork, and ignores the stop signals
(only the trainer's main process decides when to stop).
"""

from __future__ import annotations

import signal

import numpy as np
import torch

from hpcrnn.data.corpus import open_corpus


def gather_windows(tokens: np.ndarray, starts: np.ndarray, window: int) -> torch.Tensor:
    """[b, window + 1] int64 token ids: inputs are [:, :-1], targets [:, 1:]."""
    idx = starts[:, None] + np.arange(window + 1, dtype=np.int64)
    return torch.from_numpy(tokens[idx].astype(np.int64))


class WindowBatches:
    """The ``windows`` mode: independent windows in a seeded order, each from a zero state.

    ``starts``: the window start offsets, an array or a ``range`` (a corpus' windows are ``range(a, b -
    window, stride)`` of its split, ``Corpus.window_range``: then none is held, each is computed). The
    epoch's order is a permutation of window indices, in 4 bytes an entry below 2**31 windows: a rank holds
    4 bytes a window, not the 16 of the starts and their permuted copy."""

    def __init__(self, starts, global_batch: int, rank: int, world: int, seed: int, window: int = 0):
        if global_batch % world:
            raise ValueError(f"global batch {global_batch} is not divisible by world size {world}")
        self.starts = starts if isinstance(starts, range) else np.asarray(starts, dtype=np.int64)
        self.global_batch, self.rank, self.world, self.seed = global_batch, rank, world, seed
        self.window = window
        self.local = global_batch // world
        self._epoch, self._order = -1, None

    @property
    def batches_per_epoch(self) -> int:
        return len(self.starts) // self.global_batch

    def position(self, step: int) -> tuple[int, int]:
        return divmod(step, self.batches_per_epoch)

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's window indices in training order: ``rng.permutation(n)`` of the seed and epoch (the
        same draws shuffling a narrower arange: the order does not depend on the index type)."""
        if epoch != self._epoch:
            n = len(self.starts)
            perm = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
            np.random.default_rng([self.seed, epoch]).shuffle(perm)
            self._order, self._epoch = perm, epoch
        return self._order

    def rank_starts(self, step: int) -> np.ndarray:
        """This rank's window start offsets for global training step ``step``."""
        epoch, pos = self.position(step)
        lo = pos * self.global_batch + self.rank * self.local
        idx = self.order(epoch)[lo : lo + self.local].astype(np.int64)
        if isinstance(self.starts, range):
            return self.starts.start + idx * self.starts.step
        return self.starts[idx]

    def resets(self, step: int) -> bool:
        return True  # every window starts from a zero state

    def rank_batch(self, tokens: np.ndarray, step: int) -> torch.Tensor:
        """This rank's windows for ``step``: [local, window + 1]."""
        return gather_windows(tokens, self.rank_starts(step), self.window)


def ignore_stop_signals(_worker_id: int = 0) -> None:
    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


class _StepDataset(torch.utils.data.Dataset):
    """Item i = this rank's batch for global step i; the HDF5 file is opened lazily in each worker."""

    def __init__(self, h5_path: str, batches):
        self.h5_path, self.batches = h5_path, batches
        self._tokens = None

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, step: int) -> torch.Tensor:
        if self._tokens is None:
            self._tokens = open_corpus(self.h5_path).tokens()
        return self.batches.rank_batch(self._tokens, step)


def batch_iterator(tokens: np.ndarray, batches, start_step: int, num_workers: int = 0, h5_path: str | None = None):
    """Yield this rank's batch of each step from ``start_step`` on, forever (the trainer decides when to
    stop). ``batches``: any mode's batches (``rank_batch(tokens, step)``)."""
    if num_workers == 0:
        step = start_step
        while True:
            yield batches.rank_batch(tokens, step)
            step += 1
    # The loader's own generator: without one it seeds its workers from the global torch RNG, which the
    # trainer restores on resume, so a resumed run's dropout would differ from an uninterrupted one.
    loader = torch.utils.data.DataLoader(
        _StepDataset(h5_path, batches),
        batch_size=None,
        sampler=iter(range(start_step, 1 << 62)),
        num_workers=num_workers,
        worker_init_fn=ignore_stop_signals,
        prefetch_factor=4,
        persistent_workers=False,
        generator=torch.Generator().manual_seed(0),
    )
    yield from loader
