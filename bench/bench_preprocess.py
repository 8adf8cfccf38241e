"""Benchmark: preprocess a whole corpus (default: the shared recipes-all.txt.xz, ~145 MB of text).

    python bench/bench_preprocess.py [CORPUS] [--shards N] [key=value ...]

Prints MB/s (decoded text), tokens/s, wall time, peak RSS, the machine and the date. The target for the
shared corpus on the 2-core development machine: < 60 s wall and < 1 GB peak RSS. Runs in its own
process so that the peak RSS is the preprocessing's alone. Heavy: run it once, not in a loop.

``--shards N`` (the same as ``data.shards=N``) preprocesses in N tasks on min(N, CPUs) worker processes
(docs/scaling.md); the peak RSS is then this process's (plan, reduce, finish) and the largest worker's
(each worker also logs its own, which is the figure to trust: Linux counts a worker's peak from its start,
so the largest worker's includes this process's memory when the pool started).
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT = ROOT.parent / "shared" / "data" / "recipes" / "recipes-all.txt.xz"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def main(argv: list[str]) -> int:
    argv = list(argv)
    if "--shards" in argv:  # --shards N: data.shards=N
        i = argv.index("--shards")
        argv[i : i + 2] = [f"data.shards={argv[i + 1]}"]
    argv = [f"data.shards={a.split('=', 1)[1]}" if a.startswith("--shards=") else a for a in argv]
    corpus = Path(argv[0]) if argv and "=" not in argv[0] else DEFAULT
    overrides = [a for a in argv if "=" in a]
    if not corpus.exists():
        print(f"bench_preprocess: {corpus} not found", file=sys.stderr)
        return 2
    from hpcrnn.config import apply_overrides, from_dict
    from hpcrnn.data.build import run_preprocess

    with tempfile.TemporaryDirectory(prefix="bench_pp_") as tmp:
        raw = {
            "run": {"name": "bench"},
            "paths": {"scratch": tmp},
            "data": {"corpus": str(corpus), "document_start": "^Title:", "min_count": 5, "window": 50},
        }
        cfg = from_dict(apply_overrides(raw, overrides), "bench")
        t0 = time.perf_counter()
        res = run_preprocess(cfg)
        wall = time.perf_counter() - t0
        size = res.path.stat().st_size
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    worker_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest worker (shards)
    c = res.counts
    mb = c["input_bytes"] / 1e6
    print(f"corpus     {corpus} ({mb:.1f} MB of text, {c['documents']} documents)")
    print(f"wall       {wall:.1f} s   (target < 60 s)")
    print(f"throughput {mb / wall:.2f} MB/s, {c['tokens'] / wall / 1e6:.2f} M tokens/s ({c['tokens']} tokens)")
    print(f"peak RSS   {peak_mb:.0f} MiB   (target < 1024 MiB)")
    if cfg.data.shards > 1:
        print(f"shards     {cfg.data.shards}: the largest worker's peak RSS {worker_mb:.0f} MiB (an upper bound)")
    print(
        f"output     {size / 1e6:.1f} MB, {size / c['tokens']:.2f} bytes/token, vocabulary {c['vocab_size']}, "
        f"<unk> {100 * c['unk_rate']:.2f}%, repaired {c['repaired_documents']} documents"
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine    {platform.node()}: {cpu_model()}, {os.cpu_count()} CPUs, load {load:.1f}, "
        f"Python {platform.python_version()}"
    )
    print(f"date       {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    return 0 if wall < 60 and max(peak_mb, worker_mb) < 1024 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
