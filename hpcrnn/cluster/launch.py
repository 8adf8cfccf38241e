"""`python -m hpcrnn.launch CONFIG [key=value ...] [--cluster auto|slurm|local|debug] [--stages ...]`

One YAML to a pipeline of submitit jobs: preprocess -> train -> generate.

- ``slurm``: every stage that is not already complete is submitted at once, each with its own resources
  (``slurm.defaults`` overridden by ``slurm.<stage>``), chained with ``afterok`` dependencies; the command
  returns right after submitting. Job folders: ``<paths.jobs>/<run name>/<stage>/``. The job ids are
  recorded in ``<run dir>/jobs.json`` for ``python -m hpcrnn.status`` and for the next launch.
- ``local``: the same job callables through submitit's local executor, one stage after another, the job's
  log streamed to the terminal (time limits and requeues behave as on Slurm).
- ``debug``: the same callables in this process (tracebacks, breakpoints).
- ``auto`` (default): ``slurm`` where ``sbatch`` is on PATH, else ``local``.

The train job is a submitit ``Checkpointable`` whose stop path is the trainer's own: the trainer's handlers
replace submitit's for USR2 (preemption, or Slurm's warning before the time limit) and SIGTERM while it
trains; all ranks stop at the same step boundary with a complete checkpoint and ``run_train`` returns
"requeue". Only then does rank 0 hand the signal back to submitit's handler, which classifies the stop as
preempted or timed-out (from the job's elapsed time), counts timeouts against ``slurm.max_num_timeout``,
calls our ``checkpoint()`` — which records the requeue in ``metrics.jsonl`` and resubmits the same job,
the state being on disk already — and runs ``scontrol requeue``; the requeued job (same id) resumes from the
newest complete checkpoint. SIGTERM ("stopped") ends the job without a requeue.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable, DelayedSubmission

from hpcrnn.config import Config, save_resolved
from hpcrnn.errors import EXIT_OK, EXIT_STOPPED, ConfigError, HpcrnnError, LockedError
from hpcrnn.fsutil import append_jsonl, atomic_write_json

STAGES = ("preprocess", "train", "generate")
CLUSTERS = ("auto", "slurm", "local", "debug")
JOBS_FILE = "jobs.json"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# Slurm states in which a job still holds, or will hold, the run (squeue's long names).
ACTIVE_STATES = {
    "PENDING",
    "RUNNING",
    "CONFIGURING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "RESIZING",
    "SUSPENDED",
    "STOPPED",
    "SIGNALING",
    "STAGE_OUT",
}


# squeue's PENDING with reason DependencyNeverSatisfied: a job that will never start
DEPENDENCY_NEVER_SATISFIED = "DEPENDENCY_NEVER_SATISFIED"


class StageStopped(HpcrnnError):
    """Training was stopped (SIGTERM) with a complete checkpoint; a new launch continues it."""

    exit_code = EXIT_STOPPED


# ------------------------------------------------------------------------------------------ job callables


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _in_submitit_job() -> bool:
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


def _job_env():
    """submitit's view of this task (rank, job id), or None outside a submitit job."""
    if not _in_submitit_job():
        return None
    import submitit

    return submitit.JobEnvironment()


def _prepare_ranks() -> None:
    """submitit's local executor names ranks in its own variables; export torchrun's, which
    hpcrnn.distributed reads first, so a multi-task local job forms one process group."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "local" or "RANK" in os.environ:
        return
    env = _job_env()
    if env is None or env.num_tasks <= 1:
        return
    os.environ.update(
        RANK=str(env.global_rank),
        WORLD_SIZE=str(env.num_tasks),
        LOCAL_RANK=str(env.local_rank),
        MASTER_ADDR="127.0.0.1",
    )
    digits = "".join(c for c in str(env.job_id) if c.isdigit()) or "0"
    os.environ.setdefault("MASTER_PORT", str(20000 + int(digits) % 20000))


class StageJob:
    """A picklable job: the resolved config and which stage function to call. It pickles by reference to
    this module, so the job's Python must import hpcrnn (the launcher puts the project on PYTHONPATH)."""

    stage = ""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def __call__(self) -> Any:
        try:
            return self.run()
        except HpcrnnError as e:
            # the one-line message the user needs, at the end of the job's log (the traceback follows it)
            _log(f"hpcrnn.{self.stage}: error: {e}")
            raise

    def run(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cfg.run.name})"


