"""Training throughput of the three training modes (data.sequences) with the same model and tokens a step.

    python bench/bench_modes.py [--corpus ../shared/data/recipes/recipes-5k.txt] [--steps 40] [--rounds 2]

The lecture's network (LSTM 256, embedding 256) trained by ``hpcrnn.train`` itself in ``windows`` (batch
128 x window 50), ``stream`` (128 streams x 50 tokens a step, the state carried) and ``documents`` (whole
recipes, batched by length; the batch is sized to about the same supervised tokens a step: 128 x 50 /
mean recipe length). Figure: supervised tokens a second (padding not counted), the median of the
trainer's own train records after the first, best of the rounds; the modes are interleaved round by
round so drift in the machine's speed hits all alike, and reported as ratios to ``windows`` of the same
run. Never asserted as a test: it prints figures with the machine and the date.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hpcrnn.process import reexec_with_tuned_heap  # noqa: E402

reexec_with_tuned_heap()  # the malloc settings python -m hpcrnn.train runs with, for every loop here
from bench.common import header  # noqa: E402
from hpcrnn.config import from_dict  # noqa: E402
from hpcrnn.data.build import run_preprocess  # noqa: E402
from hpcrnn.data.corpus import open_corpus  # noqa: E402
from hpcrnn.fsutil import read_jsonl  # noqa: E402
from hpcrnn.train.loop import run_train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODES = ("windows", "stream", "documents")


def config(corpus: str, scratch: Path, mode: str, name: str, steps: int, batch: int, threads: int):
    return from_dict(
        {
            "run": {"name": name},
            "paths": {"scratch": str(scratch), "jobs": str(scratch / "jobs")},
            "data": {"corpus": corpus, "document_start": "^Title:", "window": 50, "sequences": mode},
            "model": {"cell": "lstm", "hidden": 256, "embedding": 256},
            "train": {
                "batch_size": batch,
                "max_steps": steps,
                "log_every": 5,
                "eval_every": 10**6,
                "checkpoint_every": 10**6,
                "threads": threads,
                "progress": "lines",
            },
        }
    )


def tokens_per_s(cfg) -> float:
    recs = [r["tokens_per_s"] for r in read_jsonl(cfg.metrics_path) if r.get("split") == "train"]
    return statistics.median(recs[1:])  # the first interval holds the warm-up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared/data/recipes/recipes-5k.txt"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(header("bench_modes"))
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        base = config(args.corpus, scratch, "windows", "prep", 1, 128, args.threads)
        run_preprocess(base)
        c = open_corpus(base.h5_path)
        lengths = np.diff(np.append(c.documents(), len(c)))
        doc_batch = max(1, round(128 * 50 / lengths.mean()))
        print(
            f"corpus {args.corpus}: {len(c):,} tokens, {len(lengths):,} documents, mean {lengths.mean():.0f} "
            f"tokens; documents batch {doc_batch} (~{doc_batch * lengths.mean():,.0f} tokens a step)"
        )
        best = {m: 0.0 for m in MODES}
        for r in range(args.rounds):
            for mode in MODES:
                batch = doc_batch if mode == "documents" else 128
                cfg = config(args.corpus, scratch, mode, f"{mode}-{r}", args.steps, batch, args.threads)
                cfg.data.h5_path = str(base.h5_path)
                run_train(cfg)
                best[mode] = max(best[mode], tokens_per_s(cfg))
                print(f"round {r + 1} {mode:<9} {tokens_per_s(cfg):>9,.0f} tokens/s", flush=True)
    print(f"\n| mode | supervised tokens/s (best of {args.rounds}) | vs windows |\n|---|---|---|")
    for mode in MODES:
        print(f"| {mode} | {best[mode]:,.0f} | {best[mode] / best['windows']:.1%} |")


if __name__ == "__main__":
    main()
