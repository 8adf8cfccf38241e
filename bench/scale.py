"""Scaling (issue 27): preprocessing and a training rank's memory as the corpus grows, and what that implies at
a billion tokens and more.

    python bench/scale.py [--sizes 1 2 4 8] [--shards 1 2 auto] [--auto-copies 0.5] [--train-sizes 1 2 4]
                          [--titles numbered|prefixed] [--work DIR]

- **Corpora**: k x recipes-all (the shared ``recipes-all.txt.xz``, 35.6M tokens), synthesized by writing it k
  times with distinct titles (written once into ``--work``, default ``scratch/bench-scale``; 8x is ~1.15 GB of
  text): copy j's titles end in " j" (``numbered``, the default: a word the corpus has; with ``min_count``
  5 per copy, since k copies count every word k times, the vocabulary is one copy's, as a real corpus' grows
  slowly), or begin with "j-" (``prefixed``, min_count 5 at every size: the vocabulary grows with k).
- **Preprocessing**: each size with each ``--shards`` setting, every run in a fresh child process (its own
  peak memory): ``1`` (one process), ``N`` (N tasks on min(N, CPUs) workers), ``auto`` (``data.shards: 0``
  with ``data.shard_mb`` set to ``--auto-copies`` copies' text, so the tasks grow in number with the corpus
  and each holds the same slice).
  Wall time, the main process' peak RSS (plan, reduce, finish) and the largest task's (``VmHWM`` each task
  logs).
- **A training rank's memory**: a child sets up the trainer's data (its ``load_data``) and trains
  ``--train-steps`` steps of the lecture's LSTM 256 (batch 20 x 50, 1 thread), in stream and windows modes,
  on each ``--train-sizes`` corpus; it reports its private memory (``RssAnon``: what the rank itself holds)
  and its file pages (``RssFile``: the memory-mapped tokens it touched, shared with every rank of the node
  and dropped under memory pressure).
- **Extrapolation**: the measured per-token rates carried to 1B and 10B tokens on 16 and 64 nodes.
- **This machine** (``--parallelism``): one shard read alone and as two concurrent copies, which bounds
  what N workers can reach here (a VM's cores are rarely twice one core).

Prints figures with the machine and the date; never asserted as a test. Heavy: minutes per size.
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.bench_preprocess import cpu_model  # noqa: E402
from hpcrnn.data.corpus import open_corpus  # noqa: E402

SOURCE = ROOT.parent / "shared" / "data" / "recipes" / "recipes-all.txt.xz"
DATA = {"document_start": "^Title:", "min_count": 5, "window": 50}


def make_corpus(work: Path, k: int, titles: str = "numbered") -> Path:
    """k x recipes-all (written once). Copy j (from 1) makes its titles distinct with words the corpus has
    (``numbered``: " j" appended, a number every recipe's quantities use, so the vocabulary stays that of
    one copy) or new ones (``prefixed``: "j-" before the first word, a new word per title word and copy)."""
    out = work / f"recipes-all-{k}x{'' if titles == 'prefixed' else '-numbered'}.txt"
    if out.exists():
        return out
    text = lzma.decompress(SOURCE.read_bytes())
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        for j in range(k):
            if j == 0:
                f.write(text)
            elif titles == "prefixed":
                f.write(re.sub(rb"(?m)^Title: *", f"Title: {j}-".encode(), text))
            else:
                f.write(re.sub(rb"(?m)^(Title:[^\r\n]*?)[ \t]*(\r?)$", rf"\1 {j}\2".encode(), text))
            f.write(b"\n\n")
    os.replace(tmp, out)
    return out


_CHILD_PREPROCESS = """
import json, sys, time
from hpcrnn.config import from_dict
from hpcrnn.data.build import run_preprocess
cfg = from_dict(json.loads(sys.argv[1]), "scale")
t0 = time.perf_counter()
res = run_preprocess(cfg)
wall = time.perf_counter() - t0
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")][0] / 1024
print(json.dumps(dict(wall=wall, tokens=res.counts["tokens"], text=res.counts["input_bytes"], main_mib=hwm,
                      vocab=res.counts["vocab_size"], h5=res.path.stat().st_size)))
