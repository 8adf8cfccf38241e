"""Sweeps: the product of listed values (or N random draws) as runs in the sweep's directory, one shared
preprocess per data section, each stage one job array.

``python -m hpcrnn.sweep CONFIG model.hidden=64,128 train.lr=0.001,0.003 [k=v ...] [--cluster ...]``
``python -m hpcrnn.sweep CONFIG --random N [--seed S] train.lr='loguniform(1e-4,1e-2)' model.hidden='choice(64,128)'``

- **Expansion** (hpcrnn/cluster/sweep_dir.py): every ``key=v1,v2,...`` (comma-separated YAML scalars;
  commas inside ``[...]``, ``{...}`` or quotes do not split), ``key=range(start,stop[,step])`` (Hydra's: stop
  excluded) or ``key=choice(v1,...)`` is swept, the runs being the product of the lists in the order given;
  ``key=v`` with one value is a plain override of every run. ``--random N`` draws N distinct runs instead,
  each key independently (``uniform(a,b)``, ``loguniform(a,b)``; a list as a choice), seeded (``--seed``,
  default 0): the same command gives the same runs, a larger N the same first ones. Each run is an ordinary
  run named ``<run.name>-<label>_<value>[-...]`` (the label: the shortest dotted tail of the key that tells
  the swept keys apart, e.g. ``hidden``), in ``<sweep dir>/<name>/`` (its ``paths.scratch`` is the sweep
  directory), so everything that works on a run (status, evaluate, export, load, relaunch) works on it.
- **The sweep directory** ``<paths.scratch>/<run.name>-sweep/`` (sweep_dir.py) holds the runs, ``sweep.yaml``
  (config, plain overrides, swept keys, values and specs, runs and their run_dir) and the shared corpora
  ``corpus-<hash>.h5``: runs whose resolved ``data`` section is equal get the same ``data.h5_path`` and one
  preprocess between them. Each run's ``overrides.yaml`` and ``provenance.json`` (hpcrnn/run/provenance.py)
  record the overrides that made it, in the order given, and the git commit of the code that ran.
- **Launch** goes through the launcher's own code (hpcrnn/cluster/launch.py): locally (``local``, ``debug``)
  ``launch()`` of each run, one after another; on Slurm every run's launch lock is taken, each run is checked
  and planned by the launcher's ``check_and_plan``, and each stage is submitted as **one job array** over the
  runs that need it (its tasks are each run's own stage job; the train task is the launcher's Checkpointable
  TrainJob and requeues alone): preprocess (one task per distinct data section), then train
  (``afterok`` on the preprocess jobs), then generate (``aftercorr`` on the train array: task *i* after
  train task *i*). Stages complete for a run are not submitted for it. Each run's jobs.json records its
  own task (``<array id>_<task>``), so ``check_not_in_flight``, per-run status and the next launch read it
  as they read a launch's. Runs whose resources for a stage differ (``slurm.*`` swept) get one array per
  distinct set; a run with ``generate.shards > 1`` gets its own generate array after its train task.
- **Status** (hpcrnn/cluster/sweep_table.py): ``python -m hpcrnn.status <sweep dir> [--sort COLUMN] [--desc]
  [--json|--csv|--print-config]`` (options before or after the directory) prints one table from each run's
  ``collect_status`` and files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from submitit.core.utils import FailedJobError, FailedSubmissionError

from hpcrnn.cli import guarded, make_parser, parse_cli
from hpcrnn.cluster import launch as L
from hpcrnn.cluster import slurm
from hpcrnn.cluster.jobs import StageJob, stage_jobs
from hpcrnn.cluster.plan import STAGES, StagePlan, parse_stages
from hpcrnn.cluster.records import write_launch
from hpcrnn.cluster.sweep_dir import (
    SWEEP_FILE,
    SWEEP_LOCK_NAME,
    SWEEP_SUFFIX,
    Sweep,
    SweepRun,
    check_sweep_dir,
    data_hash,
    expand,
    labels,
    parse_args,
    read_sweep_file,
    run_name,
    split_values,
    sweep_dir_of,
    value_label,
    write_sweep_file,
)
from hpcrnn.cluster.sweep_table import (
    FIXED_COLUMNS,
    LEGEND,
    format_csv,
    format_table,
    is_sweep_dir,
    run_row,
    sort_rows,
    status_main,
    status_target,
    sweep_status,
)
from hpcrnn.config import Config, RunConfig, save_resolved
from hpcrnn.errors import EXIT_OK, ConfigError, HpcrnnError
from hpcrnn.run.lock import RunLock
from hpcrnn.run.provenance import record_launch

# the expansion (sweep_dir.py) and the table (sweep_table.py) are imported from here as well
__all__ = [
    "FIXED_COLUMNS",
    "LEGEND",
    "SWEEP_FILE",
    "SWEEP_LOCK_NAME",
    "SWEEP_SUFFIX",
    "Sweep",
    "SweepResult",
    "SweepRun",
    "data_hash",
    "expand",
    "format_csv",
    "format_table",
    "is_sweep_dir",
    "labels",
    "launch_sweep",
    "main",
    "parse_args",
    "read_sweep_file",
    "run_name",
    "run_row",
    "sort_rows",
    "split_values",
    "status_main",
    "status_target",
    "sweep_dir_of",
    "sweep_status",
    "value_label",
    "write_sweep_file",
]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ launch


@dataclass
class SweepResult:
    sweep: Sweep
    cluster: str
    plans: dict[str, list[StagePlan]] = field(default_factory=dict)  # run -> its plan (slurm)
    jobs: list[dict] = field(default_factory=list)  # slurm: one entry per submission
    ran: dict[str, L.LaunchResult] = field(default_factory=dict)  # local/debug: run -> its launch
    failed: dict[str, HpcrnnError] = field(default_factory=dict)  # local/debug: run -> why it failed
    exit_code: int = EXIT_OK


def launch_sweep(
    sw: Sweep, cluster: str = "auto", stages: list[str] | None = None, out: Callable[[str], None] = print
) -> SweepResult:
    """Launch every run of ``sw``: each stage one job array on Slurm, or one run after another here."""
    cluster = L.resolve_cluster(cluster)
    stages = list(stages or STAGES)
    check_sweep_dir(sw)
    fresh = not sw.dir.exists()
    try:
        # two launches of one sweep would write sweep.yaml and submit the same runs twice
        with RunLock(sw.dir, "sweep", stale_after=300.0, name=SWEEP_LOCK_NAME):
            if cluster == "slurm":
                return _launch_slurm(sw, stages, out)
            return _launch_here(sw, cluster, stages, out)
    except HpcrnnError:
        if fresh:
            with contextlib.suppress(OSError):
                sw.dir.rmdir()
        raise


def _header(sw: Sweep, out: Callable) -> None:
    out(f"sweep {sw.name}: {len(sw.runs)} run(s) of {sw.config}; sweep directory {sw.dir}")
    for r in sw.runs:
        out(f"  {r.name}  {' '.join(r.overrides)}")


def _launch_here(sw: Sweep, cluster: str, stages: list[str], out: Callable) -> SweepResult:
    """One run after another through the launcher's launch(); a run that fails does not stop the others
    (a diverging learning rate is a result of a sweep), and the sweep's exit status is the first failure's."""
    res = SweepResult(sw, cluster)
    for r in sw.runs:  # refuse before anything runs, not after the first runs' hours of training
        L.check_and_plan(r.cfg, cluster, stages)
    write_sweep_file(sw)
    _header(sw, out)
    for r in sw.runs:
        out(f"=== {r.name}")
        try:
            res.ran[r.name] = L.launch(r.cfg, cluster, stages, out, overrides=r.made_by)
        except HpcrnnError as e:
            res.failed[r.name] = e
            _log(f"hpcrnn.sweep: run {r.name} failed: {e}")
    done = [n for n in res.ran if any(p.run for p in res.ran[n].plans)]
    idle = len(res.ran) - len(done)
    out(
        f"sweep {sw.name}: {len(done)} run(s) ran, {idle} had nothing to do, {len(res.failed)} failed"
        + (f" ({', '.join(res.failed)})" if res.failed else "")
    )
    out(f"status: python -m hpcrnn.status {sw.dir}")
    if res.failed:
        res.exit_code = next(iter(res.failed.values())).exit_code
    return res


def _launch_slurm(sw: Sweep, stages: list[str], out: Callable) -> SweepResult:
    res = SweepResult(sw, "slurm")
    fresh = [r.cfg.run_dir for r in sw.runs if not r.cfg.run_dir.exists()]
    with contextlib.ExitStack() as locks:
        try:
            for r in sorted(sw.runs, key=lambda r: r.name):  # one order for every launcher: no deadlock
                locks.enter_context(L.launch_lock(r.cfg))
            for r in sw.runs:
                res.plans[r.name] = L.check_and_plan(r.cfg, "slurm", stages)
        except HpcrnnError:
            locks.close()
            for d in fresh:  # a refused first launch leaves nothing behind
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise
        write_sweep_file(sw)
        for r in sw.runs:
            save_resolved(r.cfg)
            record_launch(r.cfg, r.made_by)
        _header(sw, out)
        records = {r.name: L._skipped(res.plans[r.name]) for r in sw.runs}
        finished = False
        try:
            _ArraySubmitter(sw, res, records).submit_all()
            finished = True
        finally:
            # as the launcher does: what is queued is recorded even if the launch was interrupted midway, so
            # status and the next launch know it; a refused sbatch cancelled everything and records nothing
            now = time.time()
            for r in sw.runs:
                recs = records[r.name]
                if finished or any(v.get("action") == "submitted" for v in recs.values()):
                    write_launch(r.cfg, {"time": now, "cluster": "slurm", "stages": recs, "sweep": str(sw.dir)})
    _report_slurm(sw, res, out)
    return res


class _ArraySubmitter:
    """Submits a sweep's stages as job arrays and fills in each run's jobs.json records."""

    def __init__(self, sw: Sweep, res: SweepResult, records: dict[str, dict]):
        self.sw, self.res, self.records = sw, res, records
        self.queued: list[str] = []  # every job id submitted so far, to cancel if a later sbatch is refused

    def runs_for(self, stage: str) -> list[SweepRun]:
        return [r for r in self.sw.runs if any(p.stage == stage and p.run for p in self.res.plans[r.name])]

    def submit_all(self) -> None:
        pre_ids = self._submit_preprocess()
        train_ids, train_batches = self._submit_train(pre_ids)
        gen = self.runs_for("generate")
        self._submit_generate_after_train(gen, train_ids, train_batches)
        self._submit_generate_untrained(gen, pre_ids, train_ids)

    def _submit_preprocess(self) -> dict[str, str]:
        """run -> the job id its preprocess is (or is part of)."""
        pre_ids: dict[str, str] = {}
        # preprocess: one task per distinct corpus, run under the config of its first run that needs it
        leaders: list[SweepRun] = []
        needing = self.runs_for("preprocess")
        for group in self.sw.corpus_groups().values():
            members = [r for r in group if r in needing]
            if members:
                leaders.append(members[0])
        for batch in _by_resources(leaders, "preprocess"):
            tasks = self._submit("preprocess", [(r, stage_jobs(r.cfg, "preprocess")) for r in batch], None)
            served = []
            for r, rec in zip(batch, tasks):
                for m in self.sw.corpus_groups()[r.cfg.h5_path]:
                    if m in needing:
                        self.records[m.name]["preprocess"] = rec if m is r else dict(rec, shared_with=r.name)
                        pre_ids[m.name] = rec["job_id"].split("_")[0]
                        served.append(m.name)
            self.res.jobs[-1]["runs"] = served  # the report names every run a shared corpus serves
        return pre_ids

    def _submit_train(self, pre_ids: dict[str, str]) -> tuple[dict[str, str], list[list[SweepRun]]]:
        """(run -> its train task's job id, the runs of each train array)."""
        # train: afterok on the preprocess jobs of its runs
        train_ids: dict[str, str] = {}  # run -> its train task's job id
        train_batches = []
        for batch in _by_resources(self.runs_for("train"), "train"):
            deps = sorted({pre_ids[r.name] for r in batch if r.name in pre_ids}, key=int)
            dep = f"afterok:{':'.join(deps)}" if deps else None
            tasks = self._submit("train", [(r, stage_jobs(r.cfg, "train")) for r in batch], dep)
            for r, rec in zip(batch, tasks):
                self.records[r.name]["train"] = rec
                train_ids[r.name] = rec["job_id"]
            train_batches.append(batch)
        return train_ids, train_batches

    def _submit_generate_after_train(
        self, gen: list[SweepRun], train_ids: dict[str, str], train_batches: list[list[SweepRun]]
    ) -> None:
        # generate: aftercorr on a train array whose runs all generate one shard with equal resources (task i
        # after train task i); otherwise each run alone, after its own train task
        for batch in train_batches:
            members = [r for r in batch if r in gen]
            aligned = (
                len(batch) > 1
                and members == batch
                and all(r.cfg.generate.shards == 1 for r in batch)
                and len(_by_resources(batch, "generate")) == 1
            )
            if aligned:
                array = train_ids[batch[0].name].split("_")[0]
                tasks = self._submit(
                    "generate", [(r, stage_jobs(r.cfg, "generate")) for r in batch], f"aftercorr:{array}"
                )
                for r, rec in zip(batch, tasks):
                    self.records[r.name]["generate"] = rec
            else:
                for r in members:
                    rec = self._submit("generate", [(r, stage_jobs(r.cfg, "generate"))], f"afterok:{train_ids[r.name]}")
                    self.records[r.name]["generate"] = rec[0]

    def _submit_generate_untrained(
        self, gen: list[SweepRun], pre_ids: dict[str, str], train_ids: dict[str, str]
    ) -> None:
        # runs that generate without training in this launch (trained already, or --stages without train)
        untrained = [r for r in gen if r.name not in train_ids]
        one_shard = [r for r in untrained if r.cfg.generate.shards == 1]
        for batch in _by_resources(one_shard, "generate"):
            deps = sorted({pre_ids[r.name] for r in batch if r.name in pre_ids}, key=int)
            dep = f"afterok:{':'.join(deps)}" if deps else None
            for r, rec in zip(
                batch, self._submit("generate", [(r, stage_jobs(r.cfg, "generate")) for r in batch], dep)
            ):
                self.records[r.name]["generate"] = rec
        for r in untrained:
            if r.cfg.generate.shards > 1:
                dep = f"afterok:{pre_ids[r.name]}" if r.name in pre_ids else None
                self.records[r.name]["generate"] = self._submit("generate", [(r, stage_jobs(r.cfg, "generate"))], dep)[
                    0
                ]

    def _submit(self, stage: str, entries: list[tuple[SweepRun, list[StageJob]]], dep: str | None) -> list[dict]:
        """One submission (a job, or a job array over ``entries``' jobs in order); one record per entry:
        the run's own task id, or for a run with several jobs (generate shards) the array with its tasks."""
        lead = entries[0][0].cfg
        # an array over several runs lives in the sweep's job folder and is named after the sweep
        cfg = dataclasses.replace(lead, run=RunConfig(name=self.sw.dir.name)) if len(entries) > 1 else lead
        ex = L.make_executor(cfg, stage, "slurm", dependency=dep)
        jobs_in = [j for _, js in entries for j in js]
        try:
            jobs = L._submit(ex, jobs_in)
        except (FailedJobError, FailedSubmissionError, OSError) as e:
            raise self._refused(stage, lead, e) from None
        array = jobs[0].job_id.split("_")[0]
        self.queued.append(array)
        self.res.jobs.append(
            {
                "stage": stage,
                "job_id": array,
                "tasks": len(jobs),
                "dependency": dep,
                "runs": [r.name for r, _ in entries],
            }
        )
        out, i = [], 0
        for _, js in entries:
            mine = jobs[i : i + len(js)]
            i += len(js)
            job_id = mine[0].job_id if len(jobs) > 1 and len(mine) == 1 else array
            out.append(L.submitted_record(mine, job_id, dep, ex.folder))
        return out

    def _refused(self, stage: str, cfg: Config, e: Exception) -> ConfigError:
        """sbatch refused a stage: cancel what this launch queued (no half sweep); the one line saying why."""
        err = L.sbatch_refused(
            cfg, stage, e, self.queued, "`python -m hpcrnn.sweep ... --cluster local` runs the sweep here instead"
        )
        self.queued = []
        for recs in self.records.values():  # nothing of this launch stays queued: record only the skips
            for s in [s for s, rec in recs.items() if rec.get("action") == "submitted"]:
                del recs[s]
        return err


def _by_resources(runs: list[SweepRun], stage: str) -> list[list[SweepRun]]:
    """Runs split into batches that can share one job array: equal sbatch parameters for ``stage`` (the
    job name aside) and submitit's requeue cap; in sweep order."""
    batches: dict[str, list[SweepRun]] = {}
    for r in runs:
        p = slurm.sbatch_parameters(r.cfg, stage)
        p.pop("job_name", None)
        key = json.dumps([p, r.cfg.slurm.max_num_timeout], sort_keys=True, default=str)
        batches.setdefault(key, []).append(r)
    return list(batches.values())


def _report_slurm(sw: Sweep, res: SweepResult, out: Callable) -> None:
    for r in sw.runs:
        skipped = [p for p in res.plans[r.name] if not p.run]
        if len(skipped) == len(res.plans[r.name]):
            out(f"  {r.name}: nothing to do: every stage is complete")
        else:
            for p in skipped:
                out(f"  {r.name}: {p.stage} {p.reason}")
    if not res.jobs:
        out("nothing to submit: every stage of every run is complete")
        out(f"status: python -m hpcrnn.status {sw.dir}")
        return
    out("submitted to Slurm:")
    for j in res.jobs:
        what = f"array {j['job_id']} of {j['tasks']}" if j["tasks"] > 1 else f"job {j['job_id']}"
        dep = ""
        if j["dependency"]:
            kind, _, ids = j["dependency"].partition(":")
            dep = (
                f"  (task i after task i of {ids} succeeds: aftercorr)"
                if kind == "aftercorr"
                else f"  (after {ids.replace(':', ' ')} succeed)"
            )
        out(f"  {j['stage']:<10} {what} for {', '.join(j['runs'])}{dep}")
    out(f"status: python -m hpcrnn.status {sw.dir}")
    out(f"cancel: scancel {' '.join(j['job_id'] for j in res.jobs)}")


# ------------------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    """``python -m hpcrnn.sweep CONFIG key=v1,v2 [key=...] [--cluster auto|slurm|local|debug] [--stages ...]``"""
    parser = make_parser(
        "hpcrnn.sweep",
        "Launch the product of listed values (key=v1,v2,... or key=range(start,stop[,step]), stop excluded) "
        "or N random draws (--random N) as runs named after their values, in <paths.scratch>/<run.name>-sweep/: "
        "one shared preprocess per distinct data section; on Slurm each stage one job array (generate task i "
        "after train task i), here one run after another. Launching it again continues what is unfinished.",
    )
    parser.add_argument(
        "--cluster",
        default="auto",
        choices=L.CLUSTERS,
        help="slurm: submit the job arrays and return; local: run the runs here one after another; debug: in "
        "this process; auto (default): slurm where sbatch exists",
    )
    parser.add_argument(
        "--stages", default="all", metavar="LIST", help="comma-separated subset of preprocess,train,generate"
    )
    parser.add_argument(
        "--random",
        type=int,
        metavar="N",
        help="random search: N runs, each swept key drawn independently: key='uniform(a,b)', "
        "key='loguniform(a,b)' (uniform in log space), key='choice(v1,v2)'; a list or range() is drawn from "
        "as a choice; the same command (and --seed) gives the same runs",
    )
    parser.add_argument("--seed", type=int, help="the seed of --random's draws (default 0)")
    args = parse_cli(parser, argv)

    def body() -> int:
        if args.random is None and args.seed is not None:
            raise ConfigError("--seed: seeds the draws of --random; give --random N too")
        sw = expand(args.config, args.overrides, args.random, args.seed or 0)
        if args.print_config:
            for r in sw.runs:
                sys.stdout.write(f"# run {r.name}: {' '.join(r.made_by)}\n{r.cfg.to_yaml()}---\n")
            return EXIT_OK
        return launch_sweep(sw, args.cluster, parse_stages(args.stages)).exit_code

    return guarded("hpcrnn.sweep", args.debug, body)
