"""model.softmax: full against adaptive on a vocabulary of 100k+ words (issue 27), side by side in one run.

    python bench/bench_softmax.py [--corpus ../shared/data/recipes/recipes-all.txt.xz] [--tokenizer whitespace]
                                  [--minutes 4] [--hidden 256] [--batch 20] [--window 35] [--held-out 20000]

The corpus is preprocessed once (``min_count 1``: every word of the train split kept) into
``scratch/bench-softmax``. Then, for each softmax, the same network (LSTM ``--hidden``, embedding as wide)
trains from the same seed as the trainer trains (stream mode, ``--batch`` streams x ``--window`` tokens,
the state carried, SGD lr 20, clip 0.25, the model's own ``lm_loss``) for ``--minutes`` of wall time, one
after the other, then scores the first ``--held-out`` tokens of the val split as one stream (the whole
distribution: what evaluation and generation pay). Reports training tokens/s, steps done, held-out
perplexity after equal time, and the evaluation's tokens/s.

Prints figures with the machine and the date; never asserted as a test.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import header, peak_rss_mb  # noqa: E402
from hpcrnn.config import ModelConfig, from_dict  # noqa: E402
from hpcrnn.data.build import run_preprocess  # noqa: E402
from hpcrnn.data.corpus import open_corpus  # noqa: E402
from hpcrnn.data.sequences import StreamBatches  # noqa: E402
from hpcrnn.model.adaptive import cutoffs_for  # noqa: E402
from hpcrnn.model.rnn import build_model, token_loss  # noqa: E402
from hpcrnn.train.loop import lm_loss  # noqa: E402


def corpus(args):
    raw = {
        "run": {"name": f"softmax-{args.tokenizer}"},
        "paths": {"scratch": str(ROOT / "scratch" / "bench-softmax")},
        "data": {
            "corpus": args.corpus,
            "tokenizer": args.tokenizer,
            "document_start": "^Title:",
            "min_count": 1,
            "window": args.window,
        },
    }
    return open_corpus(run_preprocess(from_dict(raw, "bench")).path)


def detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def train_for(model, tokens, c, args) -> tuple[int, float]:
    """Train ``--minutes``: (steps, supervised tokens/s)."""
    lo, hi = c.split_ranges["train"]
    batches = StreamBatches(lo, hi, args.batch, args.window, 0, 1)
    opt = torch.optim.SGD(model.parameters(), lr=20.0)
    model.train()
    state, step, t0 = None, 0, time.perf_counter()
    while time.perf_counter() - t0 < args.minutes * 60:
        if batches.resets(step):
            state = None
        loss, _, _, state = lm_loss(model, batches.rank_batch(tokens, step), "all", state)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        state = detach(state)
        step += 1
    return step, step * args.batch * args.window / (time.perf_counter() - t0)


@torch.no_grad()
def held_out(model, tokens, c, args) -> tuple[float, float]:
    """(perplexity of the first ``--held-out`` val tokens read as one stream, tokens/s)."""
    lo, _ = c.split_ranges["val"]
    x = torch.from_numpy(tokens[lo : lo + args.held_out + 1].astype("int64"))[None]
    model.eval()
    state, total, n, t0 = None, 0.0, 0, time.perf_counter()
    for a in range(0, args.held_out, 256):
        inp, y = x[:, a : a + 256], x[:, a + 1 : a + 257]
        inp = inp[:, : y.shape[1]]
        out, state = model(inp, state)
        total += float(token_loss(model, out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="sum"))
        n += y.numel()
    return math.exp(total / n), n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared/data/recipes/recipes-all.txt.xz"))
    ap.add_argument("--tokenizer", default="whitespace", choices=["whitespace", "recipe"])
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--window", type=int, default=35)
    ap.add_argument("--held-out", type=int, default=20000)
    args = ap.parse_args()
    print(header("bench_softmax"))
    c = corpus(args)
    tokens, V = c.tokens(), len(c.vocab)
    print(
        f"# {args.corpus}: tokenizer {args.tokenizer}, min_count 1: vocabulary {V:,}, {len(tokens) / 1e6:.1f}M tokens"
    )
    print(f"# LSTM {args.hidden}, stream {args.batch} x {args.window}, SGD lr 20, clip 0.25, {args.minutes} min each")
    print("| softmax | cutoffs | parameters | train tokens/s | steps | held-out ppl | eval tokens/s |")
    print("|---|---|---|---|---|---|---|")
    base = None
    for softmax in ("full", "adaptive"):
        torch.manual_seed(0)
        mc = ModelConfig(hidden=args.hidden, embedding=args.hidden, softmax=softmax)
        model = build_model(mc, V)
        steps, tps = train_for(model, tokens, c, args)
        ppl, eval_tps = held_out(model, tokens, c, args)
        base = base or tps
        cut = cutoffs_for([], V) if softmax == "adaptive" else "-"
        params = sum(p.numel() for p in model.parameters())
        print(
            f"| {softmax} | {cut} | {params / 1e6:.1f}M | {tps:,.0f} (x{tps / base:.1f}) | {steps} | {ppl:,.1f} | "
            f"{eval_tps:,.0f} |",
            flush=True,
        )
    print(f"# peak RSS {peak_rss_mb():.0f} MiB; scratch {tempfile.gettempdir()}")


if __name__ == "__main__":
    main()
