"""Typed sections from raw mappings: each value coerced to its annotation and checked against its range."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union

from hpcrnn.config.strings import _check_text, expand_env
from hpcrnn.errors import ConfigError

# whether values are expanded: for every key (True: a user's config), none (False: data), or by dotted key
Expand = bool | Callable[[str], bool]


def expands(expand: Expand, key: str) -> bool:
    """Whether the value at dotted ``key`` is a user's, whose ${VAR} (and ``file:`` prompt) are expanded."""
    return expand(key) if callable(expand) else bool(expand)


def _type_name(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + "|".join(map(str, typing.get_args(tp)))
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


# what users write for a choice that has another name here: the hint names the choice, not the nearest spelling
_ALIASES = {
    "gpu": "cuda",
    "gpus": "cuda",
    "nvidia": "cuda",
    "cuda:0": "cuda",
    "bfloat16": "bf16",
    "float16": "fp16",
    "half": "fp16",
    "float32": "fp32",
}


def _did_you_mean(value: Any, choices: list[str]) -> str | None:
    """The choice a wrong value most likely meant: itself in other case, a known alias, else the closest."""
    text = str(value).strip().lower()
    for guess in (text, _ALIASES.get(text)):
        if guess in choices:
            return guess
    hint = difflib.get_close_matches(text, choices, n=1)
    return hint[0] if hint else None


def _yaml_boolean(value: bool, key: str, src: str) -> str:
    """Unquoted yes/no/on/off/true/false are YAML 1.1 booleans: say so, and how to write the text."""
    word = "on" if value else "off"
    leaf = key.rsplit(".", 1)[-1]
    return (
        f"{src}: {key}: YAML read an unquoted yes/no/on/off/true/false as the boolean {str(value).lower()}, "
        f'not text: quote it, e.g. {key}=\'"{word}"\' on the command line or {leaf}: "{word}" in a file'
    )


def _check_value(value: Any, tp: Any, key: str, src: str, expand: bool = True) -> Any:
    """Coerce/validate one leaf value against its annotation; ``expand``: a string's ${VAR} are expanded
    (a user's value), or it is data, taken as it stands (a resolved config's, a model file's)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_value(value, inner[0], key, src, expand)
    if origin is Literal:
        if value not in typing.get_args(tp):
            hint = _did_you_mean(value, [str(a) for a in typing.get_args(tp)])
            extra = f" (did you mean {hint!r}?)" if hint else ""
            raise ConfigError(f"{src}: {key}: {value!r} is not {_type_name(tp)}{extra}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{src}: {key}: expected a list, got {type(value).__name__} {value!r}")
        return [_check_value(v, item, f"{key}[{i}]", src, expand) for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{src}: {key}: expected a mapping, got {type(value).__name__} {value!r}")
        return {str(k): v for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{src}: {key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{src}: {key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 1e-3 as a string: accept it as a number
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{src}: {key}: expected a number, got {value!r}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{src}: {key}: expected a finite number, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # e.g. run.name: 2024 or generate.checkpoint: 1200
        if isinstance(value, bool):
            raise ConfigError(_yaml_boolean(value, key, src))
        if not isinstance(value, str):
            raise ConfigError(f"{src}: {key}: expected a string, got {type(value).__name__} {value!r}")
        return _check_text(expand_env(value, key, src) if expand else value, key, src)
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in this module, not user input


def _check_range(value: Any, meta: dict, key: str, src: str) -> None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if meta.get("min") is not None and value < meta["min"]:
        raise ConfigError(f"{src}: {key}: {value!r} is below the minimum {meta['min']}")
    if meta.get("max") is not None and value > meta["max"]:
        raise ConfigError(f"{src}: {key}: {value!r} is above the maximum {meta['max']}")
    if meta.get("gt") is not None and not value > meta["gt"]:
        raise ConfigError(f"{src}: {key}: {value!r} must be greater than {meta['gt']}")
    if meta.get("lt") is not None and not value < meta["lt"]:
        raise ConfigError(f"{src}: {key}: {value!r} must be less than {meta['lt']}")


def _build(cls, raw: Any, prefix: str, src: str, base: Any = None, expand: Expand = True):
    """Build dataclass ``cls`` from a mapping over ``base`` (or the defaults), naming the dotted key of
    any problem. A partial section keeps the defaults of the keys it does not name; an empty one (None)
    changes nothing. ``expand``: whether a string's ${VAR} are expanded, for all keys or by dotted key
    (False: the values are data, a resolved config's or a model file's)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        where = prefix or "the top level"
        raise ConfigError(f"{src}: {where}: expected a mapping, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    obj = base if base is not None else cls()
    kwargs = {}
    for k, v in raw.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in fields:
            hint = difflib.get_close_matches(str(k), list(fields), n=1, cutoff=0.6)
            extra = f" (did you mean {(prefix + '.' if prefix else '') + hint[0]!r}?)" if hint else ""
            known = "" if extra else f" (known: {', '.join(fields)})"
            shown = key if key.isprintable() else repr(key)  # a key with a newline stays one line
            raise ConfigError(f"{src}: {shown}: unknown key{extra}{known}")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = _build(tp, v, key, src, base=getattr(obj, k), expand=expand)
        else:
            val = _check_value(v, tp, key, src, expands(expand, key))
            _check_range(val, fields[k].metadata, key, src)
            kwargs[k] = val
    return dataclasses.replace(obj, **kwargs)
