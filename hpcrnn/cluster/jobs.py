"""The pipeline stages as picklable submitit jobs; the train job requeues only through the trainer's stop path.

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

import importlib
import os
import sys
import time
from typing import Any

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from hpcrnn.cluster import submitit_internals as internals
from hpcrnn.config import Config
from hpcrnn.errors import EXIT_STOPPED, HpcrnnError
from hpcrnn.fsutil import append_jsonl, read_jsonl
from hpcrnn.process import ignore_stop_signal, master_port
from hpcrnn.run.checkpoints import list_complete


def stage_function(name: str) -> Any:
    """A stage's ``run_<stage>`` function, imported when a job runs it: on the compute node, in the job's
    own process, so the launcher (on a login node) never imports torch or the stages."""
    module, func = STAGE_FUNCTIONS[name].split(":")
    return getattr(importlib.import_module(module), func)


STAGE_FUNCTIONS = {
    "preprocess": "hpcrnn.data.build:run_preprocess",
    "train": "hpcrnn.train.loop:run_train",
    "generate": "hpcrnn.generate.job:run_generate",
    # sharded preprocessing on Slurm (data.shards > 1): its four steps, each a job (read, encode: arrays)
    "preprocess_read": "hpcrnn.data.build:preprocess_shard",
    "preprocess_reduce": "hpcrnn.data.build:preprocess_reduce",
    "preprocess_encode": "hpcrnn.data.build:preprocess_encode",
    "preprocess_finish": "hpcrnn.data.build:preprocess_finish",
}


class StageStopped(HpcrnnError):
    """Training was stopped (SIGTERM) with a complete checkpoint; a new launch continues it."""

    exit_code = EXIT_STOPPED


def _log(msg: str) -> None:
    """One line to stderr: the job's .err log, or the terminal for --cluster debug."""
    print(msg, file=sys.stderr, flush=True)


def _job_env() -> submitit.JobEnvironment | None:
    """submitit's view of this task (rank, job id), or None outside a submitit job."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    return submitit.JobEnvironment()


def prepare_ranks() -> None:
    """submitit's local executor names ranks in its own variables; export torchrun's, which
    hpcrnn.train.distributed reads first, so a multi-task local job forms one process group."""
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
    os.environ.setdefault("MASTER_PORT", str(master_port(env.job_id)))


def _settle() -> None:
    """In a scheduled job whose stage has finished, Slurm's warning before the time limit has nothing left
    to stop (see ``ignore_stop_signal``); in the launching process (--cluster debug) change nothing."""
    if internals.requeue_handler() is not None:
        ignore_stop_signal(internals.preemption_signal_name())


class StageJob:
    """A picklable job: the resolved config and which stage function to call. It pickles by reference to
    this module, so the job's Python must import hpcrnn (the launcher puts the project on PYTHONPATH)."""

    stage = ""

    def __init__(self, cfg: Config):
        self.cfg = cfg

    def __call__(self) -> Any:
        try:
            result = self.run()
        except HpcrnnError as e:
            if isinstance(e, StageStopped):  # stopped with a complete checkpoint: an outcome too
                _settle()
            # the one-line message the user needs, at the end of the job's log (the traceback follows it)
            _log(f"hpcrnn.{self.stage}: error: {e}")
            raise
        _settle()
        return result

    def run(self) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cfg.run.name})"


class PreprocessJob(StageJob):
    stage = "preprocess"

    def run(self) -> Any:
        return stage_function("preprocess")(self.cfg)


class ShardStepJob(StageJob, Checkpointable):
    """One step of sharded preprocessing (``hpcrnn.data.shards``): read and encode run once per shard
    ``index`` (a job array), reduce and finish once. Each step skips what an earlier run of it wrote, so a
    task that Slurm preempts or times out is requeued (submitit's checkpoint: the same call again) and
    redoes only its own shard."""

    stage = "preprocess"

    def __init__(self, cfg: Config, step: str, index: int = 0, count: int = 1):
        super().__init__(cfg)
        self.step, self.index, self.count = step, index, count

    def run(self) -> Any:
        fn = stage_function(f"preprocess_{self.step}")
        if self.step in ("read", "encode"):
            return fn(self.cfg, self.index, self.count)
        return fn(self.cfg, self.count)

    def __repr__(self) -> str:
        return f"ShardStepJob({self.cfg.run.name}, {self.step}, {self.index}/{self.count})"


SHARD_STEPS = ("read", "reduce", "encode", "finish")


def shard_step_jobs(cfg: Config, step: str, n: int) -> list[StageJob]:
    """The jobs of one step of sharded preprocessing in ``n`` tasks: one per shard for read and encode,
    else one."""
    per_shard = step in ("read", "encode")
    return [ShardStepJob(cfg, step, i, n) for i in range(n if per_shard else 1)]