class PreprocessJob(StageJob):
    stage = "preprocess"

    def run(self) -> Any:
        from hpcrnn.data.build import run_preprocess

        return run_preprocess(self.cfg)


class GenerateJob(StageJob):
    stage = "generate"

    def __init__(self, cfg: Config, shard: int = 0, num_shards: int = 1):
        super().__init__(cfg)
        self.shard, self.num_shards = shard, num_shards

    def run(self) -> Any:
        from hpcrnn.generate.job import run_generate

        return run_generate(self.cfg, shard=self.shard, num_shards=self.num_shards)


def _submitit_usr_handler(fallback: Any = None):
    """submitit's preemption handler (a bound SignalHandler method), if it is installed."""
    from submitit.core.job_environment import JobEnvironment, SignalHandler

    sig = JobEnvironment._usr_sig()
    for h in (signal.getsignal(sig), fallback):
        if isinstance(getattr(h, "__self__", None), SignalHandler):
            return h
    return None


# submitit's handler as found when the train job started (the trainer swaps it out while it trains)
_SUBMITIT_HANDLER: Any = None


class TrainJob(StageJob, Checkpointable):
    """The train stage as a submitit Checkpointable that requeues only through the trainer's stop path."""

    stage = "train"

    def run(self) -> Any:
        global _SUBMITIT_HANDLER
        from hpcrnn.train.loop import run_train

        _prepare_ranks()
        _SUBMITIT_HANDLER = _submitit_usr_handler()
        env = _job_env()
        rank = env.global_rank if env is not None else 0
        restarts, last_step = 0, None
        while True:
            result = run_train(self.cfg)
            if result.status == "done":
                return {
                    "status": "done",
                    "step": result.step,
                    "checkpoint": str(result.checkpoint) if result.checkpoint else None,
                }
            if result.status == "stopped":
                raise StageStopped(
                    f"training of {self.cfg.run.name} stopped by SIGTERM at step {result.step} "
                    f"with a complete checkpoint; launch again to continue"
                )
            # "requeue": the checkpoint of this step is complete on every rank
            handler = _submitit_usr_handler(_SUBMITIT_HANDLER)
            if handler is None:
                # in this process (--cluster debug) there is no scheduler: "requeue" means resume right here.
                # Each round must make progress (a time budget too small for one step would loop forever).
                if result.step == last_step:
                    raise StageStopped(
                        f"training of {self.cfg.run.name} asked to be requeued twice at step "
                        f"{result.step} without progress (train.time_limit too small?)"
                    )
                _record_requeue(self.cfg, _trainer_stop_reason(self.cfg), job_id="in-process", restart_count=restarts)
                restarts, last_step = restarts + 1, result.step
                continue
            if rank != 0:
                # submitit requeues from rank 0 only. Leaving now could make srun end the job before rank 0
                # has requeued it (with KillOnBadExit), so wait to be killed by the requeue.
                if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
                    time.sleep(300)
                sys.exit(0)  # no result pickle: this task did not finish
            # Hand the stop to submitit: it calls checkpoint() below, requeues (scontrol requeue, or exit
            # status 144 for the local executor) and exits; or raises when max_num_timeout is spent.
            handler(handler.__self__.env._usr_sig(), None)
            # submitit's handler always exits or raises; reaching here means it was replaced by a stub
            return {"status": "requeue", "step": result.step}

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Called by submitit on rank 0 before it requeues. The trainer's checkpoint is already on disk (or
        the signal came before training began), so the resubmission is this same job, which resumes from
        the newest complete checkpoint. Records the requeue and its reason in metrics.jsonl."""
        handler = _submitit_usr_handler(_SUBMITIT_HANDLER)
        reason, countdown = "preempted", 1
        if handler is not None:
            sh = handler.__self__
            timed_out = sh.has_timed_out()  # the same test submitit applies, on the same clock
            reason = "timed-out" if timed_out else "preempted"
            countdown = sh._delayed._timeout_countdown - int(timed_out)
        env = _job_env()
        job_id = env.job_id if env else None
        restarts = os.environ.get("SLURM_RESTART_COUNT")
        if restarts is None:  # the local executor restarts without counting: count our own records
            from hpcrnn.cluster.status import read_metrics

            restarts = sum(
                1
                for r in read_metrics(self.cfg.metrics_path)
                if r.get("event") == "requeue" and str(r.get("job_id")) == str(job_id)
            )
        _record_requeue(self.cfg, reason, job_id=job_id, restart_count=int(restarts or 0), requeued=countdown >= 0)
        return DelayedSubmission(self, *args, **kwargs)


def _trainer_stop_reason(cfg: Config) -> str:
    """Without submitit's clock: the trainer's own time budget is a timeout, a signal a preemption."""
    from hpcrnn.cluster.status import read_metrics

    stops = [r for r in read_metrics(cfg.metrics_path) if r.get("event") == "stop"]
    return "timed-out" if stops and stops[-1].get("reason") == "time_limit" else "preempted"


def _record_requeue(cfg: Config, reason: str, job_id: Any, restart_count: int, requeued: bool = True) -> None:
    step = None
    try:
        from hpcrnn.train.checkpoint import list_complete

        done = list_complete(cfg.checkpoint_dir, warn=False)
        step = done[-1].step if done else None
    except Exception:  # the record matters more than its step
        pass
    rec = {
        "event": "requeue" if requeued else "requeue-refused",
        "reason": reason,
        "step": step,
        "time": time.time(),
        "job_id": job_id,
        "restart_count": restart_count,
    }
    if not requeued:
        rec["why"] = f"timed out more than slurm.max_num_timeout={cfg.slurm.max_num_timeout} times"
    try:
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        append_jsonl(cfg.metrics_path, rec)
    except OSError as e:
        _log(f"hpcrnn.launch: warning: could not record the requeue in {cfg.metrics_path}: {e}")
    _log(f"hpcrnn.launch: {rec['event']} ({reason}) at step {step}, job {job_id}")


# ------------------------------------------------------------------------------------------ planning


@dataclass
class StagePlan:
    stage: str
    run: bool
    reason: str  # why it runs or is skipped, for the user


def resolve_cluster(name: str) -> str:
    if name not in CLUSTERS:
        raise ConfigError(f"--cluster: {name!r} is not one of {', '.join(CLUSTERS)}")
    if name == "auto":
        return "slurm" if shutil.which("sbatch") and shutil.which("squeue") else "local"
    if name == "slurm" and not shutil.which("sbatch"):
        raise ConfigError("--cluster slurm: sbatch is not on PATH (no Slurm here); use --cluster local")
    return name


def parse_stages(text: str | None) -> list[str]:
    if text is None or text.strip() in ("", "all"):
        return list(STAGES)
    items = [s.strip() for s in text.replace(",", " ").split() if s.strip()]
    for s in items:
        if s not in STAGES:
            import difflib

            hint = difflib.get_close_matches(s, STAGES, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"--stages: unknown stage {s!r}{extra}; stages are {', '.join(STAGES)}")
    return [s for s in STAGES if s in items]  # pipeline order, each once


def _optional(module: str, name: str) -> Callable | None:
    """A stage module's function, or None where that module (or function) does not exist yet."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def _corpus_current(cfg: Config) -> bool:
    from hpcrnn.data.build import is_current

    return is_current(cfg)


