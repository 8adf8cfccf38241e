"""Generation throughput: hpcrnn's batched generation vs the lecture's sliding-window greedy loop.

    python bench/bench_generate.py [--run CONFIG_OR_RUN_DIR] [--vocab 8000] [--batch 64 256]
                                   [--tokens 200] [--lecture-tokens 60] [--device cpu]

Same model, same machine, same process. The model is the newest complete checkpoint of ``--run`` or, by
default, a random-weight model of the lecture's size (LSTM 256, embedding 256, ``--vocab`` words; random
weights cost exactly what trained ones cost). Figures, in generated tokens per second:

- lecture (the course's Keras script this project reproduces: one-hot 50-word windows into an
  LSTM(256)): one recipe at a time; for every new word the whole 50-word window goes through the network
  again from a zero state, the last output picks the word greedily, the window slides by one (the
  baseline of the speed-ups);
- lecture, one-hot: the same loop with the lecture's own formulation of the network (one-hot input into
  the LSTM, as its Keras model had it; same sizes) — for reference: its input projection alone costs
  50 x vocabulary x 4 x hidden multiply-adds per word;
- plain batched loop: ``model.step`` (embedding, ``nn.LSTM``, linear) + argmax for a batch, carrying
  the state — what a straightforward batched loop gets, with no per-recipe bookkeeping;
- hpcrnn: ``hpcrnn.generate.decode.generate_batched`` as the generation job runs it
  (``hpcrnn.generate.stepper`` step, per-recipe random streams, stop handling, refilled slots): greedy;
  the shipped configs' sampling (temperature 1.0, top_p 0.9); temperature 0.8 alone and with top_k 40 —
  in fp32 and with bf16 matrix products (``generate.precision``).

Generation never stops early here (no stop token), so every run produces exactly batch x tokens tokens.
The measurements run round-robin ``--repeats`` times and each line reports its best round (the machine
is shared: the best round is the least disturbed one) and the median. Never asserted as a test: it
prints figures with the machine and the date.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import header, peak_rss_mb  # noqa: E402
from hpcrnn.config import ModelConfig, load_config  # noqa: E402
from hpcrnn.generate.decode import Job, generate_batched  # noqa: E402
from hpcrnn.generate.sampling import uniforms_per_token  # noqa: E402
from hpcrnn.model.rnn import build_model  # noqa: E402
from hpcrnn.process import keep_freed_memory  # noqa: E402
from hpcrnn.train import checkpoint as ckpt  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def lecture_loop(model, vocab: int, window: int, n_tokens: int, device) -> float:
    """tokens/s of the lecture's generation: re-run the whole window for every new word, greedily."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (1, window), generator=g).to(device)
    with torch.inference_mode():
        model(x, last_only=True)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n_tokens):
            logits, _ = model(x, None, last_only=True)  # a zero state every time, like the lecture
            nxt = logits.argmax(-1)
            x = torch.cat([x[:, 1:], nxt[:, None]], dim=1)
        sync(device)
    return n_tokens / (time.perf_counter() - t0)


