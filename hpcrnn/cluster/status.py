"""`python -m hpcrnn.status CONFIG|RUN_DIR [key=value ...] [--checkpoints] [--json|--csv]`: where does this
run stand?

(`python -m hpcrnn.status SWEEP_DIR`: a sweep's table, hpcrnn/cluster/sweep_table.py.)

For each stage: done, queued, running, failed or not started — with the Slurm job id and state where the
launcher submitted one, and the number of requeues and their reasons; the newest complete checkpoint and
its step; the latest validation perplexity; how many recipes were generated; where the logs are.
It reads the run directory (config.yaml, jobs.json, metrics.jsonl, checkpoints/, generated/) and asks
Slurm (squeue, sacct) about recorded jobs; it writes nothing.

``--checkpoints`` lists every complete checkpoint instead: step, epoch, validation loss and perplexity (the
run's own protocol), size on disk, which one ``--checkpoint best`` and ``last`` choose, and whether
retention keeps it. ``--csv`` prints metrics.jsonl as CSV for a spreadsheet (with ``--checkpoints``: the list).
"""

from __future__ import annotations

import json
import sys

from hpcrnn.cli import make_parser, run_cli
from hpcrnn.cluster import sweep_table
from hpcrnn.cluster.run_status import checkpoint_listing, collect_status, run_metrics
from hpcrnn.config import Config
from hpcrnn.fsutil import records_csv
from hpcrnn.run.figures import figures_line, validation_line

# collect_status lives in run_status.py (the sweep's table reads it too); it is imported from here as well
__all__ = ["collect_status", "format_checkpoints", "format_status", "main"]


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
    lines.append(f"  validation perplexity: {validation_line(s['val_ppl'])}")
    if s.get("final"):
        lines.append(f"  final figures: {figures_line(s['final'], s.get('protocol') or 'standard')}")
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


def format_checkpoints(s: dict) -> str:
    """The listing of ``checkpoint_listing`` as a plain aligned table."""
    cks = s["checkpoints"]
    if not cks:
        return f"run {s['run']}: no complete checkpoint in {s['checkpoint_dir']}"
    by = f"the {s['protocol']} protocol (the run's own)" if s.get("protocol") else "the run's own protocol"
    lines = [
        f"run {s['run']}: {len(cks)} complete checkpoint{'s' if len(cks) != 1 else ''} in {s['checkpoint_dir']}",
        f"  validation loss and perplexity by {by}; retention keeps the newest {s['keep_last']} "
        "(train.keep_last), the best, and the best step the newest names (early stopping)",
    ]
    table = [("step", "epoch", "val loss", "val ppl", "MB", "best", "last", "kept")]
    for c in cks:
        loss, ppl = c["val_loss"], c["val_ppl"]
        table.append(
            (
                str(c["step"]),
                "-" if c["epoch"] is None else str(c["epoch"]),
                "-" if loss is None else f"{loss:.4f}",
                "-" if ppl is None else f"{ppl:.2f}",
                f"{c['mb']:.2f}",
                "best" if c["best"] else "-",
                "last" if c["last"] else "-",
                "yes" if c["kept"] else "no",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines += ["  " + "  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in table]
    return "\n".join(lines)


def _report(cfg: Config, args) -> str:
    """What ``main`` prints for these arguments."""
    if args.checkpoints:
        s = checkpoint_listing(cfg)
        if args.csv:
            return records_csv(s["checkpoints"])
        return json.dumps(s, indent=2) + "\n" if args.json else format_checkpoints(s) + "\n"
    if args.csv:
        records = run_metrics(cfg)
        if not records:
            print(f"hpcrnn.status: {cfg.metrics_path}: no metrics recorded yet", file=sys.stderr, flush=True)
        return records_csv(records)
    s = collect_status(cfg)
    return (json.dumps(s, indent=2) if args.json else format_status(s)) + "\n"


def main(argv: list[str] | None = None) -> int:
    # a sweep's directory gets the sweep's table
    if sweep_table.status_target(sys.argv[1:] if argv is None else argv):
        return sweep_table.status_main(argv)
    parser = make_parser(
        "hpcrnn.status",
        "Show where a run stands: each stage done, queued, running or "
        "failed; newest checkpoint; validation perplexity; recipes; logs.",
    )
    parser.epilog = f"{sweep_table.sweep_help()}\n\n{parser.epilog}"  # --help: both usages, the sweep's too
    parser.add_argument(
        "--checkpoints",
        action="store_true",
        help="list every complete checkpoint: step, epoch, validation loss and perplexity, size, which one "
        "'best' and 'last' choose, and whether retention keeps it",
    )
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print the status (or the checkpoints) as JSON")
    form.add_argument(
        "--csv", action="store_true", help="print metrics.jsonl as CSV (with --checkpoints: the checkpoints)"
    )

    def fn(cfg: Config, args) -> None:
        print(_report(cfg, args), end="", flush=True)

    return run_cli(parser, fn, argv)  # status never writes into the run