def _training_complete(cfg: Config) -> bool:
    """training_done(cfg), and the target it reached is still this config's target: a raised
    train.max_steps (or changed epochs) continues a finished run."""
    fn = _optional("hpcrnn.train.loop", "training_done")
    if fn is None or not fn(cfg):
        return False
    from hpcrnn.train.checkpoint import list_complete

    done = list_complete(cfg.checkpoint_dir, warn=False)
    if not done:
        return False
    c, t = done[-1], cfg.train
    if t.max_steps:
        return c.step >= t.max_steps
    old = (c.meta.get("config") or {}).get("train", {})
    return not old.get("max_steps") and old.get("epochs") == t.epochs and old.get("batch_size") == t.batch_size


def stage_complete(cfg: Config, stage: str, strict: bool = False) -> tuple[bool, str]:
    """(complete, what) from the run directory alone. ``strict``: an unreadable input raises instead."""
    if stage == "preprocess":
        try:
            ok = _corpus_current(cfg)
        except HpcrnnError as e:  # e.g. the corpus file is gone: not current, and say why
            if strict:
                raise
            return False, str(e)
        return ok, (f"{cfg.h5_path} matches its inputs and settings" if ok else f"{cfg.h5_path} missing or stale")
    if stage == "train":
        ok = _training_complete(cfg)
        return ok, "training reached its target step" if ok else "training not finished"
    fn = _optional("hpcrnn.generate.job", "generation_done")
    ok = bool(fn and fn(cfg))
    return ok, (f"{cfg.generate.num_recipes} recipes generated" if ok else "generation not done")