"""

# one shard task's read step (tokenize and intern half of one copy), timed inside the child
_CHILD_READ = """
import json, sys, time
from hpcrnn.config import from_dict
from hpcrnn.data.build import shard_job
from hpcrnn.data.shards import read_shard
job = shard_job(from_dict(json.loads(sys.argv[1]), "scale"), 2)
t0 = time.perf_counter()
read_shard(job, 0)
print(json.dumps(dict(wall=time.perf_counter() - t0)))
"""


def machine_parallelism(corpus: Path, work: Path) -> float:
    """How fast two processes run side by side on this machine, relative to one alone: the same shard
    read, alone and as two concurrent copies (the slower copy counts). N workers can take no less than
    1/(N x this) of one process, whatever the serial part."""
    import shutil

    def reads(n: int) -> float:
        runs = [work / "runs" / f"parallelism-{i}" for i in range(n)]
        for r in runs:
            shutil.rmtree(r, ignore_errors=True)
        raws = [
            {
                "run": {"name": r.name},
                "paths": {"scratch": str(work / "runs")},
                "data": {**DATA, "corpus": str(corpus), "shards": 2},
            }
            for r in runs
        ]
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _CHILD_READ, json.dumps(raw)], cwd=ROOT, stdout=subprocess.PIPE, text=True
            )
            for raw in raws
        ]
        return max(json.loads(p.communicate()[0].strip().splitlines()[-1])["wall"] for p in procs)

    alone, together = min(reads(1) for _ in range(2)), min(reads(2) for _ in range(2))
    print(
        f"\n## this machine: two processes side by side run at {alone / together:.2f}x the speed of one "
        f"(one shard read: {alone:.1f} s alone, {together:.1f} s as two concurrent copies); 2 workers can take "
        f"no less than {0.5 * together / alone:.2f} of one process"
    )
    return alone / together


_CHILD_TRAIN = """
import json, sys, time, torch
from hpcrnn.config import from_dict
from hpcrnn.train.distributed import DistInfo
from hpcrnn.train.loop import lm_loss
from hpcrnn.train.setup import load_data
from hpcrnn.model.rnn import build_model
torch.set_num_threads(1)
cfg = from_dict(json.loads(sys.argv[1]), "scale")
t0 = time.perf_counter()
data = load_data(cfg, DistInfo())
if sys.argv[2] == "data":  # the data path alone: 100 x the steps' batches gathered, no model
    for step in range(100 * cfg.train.max_steps):
        data.batches.rank_batch(data.tokens, step)
    cfg.train.max_steps = 0
model = build_model(cfg.model, len(data.corpus.vocab)) if cfg.train.max_steps else None
opt = torch.optim.SGD(model.parameters(), lr=1.0) if model else None
state = None
for step in range(cfg.train.max_steps):
    if data.batches.resets(step):
        state = None
    loss, _, _, state = lm_loss(model, data.batches.rank_batch(data.tokens, step), "all", state)
    opt.zero_grad(); loss.backward(); opt.step()
    state = tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
