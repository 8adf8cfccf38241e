"""Sweeps: the product of listed values as runs, one shared preprocess per data section, each stage one job array.

``python -m hpcrnn.sweep CONFIG model.hidden=64,128 train.lr=0.001,0.003 [k=v ...] [--cluster ...]``

- **Expansion**: every ``key=v1,v2,...`` (comma-separated YAML scalars; commas inside ``[...]``, ``{...}`` or
  quotes do not split) is swept, the runs being the product of the lists in the order given; ``key=v`` with
  one value is a plain override of every run. Each run is an ordinary run named
  ``<run.name>-<label>_<value>[-...]`` (the label: the shortest dotted tail of the key that tells the swept
  keys apart, e.g. ``hidden``), in ``<paths.scratch>/<name>/`` as a launch would make it, so everything
  that works on a run (status, evaluate, export, load, relaunch) works on it.
- **The sweep directory** ``<paths.scratch>/<run.name>-sweep/`` holds ``sweep.yaml`` (config, plain
  overrides, swept keys and values, runs) and the shared corpora ``corpus-<hash>.h5``: runs whose resolved
  ``data`` section is equal get the same ``data.h5_path`` and one preprocess between them.
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
- **Status**: ``python -m hpcrnn.status <sweep dir> [--sort COLUMN] [--desc] [--json|--csv]`` prints one
  table from each run's ``collect_status`` and files.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import io
import itertools
import json
import math
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from submitit.core.utils import FailedJobError, FailedSubmissionError

from hpcrnn.cli import EPILOG, guarded, make_parser
from hpcrnn.cluster import launch as L
from hpcrnn.cluster import slurm
from hpcrnn.cluster.jobs import StageJob, stage_jobs
from hpcrnn.cluster.plan import STAGES, StagePlan, parse_stages
from hpcrnn.cluster.records import write_launch
from hpcrnn.cluster.status import collect_status
from hpcrnn.config import RESOLVED_NAME, Config, RunConfig, load_config, parse_override, save_resolved
from hpcrnn.errors import EXIT_OK, ConfigError, HpcrnnError, InputError
from hpcrnn.fsutil import atomic_write_text, read_jsonl
from hpcrnn.generate.folder import SUMMARY, output_dir, read_json
from hpcrnn.lock import RunLock

SWEEP_FILE = "sweep.yaml"
SWEEP_SUFFIX = "-sweep"
SWEEP_LOCK_NAME = "sweep.lock.json"
# keys that say where a run lives: the sweep names and places its runs itself
_NOT_SWEPT = ("run", "paths", "data.h5_path")
_VALUE_MAX = 40  # characters of a value kept in a run name; longer ones are cut and hashed
_NAME_MAX = 200  # a run name is a directory name (255 bytes on most file systems) and a Slurm job name


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ arguments


def split_values(text: str) -> list[str]:
    """``v1,v2,...`` split at commas outside brackets and quotes, each stripped (a YAML scalar or flow value)."""
    out, cur, depth, quote = [], [], 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return out


def parse_args(items: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """(plain overrides, {swept key: [value text, ...]}) from the command line's ``key=...`` items."""
    plain: list[str] = []
    swept: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            parse_override(item)  # the loader's one-line error for an item that is no key=value
        key, _, text = item.partition("=")
        key = key.strip()
        try:  # the loader's check of the key's form; each value is parsed when its run's config is loaded
            parse_override(f"{key}=0")
        except ConfigError:
            raise ConfigError(f"override {item!r}: {key!r} is not a dotted key like train.max_steps") from None
        values = split_values(text)
        if len(values) == 1:
            plain.append(item)
            continue
        if key in swept:
            raise ConfigError(f"sweep: {key} is swept twice; list all its values once: {key}=v1,v2,...")
        if any(key == k or key.startswith(k + ".") for k in _NOT_SWEPT):
            raise ConfigError(
                f"sweep: {key} cannot be swept: the sweep names its runs ({_NOT_SWEPT[0]}.name) and places them "
                f"(paths, data.h5_path) itself; give it once for the whole sweep"
            )
        dup = sorted({v for v in values if values.count(v) > 1})
        if dup:
            raise ConfigError(f"sweep: {key}: value {dup[0]!r} listed twice")
        swept[key] = values
    if not swept:
        raise ConfigError("sweep: nothing to sweep: give at least one key=v1,v2 (a comma-separated list of values)")
    return plain, swept


