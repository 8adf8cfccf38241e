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

How the train job stops and is requeued: hpcrnn/cluster/jobs.py.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from submitit import LocalExecutor, SlurmExecutor
from submitit.core.utils import FailedJobError, FailedSubmissionError, UncompletedJobError

from hpcrnn import errors
from hpcrnn.cli import make_parser, run_cli
from hpcrnn.cluster import slurm
from hpcrnn.cluster.jobs import SHARD_STEPS, StageJob, StageStopped, shard_step_jobs, stage_jobs
from hpcrnn.cluster.plan import STAGES, StagePlan, check_compatible_run, parse_stages, plan_stages
from hpcrnn.cluster.records import latest_jobs, write_launch
from hpcrnn.cluster.submitit_internals import preemption_signal_name
from hpcrnn.config import Config, save_resolved
from hpcrnn.data.slices import shard_count
from hpcrnn.data.sources import list_sources
from hpcrnn.errors import EXIT_OK, ConfigError, HpcrnnError, LockedError
from hpcrnn.run.lock import LAUNCH_LOCK_NAME, RunLock
from hpcrnn.run.provenance import record_launch

CLUSTERS = ("auto", "slurm", "local", "debug")


def _log(msg: str) -> None:
    """One line to stderr, beside the launch's report on stdout."""
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ checks


def resolve_cluster(name: str) -> str:
    if name not in CLUSTERS:
        raise ConfigError(f"--cluster: {name!r} is not one of {', '.join(CLUSTERS)}")
    if name == "auto":
        return "slurm" if shutil.which("sbatch") and shutil.which("squeue") else "local"
    if name == "slurm" and not shutil.which("sbatch"):
        raise ConfigError("--cluster slurm: sbatch is not on PATH (no Slurm here); use --cluster local")
    return name


def _check_stop_signal(cfg: Config) -> None:
    """submitit asks Slurm for its own signal before the time limit and handles it itself: with another
    stop signal the trainer would be requeued without its checkpoint."""
    want = preemption_signal_name()
    if cfg.train.stop_signal != want:
        raise ConfigError(
            f"{cfg.source}: train.stop_signal: {cfg.train.stop_signal} differs from submitit's "
            f"preemption signal {want}; use {want} (or export SUBMITIT_PREEMPT_SIGNAL="
            f"{cfg.train.stop_signal[3:]} before launching)"
        )


def check_not_in_flight(cfg: Config) -> None:
    """Refuse a Slurm launch while this run's previous jobs are still queued or running: two pipelines
    would write the same run directory."""
    jobs = {s: r for s, r in latest_jobs(cfg.run_dir).items() if r.get("cluster") == "slurm"}
    if not jobs:
        return
    # a stage's job, and the steps of a sharded preprocess before it
    ids = [(s, r["job_id"]) for s, r in jobs.items()]
    ids += [(f"{s} {sr['step']}", sr["job_id"]) for s, r in jobs.items() for sr in r.get("steps", [])]
    states = slurm.job_states([j for _, j in ids])
    found = [(s, j, slurm.job_state(states, j)) for s, j in ids]
    dead = [j for _, j, st in found if st == slurm.DEPENDENCY_NEVER_SATISFIED]
    if dead:  # left behind by a failed or cancelled upstream job: this launch replaces them
        slurm.cancel(dead)
        _log(
            f"hpcrnn.launch: cancelled job(s) {' '.join(dead)} of the previous launch: their upstream job "
            f"did not succeed"
        )
    busy = [(s, j, st) for s, j, st in found if st in slurm.ACTIVE_STATES]
    if busy:
        names = ", ".join(f"{s} job {j} ({st})" for s, j, st in busy)
        raise LockedError(
            f"run {cfg.run.name!r} ({cfg.run_dir}) still has jobs in Slurm: {names}; wait for them "
            f"(python -m hpcrnn.status {cfg.run_dir}) or cancel them with scancel "
            f"{' '.join(j for _, j, _ in busy)}"
        )


# ------------------------------------------------------------------------------------------ executors


def make_executor(cfg: Config, stage: str, cluster: str, dependency: str | None = None):
    """A submitit executor for one stage with that stage's resources."""
    folder = cfg.jobs_dir / stage
    folder.mkdir(parents=True, exist_ok=True)
    if cluster == "slurm":
        ex = SlurmExecutor(folder=folder, max_num_timeout=cfg.slurm.max_num_timeout)
        try:
            ex.update_parameters(**slurm.sbatch_parameters(cfg, stage, dependency))
        except ValueError as e:
            raise ConfigError(f"{cfg.source}: slurm.{stage}: {str(e).splitlines()[0]}") from None
        return ex
    r = cfg.slurm.for_stage(stage)
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
        setup=slurm.setup_lines(r.cpus_per_task),
    )
    return ex


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


def _skipped(plans: list[StagePlan]) -> dict[str, dict]:
    return {p.stage: {"action": "skipped", "reason": p.reason} for p in plans if not p.run}


