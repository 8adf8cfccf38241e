"""Everything hpcrnn knows about Slurm: job states, asking squeue and sacct about jobs, sbatch parameters."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

from hpcrnn import process as heap
from hpcrnn.config import Config

# the directory that holds the hpcrnn package: a job imports hpcrnn from there to unpickle its callable
PROJECT_ROOT = Path(__file__).resolve().parents[2]

# squeue's PENDING with reason DependencyNeverSatisfied: a job that will never start
DEPENDENCY_NEVER_SATISFIED = "DEPENDENCY_NEVER_SATISFIED"

STATE_OF_SLURM = {  # Slurm job state (squeue's long names) -> what a user wants to know
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
    DEPENDENCY_NEVER_SATISFIED: "failed",  # waits forever on an upstream job that did not succeed
}

# states in which a job still holds, or will hold, its run directory
ACTIVE_STATES = frozenset(s for s, what in STATE_OF_SLURM.items() if what in ("queued", "running", "suspended"))

# states in which a job's processes may still be alive on its nodes (a run lock it holds is not stale)

# an array job's state is that of its most active task, in this order
_ARRAY_STATE_ORDER = (
    "RUNNING",
    "PENDING",
    "REQUEUED",
    DEPENDENCY_NEVER_SATISFIED,
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "COMPLETED",
)


# ------------------------------------------------------------------------------------------ asking Slurm


def _ask(argv: list[str]) -> list[str]:
    """The output lines of a Slurm query (sacct, squeue); [] without the command, on error or failure."""
    if not shutil.which(argv[0]):
        return []
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    return r.stdout.splitlines() if r.returncode == 0 else []


def _sacct_states(ids: list[str]) -> dict[str, str]:
    """Finished (and live) jobs from accounting; {} without sacct or on error."""
    states = {}
    for line in _ask(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(ids)]):
        jid, _, st = line.partition("|")
        if jid and st:
            states[jid.strip()] = st.split()[0]  # "CANCELLED by 0" -> CANCELLED
    return states


def _squeue_states(ids: list[str]) -> dict[str, str]:
    """Jobs Slurm still holds; {} without squeue or on error."""
    states = {}
    # -r: one line per array task, pending ones too (else "12_[0-3]"), so a task id is looked up as itself
    for line in _ask(["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", ",".join(ids)]):
        jid, st, reason = (line.split("|") + ["", ""])[:3]
        if jid and st:
            # a job whose afterok job failed waits forever: it is dead, not queued
            dead = st.strip() == "PENDING" and reason.strip() == "DependencyNeverSatisfied"
            states[jid.strip()] = DEPENDENCY_NEVER_SATISFIED if dead else st.strip()
    return states


def job_nodes(job_ids: list[str]) -> dict[str, str]:
    """{job id: its nodes as Slurm writes them ("n[1-2]")} for jobs that have (had) nodes, from sacct (which
    knows running jobs too); {} without sacct or on error."""
    ids = sorted({str(j).split("_")[0] for j in job_ids if j})
    if not ids:
        return {}
    nodes = {}
    for line in _ask(["sacct", "-n", "-X", "-P", "-o", "JobID,NodeList", "-j", ",".join(ids)]):
        jid, _, nl = line.partition("|")
        if jid and nl.strip() and nl.strip() != "None assigned":
            nodes[jid.strip()] = nl.strip()
    return nodes


def job_states(job_ids: list[str]) -> dict[str, str]:
    """{job id: state} from sacct (finished jobs), overridden by squeue (the live truth for jobs it still
    lists). Array jobs report one state per task, keyed "ID_TASK"; missing tools or errors give {}."""
    ids = sorted({str(j).split("_")[0] for j in job_ids if j})
    if not ids:
        return {}
    return {**_sacct_states(ids), **_squeue_states(ids)}


def job_state(states: dict[str, str], job_id: str) -> str | None:
    """The state of one job in ``job_states``'s answer; an array job's is its most active task's; an array
    task's (``ID_TASK``, as a sweep records each run's share of an array) its own."""
    if job_id in states:
        return states[job_id]
    base, _, task = job_id.partition("_")
    if task.isdigit():  # sacct still folds pending tasks into one line, "12_[0-3%2]"
        for j, st in states.items():
            if j.startswith(f"{base}_[") and int(task) in _task_indices(j[len(base) + 2 :].rstrip("]")):
                return st
        return None
    tasks = [s for j, s in states.items() if j.split("_")[0] == job_id]
    for st in _ARRAY_STATE_ORDER:
        if st in tasks:
            return st
    return tasks[0] if tasks else None


def _task_indices(spec: str) -> set[int]:
    """The task indices of a folded array spec such as ``0-3,7%2`` (``%2``: at most 2 at once)."""
    out: set[int] = set()
    for part in spec.split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        step = 1
        if ":" in hi:
            hi, _, st = hi.partition(":")
            step = int(st) if st.isdigit() and int(st) > 0 else 1
        if lo.isdigit() and (not hi or hi.isdigit()):
            out.update(range(int(lo), int(hi or lo) + 1, step))
    return out


# what sbatch/squeue print when no controller answers (Slurm down, a login node cut off, a laptop with the
# client only), as opposed to a refusal of the job itself
_UNREACHABLE = (
    "unable to contact slurm controller",
    "connection refused",
    "socket timed out",
    "zero bytes were transmitted",
    "could not establish a configuration source",
    "unable to establish a configuration source",
)


def controller_unreachable(message: str) -> bool:
    text = message.lower()
    return any(m in text for m in _UNREACHABLE)


def cancel(job_ids: list[str]) -> None:
    subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60)


# ------------------------------------------------------------------------------------------ sbatch parameters


def setup_lines(cpus_per_task: int) -> list[str]:
    """Shell lines a stage's job script runs before Python starts."""
    # the job imports hpcrnn to unpickle its callable, from any working directory
    root = shlex.quote(str(PROJECT_ROOT))
    return [
        f"export PYTHONPATH={root}${{PYTHONPATH:+:$PYTHONPATH}}",
        # one BLAS/OpenMP thread per allocated CPU, not one per core of the node; a local job (no
        # SLURM_CPUS_PER_TASK) gets the stage's cpus_per_task
        f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-${{SLURM_CPUS_PER_TASK:-{int(cpus_per_task)}}}}}",
        # malloc keeps a training step's big tensors for the next step (hpcrnn/process.py)
        *heap.export_lines(),
    ]


