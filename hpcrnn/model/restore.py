"""The trained model of a checkpoint: its weights, built in its own shape, opened beside a running trainer
and checked against the corpus it is used with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hpcrnn.config import Config, ModelConfig
from hpcrnn.errors import InputError
from hpcrnn.model.rnn import build_model, check_weights
from hpcrnn.run.checkpoints import CheckpointInfo, is_name, resolve
from hpcrnn.run.compat import check_compatible


def load_model_state(c: CheckpointInfo, map_location: Any = "cpu") -> dict:
    return torch.load(c.path / "model.pt", map_location=map_location, weights_only=True)


def open_latest(ckpt_dir: Path, which: str | None = None, device: Any = "cpu", tries: int = 5):
    """``resolve`` + ``load_model`` for a reader running beside a trainer: if the checkpoint it picked (the
    newest, or by name: ``last``, ``best``) is deleted by the trainer's retention before it is read, pick
    again; a step or folder chosen is not chosen again. Returns (info, model, meta)."""
    for attempt in range(tries):
        c = resolve(Path(ckpt_dir), which)
        try:
            model, meta = load_model(c, device)
            return c, model, meta
        except FileNotFoundError:
            if (which and not is_name(which)) or attempt == tries - 1:
                raise InputError(f"{c.path}: checkpoint vanished while being read") from None
    raise AssertionError("unreachable")


def load_model(c: CheckpointInfo, device: Any = "cpu"):
    """The trained model of a checkpoint, in eval mode, and its meta."""
    mcfg = ModelConfig(**c.meta["config"]["model"])
    weights = load_model_state(c, map_location="cpu")
    check_weights(mcfg, int(c.meta["vocab_size"]), weights, str(c.path))  # before the model is allocated
    model = build_model(mcfg, int(c.meta["vocab_size"]))
    model.load_state_dict(weights)
    return model.to(device).eval(), c.meta


def open_checked(cfg: Config, corpus, which: str | None = None, device: Any = "cpu"):
    """A complete checkpoint of ``cfg``'s run (the newest, or ``which``: a step, a folder, ``best`` or
    ``last``, see ``hpcrnn.run.checkpoints.resolve``) in its own model shape, refused unless it was trained
    on ``corpus`` (vocabulary, size, fingerprint): (info, model, meta). What every reader of a finished run
    (evaluate, export, ``hpcrnn.load``) opens."""
    info, model, meta = open_latest(cfg.checkpoint_dir, which, device)
    check_compatible(
        meta,
        cfg,
        corpus.vocab_hash,
        info.path,
        len(corpus.vocab),
        model_shape=False,
        corpus_fingerprint=corpus.fingerprint,
    )
    return info, model, meta