def launch(
    cfg: Config,
    cluster: str = "auto",
    stages: list[str] | None = None,
    out: Callable[[str], None] = print,
    overrides: list[str] | None = None,
) -> LaunchResult:
    """Check, plan and run (local, debug) or submit (slurm) the pipeline of ``cfg``. One launch of a run at
    a time: a second one, from any node, is refused while the first plans, submits and records its jobs
    (or, here, runs them), so two launches never submit two pipelines. ``overrides`` (the command line's)
    go to the run's overrides.yaml, with the git commit in provenance.json (hpcrnn/run/provenance.py)."""
    cluster = resolve_cluster(cluster)
    stages = list(stages or STAGES)
    made = _missing_folders(cfg.run_dir)
    try:
        with launch_lock(cfg):
            return _launch_locked(cfg, cluster, stages, out, overrides)
    except HpcrnnError:
        # a refused first launch leaves nothing behind: not the folder for its lock, nor an empty scratch/
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
        raise


def _missing_folders(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first (what taking the lock creates)."""
    made = []
    while not path.exists() and path != path.parent:
        made.append(path)
        path = path.parent
    return made


def launch_lock(cfg: Config) -> RunLock:
    """The lock one launch of a run holds (hpcrnn/cluster/sweep.py holds those of all its runs at once)."""
    # a killed launcher must not block the next launch for long: its heartbeat thread renews every 15 s
    return RunLock(cfg.run_dir, "launch", stale_after=300.0, name=LAUNCH_LOCK_NAME)


def check_and_plan(cfg: Config, cluster: str, stages: list[str]) -> list[StagePlan]:
    """A launch's checks (refusals before anything is written) and its plan; the caller holds launch_lock."""
    if cluster != "debug":
        _check_stop_signal(cfg)
    check_compatible_run(cfg)
    if cluster == "slurm":
        check_not_in_flight(cfg)
    return plan_stages(cfg, stages)


def _launch_locked(
    cfg: Config, cluster: str, stages: list[str], out: Callable[[str], None], overrides: list[str] | None
) -> LaunchResult:
    plans = check_and_plan(cfg, cluster, stages)
    save_resolved(cfg)  # only now: a refused launch leaves the run's config.yaml as it was
    record_launch(cfg, overrides)  # overrides.yaml and the code's git commit (provenance.json), as Hydra
    res = LaunchResult(cluster, cfg.run_dir, plans)
    out(f"run {cfg.run.name}: {cfg.run_dir}")
    for p in plans:
        if not p.run:
            out(f"  {p.stage:<10} {p.reason}")
    if not any(p.run for p in plans):
        out("nothing to do: every stage is complete (a new run.name, or more train.max_steps, runs more)")
        write_launch(cfg, {"time": time.time(), "cluster": cluster, "stages": _skipped(plans)})
        return res
    if cluster == "slurm":
        _launch_slurm(cfg, plans, res, out)
    else:
        _launch_here(cfg, plans, res, out, cluster)
    return res


# ------------------------------------------------------------------------------------------ on Slurm


def _launch_slurm(cfg: Config, plans: list[StagePlan], res: LaunchResult, out: Callable) -> None:
    records = _skipped(plans)
    prev_id = None
    try:
        for p in plans:
            if not p.run:
                continue
            dep = f"afterok:{prev_id}" if prev_id else None
            # the inputs' paths only: the plan has hashed them already, to decide whether preprocess runs
            n = shard_count(cfg.data, list_sources(cfg.data.corpus)) if p.stage == "preprocess" else 1
            if n > 1:
                records[p.stage] = res.jobs[p.stage] = _submit_shard_steps(cfg, n, dep, res)
            else:
                records[p.stage] = res.jobs[p.stage] = _submit_stage(cfg, p.stage, dep, res)
            prev_id = res.jobs[p.stage]["job_id"]
    finally:
        # recorded even if a later submission failed, so status and the next launch know what is queued
        if res.jobs:
            write_launch(cfg, {"time": time.time(), "cluster": "slurm", "stages": records})
    _report_submitted(cfg, res, out)


def _submit_stage(
    cfg: Config, stage: str, dep: str | None, res: LaunchResult, jobs: list[StageJob] | None = None, also=()
) -> dict:
    """Submit one stage's job (or job array; ``jobs``: these instead of the stage's own); its record for
    jobs.json. A refused submission cancels the stages already queued (and the job ids ``also``), so no
    half pipeline is left behind."""
    ex = make_executor(cfg, stage, "slurm", dependency=dep)
    try:
        jobs = _submit(ex, jobs or stage_jobs(cfg, stage))
    except (FailedJobError, FailedSubmissionError, OSError) as e:  # sbatch refused (partition, account, limits)
        local = f"`python -m hpcrnn.launch {cfg.source} --cluster local` runs the pipeline here instead"
        queued = [r["job_id"] for r in res.jobs.values()] + list(also)
        queued += [s["job_id"] for r in res.jobs.values() for s in r.get("steps", [])]
        err = sbatch_refused(cfg, stage, e, queued, local)
        res.jobs.clear()
        raise err from None
    return submitted_record(jobs, jobs[0].job_id.split("_")[0], dep, ex.folder)


def _submit_shard_steps(cfg: Config, n: int, dep: str | None, res: LaunchResult) -> dict:
    """Preprocessing in ``n`` > 1 shards (``data.shards``, or automatic): the stage as four dependent jobs
    (read: an array of one task per shard; reduce; encode: an array; finish, which writes corpus.h5). The
    stage's record is the finish
    job's (what the trainer waits for, and status follows), with the steps before it, in order (a list:
    jobs.json sorts keys), under ``steps``, each record naming its ``step``."""
    steps: list[dict] = []
    for step in SHARD_STEPS:
        queued = [r["job_id"] for r in steps]
        rec = _submit_stage(cfg, "preprocess", dep, res, shard_step_jobs(cfg, step, n), also=queued)
        steps.append({"step": step, **rec})
        dep = f"afterok:{rec['job_id']}"
    finish = steps.pop()
    del finish["step"]
    return {**finish, "steps": steps}


def sbatch_refused(cfg: Config, stage: str, e: Exception, queued: list[str], local: str) -> ConfigError:
    """sbatch refused ``stage``'s job: cancel ``queued`` (what this launch, or sweep, submitted before it);
    the one-line error to raise. ``local`` says what runs it on this machine when no controller answers."""
    if queued:
        slurm.cancel(queued)
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    why = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else repr(e))
    if slurm.controller_unreachable(str(e)):
        return ConfigError(f"sbatch cannot reach a Slurm controller from this machine ({why}): {local}")
    return ConfigError(
        f"{cfg.source}: slurm.{stage}: sbatch refused the {stage} job ({why})"
        + (f"; cancelled the jobs already queued ({' '.join(queued)})" if queued else "")
    )


