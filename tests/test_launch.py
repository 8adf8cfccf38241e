"""The launcher and status without Slurm: the debug (in-process) and local (submitit subprocess) paths on
real stages, skip and relaunch logic, config errors, and the sbatch script a stage gets."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time
from pathlib import Path

import pytest
import torch

from hpcrnn.cluster import launch as L
from hpcrnn.cluster import submitit_internals
from hpcrnn.cluster.plan import STAGES, parse_stages, plan_stages
from hpcrnn.cluster.records import read_jobs
from hpcrnn.cluster.slurm import PROJECT_ROOT
from hpcrnn.cluster.status import collect_status, format_status
from hpcrnn.config import load_config
from hpcrnn.errors import ConfigError
from hpcrnn.fsutil import read_jsonl
from tests.helpers import run_module, tiny_config

torch.set_num_threads(1)


def fake_bin(tmp_path: Path, *names: str) -> Path:
    """A directory of executables that only exist (for PATH-based detection)."""
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    for n in names:
        p = d / n
        p.write_text("#!/bin/sh\nexit 0\n")
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return d


def recipes(cfg) -> list[Path]:
    return sorted((cfg.run_dir / "generated" / cfg.generate.name).glob("recipe-*.txt"))


# ------------------------------------------------------------------------------------------ pure logic


def test_parse_stages_orders_and_rejects_unknown():
    assert parse_stages(None) == ["preprocess", "train", "generate"]
    assert parse_stages("all") == ["preprocess", "train", "generate"]
    assert parse_stages("generate,train") == ["train", "generate"]
    assert parse_stages("train train") == ["train"]
    with pytest.raises(ConfigError, match=r"--stages: unknown stage 'trian' \(did you mean 'train'\?\)"):
        parse_stages("preprocess,trian")


def test_cluster_auto_follows_sbatch_on_path(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert L.resolve_cluster("auto") == "local"
    with pytest.raises(ConfigError, match="--cluster slurm: sbatch is not on PATH"):
        L.resolve_cluster("slurm")
    monkeypatch.setenv("PATH", str(fake_bin(tmp_path, "sbatch", "squeue")))
    assert L.resolve_cluster("auto") == "slurm"
    assert L.resolve_cluster("debug") == "debug"
    with pytest.raises(ConfigError):
        L.resolve_cluster("kubernetes")


def test_sbatch_script_has_the_stage_resources_and_dependency(tmp_path, tiny_corpus, monkeypatch):
    # SlurmExecutor only needs srun on PATH to be built; nothing is submitted here
    monkeypatch.setenv("PATH", str(fake_bin(tmp_path, "srun", "sbatch")) + os.pathsep + os.environ["PATH"])
    cfg = load_config(
        tiny_config(tmp_path, tiny_corpus),
        [
            "slurm.defaults.partition=batch",
            "slurm.defaults.time_min=30",
            "slurm.defaults.mem_gb=1.5",
            "slurm.train.partition=gpu",
            "slurm.train.gpus_per_node=2",
            "slurm.train.tasks_per_node=2",
            "slurm.train.time_min=240",
            "slurm.train.signal_delay_s=120",
            "slurm.train.account=proj7",
            "slurm.train.additional={mail_type: END}",
            "slurm.train.constraint=a100",
        ],
    )
    text = L.make_executor(cfg, "train", "slurm", dependency="afterok:41")._make_submission_file_text("CMD", "u")
    for line in [
        "#SBATCH --partition=gpu",
        "#SBATCH --time=240",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --account=proj7",
        "#SBATCH --constraint=a100",
        "#SBATCH --mail-type=END",
        "#SBATCH --dependency=afterok:41",
        "#SBATCH --mem=1536MB",
        "#SBATCH --kill-on-invalid-dep=yes",
        "#SBATCH --job-name=tiny-train",
        "#SBATCH --cpus-per-task=2",
    ]:
        assert line in text, line
    assert f"export PYTHONPATH={PROJECT_ROOT}" in text
    assert str(cfg.jobs_dir / "train") in text  # logs under <paths.jobs>/<run>/<stage>/
    pre = L.make_executor(cfg, "preprocess", "slurm")._make_submission_file_text("CMD", "u")
    assert "#SBATCH --partition=batch" in pre and "#SBATCH --time=30" in pre
    # no GPU asked for means no --gpus-per-node line at all (=0 fails on clusters without GRES)
    assert "gpus-per-node" not in pre and "dependency" not in pre


def test_local_cluster_refuses_multi_node(tmp_path, tiny_corpus):
    cfg = load_config(tiny_config(tmp_path, tiny_corpus), ["slurm.train.nodes=2"])
    with pytest.raises(ConfigError, match=r"slurm\.train\.nodes: 2 nodes need Slurm"):
        L.make_executor(cfg, "train", "local")


def test_stop_signal_must_be_submitits(tmp_path, tiny_corpus):
    cfg = load_config(tiny_config(tmp_path, tiny_corpus), ["train.stop_signal=SIGUSR1"])
    with pytest.raises(ConfigError, match="train.stop_signal: SIGUSR1 differs from submitit's"):
        L.launch(cfg, "local", out=lambda s: None)
    assert not cfg.run_dir.exists()  # refused before anything was written


def test_submitit_internals_we_rely_on(tmp_path, monkeypatch):
    """hpcrnn/cluster/submitit_internals.py against the installed submitit: a real SignalHandler installed
    for the preemption signal is found, classifies a stop as submitit does, and on hand-over calls the job's
    checkpoint() and then requeues (exits) or refuses (raises). Fails when submitit changes these."""
    from submitit.core.job_environment import SignalHandler
    from submitit.core.utils import DelayedSubmission, JobPaths, UncompletedJobError
    from submitit.local.local import LocalJobEnvironment

    sig = submitit_internals.preemption_signal()  # SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise
    assert sig == getattr(signal, submitit_internals.preemption_signal_name())
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", "4242")
    monkeypatch.setenv("SUBMITIT_LOCAL_GLOBALID", "0")
    calls = []

    class Job:
        def __call__(self):
            return None

        def checkpoint(self):
            calls.append("checkpoint")
            return DelayedSubmission(self)

    delayed = DelayedSubmission(Job())
    delayed.set_timeout(60, 1)
    sh = SignalHandler(LocalJobEnvironment(), JobPaths(tmp_path, job_id="4242"), delayed)
    old = signal.signal(sig, sh.checkpoint_and_try_requeue)
    try:
        handler = submitit_internals.requeue_handler()
        assert handler == sh.checkpoint_and_try_requeue
        v = submitit_internals.classify_stop(handler)
        assert (v.reason, v.timeouts_left) == ("preempted", 1)
        sh._start_time -= 60 * 60  # past the guaranteed share of the 60-minute limit
        v = submitit_internals.classify_stop(handler)
        assert (v.reason, v.timeouts_left) == ("timed-out", 0)
        with pytest.raises(SystemExit):  # requeued: the local environment exits with its requeue status
            submitit_internals.hand_over(handler)
        assert calls == ["checkpoint"]
    finally:
        signal.signal(sig, old)
    assert submitit_internals.requeue_handler() is None
    assert submitit_internals.requeue_handler(fallback=sh.checkpoint_and_try_requeue) is not None
    delayed.set_timeout(60, 0)  # no timeouts left: submitit refuses to requeue, by raising
    with pytest.raises(UncompletedJobError, match="timed-out too many times"):
        submitit_internals.hand_over(sh.checkpoint_and_try_requeue)


def test_missing_corpus_fails_the_launch_not_a_job(tmp_path):
    cfg_path = tiny_config(tmp_path, tmp_path / "nope.txt")
    r = run_module("hpcrnn.launch", str(cfg_path), "--cluster", "local")
    assert r.returncode == 2, r.stderr
    assert "nope.txt" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "jobs").exists()  # nothing was started


def test_stage_subset_needs_its_inputs(tmp_path, tiny_corpus):
    cfg = load_config(tiny_config(tmp_path, tiny_corpus))
    with pytest.raises(ConfigError, match="--stages: train needs the preprocessed corpus.*add preprocess"):
        L.launch(cfg, "debug", ["train"], out=lambda s: None)
    L.launch(cfg, "debug", ["preprocess"], out=lambda s: None)
    with pytest.raises(ConfigError, match="--stages: generate needs a trained checkpoint.*add train"):
        L.launch(cfg, "debug", ["generate"], out=lambda s: None)


def test_status_of_a_missing_run_is_one_line(tmp_path, tiny_corpus):
    r = run_module("hpcrnn.status", str(tiny_config(tmp_path, tiny_corpus)))
    assert r.returncode == 2
    assert "no such run directory" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------ debug: in-process


def test_debug_pipeline_runs_then_skips_then_continues(tmp_path, tiny_corpus):
    cfg = load_config(tiny_config(tmp_path, tiny_corpus))
    lines: list[str] = []
    res = L.launch(cfg, "debug", out=lines.append)
    assert [p.stage for p in res.plans if p.run] == ["preprocess", "train", "generate"]
    assert res.results["train"]["status"] == "done" and res.results["train"]["step"] == 24
    assert len(recipes(cfg)) == 4
    assert (cfg.run_dir / "config.yaml").is_file()

    s = collect_status(cfg)
    assert {k: v["state"] for k, v in s["stages"].items()} == {
        "preprocess": "done",
        "train": "done",
        "generate": "done",
    }
    assert s["checkpoint"]["step"] == 24 and s["checkpoint"]["done"]
    assert s["recipes"] == 4 and s["val_ppl"]["ppl"] > 1
    assert "newest checkpoint: step 24 of 24 (final)" in format_status(s)

    # the same config again: every stage complete, nothing runs, and it says so
    lines.clear()
    res = L.launch(cfg, "debug", out=lines.append)
    assert not any(p.run for p in res.plans) and not res.results
    assert any("nothing to do" in ln for ln in lines)
    assert sum("skipped" in ln for ln in lines) == 3

    # a raised target with the old generate.name would end in a failed generate job: refused up front
    raised = load_config(tiny_config(tmp_path, tiny_corpus), ["train.max_steps=30"])
    with pytest.raises(ConfigError, match=r"holds recipes from checkpoint step 24.*new generate.name"):
        L.launch(raised, "debug", out=lines.append)
    # a raised target continues the same run from its checkpoint (and regenerates: new checkpoint)
    cfg2 = load_config(tiny_config(tmp_path, tiny_corpus), ["train.max_steps=30", "generate.name=more"])
    res = L.launch(cfg2, "debug", out=lines.append)
    assert [p.stage for p in res.plans if p.run] == ["train", "generate"]
    assert res.results["train"]["step"] == 30
    assert read_jobs(cfg.run_dir)["launches"][-1]["stages"]["preprocess"]["action"] == "skipped"


def test_incompatible_relaunch_is_refused_and_new_name_is_not(tmp_path, tiny_corpus):
    cfg = load_config(tiny_config(tmp_path, tiny_corpus))
    L.launch(cfg, "debug", ["preprocess", "train"], out=lambda s: None)
    saved = (cfg.run_dir / "config.yaml").read_text()
    r = run_module("hpcrnn.launch", str(tiny_config(tmp_path, tiny_corpus)), "model.hidden=32", "--cluster", "debug")
    assert r.returncode == 2
    assert "model.hidden: 16 -> 32" in r.stderr and "new run name" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert (cfg.run_dir / "config.yaml").read_text() == saved  # the refusal overwrote nothing
    r = run_module("hpcrnn.launch", str(tiny_config(tmp_path, tiny_corpus)), "data.window=10", "--cluster", "debug")
    assert r.returncode == 2 and "data.window: 12 -> 10" in r.stderr
    # a new run name is a new run: planned from scratch
    other = load_config(tiny_config(tmp_path, tiny_corpus), ["model.hidden=32", "run.name=wider"])
    plans = plan_stages(other, list(STAGES))
    assert all(p.run for p in plans)


@pytest.mark.slow
def test_debug_requeue_resumes_bitwise(tmp_path, tiny_corpus):
    """A stop signal mid-training in --cluster debug: checkpoint, a recorded requeue, resume in process,
    and the same final weights as an uninterrupted run."""
    extra = {"train": {"max_steps": 80, "checkpoint_every": 10, "eval_every": 40}}
    ref = load_config(tiny_config(tmp_path / "ref", tiny_corpus, **extra))
    L.launch(ref, "debug", ["preprocess", "train"], out=lambda s: None)

    cfg = load_config(tiny_config(tmp_path / "cut", tiny_corpus, **extra))
    L.launch(cfg, "debug", ["preprocess"], out=lambda s: None)
    sent = threading.Event()

    def interrupt():  # USR2 once the first checkpoint exists: mid-training for certain
        deadline = time.time() + 60
        while time.time() < deadline and not list(cfg.checkpoint_dir.glob("step-*/COMPLETE")):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGUSR2)
        sent.set()

    threading.Thread(target=interrupt, daemon=True).start()
    res = L.launch(cfg, "debug", ["train"], out=lambda s: None)
    assert sent.is_set()
    assert res.results["train"]["status"] == "done" and res.results["train"]["step"] == 80
    events = [r for r in read_jsonl(cfg.metrics_path) if r.get("event") == "requeue"]
    assert len(events) == 1 and events[0]["reason"] == "preempted" and 0 < events[0]["step"] < 80
    assert collect_status(cfg)["stages"]["train"]["requeues"] == 1
    a = sorted(ref.checkpoint_dir.glob("step-*"))[-1] / "model.pt"
    b = sorted(cfg.checkpoint_dir.glob("step-*"))[-1] / "model.pt"
    assert a.name == b.name and a.read_bytes() == b.read_bytes()


# ------------------------------------------------------------------------------------------ local: submitit jobs


@pytest.mark.slow
def test_local_cluster_runs_the_job_callables_with_logs(tmp_path, tiny_corpus):
    cfg_path = tiny_config(tmp_path, tiny_corpus)
    r = run_module("hpcrnn.launch", str(cfg_path), "--cluster", "local", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    # the jobs' logs are streamed to the terminal
    assert "hpcrnn.train: done at step 24" in r.stdout
    assert "== generate done" in r.stdout
    cfg = load_config(cfg_path)
    assert len(recipes(cfg)) == 4
    rec = read_jobs(cfg.run_dir)["launches"][-1]
    assert rec["cluster"] == "local" and set(rec["stages"]) == set(STAGES)
    for stage in STAGES:  # job folders under <paths.jobs>/<run name>/<stage>/
        log = Path(rec["stages"][stage]["stdout"])
        assert log.is_file() and log.parent == cfg.jobs_dir / stage
    s = run_module("hpcrnn.status", str(cfg.run_dir))
    assert s.returncode == 0 and "train      done" in s.stdout and "recipes generated: 4 of 4" in s.stdout


@pytest.mark.slow
def test_local_stage_failure_is_one_line_naming_the_log(tmp_path, tiny_corpus):
    # more than all training windows in one batch: the trainer refuses with an InputError inside the job
    cfg_path = tiny_config(tmp_path, tiny_corpus, train={"batch_size": 100000})
    r = run_module("hpcrnn.launch", str(cfg_path), "--cluster", "local", timeout=300)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("hpcrnn.launch: error: train failed:") and "train.batch_size" in last
    assert "train/" in last and "_log.err" in last


@pytest.mark.slow
def test_local_two_tasks_train_as_two_ranks(tmp_path, tiny_corpus):
    """submitit's local executor runs one process per task; the job callable makes them one DDP group."""
    cfg_path = tiny_config(tmp_path, tiny_corpus, slurm={"train": {"tasks_per_node": 2}})
    r = run_module("hpcrnn.launch", str(cfg_path), "--cluster", "local", "--stages", "preprocess,train", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 rank(s)" in r.stdout
    cfg = load_config(cfg_path)
    final = sorted(cfg.checkpoint_dir.glob("step-*"))[-1]
    assert json.loads((final / "meta.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_local_time_limit_out_of_timeouts_then_relaunch_continues(tmp_path, tiny_corpus):
    """submitit's local executor sends USR2 before its time limit as Slurm does: with no timeouts left
    the trainer's checkpoint still lands, the launch says so (exit 75), and a relaunch resumes from it."""
    cfg_path = tiny_config(
        tmp_path,
        tiny_corpus,
        train={"max_steps": 10**6, "log_every": 1000, "checkpoint_every": 10**6, "eval_every": 10**6},
        slurm={"max_num_timeout": 0, "train": {"time_min": 1, "signal_delay_s": 50}},
    )
    r = run_module("hpcrnn.launch", str(cfg_path), "--cluster", "local", "--stages", "preprocess,train", timeout=300)
    assert r.returncode == 75, r.stderr[-2000:]
    assert "more than slurm.max_num_timeout times" in r.stderr.strip().splitlines()[-1]
    cfg = load_config(cfg_path)
    ev = [e for e in read_jsonl(cfg.metrics_path) if e.get("event", "").startswith("requeue")]
    assert [e["event"] for e in ev] == ["requeue-refused"] and ev[0]["reason"] == "timed-out"
    step = ev[0]["step"]
    assert step and step > 0
    s = collect_status(cfg)["stages"]["train"]
    assert s["state"] == "failed" and f"resumable from step {step}" in s["detail"]

    r = run_module(
        "hpcrnn.launch",
        str(cfg_path),
        f"train.max_steps={step + 6}",
        "slurm.train.time_min=10",
        "--cluster",
        "local",
        "--stages",
        "train",
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resumed from step-{step:08d}" in r.stdout
    assert collect_status(load_config(cfg_path, [f"train.max_steps={step + 6}"]))["stages"]["train"]["state"] == "done"


def test_local_jobs_get_the_stage_cpus_as_threads(tmp_path, tiny_corpus):
    """Without SLURM_CPUS_PER_TASK a local job must not fall back to one thread (it ran single-threaded)."""
    import subprocess

    cfg = load_config(tiny_config(tmp_path, tiny_corpus), ["slurm.train.cpus_per_task=3"])
    ex = L.make_executor(cfg, "train", "local")
    setup = "\n".join(ex.parameters["setup"])
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK")}
    out = subprocess.run(["bash", "-c", setup + "\necho $OMP_NUM_THREADS"], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "3"
    out = subprocess.run(
        ["bash", "-c", setup + "\necho $OMP_NUM_THREADS"],
        env={**env, "SLURM_CPUS_PER_TASK": "5"},
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == "5"
