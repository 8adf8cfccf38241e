"""Choosing a checkpoint by name (``best``, ``last``) wherever one is chosen, and ``status --checkpoints`` /
``status --csv``: one rule for the names (hpcrnn.run.checkpoints.resolve) and one for retention (retained)."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch

import hpcrnn
from hpcrnn.cluster import status
from hpcrnn.config import load_config
from hpcrnn.errors import InputError
from hpcrnn.evaluate.command import run_evaluate
from hpcrnn.export import main as export_main
from hpcrnn.fsutil import append_jsonl, records_csv
from hpcrnn.model import restore
from hpcrnn.model.file import read_model_file
from hpcrnn.model.source import source_step
from hpcrnn.run import checkpoints as C
from hpcrnn.train import loop
from hpcrnn.train.checkpoint import save_checkpoint
from tests.helpers import make_recipes, prepared, tiny_config

torch.set_num_threads(1)

# step -> validation loss (None: a checkpoint saved between validations)
_LOSSES = {5: 3.0, 10: 2.5, 15: 2.8, 20: None}


def _fake_run(tmp_path, corpus, losses=_LOSSES, extra=None):
    """A run directory with fake checkpoints (no weights) of these validation losses (and ``extra`` meta by
    step): (config path, cfg)."""
    cfg_path = tiny_config(tmp_path, corpus)
    cfg = load_config(cfg_path)
    for step, loss in losses.items():
        meta = {"config": cfg.to_dict(), "vocab_hash": "x", "vocab_size": 3, "epoch": step // 10, "val_loss": loss}
        save_checkpoint(cfg.checkpoint_dir, step, {}, {}, {**meta, **(extra or {}).get(step, {})})
    return cfg_path, cfg


def _one_line(e, *words: str) -> None:
    msg = str(e).strip()
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg


def test_best_and_last_by_name(tmp_path, tiny_corpus):
    _, cfg = _fake_run(tmp_path, tiny_corpus)
    assert C.resolve(cfg.checkpoint_dir, "best").step == 10  # the lowest val_loss
    assert C.resolve(cfg.checkpoint_dir, "last").step == 20  # the newest, with or without a validation
    assert C.resolve(cfg.checkpoint_dir, None).step == 20
    assert C.resolve(cfg.checkpoint_dir, "15").step == 15


def test_best_ties_go_to_the_newest_and_a_damaged_best_is_skipped(tmp_path, tiny_corpus, capsys):
    _, cfg = _fake_run(tmp_path, tiny_corpus, {5: 2.0, 10: 2.0, 15: 2.1, 20: 3.0})
    assert C.resolve(cfg.checkpoint_dir, "best").step == 10
    with open(cfg.checkpoint_dir / C.step_dir_name(10) / "model.pt", "ab") as f:
        f.write(b"x")
    assert C.resolve(cfg.checkpoint_dir, "best").step == 5
    assert "step-00000010" in capsys.readouterr().err


def test_best_without_any_validation_is_one_line_suggesting_last(tmp_path, tiny_corpus):
    _, cfg = _fake_run(tmp_path, tiny_corpus, {5: None, 10: None})
    with pytest.raises(InputError) as e:
        C.resolve(cfg.checkpoint_dir, "best")
    _one_line(e.value, "validation loss", "'last'", "5, 10")
    with pytest.raises(InputError) as e:
        C.resolve(tmp_path / "none", "best")
    _one_line(e.value, "no complete checkpoint")


def test_a_file_named_best_is_not_a_model_file_unless_written_as_a_path(tmp_path, tiny_corpus, monkeypatch):
    _, cfg = _fake_run(tmp_path, tiny_corpus)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "best").write_text("not a model file")
    assert not C.names_file("best") and not C.names_file("last") and not C.names_file("10")
    assert C.names_file("./best") and C.names_file(str(tmp_path / "best"))
    cfg.generate.checkpoint = "best"
    assert source_step(cfg) == 10
    cfg.generate.checkpoint = "last"
    assert source_step(cfg) == 20


def test_generate_checkpoint_best_in_a_config(tmp_path, tiny_corpus):
    """``generate.checkpoint: best`` stays the name (not a path made absolute) through the config."""
    cfg_path, _ = _fake_run(tmp_path, tiny_corpus)
    cfg = load_config(cfg_path, ["generate.checkpoint=best"])
    assert cfg.generate.checkpoint == "best"
    assert source_step(cfg) == 10


def test_retention_and_the_listing_share_one_rule(tmp_path, tiny_corpus, capsys):
    losses = {5: 2.0, 10: 3.0, 15: 2.9, 20: 2.8, 25: None, 30: 3.5}
    cfg_path, cfg = _fake_run(tmp_path, tiny_corpus, losses, {30: {"best_step": 15}})
    append_jsonl(cfg.metrics_path, {"step": 5, "split": "val", "loss": 2.0, "ppl": 7.4, "protocol": "windows"})
    assert status.main([str(cfg_path), "--checkpoints"]) == 0
    out = capsys.readouterr().out
    assert "windows protocol" in out, out
    rows = {int(line.split()[0]): line.split() for line in out.splitlines() if line.strip()[:1].isdigit()}
    assert sorted(rows) == [5, 10, 15, 20, 25, 30], out
    # keep_last 2 (25, 30), the best by val loss (5), the best step the newest names (15)
    kept = {s for s, r in rows.items() if r[-1] == "yes"}
    assert kept == {5, 15, 25, 30}, out
    assert rows[5][-3:] == ["best", "-", "yes"] and rows[30][-3:] == ["-", "last", "yes"], out
    assert rows[25][2] == "-" and rows[5][2] == "2.0000", out
    assert status.main([str(cfg_path), "--checkpoints", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["protocol"] == "windows" and listing["keep_last"] == 2
    assert [c["step"] for c in listing["checkpoints"] if c["best"]] == [5]
    C.retain(cfg.checkpoint_dir, cfg.train.keep_last)
    assert {c.step for c in C.list_complete(cfg.checkpoint_dir)} == kept


def test_status_csv_is_the_metrics_with_the_union_of_keys(tmp_path, tiny_corpus, capsys):
    cfg_path, cfg = _fake_run(tmp_path, tiny_corpus, {5: 1.0})
    recs = [
        {"step": 1, "loss": 4.5, "split": "train"},
        {"step": 5, "split": "val", "ppl": 2.7, "final": True},
        {"event": "requeue", "reason": "timeout", "info": {"a": 1}},
    ]
    for r in recs:
        append_jsonl(cfg.metrics_path, r)
    assert status.main([str(cfg_path), "--csv"]) == 0
    out = capsys.readouterr().out
    rows = list(csv.reader(io.StringIO(out)))
    # append_jsonl writes keys sorted: the first-seen order is the files' order
    assert rows[0] == ["loss", "split", "step", "final", "ppl", "event", "info", "reason"], rows
    assert rows[1] == ["4.5", "train", "1", "", "", "", "", ""], rows
    assert rows[2][3] == "true" and rows[3][6] == '{"a": 1}', rows
    assert records_csv([]) == ""
    assert status.main([str(cfg_path), "--checkpoints", "--csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0][:3] == ["step", "epoch", "val_loss"] and rows[1][0] == "5", rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run of 10 steps whose step-5 validation is the best (scripted), the final one at step 10."""
    d = tmp_path_factory.mktemp("names")
    (d / "recipes.txt").write_text(make_recipes(200))
    sections = {"train": {"max_steps": 10, "checkpoint_every": 5, "eval_every": 5, "device": "cpu"}}
    cfg_path, cfg = prepared(d, d / "recipes.txt", **sections)
    real = loop._evaluate

    def fake(run, split, protocol, max_batches=0):
        r = real(run, split, protocol, max_batches)
        return dict(r, loss=0.01) if split == "val" and max_batches else r

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "_evaluate", fake)
        loop.run_train(cfg)
    return cfg_path, cfg


