"""`python -m hpcrnn.status CONFIG|RUN_DIR [key=value ...] [--json]`: where does this run stand?

For each stage: done, queued, running, failed or not started — with the Slurm job id and state where the
launcher submitted one, and the number of requeues and their reasons; the newest complete checkpoint and
its step; the latest validation perplexity; how many recipes were generated; where the logs are.
It reads the run directory (config.yaml, jobs.json, metrics.jsonl, checkpoints/, generated/) and asks
Slurm (squeue, sacct) about recorded jobs; it writes nothing.
"""

from __future__ import annotations

import json
import socket
from collections import Counter
from pathlib import Path
from typing import Any

from hpcrnn.config import Config
from hpcrnn.errors import InputError

STATE_OF_SLURM = {  # Slurm job state -> what a user wants to know
    "PENDING": "queued",
    "REQUEUED": "queued",
    "REQUEUE_FED": "queued",
    "REQUEUE_HOLD": "queued",
    "CONFIGURING": "running",
    "RUNNING": "running",
    "COMPLETING": "running",
    "SIGNALING": "running",
    "STAGE_OUT": "running",
    "RESIZING": "running",
    "SUSPENDED": "suspended",
    "STOPPED": "suspended",
    "COMPLETED": "completed",
    "FAILED": "failed",
    "CANCELLED": "failed",
    "TIMEOUT": "failed",
    "OUT_OF_MEMORY": "failed",
    "NODE_FAIL": "failed",
    "BOOT_FAIL": "failed",
    "DEADLINE": "failed",
    "PREEMPTED": "failed",
    "REVOKED": "failed",
    "DEPENDENCY_NEVER_SATISFIED": "failed",  # waits forever on an upstream job that did not succeed
}


def read_metrics(path: Path) -> list[dict]:
    """The records of metrics.jsonl; a torn last line (a writer killed mid-line) is ignored."""
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict):
                    out.append(rec)
    except OSError:
        pass
    return out


def _lock_holder(run_dir: Path) -> dict | None:
    """The live holder of the run lock on this host (a local run in progress), else None."""
    p = run_dir / "lock.json"
    try:
        holder = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(holder, dict) or holder.get("host") != socket.gethostname():
        return holder if isinstance(holder, dict) else None
    try:
        from hpcrnn.lock import _proc_start

        start = _proc_start(int(holder.get("pid", -1)))
    except (ImportError, ValueError, TypeError):
        return None
    return holder if start is not None and start == holder.get("start") else None


def _count_recipes(cfg: Config) -> int:
    d = cfg.run_dir / "generated" / cfg.generate.name
    if not d.is_dir():
        return 0
    return sum(1 for _ in d.rglob("recipe-*.txt"))


def _newest_checkpoint(cfg: Config) -> dict | None:
    from hpcrnn.train.checkpoint import list_complete

    done = list_complete(cfg.checkpoint_dir, warn=False)
    if not done:
        return None
    c = done[-1]
    return {
        "step": c.step,
        "path": str(c.path),
        "done": bool(c.meta.get("done")),
        "total_steps": c.meta.get("total_steps"),
    }