def plan_stages(cfg: Config, stages: list[str]) -> list[StagePlan]:
    """Which stages to run. Once a stage runs, every later requested stage runs too (its inputs change);
    each one still skips its own work inside the job when that turns out to be current."""
    plans, upstream_runs = [], False
    for stage in STAGES:
        if stage not in stages:
            continue
        # strict: a missing corpus fails the launch now, not a queued job an hour later
        done, what = stage_complete(cfg, stage, strict=True)
        if done and not upstream_runs:
            plans.append(StagePlan(stage, False, f"skipped: {what}"))
        else:
            plans.append(StagePlan(stage, True, what if not done else "runs after an upstream stage"))
            upstream_runs = True
    # a stage run on its own needs its predecessor's output
    first = next((p for p in plans if p.run), None)
    if first is not None:
        prev = STAGES[STAGES.index(first.stage) - 1] if first.stage != "preprocess" else None
        if prev and prev not in stages:
            if prev == "preprocess":
                ok, what = stage_complete(cfg, "preprocess")
                if not ok:
                    raise ConfigError(
                        f"--stages: {first.stage} needs the preprocessed corpus, but {what}: add preprocess to --stages"
                    )
            else:
                from hpcrnn.train.checkpoint import list_complete

                if not list_complete(cfg.checkpoint_dir, warn=False):
                    raise ConfigError(
                        f"--stages: generate needs a trained checkpoint, but {cfg.checkpoint_dir} "
                        f"holds none: add train to --stages"
                    )
    _check_generate_folder(cfg, plans)
    return plans


def _check_generate_folder(cfg: Config, plans: list[StagePlan]) -> None:
    """Training that continues past the checkpoint an existing generate.name folder was made from would
    fail the generate job at the very end: refuse now, before anything is submitted."""
    runs = {p.stage for p in plans if p.run}
    if not {"train", "generate"} <= runs or cfg.generate.checkpoint:
        return
    from hpcrnn.generate.job import PLAN, output_dir, present_recipes

    out = output_dir(cfg)
    try:
        pinned = json.loads((out / PLAN).read_text()).get("checkpoint", {}).get("step")
    except (OSError, ValueError):
        return
    if pinned is not None and present_recipes(out):
        raise ConfigError(
            f"{out}: holds recipes from checkpoint step {pinned}, and training continues past it: "
            f"give a new generate.name for the new model (or generate.checkpoint={pinned} to "
            f"finish that set)"
        )


# Settings a checkpoint depends on: changing any of them makes the run's checkpoints meaningless.
_DATA_KEYS = (
    "corpus",
    "format",
    "document_start",
    "tokenizer",
    "min_count",
    "rare",
    "repair",
    "window",
    "stride",
    "split",
    "seed",
)


def _norm_corpus(c: Any) -> Any:
    if isinstance(c, str):
        return os.path.realpath(c)
    if isinstance(c, list):
        return [os.path.realpath(x) for x in c]
    if isinstance(c, dict):
        return {k: os.path.realpath(v) for k, v in c.items()}
    return c


def check_compatible_run(cfg: Config) -> None:
    """Refuse, before anything is written or submitted, a config that no longer fits the run's newest
    checkpoint (model shape, or the data its vocabulary came from). A new run.name starts afresh."""
    from hpcrnn.train.checkpoint import list_complete

    done = list_complete(cfg.checkpoint_dir, warn=False)
    if not done:
        return
    newest = done[-1]
    old = newest.meta.get("config") or {}
    new = cfg.to_dict()
    diffs = []
    for k, v in new["model"].items():
        if k != "dropout" and k in old.get("model", {}) and old["model"][k] != v:
            diffs.append(f"model.{k}: {old['model'][k]!r} -> {v!r}")
    for k in _DATA_KEYS:
        if k not in old.get("data", {}):
            continue
        a, b = old["data"][k], new["data"][k]
        if k == "corpus":
            a, b = _norm_corpus(a), _norm_corpus(b)
        if a != b:
            diffs.append(f"data.{k}: {old['data'][k]!r} -> {new['data'][k]!r}")
    if diffs:
        raise ConfigError(
            f"{cfg.source}: run {cfg.run.name!r} has checkpoints up to step {newest.step} in "
            f"{cfg.checkpoint_dir} that this config cannot continue ({'; '.join(diffs)}): "
            f"give a new run name (run.name=...) or restore the settings"
        )


# ------------------------------------------------------------------------------------------ job records


