"""The long-context training modes in the trainer (issue 12): exact resume with the carried state, 1 vs 2
ranks, state resets, and the figures each protocol reports."""

from __future__ import annotations

import pytest
import torch

from hpcrnn.errors import EXIT_REQUEUE
from hpcrnn.fsutil import read_jsonl
from hpcrnn.train import checkpoint as ckpt
from hpcrnn.train.loop import run_train
from tests.helpers import prepared, stop_at, tiny_config
from tests.test_train import _launch_ranks, model_bytes

torch.set_num_threads(1)

# dropout and two layers make the RNG state and the carried (h, c) of both layers matter
MODES = {
    "stream": dict(data={"sequences": "stream", "window": 12}, model={"dropout": 0.2, "layers": 2}),
    "documents": dict(data={"sequences": "documents", "max_len": 16}, model={"dropout": 0.2, "layers": 2}),
    # the pointer's memory is carried state too (checkpointed, split by rank, reset with the stream)
    "stream+pointer": dict(
        data={"sequences": "stream", "window": 12}, model={"dropout": 0.2, "layers": 2, "pointer": 20}
    ),
}


def _steps_per_epoch(cfg) -> int:
    from hpcrnn.data.corpus import open_corpus
    from hpcrnn.train.setup import make_batches

    return make_batches(cfg, open_corpus(cfg.h5_path), 0, 1).batches_per_epoch


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_resume_is_bitwise_identical_between_steps_and_inside_an_epoch(tmp_path, tiny_corpus, mode):
    extra = MODES[mode]
    _, ref = prepared(tmp_path / "ref", tiny_corpus, **extra)
    spe = _steps_per_epoch(ref)
    total = 2 * spe + 3  # crosses two epoch starts, where the stream state resets
    extra = {**extra, "train": {"max_steps": total, "checkpoint_every": 1000}}
    _, ref = prepared(tmp_path / "ref", tiny_corpus, **extra)
    assert run_train(ref).status == "done"
    want = model_bytes(ref)
    for k in (1, spe // 2, spe + 1):  # inside the first epoch, and inside the second
        _, cfg = prepared(tmp_path / f"k{k}", tiny_corpus, **extra)
        r = run_train(cfg, stop_at(k))
        assert (r.status, r.step, r.exit_code) == ("requeue", k, EXIT_REQUEUE)
        assert run_train(cfg).status == "done"
        assert model_bytes(cfg) == want, f"{mode}: resume after step {k} is not bitwise identical"


def test_stream_checkpoint_holds_the_carried_state_of_every_row(tmp_path, tiny_corpus):
    _, cfg = prepared(tmp_path, tiny_corpus, **MODES["stream"])
    run_train(cfg, stop_at(3))
    carry = ckpt.load_train_state(ckpt.latest(cfg.checkpoint_dir))["carry"]
    h, c = carry
    assert h.shape == c.shape == (2, 8, 16)  # layers, global batch rows, hidden
    assert h.abs().sum() > 0


@pytest.mark.slow
def test_stream_state_resets_at_each_epoch_start(tmp_path, tiny_corpus, monkeypatch):
    """The state fed into each step: none at the first step of an epoch, the previous step's otherwise."""
    from hpcrnn.train import loop

    _, cfg = prepared(tmp_path, tiny_corpus, **MODES["stream"])
    spe = _steps_per_epoch(cfg)
    cfg.train.max_steps = spe + 2
    fed = []
    real = loop.lm_loss

    def spy(model, batch, loss_mode, state=None):
        fed.append(state is not None)
        return real(model, batch, loss_mode, state)

    monkeypatch.setattr(loop, "lm_loss", spy)
    run_train(cfg)
    assert fed == [False] + [True] * (spe - 1) + [False, True]


def test_windows_mode_carries_nothing(tmp_path, tiny_corpus, monkeypatch):
    from hpcrnn.train import loop

    _, cfg = prepared(tmp_path, tiny_corpus, train={"max_steps": 4})
    fed = []
    real = loop.lm_loss
    monkeypatch.setattr(loop, "lm_loss", lambda m, b, lm, s=None: (fed.append(s is None), real(m, b, lm, s))[1])
    run_train(cfg)
    assert fed == [True] * 4
    assert ckpt.load_train_state(ckpt.latest(cfg.checkpoint_dir))["carry"] is None


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_two_ranks_match_one_rank_and_resume_at_another_world_size(tmp_path, tiny_corpus, mode):
    # no dropout: each rank draws its own masks, so only the dropout-free runs can match
    extra = {**MODES[mode], "model": {**MODES[mode]["model"], "dropout": 0.0}, "train": {"max_steps": 10}}
    one_path = tiny_config(tmp_path / "one", tiny_corpus, **extra)
    two_path, two = prepared(tmp_path / "two", tiny_corpus, **extra)
    _, one = prepared(tmp_path / "one", tiny_corpus, **extra)
    codes, outs = _launch_ranks(one_path, 1)
    assert codes == [0], outs
    codes, outs = _launch_ranks(two_path, 2)
    assert codes == [0, 0], outs
    a = ckpt.load_model_state(ckpt.latest(one.checkpoint_dir))
    b = ckpt.load_model_state(ckpt.latest(two.checkpoint_dir))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    codes, outs = _launch_ranks(two_path, 1, "train.max_steps=14")
    assert codes == [0], outs
    assert ckpt.latest(two.checkpoint_dir).step == 14


@pytest.mark.parametrize(
    "mode,protocols",
    [("windows", {"windows", "standard"}), ("stream", {"standard"}), ("documents", {"documents", "standard"})],
)
def test_final_figures_name_their_protocol(tmp_path, tiny_corpus, mode, protocols):
    extra = MODES.get(mode, {})
    _, cfg = prepared(tmp_path, tiny_corpus, **{**extra, "train": {"max_steps": 6, "eval_every": 3}})
    r = run_train(cfg)
    finals = [x for x in read_jsonl(cfg.metrics_path) if x.get("final")]
    assert {x["protocol"] for x in finals} == protocols
    assert {x["split"] for x in finals} == {"val", "test"}
    assert all(0 <= x["unk"] <= 1 and x["ppl"] > 1 for x in finals)
    periodic = [x for x in read_jsonl(cfg.metrics_path) if x.get("split") == "val" and not x.get("final")]
    assert periodic and all(x["protocol"] == next(iter(protocols - {"standard"}), "standard") for x in periodic)
    assert r.final["standard"]["test"]["tokens"] > 0 and r.final["test"]["ppl"] > 1


def test_loss_last_needs_windows(tmp_path, tiny_corpus):
    from hpcrnn.config import load_config
    from hpcrnn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"train\.loss.*data\.sequences: stream"):
        load_config(tiny_config(tmp_path, tiny_corpus, data={"sequences": "stream"}, train={"loss": "last"}))
