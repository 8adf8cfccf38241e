"""Loading a config: YAML files, their ``base:`` chains, command-line overrides, and the resolved copy."""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from hpcrnn.config.coerce import Expand, _build
from hpcrnn.config.schema import Config
from hpcrnn.config.strings import expand_env
from hpcrnn.config.validate import validate
from hpcrnn.errors import ConfigError, StorageError
from hpcrnn.fsutil import atomic_write_text

RESOLVED_NAME = "config.yaml"
# the first line of a run's resolved config (save_resolved): its values are data, taken as they stand when
# it is read again (the run's ${VAR} were expanded and its file: prompt read once, from the user's config)
RESOLVED_MARK = "# hpcrnn: resolved config"
MAX_BASE_DEPTH = 32  # config files in one base: chain


# the top-level sections: ``--SECTION.KEY=VALUE`` on a command line is the override SECTION.KEY=VALUE
SECTIONS = tuple(k for k, tp in typing.get_type_hints(Config).items() if dataclasses.is_dataclass(tp))


# ``~KEY`` (Hydra's habit): the value parse_override gives for a key reset to its schema default
class _Reset:
    def __repr__(self) -> str:
        return "RESET"


RESET: Any = _Reset()
_DOTTED = r"[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*"  # a hyphen for sbatch's mail-type & co.


def override_key(item: str) -> str:
    """The dotted key an override names, without Hydra's ``+``, ``++`` or ``~`` (``~train.lr``: train.lr)."""
    key = item.partition("=")[0].strip()
    return key[1:].strip() if key.startswith("~") else key.lstrip("+").strip()


def parse_override(item: str) -> tuple[list[str], Any]:
    """(the dotted key's parts, the value) of one command-line override: ``key=value`` parsed as YAML;
    Hydra's ``+key=value`` (and ``++key=value``) alike; ``~key``: the value is RESET (back to the schema's
    default, or, for an entry of a free-form mapping such as slurm.train.additional.foo, removed)."""
    key = override_key(item)
    reset = item.lstrip().startswith("~")
    if reset and "=" in item:
        raise ConfigError(
            f"override {item!r}: ~KEY resets a key to its default, it takes no value ({key}=VALUE sets it)"
        )
    if not reset and "=" not in item:
        raise ConfigError(f"override {item!r}: expected dotted key=value, e.g. train.max_steps=200")
    if not re.fullmatch(_DOTTED, key):
        raise ConfigError(f"override {item!r}: {key!r} is not a dotted key like train.max_steps")
    if reset:
        return key.split("."), RESET
    text = item.partition("=")[2]
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({str(e).splitlines()[0]})") from None
    if isinstance(value, (dict, list)) and not text.lstrip().startswith(("{", "[")):
        value = text  # "generate.prompt=Title: Soup" means the string, not a mapping
    return key.split("."), value


def _section_type(parts: list[str]) -> type | None:
    """The dataclass of the config section at dotted ``parts``; None where that is a value (or no key)."""
    cls: type = Config
    for p in parts:
        tp = typing.get_type_hints(cls).get(p)
        if tp is None or not dataclasses.is_dataclass(tp):
            return None
        cls = tp
    return cls


def _set_keys(parts: list[str], value: Any) -> list[str]:
    """The dotted keys an override of ``parts`` with ``value`` sets: a section's mapping sets its leaves."""
    if _section_type(parts) is None:
        return [".".join(parts)]
    if not isinstance(value, dict):
        return [] if value is None else [".".join(parts)]
    return [k for sub, v in value.items() for k in _set_keys([*parts, str(sub)], v)]


def _apply(raw: dict, overrides: list[str]) -> list[tuple[str, str]]:
    """Apply the overrides to ``raw`` in order; return (dotted key, override) for every key they set."""
    origins: list[tuple[str, str]] = []
    for item in overrides:
        parts, value = parse_override(item)
        if value is RESET:
            _reset(raw, parts, item)
            origins.append((".".join(parts), item))
            continue
        node = raw
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a section")
            node = nxt
        section, last = _section_type(parts), parts[-1]
        if section is not None and (value is None or isinstance(value, dict)):
            old = node.get(last)
            node[last] = _merge(old if isinstance(old, dict) else {}, value or {}, section)
        else:
            node[last] = value
        origins += [(k, item) for k in _set_keys(parts, value)]
    return origins


