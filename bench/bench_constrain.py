"""Lexically constrained decoding (``generate.listed_bias`` / ``generate.unlisted_bias``) on a trained run.

    python bench/bench_constrain.py RUN [--recipes 200] [--bias 0:0 1:0 0:1 2:2 4:4] [--unprompted 200]
                                        [--unprompted-bias 0:0 4:4] [key=value ...]

For each ``LISTED:UNLISTED`` pair: ``python -m hpcrnn.evaluate RUN --complete FILE`` (hpcrnn/generate/
complete.py) on the first ``--recipes`` recipes of the run's test split (each cut after its ingredient
block, the rest generated with the run's ``generate`` sampling), printing listed-used, extra items,
structure, the share ending on their own end-of-recipe token and coherence, beside the real recipes', and
once the perplexity of the real instructions given the real ingredient block; with ``--unprompted N``,
also the coherence, structure and repeated 4-grams of N recipes written from the start of a recipe at
the ``--unprompted-bias`` pairs (default: the first and the last of ``--bias``), beside N real test
recipes' (issue 28: unprompted generation must stay as good). ``key=value``: config overrides
(``generate.temperature=0.7``, ``generate.precision=fp32``). Runs on the CPU, as ``--complete`` does, with
``generate.precision`` resolved as the job resolves it (bf16 products on a CPU with bf16 kernels). Not a
test: it prints figures with the machine and the date.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import header  # noqa: E402
from hpcrnn.config import load_config  # noqa: E402
from hpcrnn.data.corpus import open_corpus  # noqa: E402
from hpcrnn.generate import quality as Q  # noqa: E402
from hpcrnn.generate.complete import run_complete  # noqa: E402
from hpcrnn.generate.corpus_view import CorpusView  # noqa: E402
from hpcrnn.generate.describe import Describer, build_quality_context, real_sample_quality  # noqa: E402
from hpcrnn.generate.job import decode_recipes  # noqa: E402
from hpcrnn.generate.prompts import plan_prompt  # noqa: E402
from hpcrnn.model.precision import resolve_precision  # noqa: E402
from hpcrnn.model.restore import open_checked  # noqa: E402


def _pairs(values: list[str]) -> list[tuple[float, float]]:
    out = []
    for v in values:
        a, _, b = v.partition(":")
        out.append((float(a), float(b or 0.0)))
    return out


def test_file(cv: CorpusView, n: int, path: Path) -> int:
    """The first ``n`` test-split recipes of the corpus, as text in the corpus layout."""
    docs = cv.docs(2)[:n]
    # a word below min_count is the <unk> token in the corpus; written as "unk" (itself unknown) it reads back
    # as that one token, where "<unk>" would read as three ("<", the unknown "unk", ">")
    texts = [re.sub(r"<unk>", "unk", cv.text(cv.doc_tokens(d)), flags=re.I) for d in docs]
    texts = [t for t in texts if t.lstrip().lower().startswith("title:")]
    path.write_text("\n".join(t if t.endswith("\n") else t + "\n" for t in texts), encoding="utf-8")
    return len(texts)


def unprompted(cfg, cv: CorpusView, n: int, qc) -> dict:
    """Structure and coherence of ``n`` recipes from the start of a recipe."""
    _, model, _ = open_checked(cfg, open_corpus(cfg.h5_path), None)
    g = dataclasses.replace(cfg.generate, prompt="", prompts=None, num_recipes=n)
    c = dataclasses.replace(cfg, generate=g)
    describe = Describer(cv, qc, 0)
    pp = plan_prompt(c, cv)
    qs, ended = [], 0
    cpu = torch.device("cpu")
    precision = resolve_precision(g.precision, cpu, "generate")  # as --complete and the job resolve it
    for _, shown, toks, stopped in decode_recipes(c, cv, model, pp, list(range(1, n + 1)), cpu, precision):
        qs.append(describe.submit(shown, toks)()[2])
        ended += int(stopped)
    s = Q.summarize(qs)
    s["stopped_at_end_of_recipe"] = round(ended / n, 4)
    return s


def _cell(v) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run directory or its config file")
    p.add_argument("--recipes", type=int, default=200, help="test-split recipes to complete (default 200)")
    p.add_argument("--bias", nargs="+", default=["0:0", "1:0", "0:1", "2:2", "4:4"], metavar="LISTED:UNLISTED")
    p.add_argument("--unprompted", type=int, default=0, metavar="N", help="also N recipes without a prompt")
    p.add_argument("--unprompted-bias", nargs="+", default=None, metavar="LISTED:UNLISTED", help="at these pairs")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = p.parse_intermixed_args(argv)  # overrides before or after the options
    torch.set_num_threads(int(os.environ.get("HPCRNN_BENCH_THREADS", torch.get_num_threads())))
    base = load_config(args.run, args.overrides)
    cv = CorpusView.open(base.h5_path)
    print(header("bench_constrain"))
    g = base.generate
    prec = resolve_precision(g.precision, torch.device("cpu"), "generate")
    print(
        f"# run {base.run.name}: temperature {g.temperature}, top_k {g.top_k}, top_p {g.top_p}, max {g.max_tokens}, "
        f"{prec} products"
    )
    cols = ("listed_used_mean", "extra_items_mean", "structure", "stopped_at_end_of_recipe", "coherence_mean")
    print(f"{'listed:unlisted':<16}" + "".join(f"{c.split('_mean')[0][:14]:>16}" for c in cols) + f"{'seconds':>10}")
    with tempfile.TemporaryDirectory(prefix="bench-constrain-") as d:
        path = Path(d) / "test-recipes.txt"
        n = test_file(cv, args.recipes, path)
        print(f"# {n} test-split recipes, each cut after its ingredient block")
        real = None
        for lb, ub in _pairs(args.bias):
            over = [*args.overrides, f"generate.listed_bias={lb}", f"generate.unlisted_bias={ub}"]
            cfg = load_config(args.run, over)
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):
                res = run_complete(cfg, None, path, score=real is None)
            gen, first, real = res["generated"], real is None, res["real"]
            secs = time.perf_counter() - t0
            if first:
                r = res["real_instructions"]
                print(
                    f"# real instructions given the real ingredient block: ppl {r['ppl']:.2f}, acc {r['acc']:.2%} "
                    f"({r['tokens']:,} tokens; checkpoint step {res['step']})"
                )
            print(f"{f'{lb:g}:{ub:g}':<16}" + "".join(f"{_cell(gen.get(c)):>16}" for c in cols) + f"{secs:>10.1f}")
        if real is not None:
            print(f"{'real':<16}" + "".join(f"{_cell(real.get(c)):>16}" for c in cols))
        if not args.unprompted:
            return 0
        with contextlib.redirect_stdout(sys.stderr):
            qc = build_quality_context(cv, base.data.seed)
        r = Q.summarize(real_sample_quality(cv, qc, args.unprompted, base.generate.seed)[0])
        print(
            f"unprompted real: coherence {_cell(r.get('coherence_mean'))}, structure {_cell(r.get('structure'))}, "
            f"repeated 4-grams {r['repeated_4grams_mean']:.4f} ({r['recipes']} test recipes)"
        )
        rep = r["repeated_4grams_mean"]
        ends = args.bias[:1] + args.bias[-1:]
        pairs = _pairs(args.unprompted_bias) if args.unprompted_bias else sorted(set(_pairs(ends)))
        for lb, ub in pairs:
            cfg = load_config(args.run, [*args.overrides, f"generate.listed_bias={lb}", f"generate.unlisted_bias={ub}"])
            t0 = time.perf_counter()
            s = unprompted(cfg, cv, args.unprompted, qc)
            print(
                f"unprompted {lb:g}:{ub:g}: coherence {_cell(s.get('coherence_mean'))}, structure "
                f"{_cell(s.get('structure'))}, ending {_cell(s.get('stopped_at_end_of_recipe'))}, repeated 4-grams "
                f"{s['repeated_4grams_mean']:.4f} ({s['repeated_4grams_mean'] / rep:.2f}x real) "
                f"({args.unprompted} recipes, {time.perf_counter() - t0:.0f} s)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
