"""One run's status gathered from its directory and from Slurm: ``collect_status`` (printed by status.py),
and the run's checkpoints one by one, ``checkpoint_listing`` (``status --checkpoints``)."""

from __future__ import annotations

import json
import math
import socket
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcrnn.cluster import slurm
from hpcrnn.cluster.plan import STAGES, stage_complete
from hpcrnn.cluster.records import latest_jobs
from hpcrnn.config import Config
from hpcrnn.errors import InputError
from hpcrnn.fsutil import read_jsonl
from hpcrnn.run.checkpoints import best_of, latest, list_complete, retained
from hpcrnn.run.figures import final_figures, latest_validation, own_protocol
from hpcrnn.run.generated import output_dir, recipes_wanted
from hpcrnn.run.lock import LOCK_NAME, process_start


def _lock_holder(run_dir: Path) -> dict | None:
    """The holder of the run lock: on this host only while its process lives (a local run in progress);
    from another host as written. None without a lock."""
    try:
        holder = json.loads((run_dir / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(holder, dict) or holder.get("host") != socket.gethostname():
        return holder if isinstance(holder, dict) else None
    try:
        start = process_start(int(holder.get("pid", -1)))
    except (ValueError, TypeError):
        return None
    return holder if start is not None and start == holder.get("start") else None


def _count_recipes(cfg: Config) -> int:
    d = output_dir(cfg)
    if not d.is_dir():
        return 0
    return sum(1 for _ in d.rglob("recipe-*.txt"))


def _newest_checkpoint(cfg: Config) -> dict | None:
    """The newest checkpoint that verifies, as every reader picks it (a damaged newer one is named on
    stderr), so status never reports a step that evaluate or a resume would skip."""
    c = latest(cfg.checkpoint_dir)
    if c is None:
        return None
    return {
        "step": c.step,
        "path": str(c.path),
        "done": bool(c.meta.get("done")),
        "total_steps": c.meta.get("total_steps"),
        "early_stop": c.meta.get("early_stop"),  # {step, best_step, best_val_loss, patience} or None
    }


@dataclass
class _RunFacts:
    """What status gathers once about a run and every stage's entry reads."""

    jobs: dict[str, dict]  # stage -> its latest record in jobs.json
    states: dict[str, str]  # Slurm job id -> state
    holder: dict | None  # the run lock's live holder
    newest: dict | None  # the newest complete checkpoint
    requeues: list[dict]  # metrics.jsonl "requeue" records
    refused: list[dict]  # metrics.jsonl "requeue-refused" records
    nodes: dict[str, str] = field(default_factory=dict)  # Slurm job id -> its nodes ("n[1-2]")


def _stage_entry(cfg: Config, stage: str, facts: _RunFacts) -> dict[str, Any]:
    """One stage's state (done, queued, running, failed, incomplete, not started) and why."""
    done, what = stage_complete(cfg, stage)
    rec = facts.jobs.get(stage, {})
    on_slurm = rec.get("cluster") == "slurm" and bool(rec.get("job_id"))
    entry: dict[str, Any] = {"state": "not started", "detail": what, "cluster": rec.get("cluster")}
    for k in ("job_id", "stdout", "stderr"):
        if rec.get(k):
            entry[k] = rec[k]
    if on_slurm:
        entry["slurm_state"] = slurm.job_state(facts.states, rec["job_id"])
        if facts.nodes.get(rec["job_id"]):
            entry["nodes"] = facts.nodes[rec["job_id"]]
        if rec.get("array"):
            entry["array"] = {j: facts.states.get(j) for j in rec["array"]}
    if done:
        entry["state"] = "done"
    elif on_slurm:
        entry["state"] = slurm.STATE_OF_SLURM.get(entry.get("slurm_state") or "", "unknown (Slurm has no record)")
        if entry["state"] == "completed":
            entry["state"] = "failed"  # the job ended well but its output is not complete
            entry["detail"] = f"job ended but {what}"
    elif facts.holder and facts.holder.get("stage") == stage:
        entry["state"] = "running"
        entry["detail"] = f"pid {facts.holder.get('pid')} on {facts.holder.get('host')}"
    elif rec.get("action") == "failed":
        entry["state"] = "failed"
    elif stage == "train" and facts.newest:
        entry["state"] = "incomplete"
    if rec.get("steps") and on_slurm and not done:
        _add_shard_steps(entry, rec["steps"], facts)
    if stage == "train":
        _add_requeues(entry, done, facts)
    return entry


def _add_shard_steps(entry: dict[str, Any], steps: list[dict], facts: _RunFacts) -> None:
    """Sharded preprocessing: the stage's job (finish) waits for its steps' jobs; say which one is at work,
    or which one failed (its logs, not the finish job's, hold why)."""
    entry["steps"] = {r["step"]: slurm.job_state(facts.states, r["job_id"]) for r in steps}
    for rec in steps:
        step = rec["step"]
        state = slurm.STATE_OF_SLURM.get(entry["steps"][step] or "", "")
        if state in ("running", "queued", "suspended") and entry["state"] == "queued":
            entry["state"], entry["detail"] = state, f"step {step} (job {rec['job_id']}) {state}"
            return
        if state == "failed" or entry["steps"][step] == slurm.DEPENDENCY_NEVER_SATISFIED:
            tasks = rec.get("array") or [rec["job_id"]]
            bad = next((t for t in tasks if slurm.STATE_OF_SLURM.get(facts.states.get(t) or "") == "failed"), None)
            entry["state"], entry["detail"] = "failed", f"step {step} (job {bad or rec['job_id']}) failed"
            for k in ("stdout", "stderr"):  # the failed task's log (the records name the first task's)
                if rec.get(k):
                    p = Path(rec[k])
                    entry[k] = str(p.with_name(p.name.replace(tasks[0], bad, 1))) if bad else rec[k]
            return


def _add_requeues(entry: dict[str, Any], done: bool, facts: _RunFacts) -> None:
    """The train stage's requeue counts, and how to continue an unfinished run that has a checkpoint."""
    requeues, refused = facts.requeues, facts.refused
    entry["requeues"] = len(requeues)
    entry["requeue_reasons"] = dict(Counter(str(r.get("reason")) for r in requeues))
    if not done and facts.newest and entry["state"] in ("failed", "incomplete"):
        last_requeue = max([r.get("time", 0) for r in requeues] or [0])
        out_of_timeouts = refused and refused[-1].get("time", 0) >= last_requeue
        why = "timed out more than slurm.max_num_timeout times; " if out_of_timeouts else ""
        entry["detail"] = f"{why}resumable from step {facts.newest['step']}: launch again to continue"


def _no_run_dir(cfg: Config) -> str:
    """Where status looked and why; a relative paths.scratch resolves against the current directory, so a
    run launched from elsewhere (the shipped configs expect the repository root) is named with the place to
    run from, instead of advice that would train a second copy."""
    run_dir, cwd = cfg.run_dir, Path.cwd()
    msg = f"{run_dir}: no such run directory"
    try:
        rel = run_dir.relative_to(cwd)  # paths.scratch was (most likely) relative to this directory
    except ValueError:
        return f"{msg} (launch it first: python -m hpcrnn.launch CONFIG)"
    here = Path(cfg.source).resolve().parent if cfg.source else None
    for root in [here, *here.parents][:4] if here else []:
        if root != cwd and (root / rel).is_dir():
            return (
                f"{msg}: paths.scratch resolves against the current directory {cwd}, and the run is in "
                f"{root / rel}: run this command from {root} (or give paths.scratch={root / rel.parts[0]})"
            )
    return f"{msg} (paths.scratch resolves against the current directory {cwd}; launch it first: " + (
        "python -m hpcrnn.launch CONFIG)"
    )


def collect_status(cfg: Config) -> dict:
    """Everything `hpcrnn.status` prints, as a dict (the --json output)."""
    run_dir = cfg.run_dir
    if not run_dir.is_dir():
        raise InputError(_no_run_dir(cfg))
    metrics = read_jsonl(cfg.metrics_path)
    jobs = latest_jobs(run_dir)
    on_slurm = [r["job_id"] for r in jobs.values() if r.get("cluster") == "slurm" and r.get("job_id")]
    on_slurm += [s["job_id"] for r in jobs.values() if r.get("cluster") == "slurm" for s in r.get("steps", [])]
    facts = _RunFacts(
        jobs=jobs,
        states=slurm.job_states(on_slurm),
        holder=_lock_holder(run_dir),
        newest=_newest_checkpoint(cfg),
        requeues=[r for r in metrics if r.get("event") == "requeue"],
        refused=[r for r in metrics if r.get("event") == "requeue-refused"],
        nodes=slurm.job_nodes(on_slurm),
    )
    return {
        "run": cfg.run.name,
        "run_dir": str(run_dir),
        "jobs_dir": str(cfg.jobs_dir),
        "stages": {stage: _stage_entry(cfg, stage, facts) for stage in STAGES},
        "checkpoint": facts.newest,
        "val_ppl": latest_validation(metrics),
        "final": final_figures(metrics),
        "protocol": own_protocol(metrics),
        "recipes": _count_recipes(cfg),
        "recipes_wanted": recipes_wanted(cfg),
        "generated_dir": str(output_dir(cfg)),
        "requeues": [
            {k: r.get(k) for k in ("reason", "step", "job_id", "restart_count", "time")} for r in facts.requeues
        ],
    }


def run_metrics(cfg: Config) -> list[dict]:
    """The records of the run's metrics.jsonl (``status --csv``); InputError without a run directory."""
    if not cfg.run_dir.is_dir():
        raise InputError(_no_run_dir(cfg))
    return read_jsonl(cfg.metrics_path)


def _megabytes(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e6


def checkpoint_listing(cfg: Config) -> dict:
    """Every complete checkpoint that verifies (a damaged one is named on stderr), oldest first: step,
    epoch, validation loss and perplexity (the run's own protocol), size on disk, whether it is the one
    ``best`` and ``last`` choose, and whether retention keeps it (``hpcrnn.run.checkpoints.retained``, with
    this config's ``train.keep_last``)."""
    if not cfg.run_dir.is_dir():
        raise InputError(_no_run_dir(cfg))
    good = list_complete(cfg.checkpoint_dir, check=True)
    keep, top = retained(good, cfg.train.keep_last), best_of(good)
    rows = []
    for c in good:
        loss = c.meta.get("val_loss")
        rows.append(
            {
                "step": c.step,
                "epoch": c.meta.get("epoch"),
                "val_loss": loss,
                "val_ppl": math.exp(loss) if loss is not None and loss < 700 else None,
                "mb": round(_megabytes(c.path), 2),
                "best": c is top,
                "last": c is good[-1],
                "kept": c.path in keep,
                "path": str(c.path),
            }
        )
    return {
        "run": cfg.run.name,
        "checkpoint_dir": str(cfg.checkpoint_dir),
        "protocol": own_protocol(read_jsonl(cfg.metrics_path)),
        "keep_last": cfg.train.keep_last,
        "checkpoints": rows,
    }
