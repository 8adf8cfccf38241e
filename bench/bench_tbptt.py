"""``stream`` mode against the field's reference set-up: hpcrnn's trainer vs a plain hand-written TBPTT loop.

    python bench/bench_tbptt.py [--corpus ../shared/data/recipes/recipes-5k.txt] [--epochs 6]

The defaults of pytorch/examples ``word_language_model``: a 2x200 LSTM (embedding 200), window 35, batch
20, SGD lr 20, gradient clipping 0.25, dropout 0.2, lr/4 when the validation loss does not improve after an
epoch. Both train on the same token streams (the splits of hpcrnn's ``corpus.h5``) for the same epochs:

- hpcrnn: ``python -m hpcrnn.train`` with ``data.sequences: stream`` (``schedule: plateau``, factor 0.25,
  patience 0, validated once an epoch);
- the plain loop: batchify, get_batch, repackage_hidden, manual SGD, as the example writes it, with the
  example's initialisation (uniform +-0.1 embedding and decoder).

Printed side by side: test perplexity and accuracy by the standard protocol (the split as 10 parallel
streams, the state carried), and supervised tokens a second. Never asserted as a test.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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
BPTT, BATCH, EVAL_BATCH, LR, CLIP, DROPOUT, HIDDEN = 35, 20, 10, 20.0, 0.25, 0.2, 200


class RNNModel(nn.Module):
    """pytorch/examples word_language_model's RNNModel (LSTM, untied)."""

    def __init__(self, ntoken: int):
        super().__init__()
        self.drop = nn.Dropout(DROPOUT)
        self.encoder = nn.Embedding(ntoken, HIDDEN)
        self.rnn = nn.LSTM(HIDDEN, HIDDEN, 2, dropout=DROPOUT)
        self.decoder = nn.Linear(HIDDEN, ntoken)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def forward(self, x, hidden):
        out, hidden = self.rnn(self.drop(self.encoder(x)), hidden)
        return self.decoder(self.drop(out)), hidden


def batchify(data: np.ndarray, bsz: int) -> torch.Tensor:
    n = len(data) // bsz
    return torch.from_numpy(data[: n * bsz].astype(np.int64)).view(bsz, n).t().contiguous()


def evaluate(model, source: torch.Tensor) -> tuple[float, float]:
    model.eval()
    total, correct, n, hidden = 0.0, 0, 0, None
    with torch.no_grad():
        for i in range(0, source.size(0) - 1, BPTT):
            seq = min(BPTT, source.size(0) - 1 - i)
            x, y = source[i : i + seq], source[i + 1 : i + 1 + seq].reshape(-1)
            out, hidden = model(x, hidden)
            logits = out.view(-1, out.size(-1))
            total += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(-1) == y).sum())
            n += y.numel()
    return total / n, correct / n


def plain_loop(tokens, ranges, vocab: int, epochs: int) -> dict:
    torch.manual_seed(1111)
    train = batchify(tokens[slice(*ranges["train"])], BATCH)
    val = batchify(tokens[slice(*ranges["val"])], EVAL_BATCH)
    test = batchify(tokens[slice(*ranges["test"])], EVAL_BATCH)
    model, lr, best, seconds, seen = RNNModel(vocab), LR, None, 0.0, 0
    for _ in range(epochs):
        model.train()
        hidden, t0 = None, time.perf_counter()
        for i in range(0, train.size(0) - 1, BPTT):
            seq = min(BPTT, train.size(0) - 1 - i)
            x, y = train[i : i + seq], train[i + 1 : i + 1 + seq].reshape(-1)
            hidden = None if hidden is None else tuple(h.detach() for h in hidden)
            model.zero_grad()
            out, hidden = model(x, hidden)
            F.cross_entropy(out.view(-1, vocab), y).backward()
            nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-lr)
            seen += y.numel()
        seconds += time.perf_counter() - t0
        val_loss, _ = evaluate(model, val)
        if best is None or val_loss < best:
            best = val_loss
        else:
            lr /= 4.0
    test_loss, test_acc = evaluate(model, test)
    return {"test_ppl": math.exp(test_loss), "test_acc": test_acc, "tokens_per_s": seen / seconds}


def hpcrnn_run(corpus: str, scratch: Path, h5: Path, epochs: int, steps_per_epoch: int) -> dict:
    cfg = from_dict(
        {
            "run": {"name": "tbptt"},
            "paths": {"scratch": str(scratch), "jobs": str(scratch / "jobs")},
            "data": {
                "corpus": corpus,
                "document_start": "^Title:",
                "window": BPTT,
                "sequences": "stream",
                "h5_path": str(h5),
            },
            "model": {"cell": "lstm", "hidden": HIDDEN, "embedding": HIDDEN, "layers": 2, "dropout": DROPOUT},
            "train": {
                "batch_size": BATCH,
                "epochs": epochs,
                "optimizer": "sgd",
                "lr": LR,
                "clip_grad": CLIP,
                "schedule": "plateau",
                "plateau_factor": 0.25,
                "plateau_patience": 0,
                "eval_every": steps_per_epoch,
                "checkpoint_every": 10**6,
                "log_every": 100,
                "seed": 1111,
                "progress": "lines",
                "threads": torch.get_num_threads(),
            },
        }
    )
    r = run_train(cfg)
    tps = [x["tokens_per_s"] for x in read_jsonl(cfg.metrics_path) if x.get("split") == "train"][1:]
    test = r.final["standard"]["test"]
    return {"test_ppl": test["ppl"], "test_acc": test["acc"], "tokens_per_s": float(np.median(tps))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared/data/recipes/recipes-5k.txt"))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(header("bench_tbptt"))
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        prep = from_dict(
            {
                "paths": {"scratch": str(scratch)},
                "data": {"corpus": args.corpus, "document_start": "^Title:", "window": BPTT},
            }
        )
        run_preprocess(prep)
        c = open_corpus(prep.h5_path)
        tokens, ranges = c.tokens(), c.split_ranges
        lo, hi = ranges["train"]
        steps_per_epoch = ((hi - lo) // BATCH - 1) // BPTT
        print(
            f"corpus {args.corpus}: vocabulary {len(c.vocab):,}, train/val/test tokens "
            f"{hi - lo:,}/{ranges['val'][1] - ranges['val'][0]:,}/{ranges['test'][1] - ranges['test'][0]:,}, "
            f"{steps_per_epoch} steps an epoch, {args.epochs} epochs",
            flush=True,
        )
        ours = hpcrnn_run(args.corpus, scratch, prep.h5_path, args.epochs, steps_per_epoch)
        plain = plain_loop(tokens, ranges, len(c.vocab), args.epochs)
    print("\n| loop | test perplexity (standard protocol) | test accuracy | tokens/s |\n|---|---|---|---|")
    for name, r in (("hpcrnn stream", ours), ("plain TBPTT loop", plain)):
        print(f"| {name} | {r['test_ppl']:.2f} | {r['test_acc']:.2%} | {r['tokens_per_s']:,.0f} |")
    print(
        f"\nhpcrnn / plain: perplexity {ours['test_ppl'] / plain['test_ppl']:.3f}, "
        f"speed {ours['tokens_per_s'] / plain['tokens_per_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
