"""The launcher on a real Slurm cluster (started by .ci/run with .ci/slurm-cluster).

Skipped where no cluster answers — unless CI is set, where a missing cluster is a failure: these are the
issue's acceptance checks and must not pass by being skipped.
1. the smoke pipeline's three dependent jobs run and leave recipes;      test_smoke_pipeline_...
2. a 2-task train job trains as two DDP ranks;                            test_two_task_train_...
3. USR2 preemption -> requeue -> resume, bitwise equal to no preemption;  test_preempted_train_...
4. a train job at its time limit is requeued and finishes;                test_time_limit_...
5. relaunching a finished pipeline submits nothing.                       test_relaunch_...
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from hpcrnn.cluster.records import read_jobs
from hpcrnn.config import load_config
from hpcrnn.fsutil import read_jsonl
from tests.helpers import RECIPES_5K, ROOT, make_recipes, run_module, tiny_config

pytestmark = pytest.mark.slurm


def _run(*cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)


def slurm_problem() -> str | None:
    """Why this machine cannot run the Slurm tests, or None."""
    for tool in ("sbatch", "squeue", "sacct", "scontrol", "srun", "sinfo"):
        if not shutil.which(tool):
            return f"{tool} is not on PATH"
    try:
        r = _run("scontrol", "ping", timeout=20)
        if r.returncode != 0 or "UP" not in r.stdout:
            return f"slurmctld does not answer ({(r.stdout + r.stderr).strip()[:200]})"
        nodes = _run("sinfo", "-h", "-o", "%T").stdout.split()
        if not any(n.rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for n in nodes):
            return f"no usable node (states: {' '.join(nodes) or 'none'})"
        r = _run("sacct", "-n", "-X", "-S", "now")
        if r.returncode != 0:
            # without accounting, submitit cannot see a job that died without a result
            return f"Slurm accounting is off ({r.stderr.strip()[:200]})"
    except (OSError, subprocess.SubprocessError) as e:
        return f"{e.__class__.__name__}: {e}"
    return None


@pytest.fixture(scope="session")
def slurm() -> None:
    why = slurm_problem()
    if why is None:
        return
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        pytest.fail(
            f"CI is set but there is no usable Slurm cluster: {why} (.ci/run starts one with .ci/slurm-cluster start)",
            pytrace=False,
        )
    pytest.skip(f"no usable Slurm cluster: {why} (start one as root with .ci/slurm-cluster start)")


def launch(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    r = run_module("hpcrnn.launch", *args, "--cluster", "slurm", timeout=timeout)
    return r


def job_ids(run_dir: Path) -> dict[str, str]:
    """stage -> job id of the newest launch that submitted it."""
    out = {}
    for launch_rec in read_jobs(run_dir)["launches"]:
        for stage, rec in launch_rec["stages"].items():
            if rec.get("job_id"):
                out[stage] = rec["job_id"]
    return out


_UNSETTLED = {"RUNNING", "PENDING", "COMPLETING", "CONFIGURING"}


def sacct(job_id: str, settle_s: float = 30.0, expect: int = 1) -> list[dict]:
    """Every run of a job (requeued ones too, oldest first; an array's tasks): State, Start, End. Called
    once the job has left squeue, and accounting can lag behind that by a few seconds (seen in CI: sacct
    still said RUNNING for a job that had completed, and listed only the last of an array's three
    finished tasks), so it waits up to ``settle_s`` for ``expect`` rows in a final state."""
    deadline = time.time() + settle_s
    while True:
        r = _run("sacct", "-D", "-X", "-n", "-P", "-o", "JobID,State,Start,End", "-j", str(job_id))
        rows = []
        for line in r.stdout.splitlines():
            jid, st, start, end = line.split("|")
            rows.append({"JobID": jid, "State": st.split()[0], "Start": start, "End": end})
        if (len(rows) >= expect and not any(x["State"] in _UNSETTLED for x in rows)) or time.time() > deadline:
            return rows
        time.sleep(1)


def logs(run_dir: Path) -> str:
    """The tails of the run's job logs, for assertion messages."""
    out = []
    for launch_rec in read_jobs(run_dir)["launches"]:
        for rec in launch_rec["stages"].values():
            for k in ("stdout", "stderr"):
                p = Path(rec.get(k) or "/nonexistent")
                if p.is_file():
                    out.append(f"--- {p}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-25:]))
    return "\n".join(out)


def wait_gone(ids: list[str], run_dir: Path, timeout: float) -> None:
    """Wait until Slurm no longer lists any of the jobs (finished, however they ended)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = _run("squeue", "-h", "-o", "%i %T", "-j", ",".join(ids))
        if r.returncode == 0 and not r.stdout.strip():
            return
        if r.returncode != 0 and "Invalid job id" in r.stderr:
            return
        time.sleep(1)
    _run("scancel", *ids)
    pytest.fail(f"jobs {ids} still in Slurm after {timeout:.0f} s:\n{_run('squeue').stdout}\n{logs(run_dir)}")


def completed(job_id: str, run_dir: Path) -> dict:
    runs = sacct(job_id)
    assert runs and runs[-1]["State"] == "COMPLETED", f"job {job_id}: {runs}\n{logs(run_dir)}"
    return runs[-1]


def scratch_overrides(base: Path, name: str) -> list[str]:
    return [f"paths.scratch={base / 'scratch'}", f"paths.jobs={base / 'jobs'}", f"run.name={name}"]


def model_pt(cfg) -> Path:
    return sorted(cfg.checkpoint_dir.glob("step-*"))[-1] / "model.pt"


# ------------------------------------------------------------------------------------------ 1 and 5


@pytest.fixture(scope="module")
def smoke_run(slurm, tmp_path_factory):
    """configs/smoke.yaml launched on Slurm (its real corpus where present, else a small one)."""
    base = tmp_path_factory.mktemp("smoke")
    over = scratch_overrides(base, "smoke")
    if not RECIPES_5K.exists():
        corpus = base / "recipes.txt"
        corpus.write_text(make_recipes(400))
        over += [f"data.corpus={corpus}", "data.min_count=1"]
    cfg = load_config(ROOT / "configs" / "smoke.yaml", over)
    r = launch("configs/smoke.yaml", *over)
    assert r.returncode == 0, r.stdout + r.stderr
    ids = job_ids(cfg.run_dir)
    # while the pipeline is in Slurm: status knows its jobs, and a second launch is refused
    s = run_module("hpcrnn.status", str(cfg.run_dir), "--json")
    again = launch("configs/smoke.yaml", *over)
    wait_gone(list(ids.values()), cfg.run_dir, timeout=600)
    return cfg, over, r, ids, json.loads(s.stdout), again


def test_smoke_pipeline_runs_three_dependent_jobs(smoke_run):
    cfg, _, r, ids, status_then, again = smoke_run
    assert sorted(ids) == ["generate", "preprocess", "train"]
    for jid in ids.values():
        assert f"job {jid}" in r.stdout
    assert str(cfg.run_dir) in r.stdout and "tail -F" in r.stdout
    # afterok: each job started only after the previous one ended
    pre, train, gen = (completed(ids[s], cfg.run_dir) for s in ("preprocess", "train", "generate"))
    assert pre["End"] <= train["Start"] and train["End"] <= gen["Start"]
    # the recipes are in the run directory
    out = cfg.run_dir / "generated" / cfg.generate.name
    assert len(list(out.glob("recipe-*.txt"))) == cfg.generate.num_recipes == 8
    assert (out / "summary.json").is_file()
    # status while queued named the jobs; a launch during the run was refused, naming them
    assert status_then["stages"]["generate"]["job_id"] == ids["generate"]
    assert status_then["stages"]["generate"]["state"] in ("queued", "running")
    assert again.returncode == 2 and "still has jobs in Slurm" in again.stderr
    # and status after the end
    s = run_module("hpcrnn.status", str(cfg.run_dir))
    assert s.returncode == 0
    for stage in ("preprocess", "train", "generate"):
        assert f"{stage:<10} done" in s.stdout
    assert f"job {ids['train']} COMPLETED" in s.stdout and "recipes generated: 8 of 8" in s.stdout


def test_relaunch_of_finished_pipeline_submits_nothing(smoke_run):
    cfg, over, *_ = smoke_run
    names = ",".join(f"smoke-{s}" for s in ("preprocess", "train", "generate"))

    def submitted() -> list[str]:
        return _run("sacct", "-n", "-X", "-P", "-o", "JobID", f"--name={names}", "-S", "now-1days").stdout.split()

    before = submitted()
    r = launch("configs/smoke.yaml", *over)
    assert r.returncode == 0, r.stderr
    assert "nothing to do" in r.stdout and r.stdout.count("skipped") == 3
    assert "submitted" not in r.stdout
    assert submitted() == before
    last = read_jobs(cfg.run_dir)["launches"][-1]
    assert {s: v["action"] for s, v in last["stages"].items()} == {
        "preprocess": "skipped",
        "train": "skipped",
        "generate": "skipped",
    }


# ------------------------------------------------------------------------------------------ 2


def test_two_task_train_job_runs_two_ddp_ranks(slurm, tmp_path, tiny_corpus):
    cfg_path = tiny_config(
        tmp_path, tiny_corpus, slurm={"defaults": {"cpus_per_task": 1}, "train": {"tasks_per_node": 2}}
    )
    cfg = load_config(cfg_path)
    r = launch(str(cfg_path), "--stages", "preprocess,train")
    assert r.returncode == 0, r.stderr
    ids = job_ids(cfg.run_dir)
    wait_gone(list(ids.values()), cfg.run_dir, timeout=300)
    completed(ids["train"], cfg.run_dir)
    meta = json.loads((sorted(cfg.checkpoint_dir.glob("step-*"))[-1] / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["done"]
    folder = cfg.jobs_dir / "train"
    out0 = (folder / f"{ids['train']}_0_log.out").read_text()
    assert "2 rank(s) on cpu (slurm)" in out0
    assert (folder / f"{ids['train']}_1_log.out").is_file()  # the second task ran too


# ------------------------------------------------------------------------------------------ 3


def test_preempted_train_job_requeues_resumes_and_matches_uninterrupted(slurm, tmp_path, tiny_corpus):
    extra = dict(
        model={"hidden": 64, "embedding": 64},
        train={"max_steps": 1500, "checkpoint_every": 50, "eval_every": 500, "log_every": 100},
        slurm={"defaults": {"cpus_per_task": 1, "time_min": 60}},
    )
    # the reference, uninterrupted, runs beside the one we preempt (one CPU each)
    ref_path = tiny_config(tmp_path / "ref", tiny_corpus, **extra)
    cut_path = tiny_config(tmp_path / "cut", tiny_corpus, **extra)
    ref, cut = load_config(ref_path), load_config(cut_path)
    r1 = launch(str(ref_path), "--stages", "preprocess,train")
    r2 = launch(str(cut_path), "--stages", "preprocess,train")
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr
    jid = job_ids(cut.run_dir)["train"]

    deadline = time.time() + 180  # preempt once training is under way: a complete checkpoint exists
    while time.time() < deadline and not list(cut.checkpoint_dir.glob("step-*/COMPLETE")):
        time.sleep(0.2)
    assert list(cut.checkpoint_dir.glob("step-*/COMPLETE")), logs(cut.run_dir)
    subprocess.run(["scancel", "--signal=USR2", jid], check=True)

    wait_gone(list(job_ids(cut.run_dir).values()) + list(job_ids(ref.run_dir).values()), cut.run_dir, 300)
    runs = sacct(jid)
    assert [x["State"] for x in runs] == ["REQUEUED", "COMPLETED"], f"{runs}\n{logs(cut.run_dir)}"
    completed(job_ids(ref.run_dir)["train"], ref.run_dir)
    events = [e for e in read_jsonl(cut.metrics_path) if e.get("event") == "requeue"]
    assert len(events) == 1, events
    assert events[0]["reason"] == "preempted" and events[0]["job_id"] == jid and 0 < events[0]["step"] < 1500
    out = (cut.jobs_dir / "train" / f"{jid}_0_log.out").read_text()
    assert f"resumed from step-{events[0]['step']:08d}" in out
    assert model_pt(cut).parent.name == model_pt(ref).parent.name == "step-00001500"
    assert model_pt(cut).read_bytes() == model_pt(ref).read_bytes()
    s = run_module("hpcrnn.status", str(cut.run_dir))
    assert "requeued 1x (preempted 1)" in s.stdout


# ------------------------------------------------------------------------------------------ 4


def test_time_limit_requeues_and_finishes(slurm, tmp_path, tiny_corpus):
    """time_min=2 with the warning 30 s before: USR2 arrives 60-90 s in (slurmctld checks limits about
    every 30 s). Training is sized from the trainer's measured steady speed on this machine to need about
    200 s, so at least one timeout happens even on a machine twice as fast, and a few incarnations
    (max_num_timeout=6) finish it."""
    import statistics

    from hpcrnn.data.build import run_preprocess
    from hpcrnn.train.loop import run_train

    model = {"hidden": 64, "embedding": 64}
    probe = load_config(
        tiny_config(
            tmp_path / "probe",
            tiny_corpus,
            model=model,
            train={"max_steps": 600, "log_every": 50, "checkpoint_every": 1000, "eval_every": 1000},
        )
    )
    run_preprocess(probe)
    run_train(probe)
    tps = [r["tokens_per_s"] for r in read_jsonl(probe.metrics_path) if r.get("split") == "train"]
    steps_per_s = statistics.median(tps) / (probe.train.batch_size * probe.data.window)
    steps = int(steps_per_s * 200)

    cfg_path = tiny_config(
        tmp_path / "tl",
        tiny_corpus,
        model=model,
        train={"max_steps": steps, "checkpoint_every": 2000, "eval_every": 100000, "log_every": 500},
        slurm={"defaults": {"cpus_per_task": 1}, "max_num_timeout": 6, "train": {"time_min": 2, "signal_delay_s": 30}},
    )
    cfg = load_config(cfg_path)
    r = launch(str(cfg_path), "--stages", "preprocess,train")
    assert r.returncode == 0, r.stderr
    jid = job_ids(cfg.run_dir)["train"]
    wait_gone([jid], cfg.run_dir, timeout=900)
    runs = sacct(jid)
    assert runs[-1]["State"] == "COMPLETED" and "REQUEUED" in [x["State"] for x in runs[:-1]], (
        f"{runs}\n{logs(cfg.run_dir)}"
    )
    events = [e for e in read_jsonl(cfg.metrics_path) if e.get("event") == "requeue"]
    assert events and all(e["reason"] == "timed-out" and e["job_id"] == jid for e in events), events
    assert [e["restart_count"] for e in events] == list(range(len(events)))
    final = sorted(cfg.checkpoint_dir.glob("step-*"))[-1]
    meta = json.loads((final / "meta.json").read_text())
    assert meta["done"] and meta["step"] == steps


@pytest.mark.parametrize("shards", [1, 2])
def test_refused_submission_leaves_no_half_pipeline(slurm, tmp_path, tiny_corpus, shards):
    """Also every step of a sharded preprocess (shards 2: its four jobs)."""
    cfg_path = tiny_config(
        tmp_path,
        tiny_corpus,
        data={"shards": shards},
        slurm={"defaults": {"cpus_per_task": 1}, "train": {"partition": "no-such-partition"}},
    )
    r = launch(str(cfg_path))
    assert r.returncode == 2
    msg = r.stderr.strip().splitlines()[-1]
    assert "slurm.train: sbatch refused the train job" in msg and "partition" in msg.lower()
    jids = msg.rsplit("(", 1)[1].split(")")[0].split()  # "...cancelled the jobs already queued (ID ...)"
    assert len(jids) == (1 if shards == 1 else 4), msg
    for jid in jids:
        rows = sacct(jid)
        assert rows and all(x["State"] == "CANCELLED" for x in rows), (jid, rows)
    assert not (load_config(cfg_path).run_dir / "jobs.json").exists()


def test_sharded_preprocess_runs_as_dependent_job_arrays(slurm, tmp_path, tiny_corpus):
    """data.shards: 2 under launch: read (an array of 2 tasks), reduce, encode (an array), then the stage's
    own job that writes corpus.h5, each after the one before; the corpus is the one a single process
    builds, bit for bit; train waits for the last."""
    from hpcrnn.data.build import run_preprocess
    from tests.test_shards import assert_same_corpus

    cfg_path = tiny_config(tmp_path, tiny_corpus, data={"shards": 2}, slurm={"defaults": {"cpus_per_task": 1}})
    cfg = load_config(cfg_path)
    r = launch(str(cfg_path), "--stages", "preprocess,train")
    assert r.returncode == 0, r.stderr
    assert "preprocess read job" in r.stdout and r.stdout.count("array of 2") == 2, r.stdout
    rec = read_jobs(cfg.run_dir)["launches"][-1]["stages"]
    pre = rec["preprocess"]
    steps = {s.pop("step"): s for s in pre["steps"]}
    assert list(steps) == ["read", "reduce", "encode"]
    assert steps["read"]["tasks"] == steps["encode"]["tasks"] == 2 and steps["reduce"]["tasks"] == 1
    assert steps["read"]["dependency"] is None
    assert steps["reduce"]["dependency"] == f"afterok:{steps['read']['job_id']}"
    assert steps["encode"]["dependency"] == f"afterok:{steps['reduce']['job_id']}"
    assert pre["dependency"] == f"afterok:{steps['encode']['job_id']}"
    assert rec["train"]["dependency"] == f"afterok:{pre['job_id']}"
    ids = [pre["job_id"], rec["train"]["job_id"]] + [s["job_id"] for s in steps.values()]
    wait_gone(ids, cfg.run_dir, timeout=400)
    for step in ("read", "encode"):
        tasks = sacct(steps[step]["job_id"], expect=2)
        assert [t["State"] for t in tasks] == ["COMPLETED"] * 2, f"{step}: {tasks}\n{logs(cfg.run_dir)}"
    completed(steps["reduce"]["job_id"], cfg.run_dir)
    completed(pre["job_id"], cfg.run_dir)
    completed(rec["train"]["job_id"], cfg.run_dir)
    one = load_config(cfg_path, ["run.name=one", "data.shards=1"])
    assert_same_corpus(run_preprocess(one).path, cfg.h5_path)
    assert not list(cfg.h5_path.parent.glob(".corpus.h5.shards-*"))  # the shards' outputs are gone
    s = run_module("hpcrnn.status", str(cfg.run_dir))
    assert "preprocess done" in s.stdout and "train      done" in s.stdout, s.stdout


def test_a_failed_shard_step_fails_the_stage_and_status_names_it(slurm, tmp_path):
    """An input error in a step (here the reduce: a file without text) ends the steps after it (their
    dependency can never be met) and status names the step and shows its log."""
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.txt").write_text(make_recipes(60, seed=1))
    (d / "b.txt").write_text("\n\n   \n")
    cfg_path = tiny_config(tmp_path, d, data={"shards": 2}, slurm={"defaults": {"cpus_per_task": 1}})
    cfg = load_config(cfg_path)
    r = launch(str(cfg_path), "--stages", "preprocess")
    assert r.returncode == 0, r.stderr
    pre = read_jobs(cfg.run_dir)["launches"][-1]["stages"]["preprocess"]
    steps = {s["step"]: s for s in pre["steps"]}
    ids = [pre["job_id"]] + [s["job_id"] for s in steps.values()]
    wait_gone(ids, cfg.run_dir, timeout=300)
    assert sacct(steps["reduce"]["job_id"])[-1]["State"] == "FAILED"
    assert sacct(pre["job_id"])[-1]["State"] != "COMPLETED" and not cfg.h5_path.exists()
    s = json.loads(run_module("hpcrnn.status", str(cfg.run_dir), "--json").stdout)
    st = s["stages"]["preprocess"]
    assert st["state"] == "failed" and st["detail"].startswith("step reduce (job "), st
    assert "b.txt: the corpus file is empty" in Path(st["stderr"]).read_text()


def test_generate_shards_run_as_one_job_array(slurm, tmp_path, tiny_corpus):
    cfg_path = tiny_config(
        tmp_path,
        tiny_corpus,
        generate={"num_recipes": 6, "batch_size": 3, "max_tokens": 60, "quality_sample": 5, "shards": 3},
        slurm={"defaults": {"cpus_per_task": 1}},
    )
    cfg = load_config(cfg_path)
    r = launch(str(cfg_path))
    assert r.returncode == 0, r.stderr
    assert "array of 3" in r.stdout
    ids = job_ids(cfg.run_dir)
    wait_gone(list(ids.values()), cfg.run_dir, timeout=300)
    tasks = sacct(ids["generate"], expect=3)
    assert sorted(t["JobID"] for t in tasks) == [f"{ids['generate']}_{i}" for i in range(3)], tasks
    assert all(t["State"] == "COMPLETED" for t in tasks), f"{tasks}\n{logs(cfg.run_dir)}"
    out = cfg.run_dir / "generated" / cfg.generate.name
    assert len(list(out.glob("recipe-*.txt"))) == 6 and (out / "summary.json").is_file()
    # each task wrote its own share: recipes i with (i - 1) % 3 == shard
    for shard in range(3):
        idx = out / f"index-{shard + 1:05d}-of-00003.jsonl"
        got = sorted(json.loads(line)["recipe"] for line in idx.read_text().splitlines())
        assert got == [i for i in range(1, 7) if (i - 1) % 3 == shard]
    s = run_module("hpcrnn.status", str(cfg.run_dir))
    assert "generate   done" in s.stdout and "recipes generated: 6 of 6" in s.stdout


def test_scancel_stops_training_with_a_checkpoint_and_relaunch_continues(slurm, tmp_path, tiny_corpus):
    """Plain scancel (SIGTERM): the trainer stops at a step boundary with a complete checkpoint and the job
    is not requeued; the generate job left waiting on it is reported failed, and the next launch cancels it
    and continues the run from that checkpoint."""
    cfg_path = tiny_config(
        tmp_path,
        tiny_corpus,
        model={"hidden": 64, "embedding": 64},
        train={"max_steps": 3000, "checkpoint_every": 50, "eval_every": 1000, "log_every": 500},
        slurm={"defaults": {"cpus_per_task": 1}},
    )
    cfg = load_config(cfg_path)
    assert launch(str(cfg_path)).returncode == 0
    ids = job_ids(cfg.run_dir)
    deadline = time.time() + 180
    while time.time() < deadline and not list(cfg.checkpoint_dir.glob("step-*/COMPLETE")):
        time.sleep(0.2)
    subprocess.run(["scancel", ids["train"]], check=True)
    wait_gone([ids["train"]], cfg.run_dir, timeout=120)
    assert [x["State"] for x in sacct(ids["train"])] == ["CANCELLED"]
    stops = [e for e in read_jsonl(cfg.metrics_path) if e.get("event") in ("stop", "requeue")]
    assert [(e["event"], e.get("reason"), e.get("status")) for e in stops] == [("stop", "SIGTERM", "stopped")]
    stopped_at = stops[0]["step"]
    assert (cfg.checkpoint_dir / f"step-{stopped_at:08d}" / "COMPLETE").is_file()

    deadline = time.time() + 60  # Slurm marks the orphaned generate job at its next scheduling pass
    while time.time() < deadline:
        st = json.loads(run_module("hpcrnn.status", str(cfg.run_dir), "--json").stdout)["stages"]
        if st["generate"]["state"] == "failed":
            break
        time.sleep(1)
    # --kill-on-invalid-dep cancels it; where a cluster ignores that, it waits as DependencyNeverSatisfied
    assert st["generate"]["state"] == "failed"
    assert st["generate"]["slurm_state"] in ("CANCELLED", "DEPENDENCY_NEVER_SATISFIED")
    assert st["train"]["state"] == "failed" and f"resumable from step {stopped_at}" in st["train"]["detail"]

    r = launch(str(cfg_path))
    assert r.returncode == 0, r.stderr
    if st["generate"]["slurm_state"] == "DEPENDENCY_NEVER_SATISFIED":
        assert f"cancelled job(s) {ids['generate']}" in r.stderr
    new = job_ids(cfg.run_dir)
    assert new["train"] != ids["train"] and new["generate"] != ids["generate"]
    assert read_jobs(cfg.run_dir)["launches"][-1]["stages"]["preprocess"]["action"] == "skipped"
    wait_gone([new["train"], new["generate"]], cfg.run_dir, timeout=300)
    completed(new["generate"], cfg.run_dir)
    out = (cfg.jobs_dir / "train" / f"{new['train']}_0_log.out").read_text()
    assert f"resumed from step-{stopped_at:08d}" in out


def test_real_preemption_by_a_higher_priority_job(slurm, tmp_path, tiny_corpus):
    """Slurm itself preempts the train job (partition priority, PreemptMode=REQUEUE with
    preempt_send_user_signal, as .ci/slurm-cluster configures): USR2 reaches the trainer, which checkpoints;
    the job is requeued and resumes after the urgent job."""
    parts = _run("sinfo", "-h", "-o", "%P %c").stdout.split()
    cpus = dict(zip(parts[::2], parts[1::2]))
    if not {"preemptible", "urgent"} <= set(cpus):
        pytest.skip("the cluster has no preemptible/urgent partitions (.ci/slurm-cluster makes them)")
    n = int(cpus["preemptible"])
    cfg_path = tiny_config(
        tmp_path,
        tiny_corpus,
        model={"hidden": 64, "embedding": 64},
        train={"max_steps": 3000, "checkpoint_every": 100, "eval_every": 100000, "log_every": 1000},
        slurm={"defaults": {"cpus_per_task": 1}, "train": {"partition": "preemptible", "cpus_per_task": n}},
    )
    cfg = load_config(cfg_path)
    assert launch(str(cfg_path), "--stages", "preprocess,train").returncode == 0
    jid = job_ids(cfg.run_dir)["train"]
    deadline = time.time() + 180
    while time.time() < deadline and not list(cfg.checkpoint_dir.glob("step-*/COMPLETE")):
        time.sleep(0.2)
    urgent = _run(
        "sbatch", "--parsable", "-p", "urgent", "-c", str(n), "-o", str(tmp_path / "urgent.out"), "--wrap", "sleep 3"
    ).stdout.strip()
    wait_gone([jid, urgent], cfg.run_dir, timeout=300)
    assert sacct(urgent)[-1]["State"] == "COMPLETED"
    assert [x["State"] for x in sacct(jid)] == ["REQUEUED", "COMPLETED"], logs(cfg.run_dir)
    events = [e for e in read_jsonl(cfg.metrics_path) if e.get("event") in ("stop", "requeue")]
    assert [(e["event"], e["reason"]) for e in events] == [("stop", "SIGUSR2"), ("requeue", "preempted")]
    assert json.loads((model_pt(cfg).parent / "meta.json").read_text())["step"] == 3000
