"""train.tensorboard: metrics.jsonl's scalars as TensorBoard events; a resumed run does not repeat steps."""

import shutil
import sys

import pytest
import torch

from hpcrnn.errors import ConfigError
from hpcrnn.fsutil import read_jsonl
from hpcrnn.train import checkpoint as ckpt
from hpcrnn.train import loop
from hpcrnn.train.tensorboard import FOLDER, tags
from tests.helpers import prepared, run_python, stop_at, tiny_config

torch.set_num_threads(1)
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(run_dir / FOLDER), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_events_hold_the_metrics_scalars(tmp_path, tiny_corpus):
    _, cfg = prepared(tmp_path, tiny_corpus, train={"tensorboard": True})
    assert loop.run_train(cfg).status == "done"
    got = scalars(cfg.run_dir)
    recs = read_jsonl(cfg.metrics_path)
    want: dict[str, list[tuple[int, float]]] = {}
    for r in recs:
        for tag, v in tags(r, "windows").items():  # the final validation also ends the val curve
            want.setdefault(tag, []).append((r["step"], v))
    assert set(got) == set(want)
    assert {"train/loss", "train/ppl", "train/acc", "train/lr", "train/tokens_per_s", "val/loss"} <= set(got)
    assert "final/test/standard/ppl" in got
    for tag, series in want.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in series], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in series], rel=1e-6), tag
    assert [s for s, _ in got["train/loss"]] == [5, 10, 15, 20, 24]


def test_a_resumed_run_continues_the_curves_without_repeating_steps(tmp_path, tiny_corpus):
    """A job killed after logging past its last checkpoint trains those steps again: metrics.jsonl then
    holds them twice, TensorBoard once (the resumed attempt's)."""
    _, cfg = prepared(tmp_path, tiny_corpus, train={"tensorboard": True, "checkpoint_every": 10})
    assert loop.run_train(cfg, stop_at(17)).status == "requeue"
    # as if killed at step 17 before its checkpoint: the newest complete checkpoint is step 10
    shutil.rmtree(ckpt.latest(cfg.checkpoint_dir).path)
    assert ckpt.latest(cfg.checkpoint_dir).step == 10
    assert loop.run_train(cfg).status == "done"
    train_steps = [r["step"] for r in read_jsonl(cfg.metrics_path) if r.get("split") == "train"]
    assert train_steps == [5, 10, 15, 15, 20, 24]  # the record keeps both attempts
    got = scalars(cfg.run_dir)
    assert [s for s, _ in got["train/loss"]] == [5, 10, 15, 20, 24]
    assert [s for s, _ in got["val/loss"]] == [10, 20, 24]  # the final validation at the last step


def test_missing_package_is_one_line_before_training(tmp_path, tiny_corpus, monkeypatch):
    _, cfg = prepared(tmp_path, tiny_corpus, train={"tensorboard": True})
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as without the package
    with pytest.raises(ConfigError, match=r"train.tensorboard: true needs the tensorboard package"):
        loop.run_train(cfg)
    assert not cfg.metrics_path.exists() and not cfg.checkpoint_dir.exists()


@pytest.mark.slow
def test_missing_package_exit_status(tmp_path, tiny_corpus):
    p = tiny_config(tmp_path, tiny_corpus, train={"tensorboard": True})
    code = (
        "import sys; sys.modules['torch.utils.tensorboard'] = None\n"
        "from hpcrnn.preprocess import main as pre; from hpcrnn.train.loop import main\n"
        f"assert pre([{str(p)!r}]) == 0; sys.exit(main([{str(p)!r}]))"
    )
    r = run_python("-c", code)
    assert r.returncode == 2, r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "pip install 'hpcrnn[tensorboard]'" in err[0]