def _reset(raw: dict, parts: list[str], item: str) -> None:
    """``~key``: a schema key's value dropped from the composed config (its base chain's included), so the
    schema's default stands; parts past a free-form mapping (``slurm.train.additional.foo``) name an entry
    of it, removed. An unknown key, or an entry the mapping lacks, is the override's one-line error."""
    cls: type = Config
    for i, p in enumerate(parts):
        fields = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
        if p not in fields:  # the loader's own error for an unknown key, with its "did you mean"
            _build(cls, {p: None}, ".".join(parts[:i]), f"override {item!r}")
        tp = typing.get_type_hints(cls)[p]
        if not dataclasses.is_dataclass(tp):
            break
        cls = tp
    node: Any = raw
    for p in parts[:-1]:
        node = node.get(p) if isinstance(node, dict) else None
    if i == len(parts) - 1:  # a schema key (or section): absent already is its default already
        if isinstance(node, dict):
            node.pop(parts[-1], None)
        return
    if not isinstance(node, dict) or parts[-1] not in node:
        where = ".".join(parts[:-1])
        raise ConfigError(f"override {item!r}: {where} has no entry {parts[-1]!r} to remove")
    del node[parts[-1]]


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``raw`` with the ``key=value`` overrides applied in order. A mapping given for a section merges into
    it key by key (``train={max_steps: 5}`` keeps the other train settings), an empty one (``{}``, null)
    changes nothing; any other value replaces the key's. ``+key=value`` is ``key=value``; ``~key`` resets
    the key to its default (an entry of a free-form mapping: removes it)."""
    _apply(raw, overrides)
    return raw


def _override_of(origins: list[tuple[str, str]], key: str) -> str | None:
    """The (last) override that set the value at dotted ``key`` (``data.split[0]``: of data.split)."""
    key = re.sub(r"\[\d+\]", "", key)
    for k, item in reversed(origins):
        if k == key or k.startswith(key + ".") or key.startswith(k + "."):
            return item
    return None


def _blame(e: ConfigError, src: str, origins: list[tuple[str, str]]) -> ConfigError:
    """``e`` (``SRC: KEY: problem``) naming the override that gave KEY its value instead of the file."""
    msg, head = str(e), f"{src}: "
    if not msg.startswith(head):
        return e
    rest = msg[len(head) :]
    m = re.match(r"[A-Za-z_][\w.\[\]-]*", rest)
    item = _override_of(origins, m.group()) if m else None
    return ConfigError(f"override {item}: {rest}") if item else e


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


def from_dict(raw: dict, src: str = "<config>", default_name: str = "run", expand: Expand = True) -> Config:
    """A validated Config from a raw mapping. ``expand``: True for a user's values (${VAR} expanded, a
    ``file:`` prompt read); False for data, taken as they stand (a resolved config's, a model file's); or a
    function of the dotted key."""
    raw = dict(raw)
    cfg = _build(Config, {k: v for k, v in raw.items()}, "", src, expand=expand)
    if not cfg.run.name:
        cfg.run.name = default_name
    cfg.source = src
    return validate(cfg, src, expand)


BASE_KEY = "base"


def _merge(base: dict, child: dict, cls: type | None = None) -> dict:
    """``child`` over ``base``: sections (dataclass-typed keys) merge key by key, and an empty one (null)
    changes nothing; every other value, lists and mappings such as data.corpus or slurm.*.additional
    included, replaces the base's whole."""
    cls = cls or Config
    hints = typing.get_type_hints(cls)
    out = dict(base)
    for k, v in child.items():
        tp = hints.get(k)
        if tp is not None and dataclasses.is_dataclass(tp) and (v is None or isinstance(v, dict)):
            old = out.get(k)
            if v is not None or old is None:
                out[k] = _merge(old if isinstance(old, dict) else {}, v or {}, tp)
        else:
            out[k] = v
    return out


