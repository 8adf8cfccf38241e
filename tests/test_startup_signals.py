"""Start-up and end of the trainer: the heap re-execution (hpcrnn/process.py) re-executes only the trainer's
own command, and a stop signal that arrives inside it ends in a clean exit 75/76, never in the signal's
default action (exit 140: the sbatch script of docs/sbatch.md would not requeue). A stop signal that arrives
after the outcome is on disk (Slurm's warning as a job finishes) leaves the exit status alone."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

from hpcrnn.errors import EXIT_REQUEUE, EXIT_STOPPED
from tests.helpers import ROOT, prepared, tiny_config

GLIBC = platform.libc_ver()[0] == "glibc"


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "HPCRNN_HEAP_TUNED"}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def test_only_the_train_command_is_reexecuted():
    code = "print('START', flush=True); from hpcrnn.console import main; main(['train', '--help'])"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("START") == 1, r.stdout


@pytest.mark.slow
@pytest.mark.skipif(not GLIBC, reason="the heap re-execution happens on glibc only")
@pytest.mark.parametrize("sig, code", [("SIGUSR2", EXIT_REQUEUE), ("SIGTERM", EXIT_STOPPED)])
def test_a_stop_signal_inside_the_reexecution_is_kept_for_the_trainer(tmp_path, tiny_corpus, sig, code):
    """The process sends itself the signal after blocking the stop signals and before execve (the
    narrowest moment of the window): it must survive to the new process's handler and end the run there."""
    cfg, _ = prepared(tmp_path, tiny_corpus, train={"max_steps": 50, "eval_every": 100, "checkpoint_every": 100})
    r = subprocess.run(
        [sys.executable, "-m", "hpcrnn.train", str(cfg), "train.progress=lines"],
        cwd=ROOT,
        env=_env(HPCRNN_TEST_SIGNAL_AT_REEXEC=sig),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == code, (r.returncode, r.stdout[-500:], r.stderr[-1500:])
    assert "malloc heap tuned" in r.stdout


def test_a_stop_signal_after_the_run_ended_does_not_fail_the_trainer(tmp_path, tiny_corpus):
    """Slurm's warning before the time limit can come in the seconds between the last checkpoint and the
    process's exit; interpreter finalization then resets Python's handlers to the default action, which for
    SIGUSR2 ends the process by the signal, and Slurm records the finished job as FAILED. Here the process
    sends itself the stop signal right after the trainer returned: it must exit 0."""
    cfg, _ = prepared(tmp_path, tiny_corpus, train={"max_steps": 20, "eval_every": 100, "checkpoint_every": 100})
    code = (
        "import os, signal, sys, time\n"
        "from hpcrnn.train.loop import main\n"
        f"rc = main([{str(cfg)!r}, 'train.progress=lines'])\n"
        "os.kill(os.getpid(), signal.SIGUSR2)\n"
        "time.sleep(0.2)\n"
        "print('SURVIVED', flush=True)\n"
        "sys.exit(rc)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "SURVIVED" in r.stdout, (r.returncode, r.stdout[-500:], r.stderr[-1500:])
    assert "done at step 20" in r.stdout + r.stderr


@pytest.mark.parametrize(
    "stage, status, scheduled",
    [("train", "done", True), ("train", "stopped", True), ("preprocess", "done", True), ("train", "done", False)],
)
def test_a_job_ignores_the_stop_signal_once_its_stage_finished(
    monkeypatch, tmp_path, tiny_corpus, stage, status, scheduled
):
    """Under submitit (its requeue handler present) a job ignores the preemption signal after its stage
    finished, or training stopped with its checkpoint; in the launching process itself (--cluster debug: no
    scheduler) it leaves that process's handler alone."""
    from hpcrnn.cluster import jobs
    from hpcrnn.config import load_config

    cfg = load_config(tiny_config(tmp_path, tiny_corpus))
    monkeypatch.setattr(jobs, "prepare_ranks", lambda: None)
    monkeypatch.setattr(
        jobs.internals, "requeue_handler", lambda fallback=None: (lambda *a: None) if scheduled else None
    )
    result = SimpleNamespace(status=status, step=5, checkpoint=None)
    monkeypatch.setattr(jobs, "stage_function", lambda name: lambda c: result)
    job = jobs.TrainJob(cfg) if stage == "train" else jobs.PreprocessJob(cfg)
    mine = lambda *a: None  # noqa: E731
    old = signal.signal(signal.SIGUSR2, mine)
    try:
        if status == "done":
            assert job() is not None
        else:
            with pytest.raises(jobs.StageStopped):
                job()
        assert signal.getsignal(signal.SIGUSR2) is (signal.SIG_IGN if scheduled else mine)
    finally:
        signal.signal(signal.SIGUSR2, old)
