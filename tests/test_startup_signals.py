"""Start-up of the trainer: the heap re-execution (hpcrnn/process.py) re-executes only the trainer's own
command, and a stop signal that arrives inside it ends in a clean exit 75/76, never in the signal's default
action (exit 140: the sbatch script of docs/sbatch.md would not requeue)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from hpcrnn.errors import EXIT_REQUEUE, EXIT_STOPPED
from tests.helpers import ROOT, prepared

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
