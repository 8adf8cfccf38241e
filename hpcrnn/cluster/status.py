"""`python -m hpcrnn.status CONFIG|RUN_DIR [key=value ...] [--json]`: where does this run stand?

(`python -m hpcrnn.status SWEEP_DIR`: a sweep's table, hpcrnn/cluster/sweep_table.py.)

For each stage: done, queued, running, failed or not started — with the Slurm job id and state where the
launcher submitted one, and the number of requeues and their reasons; the newest complete checkpoint and
its step; the latest validation perplexity; how many recipes were generated; where the logs are.
It reads the run directory (config.yaml, jobs.json, metrics.jsonl, checkpoints/, generated/) and asks
Slurm (squeue, sacct) about recorded jobs; it writes nothing.
"""

from __future__ import annotations

import json
import sys

from hpcrnn.cli import make_parser, run_cli
from hpcrnn.cluster import sweep_table
from hpcrnn.cluster.run_status import collect_status
from hpcrnn.config import Config

# collect_status lives in run_status.py (the sweep's table reads it too); it is imported from here as well
__all__ = ["collect_status", "format_status", "main"]


def format_status(s: dict) -> str:
    """The status of ``collect_status`` as lines for a terminal."""
    lines = [f"run {s['run']}: {s['run_dir']}"]
    for stage, entry in s["stages"].items():
        parts = []
        if entry.get("job_id") and entry.get("cluster") == "slurm":
            on = f" on {entry['nodes']}" if entry.get("nodes") else ""
            parts.append(f"job {entry['job_id']} {entry.get('slurm_state') or '?'}{on}")
        elif entry.get("job_id"):
            parts.append(f"{entry.get('cluster')} job {entry['job_id']}")
        if stage == "train" and entry.get("requeues"):
            why = ", ".join(f"{k} {v}" for k, v in sorted(entry["requeue_reasons"].items()))
            parts.append(f"requeued {entry['requeues']}x ({why})")
        parts.append(entry.get("detail", ""))
        lines.append(f"  {stage:<10} {entry['state']:<11} " + "; ".join(p for p in parts if p))
    c = s["checkpoint"]
    if c:
        of = f" of {c['total_steps']}" if c.get("total_steps") else ""
        final = " (final)" if c["done"] else ""
        if c.get("early_stop"):
            final = (
                f" (final: stopped early, the weights of the best validation at step {c['early_stop']['best_step']})"
            )
        lines.append(f"  newest checkpoint: step {c['step']}{of}{final}  {c['path']}")
    else:
        lines.append("  newest checkpoint: none")
    v = s["val_ppl"]
    lines.append(
        f"  validation perplexity: {v['ppl']:.2f} at step {v['step']}"
        + (f" ({v['protocol']} protocol)" if v.get("protocol") else "")
        if v
        else "  validation perplexity: not measured yet"
    )
    lines.append(f"  recipes generated: {s['recipes']} of {s['recipes_wanted']}  {s['generated_dir']}")
    logs = [(st, e) for st, e in s["stages"].items() if e.get("stdout")]
    if logs:
        lines.append("  logs:")
        for st, e in logs:
            lines.append(f"    {st:<10} {e['stdout']}")
            lines.append(f"    {'':<10} {e['stderr']}")
    else:
        lines.append(f"  logs: {s['jobs_dir']} (no jobs recorded)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    # a sweep's directory gets the sweep's table
    if sweep_table.status_target(sys.argv[1:] if argv is None else argv):
        return sweep_table.status_main(argv)
    parser = make_parser(
        "hpcrnn.status",
        "Show where a run stands: each stage done, queued, running or "
        "failed; newest checkpoint; validation perplexity; recipes; logs.",
    )
    parser.add_argument("--json", action="store_true", help="print the status as JSON")

    def fn(cfg: Config, args) -> None:
        s = collect_status(cfg)
        print(json.dumps(s, indent=2) if args.json else format_status(s), flush=True)

    return run_cli(parser, fn, argv)  # status never writes into the run