def read_jobs(run_dir: Path) -> dict:
    p = Path(run_dir) / JOBS_FILE
    if not p.is_file():
        return {"launches": []}
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError):
        return {"launches": []}
    return data if isinstance(data, dict) and isinstance(data.get("launches"), list) else {"launches": []}


def _write_launch(cfg: Config, launch: dict) -> None:
    data = read_jobs(cfg.run_dir)
    data["launches"].append(launch)
    atomic_write_json(cfg.run_dir / JOBS_FILE, data)


def latest_jobs(run_dir: Path) -> dict[str, dict]:
    """Per stage, the record of its most recent submission (with the cluster it went to)."""
    out: dict[str, dict] = {}
    for launch in read_jobs(run_dir)["launches"]:
        for stage, rec in (launch.get("stages") or {}).items():
            if rec.get("action") not in (None, "skipped"):
                out[stage] = dict(rec, cluster=launch.get("cluster"), launched=launch.get("time"))
    return {s: out[s] for s in sorted(out, key=lambda s: STAGES.index(s) if s in STAGES else 99)}


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """{job id: state} from squeue (jobs Slurm still holds), completed by sacct (finished jobs). Array
    jobs report one state per task, keyed "ID_TASK"; missing tools or errors give {}."""
    ids = sorted({str(j).split("_")[0] for j in job_ids if j})
    if not ids:
        return {}
    states: dict[str, str] = {}
    if shutil.which("sacct"):
        try:
            r = subprocess.run(
                ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(ids)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if r.returncode == 0:
                for line in r.stdout.splitlines():
                    jid, _, st = line.partition("|")
                    if jid and st:
                        states[jid.strip()] = st.split()[0]  # "CANCELLED by 0" -> CANCELLED
        except (OSError, subprocess.SubprocessError):
            pass
    if shutil.which("squeue"):
        try:
            r = subprocess.run(
                ["squeue", "-h", "-o", "%i|%T|%r", "-j", ",".join(ids)], capture_output=True, text=True, timeout=30
            )
            if r.returncode == 0:  # squeue is the live truth for jobs it still lists
                for line in r.stdout.splitlines():
                    jid, st, reason = (line.split("|") + ["", ""])[:3]
                    if jid and st:
                        # a job whose afterok job failed waits forever: it is dead, not queued
                        dead = st.strip() == "PENDING" and reason.strip() == "DependencyNeverSatisfied"
                        states[jid.strip()] = DEPENDENCY_NEVER_SATISFIED if dead else st.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return states


def _job_state(states: dict[str, str], job_id: str) -> str | None:
    if job_id in states:
        return states[job_id]
    subs = [s for j, s in states.items() if j.split("_")[0] == job_id]  # an array: the most active task
    for st in (
        "RUNNING",
        "PENDING",
        "REQUEUED",
        DEPENDENCY_NEVER_SATISFIED,
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "COMPLETED",
    ):
        if st in subs:
            return st
    return subs[0] if subs else None


def check_not_in_flight(cfg: Config) -> None:
    """Refuse a Slurm launch while this run's previous jobs are still queued or running: two pipelines
    would write the same run directory."""
    jobs = {s: r for s, r in latest_jobs(cfg.run_dir).items() if r.get("cluster") == "slurm"}
    if not jobs:
        return
    states = slurm_states([r["job_id"] for r in jobs.values()])
    found = [(s, r["job_id"], _job_state(states, r["job_id"])) for s, r in jobs.items()]
    dead = [j for _, j, st in found if st == DEPENDENCY_NEVER_SATISFIED]
    if dead:  # left behind by a failed or cancelled upstream job: this launch replaces them
        subprocess.run(["scancel", *dead], capture_output=True, timeout=60)
        _log(
            f"hpcrnn.launch: cancelled job(s) {' '.join(dead)} of the previous launch: their upstream job "
            f"did not succeed"
        )
    busy = [(s, j, st) for s, j, st in found if st in ACTIVE_STATES]
    if busy:
        names = ", ".join(f"{s} job {j} ({st})" for s, j, st in busy)
        raise LockedError(
            f"run {cfg.run.name!r} ({cfg.run_dir}) still has jobs in Slurm: {names}; wait for them "
            f"(python -m hpcrnn.status {cfg.run_dir}) or cancel them with scancel "
            f"{' '.join(j for _, j, _ in busy)}"
        )


# ------------------------------------------------------------------------------------------ executors


def _setup_lines(cpus_per_task: int) -> list[str]:
    # the job imports hpcrnn to unpickle its callable, from any working directory
    root = shlex.quote(str(PROJECT_ROOT))
    return [
        f"export PYTHONPATH={root}${{PYTHONPATH:+:$PYTHONPATH}}",
        # one BLAS/OpenMP thread per allocated CPU, not one per core of the node; a local job (no
        # SLURM_CPUS_PER_TASK) gets the stage's cpus_per_task
        f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-${{SLURM_CPUS_PER_TASK:-{int(cpus_per_task)}}}}}",
    ]