def read_composed(path: Path, _chain: tuple[Path, ...] = (), expand: bool = True) -> dict:
    """The raw mapping of a config file with its ``base:`` chain merged in (each base relative to the file
    that names it). Each file is checked on its own first, so an unknown key or a wrong type names the file
    that holds it. ``run.name`` is not inherited: a run is its own file's (default: that file's stem).
    ``expand``: False for a run's resolved config, whose values are data (and which names no base)."""
    raw = read_yaml(path)
    here = Path(os.path.abspath(path))
    chain = (*_chain, here)
    if len(chain) > MAX_BASE_DEPTH:
        first = " -> ".join(str(p) for p in chain[:3])
        raise ConfigError(
            f"{chain[0]}: {BASE_KEY}: a chain of more than {MAX_BASE_DEPTH} config files ({first} -> ...): "
            f"at most {MAX_BASE_DEPTH}"
        )
    if BASE_KEY not in raw:
        _build(Config, raw, "", str(path), expand=expand)
        return raw
    if not expand:
        raise ConfigError(f"{path}: {BASE_KEY}: a run's resolved config is complete, it names no base")
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


def is_resolved(path: Path) -> bool:
    """Whether ``path`` is a run's resolved config (data, never expanded again): a ``config.yaml`` that
    save_resolved marked, or, written before the mark, one at its own run directory
    (``<paths.scratch>/<run.name>/config.yaml``, where no user's config stays: the run's overwrites it)."""
    if path.name != RESOLVED_NAME or not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8") as f:
            if f.readline().startswith(RESOLVED_MARK):
                return True
        raw = read_yaml(path)
    except (OSError, UnicodeDecodeError, ConfigError):
        return False
    run, paths = raw.get("run"), raw.get("paths")
    name = run.get("name") if isinstance(run, dict) else None
    scratch = paths.get("scratch") if isinstance(paths, dict) else None
    if not (isinstance(name, str) and name and isinstance(scratch, str) and os.path.isabs(scratch)):
        return False
    try:
        return os.path.samefile(Path(scratch) / name, path.parent)
    except (OSError, ValueError):
        return False


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """Load (with its ``base:`` chain), override, expand, validate and resolve a config file. Raises
    ConfigError naming the file, or the override, that gave the culprit value. ${VAR} and ``file:`` are
    expanded once, in the user's config and overrides: a run's resolved config is data, as it stands."""
    items = list(overrides or [])
    for item in items:
        if override_key(item) == BASE_KEY:
            raise ConfigError(f"override {item!r}: {BASE_KEY} is set in a config file, not on the command line")
    p = config_path_of(path)
    resolved = is_resolved(p)
    raw = read_composed(p, expand=not resolved)
    origins = _apply(raw, items)
    stem = p.parent.name if p.name == RESOLVED_NAME and p.parent.name else p.stem
    expand: Expand = (lambda key: _override_of(origins, key) is not None) if resolved else True
    try:
        return from_dict(raw, str(p), default_name=stem, expand=expand)
    except ConfigError as e:
        blamed = _blame(e, str(p), origins)
        if blamed is e:
            raise
        raise blamed from None


def save_resolved(cfg: Config) -> Path:
    """Write the resolved config to <run dir>/config.yaml (atomically) and return its path. The stages call
    it only once the run is theirs and its inputs are valid: a refused or failed run leaves it as it was."""
    out = cfg.run_dir / RESOLVED_NAME
    try:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        head = f"{RESOLVED_MARK} of run {cfg.run.name}: values as run (no ${{VAR}} or file: is read again)\n"
        atomic_write_text(out, head + cfg.to_yaml())
    except OSError as e:
        raise StorageError(f"{out}: cannot write the resolved config: {e.strerror or e}") from None
    return out
