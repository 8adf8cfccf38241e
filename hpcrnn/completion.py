"""Shell completion for `hpcrnn`: commands, their options, config keys after a config file, run directories.

    eval "$(hpcrnn --completion bash)"     # in ~/.bashrc (zsh: hpcrnn --completion zsh, in ~/.zshrc)

The shell function hands the line typed so far to ``hpcrnn --complete LINE POINT``, which prints one
candidate a line. Written here rather than through argcomplete: ``hpcrnn`` dispatches each command to its own
module's parser, and a completion must answer without importing torch (a key or a path completes from the
schema and the file system alone; only a command's ``--options`` import its module, as ``--help`` would).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import runpy
import shlex
import sys
import typing
import warnings
from pathlib import Path

from hpcrnn.config.schema import Config

# a positional that names what the command works on: after one, the next words are config overrides
_TARGET_SUFFIXES = (".yaml", ".yml")
_MARKERS = ("config.yaml", "sweep.yaml")  # a run directory's resolved config; a sweep directory's file

_BASH = r"""_hpcrnn_complete() {
  local IFS=$'\n'
  COMPREPLY=($(hpcrnn --complete "$COMP_LINE" "$COMP_POINT" 2>/dev/null))
  if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *[=./] ]]; then compopt -o nospace 2>/dev/null; fi
}
complete -o default -F _hpcrnn_complete hpcrnn
"""
_ZSH = "autoload -U +X bashcompinit && bashcompinit\n" + _BASH


def script(shell: str) -> str:
    if shell not in ("bash", "zsh"):
        raise ValueError(f"--completion: {shell!r} is not a shell this supports (bash, zsh)")
    return _BASH if shell == "bash" else _ZSH


def config_keys(cls=Config, prefix: str = "") -> list[str]:
    """Every settable dotted key of the schema, sections before their keys (``train``, ``train.lr``)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name == "source":
            continue
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            out += [key, *config_keys(hints[f.name], key + ".")]
        else:
            out.append(key)
    return out


def _key_candidates(word: str) -> list[str]:
    """``tr`` -> ``train.``; ``train.l`` -> ``train.lr=`` (also after Hydra's ``+``/``~`` and ``--``)."""
    lead = next((p for p in ("--", "+", "~") if word.startswith(p)), "")
    body = word[len(lead) :]
    keys = config_keys()
    sections = {k for k in keys if any(o.startswith(k + ".") for o in keys)}
    depth = body.count(".")  # one level at a time: ``train.`` before ``train.wandb.project=``
    out = []
    for k in keys:
        if not k.startswith(body) or k.count(".") != depth:
            continue
        if k in sections:
            out.append(f"{lead}{k}.")
        else:
            out.append(f"{lead}{k}" + ("" if lead == "~" else "="))
    return sorted(set(out))


def _path_candidates(word: str) -> list[str]:
    """Directories (run and sweep directories among them), configs and model files under the typed path."""
    head, sep, tail = word.rpartition("/")
    base = Path(head or "/") if sep else Path(".")
    try:
        entries = sorted(os.scandir(base), key=lambda e: e.name)
    except OSError:
        return []
    out = []
    for e in entries:
        if not e.name.startswith(tail) or (e.name.startswith(".") and not tail.startswith(".")):
            continue
        shown = f"{head}{sep}{e.name}"
        try:
            if e.is_dir():
                out.append(shown + "/")
            elif e.name.endswith((*_TARGET_SUFFIXES, ".pt")):
                out.append(shown)
        except OSError:
            continue
    return out


def _is_target(word: str) -> bool:
    if word.endswith(_TARGET_SUFFIXES):
        return True
    p = Path(word)
    return p.is_dir() and any((p / m).is_file() for m in _MARKERS)


def command_options(command: str) -> list[str]:
    """The options of ``hpcrnn <command>``, read from the parser its module builds (as ``--help`` would)."""

    class _Captured(Exception):
        pass

    captured: list[argparse.ArgumentParser] = []

    def capture(self, *args, **kwargs):
        captured.append(self)
        raise _Captured

    saved = (argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args, sys.argv)
    argparse.ArgumentParser.parse_args = capture  # type: ignore[method-assign]
    argparse.ArgumentParser.parse_known_args = capture  # type: ignore[method-assign]
    sys.argv = [f"hpcrnn {command}"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # runpy's note on a module imported before: harmless here
            runpy.run_module(f"hpcrnn.{command}", run_name="__main__", alter_sys=False)
    except (_Captured, SystemExit, Exception):  # noqa: BLE001 -- completion never fails the shell
        pass
    finally:
        argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args, sys.argv = saved
    return sorted({s for p in captured for a in p._actions for s in a.option_strings if s.startswith("--")})


def complete(line: str, point: int | None, commands: list[str]) -> list[str]:
    """The candidates for the word under the cursor of ``line`` (bash's COMP_LINE / COMP_POINT), each
    given from the point where the shell's own word begins (bash splits words at ``=`` and ``:`` too)."""
    text = line[: len(line) if point is None else point]
    try:
        words = shlex.split(text)
    except ValueError:  # an open quote: complete the words as typed
        words = text.split()
    if text[-1:].isspace() or not words:
        words.append("")
    words = words[1:]  # the program's name
    cur, before = words[-1], words[:-1]
    if not before:
        out = [c for c in [*commands, "--help", "--version", "--completion"] if c.startswith(cur)]
    elif before[0] not in commands:
        out = []
    elif cur.startswith("--") and not any(_is_target(w) for w in before[1:]) or cur.startswith("-") and "." not in cur:
        out = [o for o in command_options(before[0]) if o.startswith(cur)]
    elif "=" in cur:
        out = []
    elif any(_is_target(w) for w in before[1:]) and "/" not in cur:
        out = _key_candidates(cur) if cur[:1] != "-" or cur.startswith("--") else []
    else:
        out = _path_candidates(cur)
    cut = max(cur.rfind("="), cur.rfind(":")) + 1
    return [c[cut:] for c in out]
