"""`hpcrnn sample RUN|MODEL_FILE [--prompt TEXT|file:PATH] [-n 3] [...]`: recipes printed to the terminal.

    hpcrnn sample scratch/lstm256 -n 3 --prompt "Chocolate cake" --temperature 0.7
    hpcrnn sample lstm256.pt --interactive        # one prompt a line from stdin, -n recipes for each

A thin command over ``hpcrnn.load(PATH).generate(...)`` (hpcrnn/api.py): the generation job's decoding and
recipe text, so the same settings and seed give recipe *i* of ``python -m hpcrnn.generate`` (the settings
not given: the run's ``generate`` section). Nothing is written; no quality figures are computed, so it
starts as fast as the model loads. Recipes go to stdout, each after a blank line and a ``---`` line but the
first; errors are one line on stderr, exit 2. ``--interactive``: each line of stdin is a prompt (an empty
line: the start of a recipe); a refused prompt is one line on stderr and the next line is read; end of
input ends the command (exit 2 when some prompt was refused).
"""

from __future__ import annotations

import argparse
import sys

from hpcrnn.cli import EPILOG, guarded
from hpcrnn.config import GenerateConfig, _build, from_dict, load_config, prompt_text
from hpcrnn.errors import EXIT_OK, EXIT_USAGE, ConfigError, HpcrnnError

__all__ = ["main", "SEPARATOR"]

PROG = "hpcrnn.sample"
SEPARATOR = "---"  # the line between two recipes (with a blank line before it)
# option -> the generate setting it sets
_SETTINGS = {
    "temperature": "--temperature",
    "top_k": "--top-k",
    "top_p": "--top-p",
    "max_tokens": "--max-tokens",
    "seed": "--seed",
    "listed_bias": "--listed-bias",
    "unlisted_bias": "--unlisted-bias",
    "prompt_ingredients": "--prompt-ingredients",
}


def make_sample_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Print recipes of a trained model: a run directory, its config file, or a model file "
        "of hpcrnn export. Settings not given are the run's generate section.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="RUN|MODEL_FILE", help="a run directory, a config file or a model file")
    p.add_argument(
        "--prompt",
        default=None,
        metavar="TEXT|file:PATH",
        help='what each recipe starts from: "" the start of a recipe (default), one line a title, several '
        "lines fed as is, file:PATH a file's text, random a window of test text",
    )
    p.add_argument("-n", "--num", type=int, default=3, metavar="N", help="recipes (per prompt; default 3)")
    p.add_argument("--temperature", type=float, default=None, metavar="T", help="0: greedy")
    p.add_argument("--top-k", type=int, default=None, metavar="K", help="0: off")
    p.add_argument("--top-p", type=float, default=None, metavar="P", help="1: off")
    p.add_argument("--seed", type=int, default=None, metavar="S", help="recipe i draws from stream (S, i)")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N", help="tokens generated per recipe at most")
    p.add_argument(
        "--listed-bias",
        type=float,
        default=None,
        metavar="B",
        help="in the instructions, favour the ingredients the recipe lists and has not named yet (0: off)",
    )
    p.add_argument(
        "--unlisted-bias",
        type=float,
        default=None,
        metavar="B",
        help="in the instructions, disfavour ingredient words the recipe does not list (0: off)",
    )
    p.add_argument(
        "--prompt-ingredients",
        choices=("all", "more"),
        default=None,
        help="all (default): the ingredient lines a prompt ends with are the whole list; more: the model may add some",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="STEP|best|last",
        help="a step, a checkpoint folder, or a name, as hpcrnn.load's checkpoint= (default: the newest "
        "complete checkpoint)",
    )
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: CUDA when present")
    p.add_argument("--interactive", action="store_true", help="read one prompt a line from stdin")
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config these recipes would come from (the settings given applied to its "
        "generate section) and exit; no model is loaded",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def settings(args: argparse.Namespace) -> dict:
    """The generate settings given as options, checked by the config's own rules before any model loads
    (a refusal names the option)."""
    given = {k: getattr(args, k) for k in _SETTINGS if getattr(args, k) is not None}
    if args.num < 1:
        raise ConfigError(f"-n: {args.num} is not a positive number of recipes")
    try:
        _build(GenerateConfig, given, "generate", PROG)
    except ConfigError as e:
        msg = str(e).removeprefix(f"{PROG}: ")
        for k, flag in _SETTINGS.items():
            msg = msg.replace(f"generate.{k}", flag)
        raise ConfigError(msg) from None
    return given


def _prompt(value: str | None) -> str | None:
    """``--prompt``: the text, or a ``file:PATH``'s text (read and checked now, before the model loads)."""
    if value is None:
        return None
    try:
        return prompt_text(value, "generate.prompt", PROG)  # a prompt's rules: newlines and tabs are text
    except ConfigError as e:
        raise ConfigError(str(e).removeprefix(f"{PROG}: ").replace("generate.prompt", "--prompt")) from None


class _Printer:
    """Recipes to stdout, a blank line and ``---`` between two; flushed after each batch."""

    def __init__(self, out):
        self.out = out
        self.first = True

    def recipes(self, texts: list[str]) -> None:
        for text in texts:
            if not self.first:
                self.out.write(f"\n{SEPARATOR}\n\n")
            self.first = False
            self.out.write(text if text.endswith("\n") else text + "\n")
        self.out.flush()


def _interactive(lm, args: argparse.Namespace, given: dict, printer: _Printer) -> int:
    """One prompt a line from stdin, ``-n`` recipes each; a refused prompt is one line and the next is read."""
    code = EXIT_OK
    ask = sys.stdin.isatty()
    while True:
        if ask:
            print("prompt> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:
            return code
        try:
            prompt = prompt_text(line.rstrip("\r\n"), "generate.prompt", "stdin")
            printer.recipes(lm.generate(args.num, prompt, **given))
        except HpcrnnError as e:
            print(f"{PROG}: error: {e}", file=sys.stderr, flush=True)
            code = EXIT_USAGE


def print_config(path: str, given: dict) -> None:
    """The run's (or model file's) resolved config with the options' generate settings in it."""
    from hpcrnn.model.file import is_model_file, read_model_file  # noqa: PLC0415

    if is_model_file(path):
        mf = read_model_file(path)
        cfg = from_dict({**mf.config, "model": mf.model}, str(path), expand=False)
    else:
        cfg = load_config(path)
    for k, v in given.items():
        setattr(cfg.generate, k, v)
    sys.stdout.write(cfg.to_yaml())


def run_sample(args: argparse.Namespace) -> int:
    given = settings(args)
    if args.print_config:
        print_config(args.model, given)
        return EXIT_OK
    if args.interactive and args.prompt is not None:
        raise ConfigError("--prompt with --interactive: the prompts come from stdin, one a line")
    prompt = _prompt(args.prompt)
    import hpcrnn  # noqa: PLC0415 -- the API (and torch) once the arguments are good

    lm = hpcrnn.load(args.model, checkpoint=args.checkpoint, device=args.device)
    printer = _Printer(sys.stdout)
    if args.interactive:
        return _interactive(lm, args, given, printer)
    printer.recipes(lm.generate(args.num, prompt, **given))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = make_sample_parser()
    args = parser.parse_args(argv)
    return guarded(PROG, args.debug, lambda: run_sample(args))


if __name__ == "__main__":
    sys.exit(main())
