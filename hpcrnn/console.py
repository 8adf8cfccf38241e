"""The `hpcrnn` console script: `hpcrnn <command> ARGS ...` is `python -m hpcrnn.<command> ARGS ...`.

Each command runs its entry module exactly as `python -m` does (as ``__main__``, with the same arguments,
exit statuses and signal handling), so the two forms never drift apart. A command whose module is not in
this installation (one added in a later version) is a one-line error, exit 2.
"""

from __future__ import annotations

import difflib
import importlib.util
import runpy
import sys

from hpcrnn import __version__
from hpcrnn.errors import EXIT_USAGE

# command -> what it does; the module is hpcrnn.<command>
COMMANDS = {
    "launch": "the pipeline of a config: Slurm jobs chained with afterok, or here stage after stage",
    "preprocess": "corpus text -> <run dir>/corpus.h5",
    "train": "train or resume the run (alone, under srun, torchrun or submitit)",
    "evaluate": "a checkpoint's figures on its splits or on any text",
    "generate": "recipes from the newest complete checkpoint",
    "sample": "a few recipes of a run or model file printed to the terminal (--interactive: prompts from stdin)",
    "status": "where a run stands: stages, jobs, checkpoints, perplexity, recipes",
    "sweep": "several runs from one config and a grid of overrides",
    "plot": "curves of metrics.jsonl",
    "export": "a checkpoint as one self-contained model file",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: hpcrnn <command> [ARGS ...]     (the same as: python -m hpcrnn.<command> [ARGS ...])",
        "       hpcrnn --version",
        '       hpcrnn --completion bash|zsh   (shell completion: eval "$(hpcrnn --completion bash)" in ~/.bashrc)',
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {what}" for name, what in COMMANDS.items()]
    lines += ["", "hpcrnn <command> --help shows a command's arguments."]
    return "\n".join(lines)


def _error(msg: str) -> int:
    print(f"hpcrnn: error: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _completion(name: str, rest: list[str]) -> int:
    from hpcrnn import completion  # noqa: PLC0415 -- only for these two options

    if name == "--completion":
        if len(rest) != 1 or rest[0] not in ("bash", "zsh"):
            return _error("--completion takes one shell: bash or zsh")
        sys.stdout.write(completion.script(rest[0]))
        return 0
    # --complete LINE POINT: what the shell function asks; never an error the shell would show
    line = rest[0] if rest else ""
    point = int(rest[1]) if len(rest) > 1 and rest[1].isdigit() else None
    for c in completion.complete(line, point, list(COMMANDS)):
        print(c)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        print(usage(), file=sys.stderr)
        return EXIT_USAGE
    name, rest = argv[0], argv[1:]
    if name in ("-h", "--help", "help"):
        print(usage())
        return 0
    if name in ("-V", "--version"):
        print(f"hpcrnn {__version__}")
        return 0
    if name in ("--completion", "--complete"):
        return _completion(name, rest)
    if name not in COMMANDS:
        hint = difflib.get_close_matches(name, list(COMMANDS), n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        return _error(f"unknown command {name!r}{extra}; commands: {', '.join(COMMANDS)}")
    module = f"hpcrnn.{name}"
    try:
        spec = importlib.util.find_spec(module)
    except ImportError:
        spec = None
    if spec is None:
        return _error(f"'hpcrnn {name}' is not available in this version ({__version__}): no module {module}")
    sys.argv = [f"hpcrnn {name}", *rest]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code
        if code is None or isinstance(code, int):
            return int(code or 0)
        print(code, file=sys.stderr)  # sys.exit("message"), as Python itself reports it
        return 1
    return 0


def console() -> None:
    """The [project.scripts] entry point."""
    sys.exit(main())
