"""The long-context batches (stream, documents) and the evaluation protocols, on synthetic streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hpcrnn.config import ModelConfig
from hpcrnn.data.sequences import PAD, DocumentBatches, StreamBatches
from hpcrnn.evaluate.metrics import Scoring, evaluate_documents, evaluate_stream, evaluate_windows
from hpcrnn.model.rnn import build_model


def test_stream_rows_are_contiguous_and_continue_from_step_to_step():
    tokens = np.arange(1000, dtype=np.int32)
    sb = StreamBatches(lo=100, hi=900, rows=4, window=7)
    assert sb.length == 200 and sb.batches_per_epoch == (200 - 1) // 7
    b0, b1 = sb.rank_batch(tokens, 0), sb.rank_batch(tokens, 1)
    assert b0.shape == (4, 8)
    assert b0[:, 0].tolist() == [100, 300, 500, 700]  # each stream starts its own quarter of the split
    assert (b1[:, 0] == b0[:, -1]).all()  # the next step's first input is this step's last target
    last = sb.rank_batch(tokens, sb.batches_per_epoch - 1)
    assert int(last.max()) < 900 and (last[:, -1] < torch.tensor([300, 500, 700, 900])).all()
    assert sb.resets(0) and not sb.resets(1) and sb.resets(sb.batches_per_epoch)
    assert torch.equal(sb.rank_batch(tokens, sb.batches_per_epoch), b0)  # a new epoch starts over


def test_stream_two_ranks_hold_the_rows_of_one():
    tokens = np.arange(5000, dtype=np.int32)
    one = StreamBatches(0, 5000, rows=6, window=10)
    two = [StreamBatches(0, 5000, rows=6, window=10, rank=r, world=2) for r in range(2)]
    for step in (0, 3, 17):
        both = torch.cat([b.rank_batch(tokens, step) for b in two])
        assert torch.equal(both, one.rank_batch(tokens, step))


def _docs(n=50, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 40, size=n)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    tokens = (np.arange(lengths.sum()) % 97 + 3).astype(np.int32)
    return tokens, starts, starts + lengths


def test_document_rows_start_with_the_document_token_then_the_document_then_padding():
    tokens, starts, ends = _docs()
    db = DocumentBatches(starts, ends, rows=5, seed=1, bos=2)
    docs = db.global_docs(0)
    b = db.rank_batch(tokens, 0)
    width = int((ends - starts)[docs].max()) + 1
    assert b.shape == (5, width)
    for row, d in zip(b, docs, strict=True):
        n = ends[d] - starts[d]
        assert row[0] == 2 and row[1 : n + 1].tolist() == tokens[starts[d] : ends[d]].tolist()
        assert (row[n + 1 :] == PAD).all()
    assert db.global_tokens(0) == int((ends - starts)[docs].sum())


def test_document_epochs_cover_each_document_once_and_batch_by_length():
    tokens, starts, ends = _docs(n=400)
    db = DocumentBatches(starts, ends, rows=8, seed=3, bos=2)
    seen = np.concatenate([db.global_docs(s) for s in range(db.batches_per_epoch)])
    assert len(set(seen.tolist())) == len(seen) == 400
    lengths = ends - starts
    widths = [lengths[db.global_docs(s)].max() for s in range(db.batches_per_epoch)]
    padded = sum(widths) * 8
    assert padded < 1.15 * lengths.sum()  # sorted pools keep padding small (random batches: ~1.8x)
    assert not np.array_equal(db.global_docs(0), db.global_docs(db.batches_per_epoch))  # reshuffled


def test_document_two_ranks_hold_the_rows_of_one_padded_alike():
    tokens, starts, ends = _docs(n=64)
    one = DocumentBatches(starts, ends, rows=8, seed=0, bos=2)
    two = [DocumentBatches(starts, ends, rows=8, seed=0, bos=2, rank=r, world=2) for r in range(2)]
    for step in range(one.batches_per_epoch):
        assert torch.equal(torch.cat([b.rank_batch(tokens, step) for b in two]), one.rank_batch(tokens, step))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig(cell="lstm", hidden=16, embedding=8, layers=2), 100).eval()


def test_standard_protocol_does_not_depend_on_the_chunk_length(model):
    tokens = (np.arange(3000) * 7 % 100).astype(np.int32)
    a = evaluate_stream(model, tokens, 100, 2900, chunk=1000)
    b = evaluate_stream(model, tokens, 100, 2900, chunk=13)
    assert a["tokens"] == b["tokens"] == 10 * (2800 // 10 - 1)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["acc"] == b["acc"]


def test_standard_protocol_over_two_ranks_sums_to_one(model):
    tokens = (np.arange(3000) * 7 % 100).astype(np.int32)
    one = evaluate_stream(model, tokens, 0, 3000)
    parts = [evaluate_stream(model, tokens, 0, 3000, how=Scoring(rank=r, world=2)) for r in range(2)]
    assert sum(p["tokens"] for p in parts) == one["tokens"]
    loss = sum(p["loss"] * p["tokens"] for p in parts) / one["tokens"]
    assert loss == pytest.approx(one["loss"], rel=1e-6)


def test_padding_changes_neither_loss_nor_accuracy(model):
    """Each document alone (no padding) and all of them batched by length (padded) score the same."""
    tokens, starts, ends = _docs(n=30)
    alone = [
        evaluate_documents(model, tokens, starts[i : i + 1], ends[i : i + 1], bos=2, batch=1, chunk=16)
        for i in range(30)
    ]
    batched = evaluate_documents(model, tokens, starts, ends, bos=2, batch=30, chunk=16)
    n = sum(r["tokens"] for r in alone)
    assert batched["tokens"] == n == int((ends - starts).sum())
    assert batched["loss"] == pytest.approx(sum(r["loss"] * r["tokens"] for r in alone) / n, rel=1e-5)
    assert batched["acc"] == pytest.approx(sum(r["acc"] * r["tokens"] for r in alone) / n, abs=1e-9)


def test_windows_protocol_scores_each_window_from_zero(model):
    tokens = (np.arange(500) % 100).astype(np.int32)
    r = evaluate_windows(model, tokens, np.array([0, 50, 100]), window=10, batch=2, how=Scoring(unk_id=0))
    assert r["tokens"] == 30 and 0 <= r["unk"] <= 1 and r["ppl"] > 1