def make_executor(cfg: Config, stage: str, cluster: str, dependency: str | None = None):
    """A submitit executor for one stage with that stage's resources."""
    from submitit import LocalExecutor, SlurmExecutor

    r = cfg.slurm.for_stage(stage)
    folder = cfg.jobs_dir / stage
    folder.mkdir(parents=True, exist_ok=True)
    if cluster == "slurm":
        ex = SlurmExecutor(folder=folder, max_num_timeout=cfg.slurm.max_num_timeout)
        params: dict[str, Any] = {
            "job_name": f"{cfg.run.name}-{stage}",
            "time": int(r.time_min),
            "nodes": int(r.nodes),
            "ntasks_per_node": int(r.tasks_per_node),
            "cpus_per_task": int(r.cpus_per_task),
            "signal_delay_s": int(r.signal_delay_s),
            "setup": _setup_lines(r.cpus_per_task),
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
        try:
            ex.update_parameters(**params)
        except ValueError as e:
            raise ConfigError(f"{cfg.source}: slurm.{stage}: {str(e).splitlines()[0]}") from None
        return ex
    if r.nodes and r.nodes > 1:
        raise ConfigError(
            f"{cfg.source}: slurm.{stage}.nodes: {r.nodes} nodes need Slurm; --cluster {cluster} "
            f"runs on this machine (set nodes: 1)"
        )
    ex = LocalExecutor(folder=folder, max_num_timeout=cfg.slurm.max_num_timeout)
    ex.update_parameters(
        timeout_min=int(r.time_min),
        tasks_per_node=int(r.tasks_per_node),
        gpus_per_node=int(r.gpus_per_node or 0),
        signal_delay_s=int(r.signal_delay_s),
        setup=_setup_lines(r.cpus_per_task),
    )
    return ex


def _stage_jobs(cfg: Config, stage: str) -> list[StageJob]:
    if stage == "preprocess":
        return [PreprocessJob(cfg)]
    if stage == "train":
        return [TrainJob(cfg)]
    n = cfg.generate.shards
    return [GenerateJob(cfg, i, n) for i in range(n)]


def _submit(ex, jobs: list[StageJob]) -> list:
    if len(jobs) == 1:
        return [ex.submit(jobs[0])]
    with ex.batch():  # one Slurm job array: each task writes its own disjoint share
        out = [ex.submit(j) for j in jobs]
    return out


# ------------------------------------------------------------------------------------------ launch


@dataclass
class LaunchResult:
    cluster: str
    run_dir: Path
    plans: list[StagePlan]
    jobs: dict[str, dict] = field(default_factory=dict)  # stage -> {job_id, stdout, ...}
    results: dict[str, Any] = field(default_factory=dict)  # local/debug: stage -> return value
    exit_code: int = EXIT_OK


def launch(
    cfg: Config, cluster: str = "auto", stages: list[str] | None = None, out: Callable[[str], None] = print
) -> LaunchResult:
    """Check, plan and run (local, debug) or submit (slurm) the pipeline of ``cfg``."""
    cluster = resolve_cluster(cluster)
    stages = list(stages or STAGES)
    if cluster != "debug":
        from submitit.core.job_environment import JobEnvironment

        want = "SIG" + JobEnvironment.USR_SIG
        if cfg.train.stop_signal != want:
            # submitit asks Slurm for its own signal before the time limit and handles it itself: with
            # another stop signal the trainer would be requeued without its checkpoint
            raise ConfigError(
                f"{cfg.source}: train.stop_signal: {cfg.train.stop_signal} differs from submitit's "
                f"preemption signal {want}; use {want} (or export SUBMITIT_PREEMPT_SIGNAL="
                f"{cfg.train.stop_signal[3:]} before launching)"
            )
    check_compatible_run(cfg)
    if cluster == "slurm":
        check_not_in_flight(cfg)
    plans = plan_stages(cfg, stages)
    save_resolved(cfg)  # only now: a refused launch leaves the run's config.yaml as it was
    res = LaunchResult(cluster, cfg.run_dir, plans)
    out(f"run {cfg.run.name}: {cfg.run_dir}")
    for p in plans:
        if not p.run:
            out(f"  {p.stage:<10} {p.reason}")
    todo = [p.stage for p in plans if p.run]
    if not todo:
        out("nothing to do: every stage is complete (a new run.name, or more train.max_steps, runs more)")
        _write_launch(
            cfg,
            {
                "time": time.time(),
                "cluster": cluster,
                "stages": {p.stage: {"action": "skipped", "reason": p.reason} for p in plans},
            },
        )
        return res
    if cluster == "slurm":
        _launch_slurm(cfg, plans, res, out)
    else:
        _launch_here(cfg, plans, res, out, cluster)
    return res


def _launch_slurm(cfg: Config, plans: list[StagePlan], res: LaunchResult, out: Callable) -> None:
    records: dict[str, dict] = {p.stage: {"action": "skipped", "reason": p.reason} for p in plans if not p.run}
    prev_id = None
    try:
        for p in plans:
            if not p.run:
                continue
            dep = f"afterok:{prev_id}" if prev_id else None
            ex = make_executor(cfg, p.stage, "slurm", dependency=dep)
            try:
                jobs = _submit(ex, _stage_jobs(cfg, p.stage))
            except Exception as e:  # sbatch refused (partition, account, limits): no half pipeline
                from submitit.core.utils import FailedJobError, FailedSubmissionError

                if not isinstance(e, (FailedJobError, FailedSubmissionError, OSError)):
                    raise
                queued = [r["job_id"] for r in res.jobs.values()]
                if queued:
                    subprocess.run(["scancel", *queued], capture_output=True, timeout=60)
                lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
                why = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else repr(e))
                res.jobs.clear()
                raise ConfigError(
                    f"{cfg.source}: slurm.{p.stage}: sbatch refused the {p.stage} job ({why})"
                    + (f"; cancelled the jobs already queued ({' '.join(queued)})" if queued else "")
                ) from None
            job_id = jobs[0].job_id.split("_")[0]
            rec = {
                "action": "submitted",
                "job_id": job_id,
                "dependency": dep,
                "folder": str(ex.folder),
                "stdout": str(jobs[0].paths.stdout),
                "stderr": str(jobs[0].paths.stderr),
                "tasks": len(jobs),
            }
            if len(jobs) > 1:
                rec["array"] = [j.job_id for j in jobs]
            records[p.stage] = res.jobs[p.stage] = rec
            prev_id = job_id
    finally:
        # recorded even if a later submission failed, so status and the next launch know what is queued
        if res.jobs:
            _write_launch(cfg, {"time": time.time(), "cluster": "slurm", "stages": records})
    out("submitted to Slurm:")
    for stage, rec in res.jobs.items():
        dep = f"  (after {rec['dependency'].split(':', 1)[1]} succeeds)" if rec.get("dependency") else ""
        arr = f" array of {rec['tasks']}" if rec.get("array") else ""
        out(f"  {stage:<10} job {rec['job_id']}{arr}{dep}")
    first_running = res.jobs.get("train") or list(res.jobs.values())[0]
    out(f"follow the logs:  tail -F {first_running['stdout']} {first_running['stderr']}")
    out(f"logs of all jobs: {cfg.jobs_dir}/<stage>/<job id>_<task>_log.out|err")
    out(f"status:           python -m hpcrnn.status {cfg.run_dir}")
    out(f"cancel:           scancel {' '.join(r['job_id'] for r in res.jobs.values())}")


