"""``train.init_from``: a new run starts from another run's (or a model file's) weights, refused in one line
unless their tokenizer, vocabulary and model shape are this run's."""

from __future__ import annotations

import dataclasses

from hpcrnn.config import Config
from hpcrnn.errors import InputError
from hpcrnn.model.trained import open_trained
from hpcrnn.run.compat import shape_diff


def initial_weights(cfg: Config, corpus) -> dict:
    """``train.init_from``'s weights for a run of ``cfg`` on ``corpus``: the source's tokenizer, vocabulary
    and model shape must be this run's (dropout aside), else a one-line InputError naming both sides."""
    src = cfg.train.init_from
    lm = open_trained(src, device="cpu")
    key = "train.init_from"
    if lm.vocab.tokenizer != corpus.tokenizer:
        raise InputError(
            f"{key}: {src} was trained on {lm.vocab.tokenizer!r} tokens, this run's corpus {cfg.h5_path} has "
            f"{corpus.tokenizer!r} tokens"
        )
    if lm.vocab.vocab_hash != corpus.vocab_hash:
        raise InputError(
            f"{key}: {src} has vocabulary {lm.vocab.vocab_hash[:12]} ({len(lm.vocab)} tokens), this run's corpus "
            f"{cfg.h5_path} has {corpus.vocab_hash[:12]} ({len(corpus.vocab)} tokens): preprocess with "
            f"data.vocab_from: {src}"
        )
    theirs, ours = dataclasses.asdict(lm.config.model), dataclasses.asdict(cfg.model)
    diff = [f"model.{k}: {a!r} there, {b!r} here" for k, a, b in shape_diff(theirs, ours)]
    if diff:
        raise InputError(f"{key}: {src} is another model shape ({'; '.join(diff)})")
    return lm.model.state_dict()
