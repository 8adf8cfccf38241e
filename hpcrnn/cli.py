"""The shared shell wrapper of every stage: `python -m hpcrnn.<stage> CONFIG [key=value ...]`.

It parses arguments (options anywhere among the overrides), loads the config with the one loader, calls
``run_<stage>(cfg)`` and maps the outcome to the documented exit statuses. User errors print one line
without a traceback (``--debug`` shows it). The stages write the run's resolved ``config.yaml`` themselves,
once the run is theirs and its inputs are valid.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable

from hpcrnn.config import load_config
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
        help="dotted overrides parsed as YAML, e.g. train.max_steps=200 model.cell=gru",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (base chain, overrides and ${VAR} applied, paths absolute) and exit",
    )
    return p


def guarded(prog: str, debug: bool, body: Callable[[], int | None]) -> int:
    """Run ``body`` and map its outcome to the documented exit statuses: a user error is one line naming
    the culprit, a bug one line too (``--debug`` shows the traceback of either)."""
    try:
        return int(body() or EXIT_OK)
    except HpcrnnError as e:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug: one line unless --debug
        if debug:
            traceback.print_exc()
        msg = str(e).splitlines()[0] if str(e) else ""
        print(
            f"{prog}: internal error: {e.__class__.__name__}: {msg} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_ERROR


def run_cli(parser: argparse.ArgumentParser, fn: Callable, argv: list[str] | None = None) -> int:
    """Parse, load, call ``fn(cfg, args)``; return the exit status (never raises for user errors)."""
    # options may stand anywhere among the overrides: `launch CONFIG --cluster local train.lr=0.1`
    args = parser.parse_intermixed_args(argv)

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
