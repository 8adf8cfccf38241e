"""train.early_stop_patience: a run ends after N validations without a better loss, keeps the best, is done."""

import json

import pytest
import torch

from hpcrnn.cluster import launch as L
from hpcrnn.cluster.status import collect_status, format_status
from hpcrnn.fsutil import read_jsonl
from hpcrnn.train import checkpoint as ckpt
from hpcrnn.train import loop
from tests.helpers import prepared

torch.set_num_threads(1)


@pytest.fixture
def scripted_val(monkeypatch):
    """The periodic validations (eval_batches > 0) report the given losses in turn; everything else, the
    final full evaluation included, is real."""
    real = loop._evaluate
    losses: list[float] = []

    def fake(run, split, protocol, max_batches=0):
        r = real(run, split, protocol, max_batches)
        if split == "val" and max_batches:
            r = dict(r, loss=losses.pop(0))
        return r

    monkeypatch.setattr(loop, "_evaluate", fake)
    return losses


def test_stops_after_patience_keeps_best_and_is_done(tmp_path, tiny_corpus, scripted_val):
    # validations at steps 5, 10, 15, 20 ...: the best at 10, then three worse ones: stop at step 25
    scripted_val += [5.0, 4.0, 4.5, 4.2, 4.1, 3.0, 3.0, 3.0]
    train = {"max_steps": 100, "eval_every": 5, "checkpoint_every": 7, "early_stop_patience": 3, "keep_last": 2}
    _, cfg = prepared(tmp_path, tiny_corpus, train=train)
    r = loop.run_train(cfg)
    assert (r.status, r.step, r.exit_code) == ("done", 25, 0)
    final = ckpt.latest(cfg.checkpoint_dir)
    assert final.step == 25 and final.meta["done"]
    assert final.meta["early_stop"] == {"step": 25, "best_step": 10, "best_val_loss": 4.0, "patience": 3}
    # the best checkpoint is on disk (written when found, kept by retention) and the final one holds its weights
    steps = [c.step for c in ckpt.list_complete(cfg.checkpoint_dir)]
    assert 10 in steps and steps[-1] == 25
    best = ckpt.resolve(cfg.checkpoint_dir, "10")
    a, b = ckpt.load_model_state(best), ckpt.load_model_state(final)
    assert all(torch.equal(a[k], b[k]) for k in a)
    recs = read_jsonl(cfg.metrics_path)
    assert [x for x in recs if x.get("event") == "early_stop"][0]["best_step"] == 10
    assert max(x["step"] for x in recs if x.get("split") == "train") == 25  # no step after the stop
    assert {x["split"] for x in recs if x.get("final")} == {"val", "test"}

    # done for the trainer, the launcher and status: nothing trains again
    assert ckpt.training_done(cfg)
    before = cfg.metrics_path.read_text()
    again = loop.run_train(cfg)
    assert (again.status, again.step) == ("done", 25)
    assert cfg.metrics_path.read_text() == before
    lines: list[str] = []
    res = L.launch(cfg, "debug", ["preprocess", "train"], out=lines.append)
    assert all(not p.run for p in res.plans), lines
    assert cfg.metrics_path.read_text() == before
    s = collect_status(cfg)
    assert s["stages"]["train"]["state"] == "done"
    assert s["checkpoint"]["early_stop"]["best_step"] == 10
    assert "stopped early" in format_status(s)


def test_patience_counts_across_a_resume(tmp_path, tiny_corpus, scripted_val):
    """The count of validations since the best is in the checkpoint: a requeued run stops where an
    uninterrupted one would."""
    from tests.helpers import stop_at

    scripted_val += [5.0, 4.0, 4.5, 4.4, 4.3, 1.0]
    train = {"max_steps": 100, "eval_every": 5, "checkpoint_every": 50, "early_stop_patience": 3}
    _, cfg = prepared(tmp_path, tiny_corpus, train=train)
    r = loop.run_train(cfg, stop_at(17))  # one validation after the best at 10 is behind it
    assert (r.status, r.step) == ("requeue", 17)
    state = ckpt.load_train_state(ckpt.latest(cfg.checkpoint_dir))
    assert (state["best_step"], state["evals_since_best"]) == (10, 1)
    r = loop.run_train(cfg)
    assert (r.status, r.step) == ("done", 25)
    assert json.loads((ckpt.latest(cfg.checkpoint_dir).path / "meta.json").read_text())["early_stop"]["best_step"] == 10


def test_a_new_best_resets_the_count(tmp_path, tiny_corpus, scripted_val):
    scripted_val += [5.0, 6.0, 4.0, 4.5, 3.9, 4.0, 4.1]
    _, cfg = prepared(tmp_path / "a", tiny_corpus, train={"max_steps": 30, "eval_every": 5, "early_stop_patience": 2})
    assert loop.run_train(cfg).step == 30  # never two worse in a row
    assert "early_stop" not in ckpt.latest(cfg.checkpoint_dir).meta