class _Tail:
    """Copy what a job appends to its log files to our terminal."""

    def __init__(self, paths: list[tuple[Path, Any]]):
        self.files = [(Path(p), stream, 0) for p, stream in paths]

    def pump(self) -> None:
        files = []
        for path, stream, pos in self.files:
            try:
                with open(path, "rb") as f:
                    f.seek(pos)
                    data = f.read()
            except OSError:
                data = b""
            if data:
                stream.write(data.decode("utf-8", "replace"))
                stream.flush()
            files.append((path, stream, pos + len(data)))
        self.files = files


def _launch_here(cfg: Config, plans: list[StagePlan], res: LaunchResult, out: Callable, cluster: str) -> None:
    records: dict[str, dict] = {p.stage: {"action": "skipped", "reason": p.reason} for p in plans if not p.run}
    try:
        for p in plans:
            if not p.run:
                continue
            t0 = time.time()
            out(f"== {p.stage} ({cluster}): {p.reason}")
            if cluster == "debug":
                records[p.stage] = {"action": "failed"}  # until it returns
                results = [job.run() for job in _stage_jobs(cfg, p.stage)]  # errors propagate as they are
                records[p.stage] = {"action": "ran", "seconds": round(time.time() - t0, 1)}
            else:
                rec = records[p.stage] = res.jobs[p.stage] = {"action": "failed"}
                results = _run_local_stage(cfg, p.stage, rec)
                rec.update(action="ran", seconds=round(time.time() - t0, 1))
            res.results[p.stage] = results[0] if len(results) == 1 else results
            out(f"== {p.stage} done in {time.time() - t0:.1f} s")
    finally:
        _write_launch(cfg, {"time": time.time(), "cluster": cluster, "stages": records})


