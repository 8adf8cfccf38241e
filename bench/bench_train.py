"""Training throughput: hpcrnn's trainer vs a minimal hand-written PyTorch loop vs the lecture's formulation.

    python bench/bench_train.py [--corpus ../shared/data/recipes/recipes-5k.txt] [--steps 60] [--device cpu]

The lecture's network (LSTM 256, window 50, batch 128). Figures:
- tokens/s of `hpcrnn.train.loop` (loss on every position), from its own metrics, after warm-up;
- tokens/s of a minimal hand-written loop with the same model, optimizer, clipping and batches;
- the lecture's formulation (one-hot input, loss on the last word only): input tokens/s and supervised
  (predicted) tokens/s — the figure to compare with ours, where every position is supervised;
- checkpoint cost: time to write one checkpoint, as a share of the training time between two checkpoints
  at the default interval (train.checkpoint_every).
Never asserted as a test: it prints figures with the machine and the date.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import header  # noqa: E402
from hpcrnn.config import from_dict  # noqa: E402
from hpcrnn.data.batches import WindowBatches, gather_windows  # noqa: E402
from hpcrnn.data.build import run_preprocess  # noqa: E402
from hpcrnn.data.corpus import open_corpus  # noqa: E402
from hpcrnn.fsutil import read_jsonl  # noqa: E402
from hpcrnn.model.rnn import build_model  # noqa: E402
from hpcrnn.train import checkpoint as ckpt  # noqa: E402
from hpcrnn.train.loop import run_train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _median_step_s(steps: int, warmup: int, step) -> float:
    """Median wall time of ``step(s)`` over ``steps`` calls, the first ``warmup`` left out."""
    times = []
    for s in range(steps):
        t = time.perf_counter()
        step(s)
        times.append(time.perf_counter() - t)
    return statistics.median(times[warmup:])


def hand_loop(tokens, starts, V, steps, device, batch=128, window=50):
    """The minimal loop a person would write: same model, Adam, clipping, same batches."""
    torch.manual_seed(0)
    emb, lstm, head = (
        torch.nn.Embedding(V, 256).to(device),
        torch.nn.LSTM(256, 256, batch_first=True).to(device),
        torch.nn.Linear(256, V).to(device),
    )
    params = [*emb.parameters(), *lstm.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=2e-3)
    wb = WindowBatches(starts, batch, 0, 1, 0)

    def step(s):
        b = gather_windows(tokens, wb.rank_starts(s), window).to(device)
        h, _ = lstm(emb(b[:, :-1]))
        loss = F.cross_entropy(head(h).reshape(-1, V), b[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        loss.item()

    return batch * window / _median_step_s(steps, 5, step)


def lecture_loop(tokens, starts, V, steps, device, batch=128, window=50):
    """The lecture's Keras model in torch: one-hot [B, 50, V] -> LSTM(256) -> last -> softmax(V)."""
    torch.manual_seed(0)
    lstm, head = torch.nn.LSTM(V, 256, batch_first=True).to(device), torch.nn.Linear(256, V).to(device)
    params = [*lstm.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=2e-3)
    wb = WindowBatches(starts, batch, 0, 1, 0)

    def step(s):
        b = gather_windows(tokens, wb.rank_starts(s), window).to(device)
        h, _ = lstm(F.one_hot(b[:, :-1], V).float())
        loss = F.cross_entropy(head(h[:, -1]), b[:, -1])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()

    per_step = _median_step_s(steps, 3, step)
    return batch * window / per_step, batch / per_step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared/data/recipes/recipes-5k.txt"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lecture-steps", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    print(header("bench_train"))
    tmp = Path(tempfile.mkdtemp())
    cfg = from_dict(
        {
            "paths": {"scratch": str(tmp)},
            "run": {"name": "bench"},
            "data": {"corpus": args.corpus, "document_start": "^Title:"},
            "train": {
                "max_steps": args.steps,
                "log_every": 10,
                "eval_every": 10**9,
                "checkpoint_every": 10**9,
                "device": args.device,
                "progress": "lines",
            },
        }
    )
    run_preprocess(cfg)
    corpus = open_corpus(cfg.h5_path)
    tokens, starts, V = corpus.tokens(), corpus.windows("train"), len(corpus.vocab)
    print(f"corpus: {len(tokens):,} tokens, vocab {V:,}, {len(starts):,} train windows; LSTM 256, window 50, batch 128")

    # the hand-written loop runs before and after ours, so drift in the machine's speed cancels out
    hand_before = hand_loop(tokens, starts, V, args.steps, args.device)
    run_train(cfg)
    recs = read_jsonl(cfg.metrics_path)
    tps = [r["tokens_per_s"] for r in recs if r.get("split") == "train"][1:]  # skip the warm-up interval
    ours = statistics.median(tps)
    hand = (hand_before + hand_loop(tokens, starts, V, args.steps, args.device)) / 2
    print(f"hpcrnn.train        {ours:12,.0f} tokens/s (all positions supervised)")
    print(f"hand-written loop   {hand:12,.0f} tokens/s  -> hpcrnn at {100 * ours / hand:.1f}% of it")

    lec_in, lec_sup = lecture_loop(tokens, starts, V, args.lecture_steps, args.device)
    print(
        f"lecture (one-hot, last word): {lec_in:,.0f} input tokens/s, {lec_sup:,.0f} supervised tokens/s "
        f"-> hpcrnn supervises {ours / lec_sup:,.0f}x more tokens per second"
    )

    # checkpoint cost at the default interval
    default_every = 500
    model = build_model(cfg.model, V)
    opt = torch.optim.Adam(model.parameters())
    opt.zero_grad()
    model(torch.zeros(2, 3, dtype=torch.long))[0].sum().backward()
    opt.step()
    t = time.perf_counter()
    for i in range(3):
        ckpt.save_checkpoint(
            tmp / "ckbench", i, model.state_dict(), {"optimizer": opt.state_dict()}, {"config": cfg.to_dict()}
        )
    per_ckpt = (time.perf_counter() - t) / 3
    step_s = 128 * 50 / ours
    share = per_ckpt / (per_ckpt + default_every * step_s)
    print(
        f"checkpoint: {per_ckpt * 1000:.0f} ms each; every {default_every} steps ({default_every * step_s:.0f} s "
        f"of training) that is {100 * share:.2f}% of training time"
    )


if __name__ == "__main__":
    main()
