"""The malloc tunables that keep a training step's big tensors on the heap reach every training process."""

import os
import platform
import subprocess
import sys

from hpcrnn.cluster.slurm import setup_lines
from hpcrnn.process import HEAP_ENV, tuned_env
from tests.helpers import ROOT, prepared

GLIBC = platform.libc_ver()[0] == "glibc"
PRINT_ENV = (
    "from hpcrnn.process import reexec_with_tuned_heap as r; r(); import os; "
    "print([os.environ.get(k) for k in ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_', 'MALLOC_TOP_PAD_')])"
)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "HPCRNN_HEAP_TUNED"}
    env["PYTHONPATH"] = str(ROOT)
    env["OMP_NUM_THREADS"] = "1"
    return {**env, **extra}


def _run(*args, **extra):
    r = subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(**extra), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_only_the_train_command_is_reexecuted():
    """`python -c` that calls the re-execution is not the trainer's command: it runs once, untuned."""
    assert _run("-c", PRINT_ENV).strip() == str([None, None, None])


def test_a_value_the_user_set_is_kept():
    env = tuned_env({"MALLOC_MMAP_THRESHOLD_": "123456", "PATH": "/bin"})
    got = [env[k] for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")]
    assert got == ["123456", HEAP_ENV["MALLOC_TRIM_THRESHOLD_"], HEAP_ENV["MALLOC_TOP_PAD_"]]
    assert env["PATH"] == "/bin" and env["HPCRNN_HEAP_TUNED"] == "1"


def test_python_m_train_runs_with_the_tuned_heap(tmp_path, tiny_corpus):
    cfg, _ = prepared(tmp_path, tiny_corpus, train={"max_steps": 2, "eval_every": 100, "checkpoint_every": 100})
    out = _run("-m", "hpcrnn.train", str(cfg), "train.progress=lines")
    assert ("malloc heap tuned" in out) == GLIBC, out


def test_job_scripts_export_the_tunables_without_overriding_the_users():
    lines = "\n".join(setup_lines(2))
    for k, v in HEAP_ENV.items():
        assert f"export {k}=${{{k}:-{v}}}" in lines
    script = lines + "\necho $MALLOC_MMAP_THRESHOLD_ $MALLOC_TOP_PAD_"
    r = subprocess.run(["bash", "-c", script], env=_env(MALLOC_MMAP_THRESHOLD_="77"), capture_output=True, text=True)
    assert r.stdout.split() == ["77", HEAP_ENV["MALLOC_TOP_PAD_"]]
