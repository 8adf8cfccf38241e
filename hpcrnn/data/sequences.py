"""Per-rank batches of the long-context training modes (``data.sequences: stream | documents``).

Both read the token stream held in memory through index arrays (no per-sequence copies) and, like the
windows of ``hpcrnn.data.batches``, make the global batch of step ``s`` a function of (seed, epoch,
position) only, so a checkpoint needs only the step (plus, for ``stream``, the carried state) to resume
exactly, at any world size, and rank ``r`` of ``W`` takes the r-th contiguous slice of the global rows.

``stream`` -- truncated back-propagation through time, as in the word-LM literature: a split's tokens are
cut into as many contiguous streams as the global batch has rows; step ``j`` of an epoch takes tokens
``[j*window, (j+1)*window]`` of every stream (the +1 gives the targets), and the trainer carries the
recurrent state from step to step, resetting it where an epoch starts (:meth:`StreamBatches.resets`).

``documents`` -- every row is one document (recipe) from its start, preceded by the end-of-document token
exactly as generation starts, so the model learns what follows a fresh start. Documents are batched by
length (sorted within seeded pools, then the batches shuffled) so padding stays small; a row is padded
to the longest document of the *global* batch with ``PAD`` (ignored by the loss and the metrics). The
trainer runs a batch in chunks of ``data.max_len`` tokens, carrying the state from chunk to chunk, so a
document longer than ``max_len`` continues in the next chunk with its state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

PAD = -100  # a padded position: torch's cross-entropy ignore_index, and never a token id
POOL_BATCHES = 64  # documents are sorted by length within pools of this many batches


def gather_rows(tokens: np.ndarray, starts: np.ndarray, length: int) -> torch.Tensor:
    """[rows, length] int64 tokens starting at each of ``starts``."""
    idx = starts[:, None] + np.arange(length, dtype=np.int64)
    return torch.from_numpy(tokens[idx].astype(np.int64))


@dataclass
class StreamBatches:
    """Contiguous streams over ``tokens[lo:hi]``, ``rows`` of them (the global batch), ``window`` a step."""

    lo: int
    hi: int
    rows: int
    window: int
    rank: int = 0
    world: int = 1

    def __post_init__(self):
        if self.rows % self.world:
            raise ValueError(f"global batch {self.rows} is not divisible by world size {self.world}")
        self.local = self.rows // self.world
        self.length = (self.hi - self.lo) // self.rows  # tokens of each stream; the remainder is dropped

    @property
    def batches_per_epoch(self) -> int:
        return max(0, (self.length - 1) // self.window)

    def position(self, step: int) -> tuple[int, int]:
        return divmod(step, self.batches_per_epoch)

    def resets(self, step: int) -> bool:
        """Does the carried state start from zero at ``step`` (the first step of an epoch)?"""
        return self.position(step)[1] == 0

    def rank_batch(self, tokens: np.ndarray, step: int) -> torch.Tensor:
        """This rank's rows for ``step``: [local rows, window + 1] (inputs [:, :-1], targets [:, 1:])."""
        _, j = self.position(step)
        rows = np.arange(self.rank * self.local, (self.rank + 1) * self.local, dtype=np.int64)
        return gather_rows(tokens, self.lo + rows * self.length + j * self.window, self.window + 1)


@dataclass
class DocumentBatches:
    """Whole documents, ``rows`` a global batch, batched by length; ``starts``/``ends`` of one split."""

    starts: np.ndarray
    ends: np.ndarray
    rows: int
    seed: int
    bos: int  # the end-of-document token that precedes every document, as generation starts
    rank: int = 0
    world: int = 1
    max_tokens: int = 0  # cap on a document's tokens (0: whole documents)

    def __post_init__(self):
        if self.rows % self.world:
            raise ValueError(f"global batch {self.rows} is not divisible by world size {self.world}")
        self.local = self.rows // self.world
        self.starts = np.asarray(self.starts, dtype=np.int64)
        lengths = np.asarray(self.ends, dtype=np.int64) - self.starts
        self.lengths = np.minimum(lengths, self.max_tokens) if self.max_tokens else lengths
        self._epoch, self._batches = -1, None

    @property
    def batches_per_epoch(self) -> int:
        return len(self.starts) // self.rows

    def position(self, step: int) -> tuple[int, int]:
        return divmod(step, self.batches_per_epoch)

    def resets(self, step: int) -> bool:
        return True  # every row starts a document: nothing is carried between steps

    def _epoch_batches(self, epoch: int) -> np.ndarray:
        """[batches, rows] document indices of ``epoch``: shuffled, sorted by length within pools."""
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.starts))
            pool = self.rows * POOL_BATCHES
            for a in range(0, len(order), pool):
                part = order[a : a + pool]
                order[a : a + pool] = part[np.argsort(self.lengths[part], kind="stable")]
            n = self.batches_per_epoch * self.rows
            batches = order[:n].reshape(-1, self.rows)
            self._batches, self._epoch = batches[rng.permutation(len(batches))], epoch
        return self._batches

    def global_docs(self, step: int) -> np.ndarray:
        epoch, pos = self.position(step)
        return self._epoch_batches(epoch)[pos]

    def global_tokens(self, step: int) -> int:
        """Target tokens of the whole global batch: what every rank divides its loss sum by."""
        return int(self.lengths[self.global_docs(step)].sum())

    def rank_batch(self, tokens: np.ndarray, step: int) -> torch.Tensor:
        """[local rows, longest document of the global batch + 1]: ``bos``, the document, then PAD."""
        docs = self.global_docs(step)
        width = int(self.lengths[docs].max()) + 1
        mine = docs[self.rank * self.local : (self.rank + 1) * self.local]
        return pad_documents(tokens, self.starts[mine], self.lengths[mine], self.bos, width)


def pad_documents(tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray, bos: int, width: int) -> torch.Tensor:
    """[len(starts), width] int64: ``bos``, then each document's first ``lengths`` tokens, then PAD."""
    out = np.full((len(starts), width), PAD, dtype=np.int64)
    out[:, 0] = bos
    cols = np.arange(width - 1, dtype=np.int64)
    valid = cols[None, :] < lengths[:, None]
    idx = np.where(valid, starts[:, None] + cols[None, :], 0)
    out[:, 1:] = np.where(valid, tokens[idx].astype(np.int64), PAD)
    return torch.from_numpy(out)


def split_documents(corpus, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) token offsets of the documents of ``split`` (contiguous in the stream)."""
    docs = corpus.documents_of(split)
    starts = corpus.documents()[docs].astype(np.int64)
    lo, hi = corpus.split_ranges[split]
    ends = np.append(starts[1:], hi).astype(np.int64)
    return starts, ends


def document_token_id(corpus) -> int | None:
    """The token that ends (and so precedes) every document: ``<eor>``, or ``<eos>`` for whitespace text;
    None when the vocabulary has neither. The one rule, for training, evaluation and generation."""
    return corpus.eor_id if corpus.eor_id is not None else corpus.eos_id