def labels(keys: list[str]) -> dict[str, str]:
    """Each key's shortest dotted tail that no other swept key ends with (``model.hidden`` -> ``hidden``)."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if not any(o != key and (o == tail or o.endswith("." + tail)) for o in keys):
                break
        out[key] = tail
    return out


def value_label(text: str) -> str:
    """A value as it may stand in a run name: itself when it holds only letters, digits and ``_ . + -``;
    otherwise (or when long or empty) its safe characters followed by a hash of the text, so two values
    never share a name and no value reaches a path, a shell line or an sbatch script as it is."""
    safe = re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_")
    if safe == text and 0 < len(text) <= _VALUE_MAX and set(text) != {"."}:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{safe[:_VALUE_MAX]}_{digest}" if safe else digest


def run_name(base: str, keys: list[str], values: dict[str, str]) -> str:
    lab = labels(keys)
    name = "-".join([base, *(f"{lab[k]}_{value_label(values[k])}" for k in keys)])
    if len(name) > _NAME_MAX:
        name = f"{name[: _NAME_MAX - 11]}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"
    return name


# ------------------------------------------------------------------------------------------ expansion


@dataclass
class SweepRun:
    name: str
    values: dict[str, str]  # swept key -> value text as given
    cfg: Config

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.values.items()]


@dataclass
class Sweep:
    config: Path  # the base config file (absolute)
    name: str  # the base run.name
    dir: Path  # <paths.scratch>/<name>-sweep
    plain: list[str]  # overrides shared by every run
    keys: dict[str, list[str]]  # swept key -> value texts
    runs: list[SweepRun] = field(default_factory=list)

    def corpus_groups(self) -> dict[Path, list[SweepRun]]:
        """The runs that share each corpus file, in sweep order."""
        groups: dict[Path, list[SweepRun]] = {}
        for r in self.runs:
            groups.setdefault(r.cfg.h5_path, []).append(r)
        return groups


def sweep_dir_of(cfg: Config) -> Path:
    return Path(cfg.paths.scratch) / f"{cfg.run.name}{SWEEP_SUFFIX}"


def data_hash(cfg: Config) -> str:
    """A short hash of the resolved data section (its h5_path aside: that is what the hash chooses)."""
    data = {k: v for k, v in cfg.to_dict()["data"].items() if k != "h5_path"}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def expand(config: str | Path, items: list[str]) -> Sweep:
    """Every run of the sweep, each config loaded and validated by the one loader (an unknown key or a bad
    value is its one-line error), with the corpus it shares. Nothing is written."""
    plain, swept = parse_args(items)
    path = Path(config).absolute()
    base = load_config(path, plain)
    sw = Sweep(path, base.run.name, sweep_dir_of(base).absolute(), plain, swept)
    names: dict[str, dict[str, str]] = {}
    for combo in itertools.product(*swept.values()):
        values = dict(zip(swept, combo))
        name = run_name(base.run.name, list(swept), values)
        if name in names:  # cannot happen with value_label's hash; a guard against a future change
            raise ConfigError(f"sweep: {values} and {names[name]} give the same run name {name}")
        names[name] = values
        cfg = load_config(path, [*plain, *(f"{k}={v}" for k, v in values.items()), f"run.name={name}"])
        sw.runs.append(SweepRun(name, values, cfg))
    hashes = {r.name: data_hash(r.cfg) for r in sw.runs}
    if base.data.h5_path:
        if len(set(hashes.values())) > 1:
            raise ConfigError(
                f"{base.source}: data.h5_path: {base.data.h5_path} is one file, but the sweep's runs differ in "
                f"their data settings; leave data.h5_path unset: the sweep gives each distinct data section "
                f"its own corpus in {sw.dir}"
            )
    else:
        for r in sw.runs:
            r.cfg.data.h5_path = str(sw.dir / f"corpus-{hashes[r.name]}.h5")
    return sw


# ------------------------------------------------------------------------------------------ sweep.yaml


def read_sweep_file(sweep_dir: Path) -> dict:
    p = Path(sweep_dir) / SWEEP_FILE
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    except yaml.YAMLError as e:
        raise InputError(f"{p}: invalid YAML: {str(e).splitlines()[0]}") from None
    ok = (
        isinstance(raw, dict)
        and isinstance(raw.get("keys"), dict)
        and isinstance(raw.get("runs"), list)
        and all(isinstance(r, dict) and isinstance(r.get("name"), str) for r in raw["runs"])
    )
    if not ok:
        raise InputError(f"{p}: not a sweep file (expected config, keys and a list of runs with names)")
    return raw


def write_sweep_file(sw: Sweep) -> Path:
    """sweep.yaml: this sweep's runs added to those of earlier launches into the same directory (a run
    launched again is updated in place), so status shows every run the directory's corpora serve."""
    p = sw.dir / SWEEP_FILE
    old = read_sweep_file(sw.dir) if p.is_file() else {"keys": {}, "runs": []}
    keys = {str(k): [str(v) for v in (vs or [])] for k, vs in old["keys"].items()}
    for k, vs in sw.keys.items():
        keys[k] = list(dict.fromkeys([*keys.get(k, []), *vs]))
    runs = {r["name"]: r for r in old["runs"]}
    for r in sw.runs:
        runs[r.name] = {
            "name": r.name,
            "values": dict(r.values),
            "run_dir": str(r.cfg.run_dir),
            "corpus": str(r.cfg.h5_path),
        }
    data = {
        "config": str(sw.config),
        "name": sw.name,
        "overrides": list(sw.plain),
        "keys": keys,
        "runs": list(runs.values()),
        "updated": time.time(),
    }
    sw.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return p


