"""A trained model opened from a run directory, a config file or a model file, with its vocabulary and config:
what ``hpcrnn.load`` wraps and what ``train.init_from`` starts from."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcrnn.config import Config, from_dict, load_config
from hpcrnn.data.corpus import open_corpus
from hpcrnn.errors import InputError
from hpcrnn.model.file import Vocabulary, is_model_file, read_model_file
from hpcrnn.model.restore import open_checked


@dataclass
class Trained:
    model: Any  # the RecurrentLM on the asked device, eval mode
    vocab: Vocabulary
    config: Config  # the run's config, its model section the checkpoint's own shape
    step: int
    source: Path  # the checkpoint folder or model file
    meta: dict = field(default_factory=dict)
    corpus_path: Path | None = None  # the run's corpus.h5; None for a model file


def _is_empty(p: Path) -> bool:
    """A file of nothing but white space: no config (YAML reads it as an empty one) and no model file."""
    try:
        if not p.is_file() or p.stat().st_size > 4096:
            return False
        return not p.read_bytes().strip()
    except OSError:
        return False


def open_trained(path: str | os.PathLike, checkpoint: int | str | None = None, device: Any = "cpu") -> Trained:
    """The weights at ``path``: a run directory or config file (its newest complete checkpoint, or
    ``checkpoint``: a step or checkpoint folder, checked against the run's corpus), or a model file of
    ``python -m hpcrnn.export``, which needs no corpus.h5. Problems are one-line InputErrors."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: not found (a run directory, a config file or a model file)")
    if _is_empty(p):
        raise InputError(f"{p}: empty file: not a config, run directory or model file")
    if is_model_file(p):
        if checkpoint is not None:
            raise InputError(f"{p}: a model file holds one checkpoint: checkpoint={checkpoint!r} is for a run")
        mf = read_model_file(p)
        # the run's resolved config, data: no ${VAR} in it is expanded, no file: prompt read
        config = from_dict(mf.config, f"{p} (config)", default_name=p.stem, expand=False)
        config.model = mf.model_config()
        return Trained(mf.build_model(device), mf.vocabulary, config, mf.step, p, mf.meta)
    cfg = load_config(p)
    corpus = open_corpus(cfg.h5_path)
    which = None if checkpoint is None else str(checkpoint)
    info, model, meta = open_checked(cfg, corpus, which)
    # the model is built in the checkpoint's own shape; the config says so too
    cfg.model = type(cfg.model)(**meta["config"]["model"])
    return Trained(model.to(device), Vocabulary.from_corpus(corpus), cfg, info.step, info.path, meta, corpus.path)
