"""train.nonfinite_check_every: the non-finite-loss guard read every N steps (no host sync per step on CUDA)
still never lets a checkpoint hold weights trained past a non-finite loss."""

import pytest
import torch

from hpcrnn.errors import DivergedError
from hpcrnn.train import checkpoint as ckpt
from hpcrnn.train import loop
from tests.helpers import prepared

torch.set_num_threads(1)


def poison_loss_at(monkeypatch, k: int) -> None:
    """The training loss of step k (1-based) becomes NaN: its gradients, and from then on the weights, too."""
    real, calls = loop.lm_loss, [0]

    def lm_loss(model, batch, loss_mode, state=None):
        loss, logits, y, state = real(model, batch, loss_mode, state)
        if model.training:
            calls[0] += 1
            if calls[0] == k:
                loss = loss * float("nan")
        return loss, logits, y, state

    monkeypatch.setattr(loop, "lm_loss", lm_loss)


def finite_weights(c) -> bool:
    return all(torch.isfinite(v).all() for v in ckpt.load_model_state(c).values())


@pytest.mark.parametrize(
    "every,checkpoint_every,k,found,newest",
    [
        (4, 10, 13, 16, 10),  # found by the periodic read at 16, three steps on NaN weights; 20 never written
        (5, 2, 7, 8, 6),  # found by the read before the checkpoint of step 8, which is not written
        (1, 5, 7, 7, 5),  # every step (the CPU's default): found at once
    ],
)
def test_non_finite_loss_found_later_leaves_last_good_checkpoint(
    tmp_path, tiny_corpus, monkeypatch, every, checkpoint_every, k, found, newest
):
    _, cfg = prepared(
        tmp_path,
        tiny_corpus,
        train={"nonfinite_check_every": every, "checkpoint_every": checkpoint_every, "eval_every": 100},
    )
    poison_loss_at(monkeypatch, k)
    with pytest.raises(DivergedError) as e:
        loop.run_train(cfg)
    msg = str(e.value)
    assert f"non-finite loss at step {k}" in msg and "\n" not in msg
    assert (f"found at step {found}" in msg) == (found != k)
    good = ckpt.latest(cfg.checkpoint_dir)
    assert good is not None and good.step == newest < k and str(good.path) in msg
    assert ckpt.verify(good.path) is None and finite_weights(good)
    steps = [c.step for c in ckpt.list_complete(cfg.checkpoint_dir)]
    assert max(steps) == newest
    assert not [p for p in cfg.checkpoint_dir.iterdir() if p.name.startswith("step-") and int(p.name[5:13]) >= k]


def test_stop_signal_after_a_non_finite_loss_writes_nothing(tmp_path, tiny_corpus, monkeypatch):
    """A stop (signal, time limit) checkpoints at once: the guard is read first, whatever N is."""
    from tests.helpers import stop_at

    _, cfg = prepared(tmp_path, tiny_corpus, train={"nonfinite_check_every": 50, "checkpoint_every": 5})
    poison_loss_at(monkeypatch, 7)
    with pytest.raises(DivergedError, match="non-finite loss at step 7 .found at step 9"):
        loop.run_train(cfg, stop_at(9))
    assert [c.step for c in ckpt.list_complete(cfg.checkpoint_dir)] == [5]


def test_end_of_training_reads_the_guard(tmp_path, tiny_corpus, monkeypatch):
    """The last steps are checked before the final evaluation and the done checkpoint."""
    _, cfg = prepared(tmp_path, tiny_corpus, train={"nonfinite_check_every": 50, "max_steps": 12})
    poison_loss_at(monkeypatch, 11)
    with pytest.raises(DivergedError, match="at step 11 .found at step 12"):
        loop.run_train(cfg)
    assert max(c.step for c in ckpt.list_complete(cfg.checkpoint_dir)) == 10


def test_auto_reads_every_step_on_cpu_and_at_log_points_on_cuda(tmp_path, tiny_corpus):
    from hpcrnn.config import load_config
    from tests.helpers import tiny_config

    cfg = load_config(tiny_config(tmp_path, tiny_corpus, train={"log_every": 7}))
    assert cfg.train.nonfinite_check_every == 0
    assert loop.nonfinite_check_every(cfg, torch.device("cpu")) == 1
    assert loop.nonfinite_check_every(cfg, torch.device("cuda", 0)) == 7
    cfg.train.nonfinite_check_every = 3
    assert loop.nonfinite_check_every(cfg, torch.device("cpu")) == 3
