"""Held-out figures, shared by training's validation, the evaluate command and the API: loss, perplexity,
top-1/top-5 next-word accuracy and the <unk> rate of a split.

Three ways to read a split, each sharded over the ranks and summed with one all-reduce:

- ``windows``: the lecture's independent windows (each from a zero state), in order;
- ``documents``: every document from its start, preceded by the end-of-document token, in chunks with
  the state carried, padding ignored;
- ``standard``: the protocol of published word-LM results (Zaremba et al.; pytorch/examples
  ``word_language_model``): the split read in order as ``STANDARD_STREAMS`` parallel contiguous streams,
  the recurrent state carried from chunk to chunk. Its figures compare with published tables; with a
  carried state the chunk length changes nothing but speed. A split or text under
  ``STANDARD_STREAMS * STANDARD_MIN_STREAM`` tokens is read as fewer streams of ``STANDARD_MIN_STREAM``
  tokens or more (one stream, every token after the first scored, under twice that).

Every position is scored with the loss ``all`` (the next word everywhere); a ``windows`` run trained with
``loss: last`` is scored on the last word of each window, as it was trained.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hpcrnn.data.corpus import encode_file
from hpcrnn.data.sequences import PAD, document_token_id, gather_rows, pad_documents, split_documents
from hpcrnn.errors import InputError
from hpcrnn.progress import Meter, use_bar

STANDARD_STREAMS = 10  # parallel streams of the standard protocol (pytorch/examples' eval batch size)
STANDARD_CHUNK = 256  # tokens per forward pass; the state is carried, so this sets only speed and memory
# tokens of a stream at least: a shorter split or text is read as fewer streams (one below 2 x 256 tokens,
# every token after the first scored), so each stream's cold start (its first token unscored, the next
# ones read from a zero state) stays a small part of it; a split of 2,560 tokens or more has all 10
STANDARD_MIN_STREAM = 256


class Sums:
    """Running sums of a split's figures; ``reduce`` (an all-reduce) makes them global."""

    def __init__(self, unk_id: int | None = None):
        self.t = torch.zeros(5, dtype=torch.float64)  # loss*n, correct1, correct5, n, unk targets
        self.unk_id = unk_id

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        """logits [N, V], targets [N] (PAD positions are ignored)."""
        keep = y != PAD
        if not bool(keep.all()):
            logits, y = logits[keep], y[keep]
        n = y.numel()
        if n == 0:
            return
        logits = logits.float()
        loss = F.cross_entropy(logits, y, reduction="sum")
        top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        unk = int((y == self.unk_id).sum()) if self.unk_id is not None else 0
        self.t += torch.tensor(
            [loss.item(), (top5[:, 0] == y).sum().item(), (top5 == y[:, None]).any(-1).sum().item(), n, unk],
            dtype=torch.float64,
        )

    def result(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> dict:
        t = reduce(self.t.clone())
        n = max(t[3].item(), 1.0)
        loss = t[0].item() / n
        return {
            "loss": loss,
            "ppl": math.exp(min(loss, 50.0)),
            "acc": t[1].item() / n,
            "top5": t[2].item() / n,
            "unk": t[4].item() / n,
            "tokens": int(t[3].item()),
        }


def _no_reduce(t: torch.Tensor) -> torch.Tensor:
    return t


def _meter(label: str, total: int, rank: int) -> Meter | None:
    """A bar over the ``total`` tokens a split scores, labelled ``label`` ("": none), on rank 0 and only on
    a terminal: a batch log gets no progress from here (the command prints a line per split)."""
    return Meter(label, total, "tokens", mode="bar") if label and rank == 0 and use_bar() else None


@dataclass(frozen=True)
class Scoring:
    """How a split is scored: this rank's share of it, the device, the all-reduce that makes the sums
    global, the ``<unk>`` id (for its rate), and the autocast context of the run."""

    rank: int = 0
    world: int = 1
    device: Any = "cpu"
    reduce: Callable[[torch.Tensor], torch.Tensor] = _no_reduce
    unk_id: int | None = None
    autocast: Callable[[], Any] | None = None

    def ctx(self):
        return self.autocast() if self.autocast is not None else contextlib.nullcontext()


@torch.no_grad()
def evaluate_windows(
    model,
    tokens,
    starts,
    *,
    window: int,
    batch: int,
    loss: str = "all",
    max_batches: int = 0,
    how: Scoring = Scoring(),
    progress: str = "",
) -> dict:
    """Independent windows from a zero state (the ``windows`` mode's own protocol). ``progress``: the
    label of a terminal bar ("": none)."""
    n_batches = math.ceil(len(starts) / batch)
    if max_batches:
        n_batches = min(n_batches, max_batches)
    per = 1 if loss == "last" else window  # tokens scored a window
    meter = _meter(progress, min(len(starts), n_batches * batch) * per, how.rank)
    sums = Sums(how.unk_id)
    for b in range(n_batches):
        mine = np.array_split(starts[b * batch : (b + 1) * batch], how.world)[how.rank]
        if len(mine) == 0:
            continue
        x = gather_rows(tokens, mine, window + 1).to(how.device)
        with how.ctx():
            logits, _ = model(x[:, :-1], last_only=loss == "last")
        y = x[:, -1] if loss == "last" else x[:, 1:].reshape(-1)
        sums.add(logits.reshape(-1, logits.shape[-1]), y)
        if meter:
            meter.update(min(len(starts), (b + 1) * batch) * per)
    if meter:
        meter.finish()
    return sums.result(how.reduce)


@torch.no_grad()
def evaluate_stream(
    model,
    tokens,
    lo: int,
    hi: int,
    *,
    streams: int = STANDARD_STREAMS,
    chunk: int = STANDARD_CHUNK,
    how: Scoring = Scoring(),
    progress: str = "",
) -> dict:
    """The standard protocol: ``tokens[lo:hi]`` as ``streams`` contiguous streams, state carried.
    ``progress``: the label of a terminal bar ("": none)."""
    streams = max(1, min(streams, (hi - lo) // STANDARD_MIN_STREAM))  # a short text: fewer, longer streams
    length = (hi - lo) // streams  # tokens of each stream; every stream predicts its tokens 1..length-1
    rows = np.array_split(np.arange(streams, dtype=np.int64), how.world)[how.rank]
    sums = Sums(how.unk_id)
    if len(rows) == 0 or length < 2:
        return sums.result(how.reduce)
    meter = _meter(progress, streams * (length - 1), how.rank)
    state = None
    for a in range(0, length - 1, chunk):
        n = min(chunk, length - 1 - a)
        x = gather_rows(tokens, lo + rows * length + a, n + 1).to(how.device)
        with how.ctx():
            logits, state = model(x[:, :-1], state)
        sums.add(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        if meter:
            meter.update(streams * (a + n))
    if meter:
        meter.finish()
    return sums.result(how.reduce)


@torch.no_grad()
def evaluate_documents(
    model,
    tokens,
    starts,
    ends,
    *,
    bos: int,
    batch: int,
    chunk: int,
    how: Scoring = Scoring(),
    progress: str = "",
) -> dict:
    """Every document from its start, preceded by ``bos``; batched by length, state carried over chunks.
    ``progress``: the label of a terminal bar ("": none)."""
    lengths = np.asarray(ends, dtype=np.int64) - np.asarray(starts, dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    meter = _meter(progress, int(lengths.sum()), how.rank)
    scored = np.cumsum(lengths[order]) if meter else None  # tokens scored once the first i+1 documents are
    sums = Sums(how.unk_id)
    for b in range(0, len(order), batch):
        mine = np.array_split(order[b : b + batch], how.world)[how.rank]
        if len(mine) == 0:
            continue
        width = int(lengths[mine].max()) + 1
        rows = pad_documents(tokens, np.asarray(starts)[mine], lengths[mine], bos, width).to(how.device)
        state = None
        for a in range(0, width - 1, chunk):
            part = rows[:, a : a + chunk + 1]
            with how.ctx():
                logits, state = model(part[:, :-1].clamp_min(0), state)
            sums.add(logits.reshape(-1, logits.shape[-1]), part[:, 1:].reshape(-1))
        if meter:
            meter.update(int(scored[min(b + batch, len(order)) - 1]))
    if meter:
        meter.finish()
    return sums.result(how.reduce)


PROTOCOLS = ("windows", "documents", "standard")


def window_starts(corpus, split: str, window: int) -> np.ndarray:
    """Start offsets of ``split``'s windows of ``window`` tokens: the corpus' own when it was built with that
    window, else laid the same way (every ``window`` tokens inside the split), so that a run trained on
    other sequences can still be scored as the lecture scored its model (``data.window=50``)."""
    if window == corpus.window:
        return corpus.windows(split)
    lo, hi = corpus.split_ranges[split]
    return np.arange(lo, hi - window, window, dtype=np.int64)


def mode_protocol(sequences: str) -> str:
    """The protocol that scores a run in its own training mode (``stream`` is the standard protocol)."""
    return {"windows": "windows", "stream": "standard", "documents": "documents"}[sequences]


def evaluate_split(
    model,
    corpus,
    tokens,
    split: str,
    protocol: str,
    cfg,
    *,
    how: Scoring = Scoring(),
    max_batches: int = 0,
    progress: str = "",
) -> dict:
    """The figures of ``split`` of ``corpus`` by ``protocol`` (windows | documents | standard), in eval mode.
    ``progress``: the label of a bar on a terminal ("": none)."""
    was_training = model.training
    model.eval()
    common = dict(how=dataclasses.replace(how, unk_id=corpus.unk_id), progress=progress)
    try:
        if protocol == "windows":
            return evaluate_windows(
                model,
                tokens,
                window_starts(corpus, split, cfg.data.window),
                window=cfg.data.window,
                batch=cfg.train.batch_size,
                loss=cfg.train.loss,
                max_batches=max_batches,
                **common,
            )
        if protocol == "documents":
            starts, ends = split_documents(corpus, split)
            return evaluate_documents(
                model,
                tokens,
                starts,
                ends,
                bos=document_token_id(corpus),
                batch=cfg.train.batch_size,
                chunk=cfg.data.max_len,
                **common,
            )
        lo, hi = corpus.split_ranges[split]
        return evaluate_stream(model, tokens, lo, hi, **common)
    finally:
        model.train(was_training)


def score_file(model, corpus, path: Path, device: Any = "cpu", progress: str = "") -> dict:
    """The standard protocol's figures of a text file read like ``corpus`` (a Corpus, or a model file's
    Vocabulary: only the vocabulary and the reading settings are used). ``progress``: as evaluate_split's."""
    if not path.is_file():
        raise InputError(f"{path}: not a readable text file (--text)")
    try:
        ids = encode_file(path, corpus)
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    words = ids[
        ~np.isin(ids, [i for i in (corpus.unk_id, corpus.eor_id, corpus.eos_id, corpus.nl_id) if i is not None])
    ]
    if len(words) == 0:
        raise InputError(f"{path}: holds no word the vocabulary of {corpus.path} knows (--text)")
    how = Scoring(unk_id=corpus.unk_id, device=device)
    return evaluate_stream(model, ids, 0, len(ids), how=how, progress=progress)
