"""Holes an audit found (issue 14) in training and preprocessing, each pinned by a test that failed before."""

from __future__ import annotations

import torch

from hpcrnn.train.loop import run_train
from tests.conftest import prepared, stop_at
from tests.test_train import model_bytes

torch.set_num_threads(1)


def test_resume_with_dataloader_workers_and_dropout_is_bitwise_identical(tmp_path, tiny_corpus):
    """The DataLoader seeded its workers from the global torch RNG, which resume restores: a run stopped at
    step 5 and resumed to 12 ended elsewhere than the uninterrupted run."""
    extra = dict(model={"dropout": 0.2, "layers": 2}, train={"num_workers": 1, "max_steps": 12})
    _, ref = prepared(tmp_path / "ref", tiny_corpus, **extra)
    assert run_train(ref).status == "done"
    _, cfg = prepared(tmp_path / "cut", tiny_corpus, **extra)
    assert run_train(cfg, stop_at(5)).step == 5
    assert run_train(cfg).status == "done"
    assert model_bytes(cfg) == model_bytes(ref)
