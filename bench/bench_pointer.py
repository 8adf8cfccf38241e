"""The pointer's cost (model.pointer, issue 28): training and generation, with and without it, in one run.

    python bench/bench_pointer.py [--corpus ../shared/data/recipes/recipes-5k.txt] [--hidden 256]
                                  [--memory 512] [--keys 0] [--rounds 3] [--train-steps 40] [--slots 1000]
                                  [--recipes 1000]

Same network both ways (the plain model is the pointer model's weights without the pointer), once for each
key width in ``--keys`` (model.pointer_key: 0, the outputs themselves; d, a projection to d), same machine,
same run, trials alternating (plain, pointer, plain, ...) so that a burst of load elsewhere hits both alike;
ratios are per round, then their median.

- Training (a child process with the trainer's malloc settings, hpcrnn/process.py; torch's default
  threads or ``--train-threads``): the lecture's network in stream mode (LSTM ``--hidden``, ``--batch``
  streams x ``--window`` tokens a step: 128 x 50 as bench/bench_modes.py; configs/lstm256.yaml trains 20 x
  35), the state and the pointer's memory carried, SGD, clip 0.25, dropout 0.2, through the trainer's own
  ``lm_loss``: plain; pointer, the loss from the targets alone (what the trainer runs); pointer, the whole
  distribution built (what it ran before, and still runs at a log point). Supervised tokens/s.
- Generation (this process, 1 torch thread or ``--gen-threads``, and malloc's settings as the generation
  job has them):
  ``generate_batched`` (the job's engine), ``--slots`` slots, ``--recipes`` recipes, temperature 1.0,
  top_p ``--top-p``, at most 600 tokens, a stop-token bias that gives recipes of ``--mean-len`` tokens on
  average (random weights cost what trained ones cost), plain and pointer; and the lecture's loop
  (bench/bench_generate.py: one recipe, one word at a time, the whole 50-word window run again from a
  zero state for every word) with the plain model, and in the lecture's own one-hot formulation, both
  with torch's default threads.
  Tokens/s, user and system CPU seconds (system: the kernel, page faults), minor page faults.

Never asserted as a test: it prints figures with the machine and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_generate import lecture_loop, lecture_onehot_loop  # noqa: E402
from bench.common import header  # noqa: E402
from hpcrnn.config import ModelConfig, from_dict  # noqa: E402
from hpcrnn.generate.decode import Job, generate_batched  # noqa: E402
from hpcrnn.generate.sampling import uniforms_per_token  # noqa: E402
from hpcrnn.model.precision import resolve_precision  # noqa: E402
from hpcrnn.model.rnn import build_model, whole_distribution  # noqa: E402
from hpcrnn.process import heap_tuned, keep_freed_memory, tuned_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MAX_TOKENS = 600
CPU = torch.device("cpu")
DEFAULT_THREADS = torch.get_num_threads()
GEN_THREADS = [1]  # the engine's torch threads (--gen-threads)


def _usage() -> tuple[float, float, float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime, r.ru_stime, r.ru_minflt


def _since(t0: tuple, tokens: int) -> dict:
    t1 = _usage()
    wall = t1[0] - t0[0]
    return dict(tps=tokens / wall, wall=wall, user=t1[1] - t0[1], sys=t1[2] - t0[2], minflt=t1[3] - t0[3])


def corpus_tokens(corpus: str) -> tuple[np.ndarray, int, int]:
    """(train tokens, vocabulary size, the document boundary token) of ``corpus``, preprocessed once."""
    from hpcrnn.data.build import run_preprocess
    from hpcrnn.data.corpus import open_corpus
    from hpcrnn.data.sequences import document_token_id

    tmp = Path(tempfile.mkdtemp())
    cfg = from_dict(
        {
            "paths": {"scratch": str(tmp)},
            "run": {"name": "bench"},
            "data": {"corpus": corpus, "document_start": "^Title:", "tokenizer": "recipe", "min_count": 5},
        }
    )
    run_preprocess(cfg)
    c = open_corpus(cfg.h5_path)
    lo, hi = c.split_ranges["train"]
    boundary = document_token_id(c)
    return c.tokens()[lo:hi], len(c.vocab), -1 if boundary is None else int(boundary)


def _models(hidden: int, memory: int, keys: list[int], vocab: int, boundary: int, dropout: float = 0.0):
    """(plain, {name: pointer model}): one network, the plain one the pointer models' weights without the
    pointer, one pointer model for each key width."""
    mk = dict(cell="lstm", hidden=hidden, embedding=hidden, dropout=dropout)
    pointers = {}
    for key in keys:
        torch.manual_seed(0)
        name = "pointer" + (f", key {key}" if key else "")
        pointers[name] = build_model(ModelConfig(**mk, pointer=memory, pointer_key=key), vocab, boundary)
    plain = build_model(ModelConfig(**mk), vocab, boundary)
    first = next(iter(pointers.values()))
    plain.load_state_dict({k: v for k, v in first.state_dict().items() if not k.startswith("pointer.")})
    return plain, pointers


# ------------------------------------------------------------------------------------------ training


def train_trial(model, tokens: np.ndarray, steps: int, whole: bool, batch: int, window: int) -> dict:
    """``steps`` optimisation steps as the trainer takes them in stream mode; one warm-up step first."""
    from hpcrnn.train.loop import lm_loss
    from hpcrnn.train.state import detach_state

    streams = torch.from_numpy(tokens[: len(tokens) // batch * batch].astype(np.int64)).view(batch, -1)
    opt = torch.optim.SGD(model.parameters(), lr=20.0)
    model.train()
    carry, t0 = None, None
    for s in range(steps + 1):
        if s == 1:
            t0 = _usage()
        a = (s * window) % (streams.shape[1] - window - 1)
        with whole_distribution(model, whole):
            loss, _, _, carry = lm_loss(model, streams[:, a : a + window + 1], "all", carry)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        opt.step()
        carry = detach_state(carry)
        loss.item()
    return _since(t0, steps * batch * window)


def train_part(args) -> dict:
    """In the child: alternating trials of the three training paths."""
    if args.train_threads:
        torch.set_num_threads(args.train_threads)
    tokens, vocab, boundary = corpus_tokens(args.corpus)
    plain, pointers = _models(args.hidden, args.memory, args.keys, vocab, boundary, dropout=0.2)

    def trial(model, whole):
        return lambda: train_trial(model, tokens, args.train_steps, whole, args.batch, args.window)

    runs = {"plain": trial(plain, False)}
    for name, m in pointers.items():
        runs[f"{name} (loss from the targets)"] = trial(m, False)
    name, m = next(iter(pointers.items()))
    runs[f"{name} (whole distribution)"] = trial(m, True)
    got = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, fn in runs.items():
            got[k].append(fn())
    return {"vocab": vocab, "threads": torch.get_num_threads(), "heap_tuned": heap_tuned(), "trials": got}


# ---------------------------------------------------------------------------------------- generation


def gen_trial(model, vocab: int, stop: int, args) -> dict:
    rng = np.random.default_rng(0)
    rounds = uniforms_per_token(0, args.top_p)
    jobs = [
        Job(k, [stop, int(rng.integers(2, vocab))], rng.random((MAX_TOKENS, rounds), dtype=np.float32))
        for k in range(args.recipes)
    ]
    kw = dict(
        max_tokens=MAX_TOKENS, stop_id=stop, temperature=1.0, top_p=args.top_p, banned=[0], precision=args.precision
    )
    list(generate_batched(model, jobs[:2], batch_size=2, **{**kw, "max_tokens": 4}))  # warm-up
    t0 = _usage()
    n = sum(len(t) + 1 for _, t, _ in generate_batched(model, jobs, batch_size=args.slots, memory=MAX_TOKENS + 2, **kw))
    return _since(t0, n)


def gen_part(args, vocab: int, boundary: int) -> dict:
    plain, pointers = _models(args.hidden, args.memory, args.keys, vocab, boundary)
    stop = boundary if boundary >= 0 else 1
    with torch.no_grad():  # a stop bias for recipes of about --mean-len tokens (near-uniform random logits)
        for m in (plain, *pointers.values()):
            m.head.bias[stop] = float(np.log(vocab / args.mean_len))
            m.eval()
    runs = {
        "plain": lambda: gen_trial(plain, vocab, stop, args),
        **{name: (lambda m=m: gen_trial(m, vocab, stop, args)) for name, m in pointers.items()},
        "lecture loop (plain model)": lambda: _lecture(lambda: lecture_loop(plain, vocab, 50, 60, CPU)),
        "lecture loop, one-hot": lambda: _lecture(lambda: lecture_onehot_loop(vocab, args.hidden, 50, 10, CPU)),
    }
    got = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, fn in runs.items():
            got[k].append(fn())
    return got


def _lecture(fn) -> dict:
    """The lecture's loop with torch's default threads (as bench_generate.py measures it; the job's
    one thread is for the batched engine, whose other core writes the recipes)."""
    torch.set_num_threads(DEFAULT_THREADS)
    t0 = _usage()
    try:
        tps = fn()
    finally:
        torch.set_num_threads(GEN_THREADS[0])
    d = _since(t0, 1)
    d["tps"] = tps
    return d


# ------------------------------------------------------------------------------------------- report


def _table(title: str, trials: dict, base: str) -> None:
    print(f"\n## {title}: tokens/s per round, median; user + system CPU s (median); minor faults")
    for k, xs in trials.items():
        tps = [x["tps"] for x in xs]
        ratios = [x["tps"] / b["tps"] for x, b in zip(xs, trials[base])]
        print(
            f"{k:<34} {' '.join(f'{t:>9,.0f}' for t in tps)}  median {statistics.median(tps):>9,.0f}"
            f"  x{statistics.median(ratios):.2f} of {base}"
            f"  user {statistics.median(x['user'] for x in xs):6.1f} s"
            f" sys {statistics.median(x['sys'] for x in xs):5.1f} s"
            f" ({100 * statistics.median(x['sys'] / max(x['wall'], 1e-9) for x in xs):.0f}% of wall)"
            f"  minflt {statistics.median(x['minflt'] for x in xs):,.0f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared/data/recipes/recipes-5k.txt"))
    ap.add_argument("--hidden", type=int, default=256, help="LSTM width (the lecture's: 256; recipes-best: 512)")
    ap.add_argument("--memory", type=int, default=512, help="model.pointer")
    ap.add_argument(
        "--keys", type=lambda v: [int(k) for k in v.split(",")], default=[0], help="model.pointer_key widths, e.g. 0,64"
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128, help="training streams")
    ap.add_argument("--window", type=int, default=50, help="training tokens a stream a step")
    ap.add_argument("--train-threads", type=int, default=0, help="0: torch's default")
    ap.add_argument("--gen-threads", type=int, default=1, help="the engine's torch threads (the job: 1 on 2 cores)")
    ap.add_argument("--slots", type=int, default=1000)
    ap.add_argument("--recipes", type=int, default=1000)
    ap.add_argument("--mean-len", type=float, default=270.0)
    ap.add_argument("--top-p", type=float, default=0.98)
    ap.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="fp32",
        help="of the engine's matrix products (generate.precision; auto: the job's choice on this CPU)",
    )
    ap.add_argument("--skip", choices=["train", "generate"], help="leave one part out")
    ap.add_argument("--train-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.train_child:
        print(json.dumps(train_part(args)))
        return
    keep_freed_memory()  # as the generation job does (hpcrnn/generate/job.py)
    # 1: the generation job's setting on a 2-core node (its other core describes); a node of C cores gives
    # it C - (describing workers)
    GEN_THREADS[0] = args.gen_threads
    torch.set_num_threads(args.gen_threads)
    print(header("bench_pointer"))
    keys = ", ".join(str(k) for k in args.keys)
    print(f"# LSTM {args.hidden}, pointer {args.memory}, key widths {keys}; {args.rounds} rounds, trials alternating")
    if args.skip != "train":
        child = [sys.executable, __file__, "--train-child", *sys.argv[1:]]
        r = subprocess.run(child, env=tuned_env(os.environ), capture_output=True, text=True, check=False)
        if r.returncode:
            sys.exit(f"bench_pointer: the training part failed:\n{r.stderr}")
        tr = json.loads(r.stdout.strip().splitlines()[-1])
        print(
            f"# training: {args.batch} streams x {args.window} tokens, {args.train_steps} steps a trial, "
            f"{tr['threads']} threads, malloc settings {'on' if tr['heap_tuned'] else 'off'}, "
            f"vocabulary {tr['vocab']:,}"
        )
        _table("training (supervised tokens/s)", tr["trials"], "plain")
    if args.skip != "generate":
        args.precision = resolve_precision(args.precision, CPU, "generate", say=print)
        _, vocab, boundary = corpus_tokens(args.corpus)
        print(
            f"\n# generation: {args.recipes} recipes in {args.slots} slots, T 1.0, top_p {args.top_p}, mean length "
            f"~{args.mean_len:.0f}, {args.gen_threads} thread(s), {args.precision} products, vocabulary {vocab:,}"
        )
        got = gen_part(args, vocab, boundary)
        _table("generation (tokens/s)", got, "plain")
        lec = statistics.median(x["tps"] for x in got["lecture loop (plain model)"])
        one = statistics.median(x["tps"] for x in got["lecture loop, one-hot"])
        for k in [k for k in got if not k.startswith("lecture")]:
            tps = statistics.median(x["tps"] for x in got[k])
            print(f"# {k}: {tps / lec:,.0f}x the lecture's loop with the same network, {tps / one:,.0f}x its one-hot")
    print("# provisional when the machine was shared: ratios come from alternating trials")


if __name__ == "__main__":
    main()