def _check_sweep_dir(sw: Sweep) -> None:
    """The directory is this sweep's: not a run's, and not another config's sweep under the same name."""
    if (sw.dir / RESOLVED_NAME).is_file() and not (sw.dir / SWEEP_FILE).is_file():
        raise ConfigError(f"{sw.dir}: is a run directory, not a sweep's; give the sweep another run.name=...")
    if (sw.dir / SWEEP_FILE).is_file():
        prior = read_sweep_file(sw.dir).get("config")
        if prior and Path(prior) != sw.config:
            raise ConfigError(
                f"{sw.dir}: holds a sweep of {prior}, not of {sw.config}; give this one another run.name=..."
            )


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
    _check_sweep_dir(sw)
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
            res.ran[r.name] = L.launch(r.cfg, cluster, stages, out)
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
        pre_ids: dict[str, str] = {}  # run -> the job id its preprocess is (or is part of)
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
        # generate: aftercorr on a train array whose runs all generate one shard with equal resources (task i
        # after train task i); otherwise each run alone, after its own train task
        gen = self.runs_for("generate")
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
            self._refused(stage, lead, e)
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

    def _refused(self, stage: str, cfg: Config, e: Exception) -> None:
        """sbatch refused a stage: cancel what this launch queued (no half sweep), one line saying why."""
        if self.queued:
            slurm.cancel(self.queued)
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else repr(e))
        queued, self.queued = self.queued, []
        for recs in self.records.values():  # nothing of this launch stays queued: record only the skips
            for s in [s for s, rec in recs.items() if rec.get("action") == "submitted"]:
                del recs[s]
        if slurm.controller_unreachable(str(e)):
            raise ConfigError(
                f"sbatch cannot reach a Slurm controller from this machine ({why}): "
                f"`python -m hpcrnn.sweep ... --cluster local` runs the sweep here instead"
            ) from None
        raise ConfigError(
            f"{cfg.source}: slurm.{stage}: sbatch refused the {stage} job ({why})"
            + (f"; cancelled the jobs already queued ({' '.join(queued)})" if queued else "")
        ) from None


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


# ------------------------------------------------------------------------------------------ status

