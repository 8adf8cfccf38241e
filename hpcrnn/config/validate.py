"""Validation of a built config: cross-field checks, then paths resolved against the current directory."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

from hpcrnn.config.coerce import Expand, _yaml_boolean, expands
from hpcrnn.config.schema import Config
from hpcrnn.config.strings import _check_text, expand_env, prompt_text
from hpcrnn.errors import ConfigError

_ADDITIONAL_KEY = re.compile(r"[a-z0-9][a-z0-9_-]*")  # sbatch option names (_ is written as -)
_UNCATCHABLE = {"SIGKILL", "SIGSTOP"}


def _check_additional(extra: dict | None, key: str, src: str, expand: Expand = True) -> None:
    """sbatch parameters: option names and plain values only (a newline would add #SBATCH lines)."""
    for k, v in (extra or {}).items():
        if not _ADDITIONAL_KEY.fullmatch(k):
            raise ConfigError(f"{src}: {key}.{k}: an sbatch option name holds only a-z, 0-9, - and _")
        if isinstance(v, str):
            _check_text(_expand(v, f"{key}.{k}", src, expand), f"{key}.{k}", src)
        elif not isinstance(v, (int, float, bool)):
            raise ConfigError(f"{src}: {key}.{k}: expected a string or number, got {type(v).__name__} {v!r}")


def _expand(value: str, key: str, src: str, expand: Expand) -> str:
    """``value`` with its ${VAR} expanded where ``key`` holds a user's value; as it stands where data."""
    return expand_env(value, key, src) if expands(expand, key) else value


def _check_corpus(corpus: Any, src: str, expand: Expand = True) -> Any:
    key = "data.corpus"
    if isinstance(corpus, str):
        return _check_text(_expand(corpus, key, src, expand), key, src)
    if isinstance(corpus, list):
        if not corpus or not all(isinstance(c, str) for c in corpus):
            raise ConfigError(f"{src}: {key}: a list of corpus paths must be non-empty strings")
        return [_check_text(_expand(c, f"{key}[{i}]", src, expand), f"{key}[{i}]", src) for i, c in enumerate(corpus)]
    if isinstance(corpus, dict):
        want = {"train", "val", "test"}
        if set(corpus) != want:
            raise ConfigError(
                f"{src}: {key}: a split mapping needs exactly the keys train, val, test "
                f"(got {', '.join(map(str, corpus)) or 'none'})"
            )
        out = {}
        for k in ("train", "val", "test"):
            if not isinstance(corpus[k], str):
                raise ConfigError(f"{src}: {key}.{k}: expected a path, got {corpus[k]!r}")
            out[k] = _check_text(_expand(corpus[k], f"{key}.{k}", src, expand), f"{key}.{k}", src)
        return out
    if isinstance(corpus, bool):
        raise ConfigError(_yaml_boolean(corpus, key, src))
    raise ConfigError(f"{src}: {key}: expected a path, a list of paths or {{train, val, test}}, got {corpus!r}")


def _check_name(name: str, key: str, src: str) -> None:
    """A run or folder name is one path component inside its parent: never '.', '..' or a separator."""
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise ConfigError(f"{src}: {key}: {name!r} may hold only letters, digits and _ . + -")
    if set(name) == {"."}:
        raise ConfigError(f"{src}: {key}: {name!r} would name a folder outside the run's own")


def _abs(p: str) -> str:
    return str(Path(p).expanduser().absolute()) if p else p


def validate(cfg: Config, src: str, expand: Expand = True) -> Config:
    """Cross-field checks and path resolution (relative to the current working directory). ``expand``: as
    for ``_build``: where False (data: a resolved config's, a model file's values), no ${VAR} is expanded
    and no ``file:`` prompt is read."""
    _check_data(cfg, src, expand)
    _check_model_and_train(cfg, src)
    _check_names(cfg, src, expand)
    _resolve_paths(cfg, src, expand)
    return cfg


def _check_data(cfg: Config, src: str, expand: Expand = True) -> None:
    """The data section, and what its sequences mode asks of training; fills in min_count's default."""
    d, t = cfg.data, cfg.train
    d.corpus = _check_corpus(d.corpus, src, expand)
    if d.min_count is None:
        d.min_count = 1 if d.tokenizer == "char" else 5
    if len(d.split) != 3 or any(x < 0 for x in d.split) or abs(sum(d.split) - 1.0) > 1e-6 or d.split[0] <= 0:
        raise ConfigError(
            f"{src}: data.split: expected three non-negative fractions (train, val, test) "
            f"summing to 1 with train > 0, got {d.split}"
        )
    if d.document_start is not None:
        try:
            re.compile(d.document_start, re.M)
        except re.error as e:
            raise ConfigError(f"{src}: data.document_start: invalid regex {d.document_start!r}: {e}") from None
    if d.sequences != "windows" and t.loss != "all":
        raise ConfigError(
            f"{src}: train.loss: 'last' scores only the word after a window; data.sequences: {d.sequences} "
            f"needs train.loss: all"
        )


def _check_model_and_train(cfg: Config, src: str) -> None:
    """Tied weights' shapes, the one spelling of train.precision, and a stop signal that can be caught."""
    m, t = cfg.model, cfg.train
    if m.tie_weights and m.embedding != m.hidden:
        raise ConfigError(
            f"{src}: model.tie_weights: needs model.embedding == model.hidden ({m.embedding} != {m.hidden})"
        )
    if m.pointer_key and not m.pointer:
        raise ConfigError(f"{src}: model.pointer_key: {m.pointer_key} needs a pointer (model.pointer > 0)")
    if m.tie_weights and m.softmax == "adaptive":
        raise ConfigError(
            f"{src}: model.tie_weights: needs model.softmax: full (the adaptive softmax has no [V, H] weight)"
        )
    if m.cutoffs and (m.softmax != "adaptive" or min(m.cutoffs) < 1 or m.cutoffs != sorted(set(m.cutoffs))):
        why = "are for model.softmax: adaptive" if m.softmax != "adaptive" else "must be ascending word ids >= 1"
        raise ConfigError(f"{src}: model.cutoffs: {m.cutoffs} {why}")
    if t.bf16 is not None:  # the older key: one spelling in the resolved config
        fits = ("auto", "bf16") if t.bf16 else ("auto", "fp32")
        if t.precision not in fits:
            raise ConfigError(
                f"{src}: train.bf16: {t.bf16} contradicts train.precision: {t.precision}; set only precision"
            )
        t.precision = t.precision if t.bf16 else "fp32"
        t.bf16 = None
    if t.stop_signal not in signal.Signals.__members__:
        raise ConfigError(f"{src}: train.stop_signal: {t.stop_signal!r} is not a signal name like SIGUSR2")
    if t.stop_signal in _UNCATCHABLE:
        raise ConfigError(
            f"{src}: train.stop_signal: {t.stop_signal} cannot be caught, so it cannot stop training "
            f"with a checkpoint: use SIGUSR2 (or another catchable signal)"
        )


def _check_names(cfg: Config, src: str, expand: Expand = True) -> None:
    """Run and output folder names, and the extra sbatch parameters of every stage."""
    _check_name(cfg.run.name or "x", "run.name", src)
    _check_name(cfg.generate.name, "generate.name", src)
    for stage in ("defaults", "preprocess", "train", "generate"):
        _check_additional(getattr(cfg.slurm, stage).additional, f"slurm.{stage}.additional", src, expand)


def _resolve_paths(cfg: Config, src: str, expand: Expand = True) -> None:
    """Make every path absolute (and read a ``file:`` prompt) now, so the saved config is cwd-independent.
    A prompt that is data (a resolved config's: the text read once) is text, never a file's name again."""
    d, t, g = cfg.data, cfg.train, cfg.generate
    cfg.paths.scratch = _abs(cfg.paths.scratch)
    cfg.paths.jobs = _abs(cfg.paths.jobs)
    for key, path in (("paths.scratch", cfg.paths.scratch), ("paths.jobs", cfg.paths.jobs)):
        if os.path.exists(path) and not os.path.isdir(path):
            raise ConfigError(f"{src}: {key}: {path} exists and is not a directory")
    if isinstance(d.corpus, str):
        d.corpus = _abs(d.corpus)
    elif isinstance(d.corpus, list):
        d.corpus = [_abs(c) for c in d.corpus]
    elif isinstance(d.corpus, dict):
        d.corpus = {k: _abs(v) for k, v in d.corpus.items()}
    if d.h5_path:
        d.h5_path = _abs(d.h5_path)
    d.vocab_from = _abs(d.vocab_from) if d.vocab_from else None
    t.init_from = _abs(t.init_from) if t.init_from else None
    key = "generate.prompt"
    g.prompt = prompt_text(g.prompt, key, src) if expands(expand, key) else _check_text(g.prompt, key, src)
    _resolve_prompts_file(cfg, src, expand)
    if g.checkpoint and not g.checkpoint.isdigit() and g.checkpoint not in ("best", "last"):  # names stay names
        g.checkpoint = _abs(g.checkpoint)


def _resolve_prompts_file(cfg: Config, src: str, expand: Expand = True) -> None:
    """``generate.prompts``: absolute, like ``data.corpus``; a user's config (not a run's resolved one, whose
    file may since have moved) names a file that exists, so a launch fails now rather than in a queued job.
    Fills in ``generate.num_recipes``' default: 100 recipes, or 1 per prompt."""
    g, key = cfg.generate, "generate.prompts"
    if g.prompts is not None:
        if not g.prompts.strip():
            raise ConfigError(f"{src}: {key}: empty; give a file of prompts or leave the key out")
        g.prompts = _abs(g.prompts)  # ${VAR} already expanded by the coercion
        if expands(expand, key) and not os.path.isfile(g.prompts):
            raise ConfigError(f"{src}: {key}: {g.prompts}: no such file")
        if g.prompt:
            raise ConfigError(f"{src}: {key}: set either generate.prompt or generate.prompts, not both")
    if g.num_recipes is None:
        g.num_recipes = 100 if g.prompts is None else 1