def collect_status(cfg: Config) -> dict:
    """Everything `hpcrnn.cluster.status` prints, as a dict (the --json output)."""
    from hpcrnn.cluster.launch import STAGES, _job_state, latest_jobs, slurm_states, stage_complete

    run_dir = cfg.run_dir
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run directory (launch it first: python -m hpcrnn.launch CONFIG)")
    metrics = read_metrics(cfg.metrics_path)
    jobs = latest_jobs(run_dir)
    states = slurm_states([r["job_id"] for r in jobs.values() if r.get("cluster") == "slurm" and r.get("job_id")])
    requeues = [r for r in metrics if r.get("event") == "requeue"]
    refused = [r for r in metrics if r.get("event") == "requeue-refused"]
    holder = _lock_holder(run_dir)
    newest = _newest_checkpoint(cfg)

    stages: dict[str, dict] = {}
    for stage in STAGES:
        done, what = stage_complete(cfg, stage)
        rec = jobs.get(stage, {})
        on_slurm = rec.get("cluster") == "slurm" and bool(rec.get("job_id"))
        info: dict[str, Any] = {"state": "not started", "detail": what, "cluster": rec.get("cluster")}
        for k in ("job_id", "stdout", "stderr"):
            if rec.get(k):
                info[k] = rec[k]
        if on_slurm:
            info["slurm_state"] = _job_state(states, rec["job_id"])
            if rec.get("array"):
                info["array"] = {j: states.get(j) for j in rec["array"]}
        if done:
            info["state"] = "done"
        elif on_slurm:
            st = info.get("slurm_state")
            info["state"] = STATE_OF_SLURM.get(st or "", "unknown (Slurm has no record)")
            if info["state"] == "completed":
                info["state"] = "failed"  # the job ended well but its output is not complete
                info["detail"] = f"job ended but {what}"
        elif holder and holder.get("stage") == stage:
            info["state"] = "running"
            info["detail"] = f"pid {holder.get('pid')} on {holder.get('host')}"
        elif rec.get("action") == "failed":
            info["state"] = "failed"
        elif stage == "train" and newest:
            info["state"] = "incomplete"
        if stage == "train":
            info["requeues"] = len(requeues)
            info["requeue_reasons"] = dict(Counter(str(r.get("reason")) for r in requeues))
            if not done and newest and info["state"] in ("failed", "incomplete"):
                why = (
                    "timed out more than slurm.max_num_timeout times; "
                    if refused and refused[-1].get("time", 0) >= max([r.get("time", 0) for r in requeues] or [0])
                    else ""
                )
                info["detail"] = f"{why}resumable from step {newest['step']}: launch again to continue"
        stages[stage] = info

    ckpt = newest
    val = [r for r in metrics if r.get("split") == "val" and r.get("ppl") is not None]
    return {
        "run": cfg.run.name,
        "run_dir": str(run_dir),
        "jobs_dir": str(cfg.jobs_dir),
        "stages": stages,
        "checkpoint": ckpt,
        "val_ppl": {"ppl": val[-1]["ppl"], "step": val[-1].get("step")} if val else None,
        "recipes": _count_recipes(cfg),
        "recipes_wanted": cfg.generate.num_recipes,
        "generated_dir": str(run_dir / "generated" / cfg.generate.name),
        "requeues": [{k: r.get(k) for k in ("reason", "step", "job_id", "restart_count", "time")} for r in requeues],
    }


def format_status(s: dict) -> str:
    lines = [f"run {s['run']}: {s['run_dir']}"]
    for stage, info in s["stages"].items():
        parts = []
        if info.get("job_id") and info.get("cluster") == "slurm":
            parts.append(f"job {info['job_id']} {info.get('slurm_state') or '?'}")
        elif info.get("job_id"):
            parts.append(f"{info.get('cluster')} job {info['job_id']}")
        if stage == "train" and info.get("requeues"):
            why = ", ".join(f"{k} {v}" for k, v in sorted(info["requeue_reasons"].items()))
            parts.append(f"requeued {info['requeues']}x ({why})")
        parts.append(info.get("detail", ""))
        lines.append(f"  {stage:<10} {info['state']:<11} " + "; ".join(p for p in parts if p))
    c = s["checkpoint"]
    if c:
        of = f" of {c['total_steps']}" if c.get("total_steps") else ""
        lines.append(f"  newest checkpoint: step {c['step']}{of}{' (final)' if c['done'] else ''}  {c['path']}")
    else:
        lines.append("  newest checkpoint: none")
    v = s["val_ppl"]
    lines.append(
        f"  validation perplexity: {v['ppl']:.2f} at step {v['step']}"
        if v
        else "  validation perplexity: not measured yet"
    )
    lines.append(f"  recipes generated: {s['recipes']} of {s['recipes_wanted']}  {s['generated_dir']}")
    logs = [(st, i) for st, i in s["stages"].items() if i.get("stdout")]
    if logs:
        lines.append("  logs:")
        for st, i in logs:
            lines.append(f"    {st:<10} {i['stdout']}")
            lines.append(f"    {'':<10} {i['stderr']}")
    else:
        lines.append(f"  logs: {s['jobs_dir']} (no jobs recorded)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from hpcrnn.cli import make_parser, run_cli

    parser = make_parser(
        "hpcrnn.status",
        "Show where a run stands: each stage done, queued, running or "
        "failed; newest checkpoint; validation perplexity; recipes; logs.",
    )
    parser.add_argument("--json", action="store_true", help="print the status as JSON")

    def fn(cfg: Config, args) -> None:
        s = collect_status(cfg)
        print(json.dumps(s, indent=2) if args.json else format_status(s), flush=True)

    return run_cli(parser, fn, argv, save=False)  # status never writes into the run