FIXED_COLUMNS = ("state", "step", "best_val_ppl", "test_ppl", "test_acc", "coherence")


def _own_protocol(metrics: list[dict]) -> str | None:
    """The protocol of the run's periodic validations (its own), else of its final one."""
    periodic = [r.get("protocol") for r in metrics if r.get("split") == "val" and not r.get("final")]
    final = [r.get("protocol") for r in metrics if r.get("split") == "val"]
    return (periodic or final or [None])[-1]


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def run_row(entry: dict, keys: list[str]) -> dict[str, Any]:
    """One run's row: its swept values and, from its directory, state, step, best validation perplexity,
    final test perplexity and accuracy (the run's own protocol) and its recipes' mean coherence."""
    row: dict[str, Any] = {"run": entry["name"]}
    values = entry.get("values") or {}
    for k in keys:
        row[k] = None if values.get(k) is None else str(values[k])
    row.update(dict.fromkeys(FIXED_COLUMNS))
    run_dir = Path(str(entry.get("run_dir") or ""))
    if not (run_dir / RESOLVED_NAME).is_file():
        row["state"] = "not launched"
        return row
    try:
        cfg = load_config(run_dir)
        s = collect_status(cfg)
    except HpcrnnError as e:
        row["state"] = f"unreadable ({str(e).splitlines()[0][:60]})"
        return row
    pending = [(st, e["state"]) for st, e in s["stages"].items() if e["state"] != "done"]
    row["state"] = "done" if not pending else f"{pending[0][0]} {pending[0][1]}"
    metrics = read_jsonl(cfg.metrics_path)
    steps = [r["step"] for r in metrics if isinstance(r.get("step"), int) and r.get("split")]
    ckpt = (s.get("checkpoint") or {}).get("step")
    row["step"] = max(steps + ([ckpt] if isinstance(ckpt, int) else []), default=None)
    own = _own_protocol(metrics)
    val = [_num(r.get("ppl")) for r in metrics if r.get("split") == "val" and r.get("protocol") == own]
    val = [v for v in val if v is not None]
    row["best_val_ppl"] = min(val) if val else None
    tests = [r for r in metrics if r.get("split") == "test" and r.get("final") and r.get("protocol") == own]
    if tests:
        row["test_ppl"], row["test_acc"] = _num(tests[-1].get("ppl")), _num(tests[-1].get("acc"))
    summary = read_json(output_dir(cfg) / SUMMARY) or {}
    gen = summary.get("generated") if isinstance(summary, dict) else None
    row["coherence"] = _num(gen.get("coherence_mean")) if isinstance(gen, dict) else None
    row["run_dir"] = str(run_dir)
    return row


def sweep_status(sweep_dir: Path) -> dict:
    """The table of a sweep directory, as a dict (the --json output)."""
    sweep_dir = Path(sweep_dir).absolute()
    raw = read_sweep_file(sweep_dir)
    keys = [str(k) for k in raw["keys"]]
    rows = [run_row(e, keys) for e in raw["runs"]]
    return {
        "sweep_dir": str(sweep_dir),
        "config": raw.get("config"),
        "keys": {str(k): [str(v) for v in vs or []] for k, vs in raw["keys"].items()},
        "columns": ["run", *keys, *FIXED_COLUMNS],
        "runs": rows,
    }


def _sort_key_of(rows: list[dict], col: str) -> Callable[[dict], tuple]:
    """Numeric where every present value of the column is a number (swept values are text: "0.001"),
    else text; missing values last whichever the direction."""

    def as_float(v: Any) -> float | None:
        try:
            return float(v)
        except (TypeError, ValueError):
            return None

    present = [r.get(col) for r in rows if r.get(col) is not None]
    numeric = bool(present) and all(as_float(v) is not None for v in present)
    return lambda r: (0, as_float(r[col]) if numeric else str(r[col])) if r.get(col) is not None else None


