"""The shared shell wrapper of every stage: `python -m hpcrnn.<stage> CONFIG [key=value ...]`.

It parses arguments (options anywhere among the overrides; ``--train.max_steps=50`` is the override
``train.max_steps=50``, argparse's and nanoGPT's habit), loads the config with the one loader, calls
``run_<stage>(cfg)`` and maps the outcome to the documented exit statuses. User errors print one line
without a traceback (``--debug`` shows it). The stages write the run's resolved ``config.yaml`` themselves,
once the run is theirs and its inputs are valid.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import select
import stat
import sys
import traceback
from collections.abc import Callable

from hpcrnn.config import SECTIONS, load_config
from hpcrnn.errors import EXIT_ERROR, EXIT_OK, HpcrnnError

EPILOG = """exit statuses: 0 done; 1 internal error; 2 usage/config/input error;
3 training diverged (non-finite loss); 4 disk full or I/O error (nothing complete lost);
75 checkpointed, requeue me; 76 checkpointed, stopped.
Relative paths in a config resolve against the current directory; the resolved copy in the run
directory holds absolute paths."""


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description=description, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("config", help="experiment YAML file, or a run directory holding config.yaml")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides parsed as YAML, e.g. train.max_steps=200 model.cell=gru (or --train.max_steps=200; "
        "+key=value sets a key too, ~key resets it to its default)",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (base chain, overrides and ${VAR} applied, paths absolute) and exit",
    )
    return p


def _stdout_gone() -> bool:
    """Has the reader of our stdout gone (``| head``, a closed pipe or socket)? A pipe whose reader closed
    polls as an error; a file, a terminal or a replaced ``sys.stdout`` never counts."""
    try:
        fd = sys.stdout.fileno()
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            return False
        p = select.poll()
        p.register(fd, select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in p.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _quiet_stdout() -> None:
    """What is left to print goes nowhere, the interpreter's final flush included (no "Exception ignored
    ... BrokenPipeError" at exit): the Python documentation's advice for SIGPIPE."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _closed_early(e: BaseException) -> bool:
    """A write to stdout after its reader went: a normal end for a command that prints (``| head -3``)."""
    return isinstance(e, OSError) and e.errno == errno.EPIPE and _stdout_gone()


def add_checkpoint_option(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint STEP|best|last``, as every command that reads a run's checkpoint takes it."""
    parser.add_argument(
        "--checkpoint",
        metavar="STEP|best|last",
        default=None,
        help="a step, a checkpoint folder, 'last' (the newest complete checkpoint, the default) or 'best' "
        "(the lowest validation loss)",
    )


def guarded(prog: str, debug: bool, body: Callable[[], int | None]) -> int:
    """Run ``body`` and map its outcome to the documented exit statuses: a user error is one line naming
    the culprit, a bug one line too (``--debug`` shows the traceback of either). Stdout closed early by
    its reader (``... | head -3``) ends the command quietly, exit 0: everything else printed goes nowhere."""
    code = _guarded(prog, debug, body)
    try:
        if sys.stdout is not None:
            sys.stdout.flush()  # what is still buffered, here rather than in the interpreter's exit
    except OSError as e:
        if not _closed_early(e):
            return _internal(prog, debug, e)
        _quiet_stdout()
    return code


def _guarded(prog: str, debug: bool, body: Callable[[], int | None]) -> int:
    try:
        return int(body() or EXIT_OK)
    except OSError as e:
        if not _closed_early(e):
            return _internal(prog, debug, e)
        _quiet_stdout()
        return EXIT_OK
    except HpcrnnError as e:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: one line unless --debug
        return _internal(prog, debug, e)


def _internal(prog: str, debug: bool, e: BaseException) -> int:
    if debug:
        traceback.print_exc()
    msg = str(e).splitlines()[0] if str(e) else ""
    print(
        f"{prog}: internal error: {e.__class__.__name__}: {msg} (rerun with --debug for the traceback)",
        file=sys.stderr,
    )
    return EXIT_ERROR


_SECTION_OPTION = re.compile(rf"--(?:{'|'.join(SECTIONS)})\.[^=]")  # --train.max_steps[=...]
_NUMBER = re.compile(r"-[0-9.]")  # a negative number is a value, not an option: --train.seed -1


def _option_overrides(words: list[str]) -> tuple[list[str], list[tuple[int, str]]]:
    """(the words left for argparse, [(position, override)]): each ``--SECTION.KEY=VALUE``, or
    ``--SECTION.KEY VALUE``, whose SECTION is a config section is the override ``SECTION.KEY=VALUE``.
    Real options (none has a dot) and everything after ``--`` stand as given. ValueError: no value."""
    rest: list[str] = []
    given: list[tuple[int, str]] = []
    i = 0
    while i < len(words):
        w = words[i]
        if w == "--":
            rest += words[i:]
            break
        if not _SECTION_OPTION.match(w):
            rest.append(w)
        elif "=" in w:
            given.append((i, w[2:]))
        elif i + 1 < len(words) and (not words[i + 1].startswith("-") or _NUMBER.match(words[i + 1])):
            given.append((i, f"{w[2:]}={words[i + 1]}"))
            i += 1
        else:
            raise ValueError(f"argument {w}: expected a value: {w}=VALUE (the override {w[2:]}=VALUE)")
        i += 1
    return rest, given


def _in_order(words: list[str], positional: list[str], given: list[tuple[int, str]]) -> list[str]:
    """The positional overrides and the option ones in the order they stood on the command line (a later
    override of a key wins)."""
    taken = {i for i, _ in given}
    placed, j = list(given), 0
    for i, w in enumerate(words):
        if j < len(positional) and i not in taken and w == positional[j]:
            placed.append((i, w))
            j += 1
    placed += [(len(words), w) for w in positional[j:]]
    return [w for _, w in sorted(placed, key=lambda t: t[0])]


def parse_cli(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """The arguments of a command that takes ``CONFIG [key=value ...]``: options may stand anywhere among
    the overrides (`launch CONFIG --cluster local train.lr=0.1`), ``--train.lr=0.1`` is the override
    ``train.lr=0.1``, and ``--print-config`` asks for no option a run needs (export's ``-o``)."""
    words = sys.argv[1:] if argv is None else list(argv)
    try:
        rest, given = _option_overrides(words)
    except ValueError as e:
        parser.error(str(e))
    if "--print-config" in rest:  # only the config is printed: nothing else is needed
        for action in parser._actions:
            if action.option_strings:
                action.required = False
    args = parser.parse_intermixed_args(rest)
    if given and not hasattr(args, "overrides"):
        parser.error(f"argument --{given[0][1].partition('=')[0]}: {parser.prog} takes no overrides")
    if given:
        args.overrides = _in_order(words, list(args.overrides), given)
    return args


def run_cli(parser: argparse.ArgumentParser, fn: Callable, argv: list[str] | None = None) -> int:
    """Parse, load, call ``fn(cfg, args)``; return the exit status (never raises for user errors)."""
    args = parse_cli(parser, argv)

    def body() -> int:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:  # nothing runs and nothing is written
            sys.stdout.write(cfg.to_yaml())
            return EXIT_OK
        result = fn(cfg, args)
        return int(getattr(result, "exit_code", EXIT_OK) or EXIT_OK)

    return guarded(parser.prog, args.debug, body)


def main_for(prog: str, description: str, fn: Callable, argv: list[str] | None = None) -> int:
    return run_cli(make_parser(prog, description), fn, argv)
