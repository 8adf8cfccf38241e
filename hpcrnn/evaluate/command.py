"""`python -m hpcrnn.evaluate CONFIG|RUN_DIR [--checkpoint STEP|best|last] [--text FILE ...] [--protocol P] [--json]`:
a checkpoint's held-out figures (hpcrnn/evaluate/metrics.py) on its run's splits or on text files.

``--complete FILE`` (real recipes: each cut after its ingredient block, the rest generated and compared)
needs generation, a stage above this one: its figures come from :mod:`hpcrnn.generate.complete`, whose
``main`` is this command's with that option served (the entry point ``python -m hpcrnn.evaluate``)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hpcrnn.cli import add_checkpoint_option, make_parser, run_cli
from hpcrnn.data.corpus import open_corpus
from hpcrnn.errors import ConfigError
from hpcrnn.evaluate.metrics import PROTOCOLS, evaluate_split, mode_protocol, score_file
from hpcrnn.model.restore import open_checked
from hpcrnn.progress import clock, use_bar


class _Report:
    """The command's progress: a bar for each split (or file) on a terminal, else one line for each on
    stderr when it is scored (stdout keeps the figures, JSON with --json)."""

    def __init__(self, on: bool):
        self.on, self.bar = on, on and use_bar()
        self.t0 = time.time()

    def label(self, what: str) -> str:
        self.t0 = time.time()
        return f"hpcrnn.evaluate: {what}" if self.bar else ""

    def done(self, what: str, r: dict) -> None:
        if self.on and not self.bar:
            took = clock(time.time() - self.t0)
            print(f"hpcrnn.evaluate: {what}: {r['tokens']:,} tokens scored in {took}", file=sys.stderr, flush=True)


def run_evaluate(
    cfg,
    checkpoint: str | None = None,
    texts: list[str] | tuple = (),
    protocols: list[str] | tuple = (),
    progress: bool = False,
) -> dict:
    """Figures of a checkpoint (newest complete by default) on its run's val and test splits, in the run's
    own protocol and the standard one (or in ``protocols``); or, for each of ``texts``, by the standard
    protocol on that file read exactly as preprocessing reads the corpus (``hpcrnn.data.corpus.encode_file``).
    ``progress``: a bar for each on a terminal, else a line for each on stderr."""
    corpus = open_corpus(cfg.h5_path)
    info, model, meta = open_checked(cfg, corpus, checkpoint)
    results, report = [], _Report(progress)
    if texts:
        for path in texts:
            what = f"{Path(path).name} standard"
            r = score_file(model, corpus, Path(path), progress=report.label(what))
            report.done(what, r)
            results.append({"source": str(path), "protocol": "standard", **r})
    else:
        tokens = corpus.tokens()
        sequences = (meta.get("config") or {}).get("data", {}).get("sequences", "windows")
        for split in ("val", "test"):
            lo, hi = corpus.split_ranges[split]
            if hi - lo < 2:
                continue
            for protocol in dict.fromkeys(protocols or [mode_protocol(sequences), "standard"]):
                what = f"{split} {protocol}"
                r = evaluate_split(model, corpus, tokens, split, protocol, cfg, progress=report.label(what))
                report.done(what, r)
                results.append({"source": split, "protocol": protocol, **r})
    return {"run": cfg.run.name, "checkpoint": str(info.path), "step": info.step, "results": results}


def format_evaluation(res: dict) -> str:
    lines = [
        f"{res['run']}: checkpoint {res['checkpoint']} (step {res['step']})",
        f"{'source':<24} {'protocol':<10} {'ppl':>9} {'acc':>7} {'top5':>7} {'<unk>':>7} {'tokens':>9}",
    ]
    for r in res["results"]:
        lines.append(
            f"{Path(r['source']).name if '/' in r['source'] else r['source']:<24} {r['protocol']:<10} "
            f"{r['ppl']:>9.2f} {r['acc']:>7.2%} {r['top5']:>7.2%} {r['unk']:>7.2%} {r['tokens']:>9,}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None, complete: Callable | None = None) -> int:
    """The command; ``complete(cfg, args)``: what serves ``--complete FILE`` (:mod:`hpcrnn.generate.complete`)."""
    parser = make_parser(
        "hpcrnn.evaluate",
        "Perplexity, top-1/top-5 accuracy and <unk> rate of a checkpoint on its run's splits or on text files.",
    )
    add_checkpoint_option(parser)
    parser.add_argument(
        "--text",
        metavar="FILE",
        nargs="+",
        action="extend",
        default=[],
        help="score these files instead of the splits, read like the corpus",
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        action="append",
        default=[],
        help="score the splits by this protocol (repeatable; default: the run's own and standard); windows "
        "uses data.window, e.g. data.window=50 for the lecture's 50-token windows",
    )
    parser.add_argument(
        "--complete",
        metavar="FILE",
        default=None,
        help="real recipes (corpus layout): cut each after its ingredient block, generate the rest with the "
        "config's sampling, and compare listed-used, extra items, structure and ending with the real "
        "instructions, whose perplexity given the real ingredient block is reported too",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")

    def fn(cfg, args) -> None:
        if args.complete is not None:
            if complete is None:
                raise ConfigError("--complete: run it as python -m hpcrnn.evaluate (this entry point cannot generate)")
            return complete(cfg, args)
        res = run_evaluate(cfg, args.checkpoint, args.text, args.protocol, progress=True)
        print(json.dumps(res, indent=2) if args.json else format_evaluation(res), flush=True)

    return run_cli(parser, fn, argv)