def _run_local_stage(cfg: Config, stage: str, rec: dict) -> list:
    """Run one stage through submitit's local executor, shard after shard, streaming rank 0's log;
    ``rec`` (the stage's record in jobs.json) learns the job id and logs as soon as they exist."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    ex = make_executor(cfg, stage, "local")
    results = []
    rec["folder"] = str(ex.folder)
    for job_callable in _stage_jobs(cfg, stage):
        job = ex.submit(job_callable)
        # the local "job id" is the controller's pid: informative only, Slurm knows nothing of it
        rec.update(job_id=str(job.job_id), stdout=str(job.paths.stdout), stderr=str(job.paths.stderr))
        tail = _Tail([(job.paths.stdout, sys.stdout), (job.paths.stderr, sys.stderr)])
        try:
            while not job.done():
                tail.pump()
                time.sleep(0.5)
            tail.pump()
            results.append(job.results()[0])  # rank 0 speaks for the job
        except KeyboardInterrupt:
            job.cancel()
            raise
        except (FailedJobError, UncompletedJobError) as e:
            tail.pump()
            raise _job_failure(stage, job, str(e)) from None
    return results


_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Stopped)): (.*)$")


def _job_failure(stage: str, job, text: str) -> HpcrnnError:
    """One line for a failed local job, from the exception that ended it (the last one in its trace)."""
    from hpcrnn import errors

    name, msg = "", ""
    for ln in reversed([ln.strip() for ln in text.splitlines()]):
        m = _EXC_LINE.match(ln)
        if m:
            name, msg = m.groups()
            break
    log = f"(log: {job.paths.stderr})"
    short = name.rsplit(".", 1)[-1]
    cls = getattr(errors, short, None) if name.startswith("hpcrnn.errors.") else None
    if isinstance(cls, type) and issubclass(cls, HpcrnnError):
        return cls(f"{stage} failed: {msg} {log}")
    if short == "StageStopped":
        return StageStopped(f"{stage}: {msg}")
    if short == "UncompletedJobError" and "timed-out too many times" in msg:
        e = HpcrnnError(
            f"{stage}: reached slurm.{stage}.time_min more than slurm.max_num_timeout times; its "
            f"checkpoint is complete: launch again to continue, or raise the time limit {log}"
        )
        e.exit_code = errors.EXIT_REQUEUE
        return e
    e = HpcrnnError(f"{stage} failed: {name + ': ' if name else ''}{msg or 'see the log'} {log}")
    e.exit_code = errors.EXIT_ERROR
    return e


# ------------------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    from hpcrnn.cli import make_parser, run_cli

    parser = make_parser(
        "hpcrnn.launch",
        "Run the pipeline preprocess -> train -> generate of one config: "
        "submitted to Slurm as dependent jobs, or run here stage after stage.",
    )
    parser.add_argument(
        "--cluster",
        default="auto",
        choices=CLUSTERS,
        help="slurm: submit and return; local: run the jobs on this machine, one after "
        "another; debug: in this process; auto (default): slurm where sbatch exists",
    )
    parser.add_argument(
        "--stages",
        default="all",
        metavar="LIST",
        help="comma-separated subset of preprocess,train,generate (default: all)",
    )

    def fn(cfg: Config, args) -> LaunchResult:
        return launch(cfg, args.cluster, parse_stages(args.stages))

    # save=False: the launcher writes config.yaml itself, after refusing an incompatible relaunch
    return run_cli(parser, fn, argv, save=False)