def lecture_onehot_loop(vocab: int, hidden: int, window: int, n_tokens: int, device) -> float:
    """The lecture's own network: one-hot [1, 50, V] -> LSTM -> last output -> linear(V), greedily."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(vocab, hidden, batch_first=True).to(device).eval()
    head = torch.nn.Linear(hidden, vocab).to(device).eval()
    x = torch.randint(0, vocab, (1, window), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n_tokens):
            h, _ = lstm(torch.nn.functional.one_hot(x, vocab).float())
            nxt = head(h[:, -1]).argmax(-1)
            x = torch.cat([x[:, 1:], nxt[:, None]], dim=1)
        sync(device)
    return n_tokens / (time.perf_counter() - t0)


def bare_loop(model, vocab: int, batch: int, n_tokens: int, device) -> float:
    tok = torch.randint(0, vocab, (batch,), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.inference_mode():
        state = None
        for _ in range(3):
            _, state = model.step(tok, state)
        sync(device)
        t0 = time.perf_counter()
        state = None
        for _ in range(n_tokens):
            logits, state = model.step(tok, state)
            tok = logits.argmax(-1)
        sync(device)
    return batch * n_tokens / (time.perf_counter() - t0)


def hpcrnn_loop(
    model, vocab: int, batch: int, n_tokens: int, device, temperature: float, top_k: int, top_p: float, precision: str
) -> float:
    rng = np.random.default_rng(0)
    rounds = uniforms_per_token(top_k, top_p)
    jobs = [
        Job(
            k,
            [int(rng.integers(0, vocab))],
            None if temperature == 0 else rng.random((n_tokens, rounds), dtype=np.float32),
        )
        for k in range(batch)
    ]
    kw = dict(
        batch_size=batch,
        max_tokens=n_tokens,
        stop_id=-1,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        banned=[0],
        device=device,
        precision=precision,
    )
    list(generate_batched(model, jobs[:2], **{**kw, "max_tokens": 4, "batch_size": 2}))  # warm-up
    sync(device)
    t0 = time.perf_counter()
    total = sum(len(toks) for _, toks, _ in generate_batched(model, jobs, **kw))
    sync(device)
    assert total == batch * n_tokens
    return total / (time.perf_counter() - t0)


def load_run(arg: str, device):
    cfg = load_config(arg)
    info = ckpt.resolve(cfg.checkpoint_dir, cfg.generate.checkpoint)
    model, meta = ckpt.load_model(info, device)
    return model, int(meta["vocab_size"]), cfg.data.window, f"{info.path} ({cfg.model.cell} {cfg.model.hidden})"


def make_runs(args, model, vocab: int, window: int, hidden: int, device) -> dict:
    """The measured loops by name: each returns tokens/s."""
    runs = {
        "lecture sliding-window greedy, 1 recipe": lambda: lecture_loop(
            model, vocab, window, args.lecture_tokens, device
        ),
        "lecture, one-hot formulation (reference)": lambda: lecture_onehot_loop(
            vocab, hidden, window, max(5, args.lecture_tokens // 6), device
        ),
    }
    for b in args.batch:
        runs[f"plain batched loop, batch {b}, greedy"] = functools.partial(
            bare_loop, model, vocab, b, args.tokens, device
        )
        for precision in args.precision:
            for temp, k, p, name in (
                (0.0, 0, 1.0, "greedy"),
                (1.0, 0, 0.9, "T 1 top_p .9"),
                (0.8, 0, 1.0, "T .8"),
                (0.8, 40, 1.0, "T .8 top_k 40"),
            ):
                runs[f"hpcrnn, batch {b}, {name}, {precision}"] = functools.partial(
                    hpcrnn_loop, model, vocab, b, args.tokens, device, temp, k, p, precision
                )
    return runs


def sort_ms(batch: int, vocab: int, repeats: int, device) -> float:
    """Best time of sorting a batch of probability rows, in ms."""
    probs = torch.softmax(torch.randn(batch, vocab, generator=torch.Generator().manual_seed(0)) * 3, -1).to(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        probs.sort(dim=-1, descending=True)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a config or run directory: use its newest complete checkpoint")
    ap.add_argument("--vocab", type=int, default=8000, help="vocabulary of the random model")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--cell", default="lstm", choices=["lstm", "gru", "rnn"])
    ap.add_argument("--window", type=int, default=50, help="the lecture's window")
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 512])
    ap.add_argument("--tokens", type=int, default=200, help="tokens per recipe, batched runs")
    ap.add_argument("--lecture-tokens", type=int, default=60, help="tokens timed for the lecture's loop")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; each line reports its best round")
    ap.add_argument(
        "--precision",
        nargs="+",
        default=["fp32", "bf16"],
        choices=["fp32", "bf16"],
        help="output-layer precisions to time",
    )
    args = ap.parse_args()
    keep_freed_memory()  # as the generation job does (hpcrnn/process.py)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.run:
        model, vocab, window, what = load_run(args.run, device)
    else:
        torch.manual_seed(0)
        mcfg = ModelConfig(cell=args.cell, hidden=args.hidden, embedding=args.hidden)
        model = build_model(mcfg, args.vocab).to(device).eval()
        vocab, window = args.vocab, args.window
        what = f"random {args.cell} {args.hidden}, embedding {args.hidden}, vocabulary {vocab}"
    print(header("bench_generate"))
    print(f"# model: {what}; window {window}; device {device}; best (median) of {args.repeats} rounds")
    hidden = getattr(getattr(model, "rnn", None), "hidden_size", args.hidden)
    runs = make_runs(args, model, vocab, window, hidden, device)
    got: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):  # round-robin: a burst of load elsewhere hits every line alike
        for name, fn in runs.items():
            got[name].append(fn())
    base = max(got["lecture sliding-window greedy, 1 recipe"])
    for name, xs in got.items():
        best, med = max(xs), statistics.median(xs)
        print(f"{name:<50} {best:>10,.0f} ({med:>8,.0f}) tokens/s {best / base:>7,.1f}x")
    print("# ratios: best round over the lecture loop's best round (fp32)")
    for b in args.batch:  # what top_k/top_p by sorting would add to every step (hpcrnn draws by rejection)
        ms = sort_ms(b, vocab, args.repeats, device)
        print(f"# reference: sorting {b} x {vocab:,} probabilities (top_p by sorting, per step): {ms:.1f} ms")
    print(f"# peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