class GenerateJob(StageJob):
    stage = "generate"

    def __init__(self, cfg: Config, shard: int = 0, num_shards: int = 1):
        super().__init__(cfg)
        self.shard, self.num_shards = shard, num_shards

    def run(self) -> Any:
        return stage_function("generate")(self.cfg, shard=self.shard, num_shards=self.num_shards)


# submitit's handler as found when the train job started (the trainer swaps it out while it trains)
_SUBMITIT_HANDLER: Any = None


class TrainJob(StageJob, Checkpointable):
    """The train stage as a submitit Checkpointable that requeues only through the trainer's stop path."""

    stage = "train"

    def run(self) -> Any:
        global _SUBMITIT_HANDLER
        prepare_ranks()
        _SUBMITIT_HANDLER = internals.requeue_handler()
        env = _job_env()
        rank = env.global_rank if env is not None else 0
        restarts, last_step = 0, None
        run_train = stage_function("train")
        while True:
            result = run_train(self.cfg)
            if result.status == "done":
                ckpt = str(result.checkpoint) if result.checkpoint else None
                return {"status": "done", "step": result.step, "checkpoint": ckpt}
            if result.status == "stopped":
                raise StageStopped(
                    f"training of {self.cfg.run.name} stopped by SIGTERM at step {result.step} "
                    f"with a complete checkpoint; launch again to continue"
                )
            # "requeue": the checkpoint of this step is complete on every rank
            handler = internals.requeue_handler(_SUBMITIT_HANDLER)
            if handler is None:
                # in this process (--cluster debug) there is no scheduler: "requeue" means resume right here.
                self._check_progress(result.step, last_step)
                record_requeue(self.cfg, _trainer_stop_reason(self.cfg), job_id="in-process", restart_count=restarts)
                restarts, last_step = restarts + 1, result.step
                continue
            if rank != 0:
                # submitit requeues from rank 0 only. Leaving now could make srun end the job before rank 0
                # has requeued it (with KillOnBadExit), so wait to be killed by the requeue.
                if os.environ.get("SUBMITIT_EXECUTOR") == "slurm":
                    time.sleep(300)
                sys.exit(0)  # no result pickle: this task did not finish
            # submitit calls checkpoint() below, then requeues and exits, or raises: it never returns
            internals.hand_over(handler)
            # reaching here means submitit's handler was replaced by a stub
            return {"status": "requeue", "step": result.step}

    def _check_progress(self, step: int, last_step: int | None) -> None:
        """Each in-process round must make progress (a time budget too small for one step would loop forever)."""
        if step == last_step:
            raise StageStopped(
                f"training of {self.cfg.run.name} asked to be requeued twice at step "
                f"{step} without progress (train.time_limit too small?)"
            )

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Called by submitit on rank 0 before it requeues. The trainer's checkpoint is already on disk (or
        the signal came before training began), so the resubmission is this same job, which resumes from
        the newest complete checkpoint. Records the requeue and its reason in metrics.jsonl."""
        handler = internals.requeue_handler(_SUBMITIT_HANDLER)
        verdict = internals.classify_stop(handler) if handler is not None else internals.StopVerdict("preempted", 1)
        env = _job_env()
        job_id = env.job_id if env else None
        restarts = os.environ.get("SLURM_RESTART_COUNT")
        if restarts is None:  # the local executor restarts without counting: count our own records
            restarts = sum(
                1
                for r in read_jsonl(self.cfg.metrics_path)
                if r.get("event") == "requeue" and str(r.get("job_id")) == str(job_id)
            )
        requeued = verdict.timeouts_left >= 0
        record_requeue(self.cfg, verdict.reason, job_id=job_id, restart_count=int(restarts or 0), requeued=requeued)
        return DelayedSubmission(self, *args, **kwargs)


def stage_jobs(cfg: Config, stage: str) -> list[StageJob]:
    """The job callables of one stage: one, or one per generate shard (a Slurm job array)."""
    if stage == "preprocess":
        return [PreprocessJob(cfg)]
    if stage == "train":
        return [TrainJob(cfg)]
    n = cfg.generate.shards
    return [GenerateJob(cfg, i, n) for i in range(n)]


def _trainer_stop_reason(cfg: Config) -> str:
    """Without submitit's clock: the trainer's own time budget is a timeout, a signal a preemption."""
    stops = [r for r in read_jsonl(cfg.metrics_path) if r.get("event") == "stop"]
    return "timed-out" if stops and stops[-1].get("reason") == "time_limit" else "preempted"


def record_requeue(cfg: Config, reason: str, job_id: Any, restart_count: int, requeued: bool = True) -> None:
    """Append a "requeue" (or "requeue-refused") record to metrics.jsonl, and say so on stderr."""
    step = None
    try:
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