def test_every_reader_takes_the_names(trained, tmp_path):
    cfg_path, cfg = trained
    assert [c.step for c in C.list_complete(cfg.checkpoint_dir)] == [5, 10]
    assert run_evaluate(cfg, "best")["step"] == 5 and run_evaluate(cfg, "last")["step"] == 10
    assert hpcrnn.load(cfg_path, checkpoint="best", device="cpu").step == 5
    assert hpcrnn.load(cfg.run_dir, checkpoint="last", device="cpu").step == 10
    for name, step in (("best", 5), ("last", 10)):
        out = tmp_path / f"{name}.pt"
        assert export_main([str(cfg.run_dir), "--checkpoint", name, "-o", str(out)]) == 0
        assert read_model_file(out).step == step


def test_a_named_checkpoint_deleted_while_read_is_chosen_again(trained, monkeypatch):
    _, cfg = trained
    real, calls = restore.load_model, []

    def vanishing(c, device="cpu"):
        calls.append(c.step)
        if len(calls) == 1:
            raise FileNotFoundError(c.path / "model.pt")
        return real(c, device)

    monkeypatch.setattr(restore, "load_model", vanishing)
    assert restore.open_latest(cfg.checkpoint_dir, "best")[0].step == 5 and calls == [5, 5]
    calls.clear()
    with pytest.raises(InputError, match="vanished"):
        restore.open_latest(cfg.checkpoint_dir, "5")
