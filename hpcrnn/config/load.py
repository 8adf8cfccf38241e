"""Loading a config: YAML files, their ``base:`` chains, command-line overrides, and the resolved copy."""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from hpcrnn.config.coerce import _build
from hpcrnn.config.schema import Config
from hpcrnn.config.strings import expand_env
from hpcrnn.config.validate import validate
from hpcrnn.errors import ConfigError, StorageError
from hpcrnn.fsutil import atomic_write_text

RESOLVED_NAME = "config.yaml"


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected dotted key=value, e.g. train.max_steps=200")
    key, _, text = item.partition("=")
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise ConfigError(f"override {item!r}: {key!r} is not a dotted key like train.max_steps")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({str(e).splitlines()[0]})") from None
    if isinstance(value, (dict, list)) and not text.lstrip().startswith(("{", "[")):
        value = text  # "generate.prompt=Title: Soup" means the string, not a mapping
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        parts, value = parse_override(item)
        node = raw
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a section")
            node = nxt
        node[parts[-1]] = value
    return raw


def read_yaml(path: Path) -> dict:
    src = str(path)
    if not path.exists():
        raise ConfigError(f"{src}: config file not found")
    if path.is_dir():
        raise ConfigError(
            f"{src}: is a directory, expected a YAML config file (or a run directory holding {RESOLVED_NAME})"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{src}: cannot read config: {e.__class__.__name__}: {e}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{src}:{where}: invalid YAML: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{src}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    return raw


def config_path_of(arg: str | os.PathLike) -> Path:
    """A CONFIG argument may be a YAML file or a run directory holding config.yaml."""
    p = Path(arg)
    if p.is_dir() and (p / RESOLVED_NAME).is_file():
        return p / RESOLVED_NAME
    return p


def from_dict(raw: dict, src: str = "<config>", default_name: str = "run") -> Config:
    raw = dict(raw)
    cfg = _build(Config, {k: v for k, v in raw.items()}, "", src)
    if not cfg.run.name:
        cfg.run.name = default_name
    cfg.source = src
    return validate(cfg, src)


BASE_KEY = "base"


def _merge(base: dict, child: dict, cls: type | None = None) -> dict:
    """``child`` over ``base``: sections (dataclass-typed keys) merge key by key; every other value, lists
    and mappings such as data.corpus or slurm.*.additional included, replaces the base's whole."""
    cls = cls or Config
    hints = typing.get_type_hints(cls)
    out = dict(base)
    for k, v in child.items():
        tp = hints.get(k)
        if tp is not None and dataclasses.is_dataclass(tp) and isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, tp)
        else:
            out[k] = v
    return out


def read_composed(path: Path, _chain: tuple[Path, ...] = ()) -> dict:
    """The raw mapping of a config file with its ``base:`` chain merged in (each base relative to the file
    that names it). Each file is checked on its own first, so an unknown key or a wrong type names the file
    that holds it. ``run.name`` is not inherited: a run is its own file's (default: that file's stem)."""
    raw = read_yaml(path)
    here = Path(os.path.abspath(path))
    chain = (*_chain, here)
    if BASE_KEY not in raw:
        _build(Config, raw, "", str(path))
        return raw
    ref = raw.pop(BASE_KEY)
    if not isinstance(ref, str) or not ref.strip():
        raise ConfigError(f"{path}: {BASE_KEY}: expected the path of another config file, got {ref!r}")
    _build(Config, raw, "", str(path))
    target = Path(os.path.abspath(here.parent / Path(expand_env(ref, BASE_KEY, str(path))).expanduser()))
    if target in chain:
        cycle = " -> ".join(str(p) for p in (*chain[chain.index(target) :], target))
        raise ConfigError(f"{path}: {BASE_KEY}: {ref} makes a cycle ({cycle})")
    if not target.is_file():
        raise ConfigError(f"{path}: {BASE_KEY}: {target} is not a config file")
    base = read_composed(target, chain)
    run = base.get("run")
    if isinstance(run, dict) and "name" in run:
        base["run"] = {k: v for k, v in run.items() if k != "name"}
    return _merge(base, raw)


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """Load (with its ``base:`` chain), override, expand, validate and resolve a config file. Raises
    ConfigError."""
    if any(item.partition("=")[0].strip() == BASE_KEY for item in overrides or []):
        raise ConfigError(f"override {BASE_KEY}=...: {BASE_KEY} is set in a config file, not on the command line")
    p = config_path_of(path)
    raw = read_composed(p)
    raw = apply_overrides(raw, list(overrides or []))
    stem = p.parent.name if p.name == RESOLVED_NAME and p.parent.name else p.stem
    return from_dict(raw, str(p), default_name=stem)


def save_resolved(cfg: Config) -> Path:
    """Write the resolved config to <run dir>/config.yaml (atomically) and return its path. The stages call
    it only once the run is theirs and its inputs are valid: a refused or failed run leaves it as it was."""
    out = cfg.run_dir / RESOLVED_NAME
    try:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, cfg.to_yaml())
    except OSError as e:
        raise StorageError(f"{out}: cannot write the resolved config: {e.strerror or e}") from None
    return out