def sbatch_parameters(cfg: Config, stage: str, dependency: str | None = None) -> dict[str, Any]:
    """submitit SlurmExecutor parameters for one stage: ``slurm.defaults`` overridden by ``slurm.<stage>``."""
    r = cfg.slurm.for_stage(stage)
    params: dict[str, Any] = {
        "job_name": f"{cfg.run.name}-{stage}",
        "time": int(r.time_min),
        "nodes": int(r.nodes),
        "ntasks_per_node": int(r.tasks_per_node),
        "cpus_per_task": int(r.cpus_per_task),
        "signal_delay_s": int(r.signal_delay_s),
        "setup": setup_lines(r.cpus_per_task),
    }
    if r.gpus_per_node:  # 0: ask for no GPU at all (--gpus-per-node=0 fails where no GRES exists)
        params["gpus_per_node"] = int(r.gpus_per_node)
    if r.mem_gb is not None:
        params["mem"] = f"{int(r.mem_gb)}GB" if float(r.mem_gb).is_integer() else f"{int(r.mem_gb * 1024)}MB"
    for k in ("partition", "account", "qos", "constraint"):
        if getattr(r, k):
            params[k] = getattr(r, k)
    extra = {str(k).replace("_", "-"): v for k, v in (r.additional or {}).items()}
    if dependency:
        extra["dependency"] = dependency
        # if the upstream job fails, cancel this one instead of leaving it pending forever
        extra.setdefault("kill-on-invalid-dep", "yes")
    if extra:
        params["additional_parameters"] = extra
    return params
