"""Config strings: ${VAR} expansion, the control characters they may not hold, and ``file:`` prompts."""

from __future__ import annotations

import os
import re
from pathlib import Path

from hpcrnn.errors import ConfigError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def expand_env(value: str, key: str, src: str) -> str:
    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(3)
        if name in os.environ:
            return os.environ[name]
        if m.group(2) is not None:
            return m.group(2)
        raise ConfigError(f"{src}: {key}: environment variable ${{{name}}} is not set")

    return _ENV.sub(sub, value)


# Config strings reach sbatch scripts, shell lines and file names: no control characters there. Only the
# prompt is text to feed the model, where newlines and tabs are its layout.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PROMPT_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_TEXT_KEYS = {"generate.prompt"}


def _check_text(value: str, key: str, src: str) -> str:
    bad = (_PROMPT_CONTROL if key in _TEXT_KEYS else _CONTROL).search(value)
    if bad:
        raise ConfigError(f"{src}: {key}: control character {bad.group()!r} not allowed in {value!r}")
    return value


PROMPT_FILE = "file:"
PROMPT_FILE_MAX = 1 << 20  # bytes: a prompt is a recipe's start, not a corpus


def prompt_text(value: str, key: str, src: str) -> str:
    """A prompt as given, or for ``file:PATH`` the text of that file (UTF-8, relative to the current
    directory), checked like a prompt written in the config."""
    if not value.startswith(PROMPT_FILE):
        return _check_text(value, key, src)
    name = value[len(PROMPT_FILE) :].strip()
    _check_text(name, f"{key} (file name)", src)
    if not name:
        raise ConfigError(f"{src}: {key}: 'file:' needs a path, e.g. file:prompts/soup.txt")
    path = Path(name).expanduser().absolute()
    try:
        if not path.is_file():
            raise ConfigError(f"{src}: {key}: {path}: no such file (or not a regular file)")
        if path.stat().st_size > PROMPT_FILE_MAX:
            raise ConfigError(f"{src}: {key}: {path}: larger than {PROMPT_FILE_MAX} bytes: not a prompt")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{src}: {key}: {path}: not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"{src}: {key}: {path}: cannot read: {e.strerror or e}") from None
    if text.startswith(PROMPT_FILE):
        raise ConfigError(f"{src}: {key}: {path}: a prompt file that names another prompt file")
    return _check_text(text, key, src)