def sort_rows(table: dict, column: str | None, desc: bool = False) -> None:
    if not column:
        return
    cols = table["columns"]
    lab = labels([c for c in cols if c not in ("run", *FIXED_COLUMNS)])
    col = column if column in cols else next((k for k, v in lab.items() if v == column), None)
    if col is None:
        raise ConfigError(f"--sort: no column {column!r}; columns: {', '.join(cols)}")
    key = _sort_key_of(table["runs"], col)
    have = [r for r in table["runs"] if key(r) is not None]
    missing = [r for r in table["runs"] if key(r) is None]
    table["runs"] = sorted(have, key=key, reverse=desc) + missing
    table["sorted_by"] = {"column": col, "descending": desc}


def _cell(col: str, v: Any) -> str:
    if v is None:
        return "-"
    if col in ("best_val_ppl", "test_ppl"):
        return f"{v:.2f}"
    if col in ("test_acc", "coherence"):
        return f"{v:.3f}"
    return str(v)


def format_table(table: dict) -> str:
    cols = table["columns"]
    cells = [cols] + [[_cell(c, r.get(c)) for c in cols] for r in table["runs"]]
    width = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    numeric = {"step", *FIXED_COLUMNS[1:]}
    lines = [f"sweep {table['sweep_dir']} ({len(table['runs'])} runs of {table['config']})"]
    for row in cells:
        lines.append(
            "  ".join(
                c.rjust(w) if cols[i] in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(row, width))
            ).rstrip()
        )
    return "\n".join(lines)


def format_csv(table: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(table["columns"])
    for r in table["runs"]:
        w.writerow(["" if r.get(c) is None else r[c] for c in table["columns"]])
    return buf.getvalue()


def is_sweep_dir(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / SWEEP_FILE).is_file()


def status_target(argv: list[str]) -> str | None:
    """The sweep directory a ``hpcrnn.status`` command line names (its first positional), or None."""
    pos = next((a for a in argv if not a.startswith("-")), None)
    return pos if pos is not None and is_sweep_dir(pos) else None


def status_main(argv: list[str] | None = None) -> int:
    """``python -m hpcrnn.status SWEEP_DIR [--sort COLUMN] [--desc] [--json | --csv]``."""
    p = argparse.ArgumentParser(
        prog="hpcrnn.status",
        description="The table of a sweep: each run, its swept values, state, step, best validation "
        "perplexity, test perplexity and accuracy, and its recipes' mean coherence.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "sweep_dir", help=f"a sweep directory (<paths.scratch>/<run.name>{SWEEP_SUFFIX}, holding {SWEEP_FILE})"
    )
    p.add_argument("--sort", metavar="COLUMN", help="sort by this column (a swept key may be given by its label)")
    p.add_argument("--desc", action="store_true", help="sort in descending order (missing values stay last)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the table as JSON")
    fmt.add_argument("--csv", action="store_true", help="print the table as CSV")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    try:
        table = sweep_status(Path(args.sweep_dir))
        sort_rows(table, args.sort, args.desc)
    except HpcrnnError as e:
        if args.debug:
            raise
        print(f"hpcrnn.status: error: {e}", file=sys.stderr)
        return e.exit_code
    if args.json:
        print(json.dumps(table, indent=2))
    elif args.csv:
        sys.stdout.write(format_csv(table))
    else:
        print(format_table(table))
    return EXIT_OK


# ------------------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    """``python -m hpcrnn.sweep CONFIG key=v1,v2 [key=...] [--cluster auto|slurm|local|debug] [--stages ...]``"""
    parser = make_parser(
        "hpcrnn.sweep",
        "Launch the product of listed values (key=v1,v2,...) as runs named after their values: one shared "
        "preprocess per distinct data section; on Slurm each stage one job array (generate task i after train "
        "task i), here one run after another. Launching it again continues what is unfinished.",
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
    args = parser.parse_intermixed_args(argv)

    def body() -> int:
        sw = expand(args.config, args.overrides)
        if args.print_config:
            for r in sw.runs:
                sys.stdout.write(f"# run {r.name}: {' '.join(r.overrides)}\n{r.cfg.to_yaml()}---\n")
            return EXIT_OK
        return launch_sweep(sw, args.cluster, parse_stages(args.stages)).exit_code

    return guarded("hpcrnn.sweep", args.debug, body)