st = {l.split(":")[0]: int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith(("Rss", "VmHWM"))}
print(json.dumps(dict(wall=time.perf_counter() - t0, anon=st["RssAnon"], file=st["RssFile"], hwm=st["VmHWM"])))
"""


def _child(code: str, raw: dict, *extra: str) -> tuple[dict, str]:
    """Run ``code`` in a fresh process: (its last stdout line as JSON, its whole stdout: the stage's log)."""
    r = subprocess.run(
        [sys.executable, "-c", code, json.dumps(raw), *extra], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if r.returncode:
        sys.exit(f"scale: a child failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stdout


def _min_count(k: int, titles: str) -> int:
    """k copies count every word k times: min_count 5 per copy keeps one copy's vocabulary (numbered titles)."""
    return DATA["min_count"] * (k if titles == "numbered" else 1)


def preprocess(corpus: Path, work: Path, shards: str, slice_mb: int, k: int = 1, titles: str = "numbered") -> dict:
    data = {
        **DATA,
        "min_count": _min_count(k, titles),
        "corpus": str(corpus),
        "shards": 0 if shards == "auto" else int(shards),
    }
    if shards == "auto":
        data["shard_mb"] = slice_mb
    raw = {"run": {"name": f"{corpus.stem}-{shards}"}, "paths": {"scratch": str(work / "runs")}, "data": data}
    got, log = _child(_CHILD_PREPROCESS, raw)
    m = re.search(r"(\d+) shards on \d+ processes: (.*); peak RSS (\d+) MiB in a shard task", log)
    got.update(tasks=int(m[1]), steps=m[2], task_mib=float(m[3])) if m else got.update(
        tasks=1, steps="", task_mib=got["main_mib"]
    )
    return got


def train_memory(corpus: Path, corpus_run: Path, work: Path, steps: int, mode: str, what: str, min_count: int) -> dict:
    """A training rank's data path (the trainer's own load_data and batches) for ``steps`` steps, alone
    (``what`` "data") or with the lecture's network trained on them ("train"): its memory after them."""
    raw = {
        "run": {"name": corpus_run.name + "-train"},
        "paths": {"scratch": str(work / "runs")},
        "data": {
            **DATA,
            "min_count": min_count,
            "corpus": str(corpus),
            "h5_path": str(corpus_run / "corpus.h5"),
            "sequences": mode,
        },
        "model": {"hidden": 256, "embedding": 256},
        "train": {
            "batch_size": 20,
            "max_steps": steps,
            "eval_every": 10**9,
            "checkpoint_every": 10**9,
            "threads": 1,
            "eval_batches": 1,
        },
    }
    got, _ = _child(_CHILD_TRAIN, raw, what)
    return got


def _steps(r: dict) -> dict:
    """Seconds of each step of a sharded run (read, reduce, encode, finish), from its log line."""
    return {k: float(v) for k, v in re.findall(r"(read|reduce|encode|finish) ([\d.]+) s", r["steps"])}


def extrapolate(pre: dict, train: dict, cores: int) -> None:
    """The measured rates carried to 1B and 10B tokens (see the module doc): read and encode run in waves of
    one task a core over the nodes; reduce grows with the tasks; finish (one process writing corpus.h5, its
    compression on this machine's cores) grows with the tokens, its memory as measured between the two
    largest sizes."""
    auto = sorted((k, v) for (k, s), v in pre.items() if s == "auto" and v["tasks"] > 1)
    if not auto:
        print("\n(no sharded auto run: nothing to extrapolate from)")
        return
    k, r = auto[-1]
    st, per_task = _steps(r), r["tokens"] / r["tasks"]
    waves_here = math.ceil(r["tasks"] / cores)
    read_task, encode_task = st["read"] / waves_here, st["encode"] / waves_here
    reduce_per_task, finish_per_token = st["reduce"] / r["tasks"], st["finish"] / r["tokens"]
    if len(auto) > 1:  # the finish process' memory: a fixed part and a part per token
        (_, a), (_, b) = auto[-2], auto[-1]
        slope = (b["main_mib"] - a["main_mib"]) / (b["tokens"] - a["tokens"])
    else:
        slope = r["main_mib"] / r["tokens"]
    slope = max(slope, 0.0)  # a flat finish (it holds a shard, not the corpus) measures ~0, noise either way
    fixed = r["main_mib"] - slope * r["tokens"]
    rank_mib = min(t["anon"] for t in train.values()) if train else float("nan")
    h5 = r["h5"] / r["tokens"]
    print(
        f"\n## extrapolation from the {k}x auto run ({r['tasks']} tasks of {per_task / 1e6:.1f}M tokens; {r['steps']})"
    )
    print(
        f"per task: read {read_task:.0f} s, encode {encode_task:.0f} s, {r['task_mib']:.0f} MiB; reduce "
        f"{reduce_per_task:.2f} s a task; finish {finish_per_token * 1e9:.0f} s per 1B tokens, its memory "
        f"{fixed:.0f} MiB + {slope * 1e9 / 1024:.1f} GiB per 1B tokens; nodes of 16 cores"
    )
    print(
        "| tokens | nodes | tasks | read + encode | reduce | finish | wall | task memory | finish memory "
        "| disk (h5 + map) | rank private |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for total in (1e9, 1e10):
        tasks = math.ceil(total / per_task)
        for nodes in (16, 64):
            waves = math.ceil(tasks / (nodes * 16))
            par = waves * (read_task + encode_task)
            red, fin = reduce_per_task * tasks, finish_per_token * total
            print(
                f"| {total / 1e9:.0f}B | {nodes} | {tasks} | {par / 60:.1f} min | {red / 60:.1f} min | "
                f"{fin / 60:.1f} min | {(par + red + fin) / 60:.0f} min | {r['task_mib']:.0f} MiB | "
                f"{(fixed + slope * total) / 1024:.1f} GiB | {total * (h5 + 4) / 1e9:.0f} GB | {rank_mib:.0f} MiB |"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[1, 2, 4, 8])
    ap.add_argument("--shards", nargs="+", default=["1", str(os.cpu_count() or 2), "auto"])
    ap.add_argument("--train-sizes", type=int, nargs="*", default=[1, 2, 4])
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--train-what", nargs="+", default=["data", "train"], choices=["data", "train"])
    ap.add_argument("--work", type=Path, default=ROOT / "scratch" / "bench-scale")
    ap.add_argument("--titles", choices=["numbered", "prefixed"], default="numbered")
    ap.add_argument("--auto-copies", type=float, default=1.0, help="auto: a task's slice, in copies of recipes-all")
    ap.add_argument("--parallelism", action="store_true", help="measure two processes side by side against one")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    print(
        f"# bench/scale — {time.strftime('%Y-%m-%dT%H:%M:%S')} on {os.uname().nodename}: {os.cpu_count()} cores "
        f"({cpu_model()}), load {load:.1f}, Python {sys.version.split()[0]}"
    )
    # a little above the slice's text, so that k copies (each a few title bytes longer) make k/F tasks
    slice_mb = math.ceil(1.01 * args.auto_copies * len(lzma.decompress(SOURCE.read_bytes())) / 2**20)
    print(f"(titles {args.titles}; auto: data.shard_mb {slice_mb}, {args.auto_copies:g} copies a task)")
    if args.parallelism:
        machine_parallelism(make_corpus(args.work, 1, args.titles), args.work)
    pre: dict = {}
    print("\n## preprocessing: wall, peak RSS of the main process and of the largest task")
    print("| size | tokens | vocabulary | shards | tasks | wall s | tokens/s | main MiB | largest task MiB | steps |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k in args.sizes:
        corpus = make_corpus(args.work, k, args.titles)
        for s in args.shards:
            r = pre[(k, s)] = preprocess(corpus, args.work, s, slice_mb, k, args.titles)
            print(
                f"| {k}x | {r['tokens'] / 1e6:.1f}M | {r['vocab']:,} | {s} | {r['tasks']} | {r['wall']:.0f} | "
                f"{r['tokens'] / r['wall'] / 1e6:.2f}M | {r['main_mib']:.0f} | {r['task_mib']:.0f} | {r['steps']} |",
                flush=True,
            )
    train: dict = {}
    if args.train_sizes:
        print(f"\n## a training rank's memory ({args.train_steps} steps, LSTM 256, batch 20 x 50, 1 thread)")
        print(
            "| size | vocabulary | mode | what | private (RssAnon) MiB | file pages (RssFile) MiB | peak (VmHWM) MiB |"
        )
        print("|---|---|---|---|---|---|---|")
        for k in args.train_sizes:
            shards = args.shards[0]
            corpus = make_corpus(args.work, k, args.titles)
            run = args.work / "runs" / f"{corpus.stem}-{shards}"
            if not (run / "corpus.h5").exists():
                preprocess(corpus, args.work, shards, slice_mb, k, args.titles)
            vocab = len(open_corpus(run / "corpus.h5").vocab)
            for mode in ("stream", "windows"):
                for what in args.train_what:
                    t = train_memory(corpus, run, args.work, args.train_steps, mode, what, _min_count(k, args.titles))
                    if (mode, what) == ("stream", "data"):
                        train[k] = t
                    print(
                        f"| {k}x | {vocab:,} | {mode} | {what} | {t['anon']:.0f} | {t['file']:.0f} | {t['hwm']:.0f} |",
                        flush=True,
                    )
    extrapolate(pre, train, len(os.sched_getaffinity(0)))


if __name__ == "__main__":
    main()
