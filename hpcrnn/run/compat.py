"""Does a checkpoint fit this corpus and this config: one rule each, shared by the trainer, the launcher,
generation, evaluation, the API and ``train.init_from``. No torch: the launcher asks on a login node."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from hpcrnn.config import Config, ModelConfig
from hpcrnn.errors import InputError

# changes no weight, so a checkpoint of another dropout fits
_SHAPELESS = ("dropout",)


def shape_diff(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, old value, new value)`` of the ``model.*`` settings that differ between a checkpoint's model
    section ``old`` and ``new`` (dropout aside). A key an older checkpoint lacks held its default then, so
    it is compared as the default: a run from before a key existed fits a config that leaves it at default."""
    defaults = dataclasses.asdict(ModelConfig())
    diff = []
    for k, v in new.items():
        if k in _SHAPELESS:
            continue
        was = old.get(k, defaults.get(k))
        if was != v:
            diff.append((k, was, v))
    return diff


def shape_diff_text(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``shape_diff`` as ``model.k: old -> new`` lines."""
    return [f"model.{k}: {a!r} -> {b!r}" for k, a, b in shape_diff(old, new)]


def check_vocabulary(meta: dict, cfg: Config, vocab_hash: str, path: Path, vocab_size: int | None = None) -> None:
    """Refuse (InputError) a checkpoint whose vocabulary is not the corpus' (hash, and size when given)."""
    if meta.get("vocab_hash") != vocab_hash:
        raise InputError(
            f"{path}: checkpoint vocabulary {str(meta.get('vocab_hash'))[:12]} does not match "
            f"the corpus {cfg.h5_path} ({vocab_hash[:12]}): use a new run.name or the same data"
        )
    if vocab_size is not None and int(meta.get("vocab_size", -1)) != vocab_size:
        raise InputError(
            f"{path}: checkpoint vocabulary size {meta.get('vocab_size')} != corpus {vocab_size} ({cfg.h5_path})"
        )


def check_compatible(
    meta: dict,
    cfg: Config,
    vocab_hash: str,
    path: Path,
    vocab_size: int | None = None,
    model_shape: bool = True,
    corpus_fingerprint: str | None = None,
) -> None:
    """Refuse (InputError, saying which) a checkpoint trained on another corpus build (fingerprint), whose
    vocabulary is not the corpus' or, with ``model_shape``, whose model shape differs from ``cfg.model``
    (``shape_diff``). Readers build the checkpoint's own shape: model_shape=False."""
    theirs, ours = meta.get("corpus_fingerprint"), corpus_fingerprint
    if theirs and ours and theirs != ours:
        raise InputError(
            f"{path}: checkpoint was trained on corpus {theirs[:12]}, but {cfg.h5_path} is {ours[:12]} "
            f"(rebuilt from changed inputs or settings): give a new run.name to train on it"
        )
    check_vocabulary(meta, cfg, vocab_hash, path, vocab_size)
    if not model_shape:
        return
    diff = shape_diff_text(meta.get("config", {}).get("model", {}), cfg.to_dict()["model"])
    if diff:
        raise InputError(
            f"{path}: checkpoint model shape does not fit the config ({'; '.join(diff)}): use a new run.name"
        )