def submitted_record(jobs: list, job_id: str, dependency: str | None, folder) -> dict:
    """A run's jobs.json record of one stage's submitted job (or its tasks of an array)."""
    rec = {
        "action": "submitted",
        "job_id": job_id,
        "dependency": dependency,
        "folder": str(folder),
        "stdout": str(jobs[0].paths.stdout),
        "stderr": str(jobs[0].paths.stderr),
        "tasks": len(jobs),
    }
    if len(jobs) > 1:
        rec["array"] = [j.job_id for j in jobs]
    return rec


def _report_submitted(cfg: Config, res: LaunchResult, out: Callable) -> None:
    out("submitted to Slurm:")
    for stage, rec in res.jobs.items():
        dep = f"  (after {rec['dependency'].split(':', 1)[1]} succeeds)" if rec.get("dependency") else ""
        arr = f" array of {rec['tasks']}" if rec.get("array") else ""
        for srec in rec.get("steps", []):  # sharded preprocessing's steps before its finish
            sarr = f" array of {srec['tasks']}" if srec.get("array") else ""
            sdep = f"  (after {srec['dependency'].split(':', 1)[1]} succeeds)" if srec.get("dependency") else ""
            out(f"  {stage + ' ' + srec['step']:<10} job {srec['job_id']}{sarr}{sdep}")
        out(f"  {stage:<10} job {rec['job_id']}{arr}{dep}")
    first_running = res.jobs.get("train") or list(res.jobs.values())[0]
    out(f"follow the logs:  tail -F {first_running['stdout']} {first_running['stderr']}")
    out(f"logs of all jobs: {cfg.jobs_dir}/<stage>/<job id>_<task>_log.out|err")
    out(f"status:           python -m hpcrnn.status {cfg.run_dir}")
    out(f"cancel:           scancel {' '.join(r['job_id'] for r in res.jobs.values())}")


# ------------------------------------------------------------------------------------------ here (local, debug)


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
    records = _skipped(plans)
    try:
        for p in plans:
            if not p.run:
                continue
            t0 = time.time()
            out(f"== {p.stage} ({cluster}): {p.reason}")
            if cluster == "debug":
                records[p.stage] = {"action": "failed"}  # until it returns
                results = [job.run() for job in stage_jobs(cfg, p.stage)]  # errors propagate as they are
                records[p.stage] = {"action": "ran", "seconds": round(time.time() - t0, 1)}
            else:
                rec = records[p.stage] = res.jobs[p.stage] = {"action": "failed"}
                results = _run_local_stage(cfg, p.stage, rec)
                rec.update(action="ran", seconds=round(time.time() - t0, 1))
            res.results[p.stage] = results[0] if len(results) == 1 else results
            out(f"== {p.stage} done in {time.time() - t0:.1f} s")
    finally:
        write_launch(cfg, {"time": time.time(), "cluster": cluster, "stages": records})


def _run_local_stage(cfg: Config, stage: str, rec: dict) -> list:
    """Run one stage through submitit's local executor, shard after shard, streaming rank 0's log;
    ``rec`` (the stage's record in jobs.json) learns the job id and logs as soon as they exist."""
    ex = make_executor(cfg, stage, "local")
    results = []
    rec["folder"] = str(ex.folder)
    for job_callable in stage_jobs(cfg, stage):
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
        return launch(cfg, args.cluster, parse_stages(args.stages), overrides=args.overrides)

    return run_cli(parser, fn, argv)
