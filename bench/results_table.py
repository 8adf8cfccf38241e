"""The results table of trained runs (docs/results.md), printed from what the runs wrote themselves.

    python bench/results_table.py RUN_DIR[:GENERATED_NAME] [...]

For each run: training wall time and median supervised tokens/s (metrics.jsonl), the final validation and
test perplexity and top-1 accuracy in the run's own protocol and in the standard one (the final records of
metrics.jsonl), and the quality figures of a generated folder (``generated/<name>/summary.json``, default
``default``) beside those of real test recipes. Reads only; prints markdown with the machine and the date.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import header  # noqa: E402
from hpcrnn.fsutil import read_jsonl  # noqa: E402


def training(run: Path) -> dict:
    recs = list(read_jsonl(run / "metrics.jsonl"))
    train = [r for r in recs if r.get("split") == "train" and r.get("tokens_per_s")]
    times = [r["time"] for r in recs if "time" in r]
    wall = sum(b - a for a, b in zip(times, times[1:]) if 0 <= b - a < 1800)
    out = {"wall_min": wall / 60, "tok_s": statistics.median(r["tokens_per_s"] for r in train[1:] or train)}
    for r in recs:
        if r.get("final") and r.get("split") in ("val", "test"):
            out[(r["split"], r.get("protocol"))] = (r["ppl"], r["acc"])
    return out


def quality(run: Path, name: str) -> tuple[dict, dict] | None:
    path = run / "generated" / name / "summary.json"
    if not path.is_file():
        return None
    s = json.loads(path.read_text())
    return s["generated"], s["real_test_sample"] | {"n": s["real_test_sample"].get("recipes")}


def _fig(v, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def table(arg: str) -> str:
    run_s, _, name = arg.partition(":")
    run = Path(run_s)
    t = training(run)
    rows = [f"### {run.name}", "", "| figure | value |", "|---|---|"]
    rows.append(f"| training wall time | {t['wall_min']:.1f} min |")
    rows.append(f"| supervised tokens/s (median) | {t['tok_s']:,.0f} |")
    for key in sorted(k for k in t if isinstance(k, tuple)):
        ppl, acc = t[key]
        rows.append(f"| {key[0]} perplexity / top-1 accuracy ({key[1]} protocol) | {ppl:.2f} / {acc:.2%} |")
    q = quality(run, name or "default")
    if q:
        gen, real = q
        rows += ["", f"| {gen['recipes']:,} generated (`{name or 'default'}`) | generated | real test recipes |"]
        rows.append("|---|---|---|")
        for label, key, fmt in (
            ("structure valid", "structure", ".1%"),
            ("ending on their end-of-recipe token", "stopped_at_end_of_recipe", ".1%"),
            ("ingredient coherence", "coherence_mean", ".3f"),
            ("repeated 4-grams", "repeated_4grams_mean", ".4f"),
            ("tokens a recipe", "tokens_mean", ".0f"),
        ):
            rows.append(f"| {label} | {_fig(gen.get(key), fmt)} | {_fig(real.get(key), fmt)} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(header("results_table"))
    for a in sys.argv[1:]:
        print(table(a), end="\n\n")
