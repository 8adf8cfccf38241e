"""Turning train.early_stop_patience on when resuming a run whose best validation was never checkpointed:
the run continues and finishes (it used to exit 2 on every retry, re-training the same steps)."""

import torch

from hpcrnn.config import load_config
from hpcrnn.train import checkpoint as ckpt
from hpcrnn.train import loop
from tests.helpers import prepared

torch.set_num_threads(1)


def scripted(monkeypatch, losses):
    """The periodic validations report ``losses`` in turn (the final full evaluation is real)."""
    real = loop._evaluate

    def fake(run, split, protocol, max_batches=0):
        r = real(run, split, protocol, max_batches)
        return dict(r, loss=losses.pop(0)) if split == "val" and max_batches else r

    monkeypatch.setattr(loop, "_evaluate", fake)


def test_resume_with_patience_when_the_best_step_has_no_checkpoint(tmp_path, tiny_corpus, capsys, monkeypatch):
    # validations at steps 2, 4, 6, 8, the best at 2; checkpoints at 6 and 9 only: the best is never on disk
    scripted(monkeypatch, [3.0, 4.0, 4.5, 4.2] + [5.0] * 20)
    train = {"max_steps": 9, "eval_every": 2, "checkpoint_every": 6, "eval_batches": 2}
    cfg_path, cfg = prepared(tmp_path, tiny_corpus, train=train)
    assert loop.run_train(cfg).status == "done"
    last = ckpt.latest(cfg.checkpoint_dir)
    best = ckpt.load_train_state(last)["best_step"]
    assert best == 2 and best not in [c.step for c in ckpt.list_complete(cfg.checkpoint_dir)]

    more = load_config(cfg_path, ["train.max_steps=40", "train.early_stop_patience=1"])
    r = loop.run_train(more)
    assert r.exit_code == 0 and r.status == "done", r
    assert f"the best step {best} has no checkpoint to return to" in capsys.readouterr().out
    final = ckpt.latest(cfg.checkpoint_dir)
    assert final.meta["done"]
    if final.meta.get("early_stop"):  # it returned to a best that is on disk
        assert final.meta["early_stop"]["best_step"] in [c.step for c in ckpt.list_complete(cfg.checkpoint_dir)]
