"""bench/gpu_check.py: its CPU mode runs every check and passes (so the GPU script cannot rot), and without
CUDA the default invocation is one line and exit 0."""

import json
import subprocess

import pytest
import torch

from tests.helpers import ROOT, run_python


@pytest.mark.slow
def test_cpu_mode_runs_and_passes_every_check(tmp_path, tiny_corpus):
    out = tmp_path / "results.json"
    r = run_python("bench/gpu_check.py", "--device", "cpu", "--quick", "--corpus", str(tiny_corpus), "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    results = json.loads(out.read_text())
    from bench.gpu_check import CHECKS, NO_CPU_BF16
    from hpcrnn.model.precision import native_bf16

    assert list(results) == [name for name, _ in CHECKS]
    assert {n: x["status"] for n, x in results.items()} == {n: "pass" for n, _ in CHECKS}, r.stdout
    if native_bf16(torch.device("cpu")):  # the CPU's bf16 autocast ran and was compared with fp32
        assert "lm_loss under CPU bf16 autocast" in results["precision"]["figures"]
    else:  # what this CPU cannot run is skipped, and the table says why
        assert results["precision"]["reason"] == NO_CPU_BF16 and NO_CPU_BF16 in r.stdout
    assert "# gpu_check — " in r.stdout and "no GPU" in r.stdout  # bench/common.py's header: machine, date
    assert "| check | result | figures |" in r.stdout
    assert "bitwise" in results["resume"]["figures"]
    assert "found at step 8" in results["divergence"]["figures"]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here: the default runs the checks")
def test_without_cuda_one_line_and_exit_0():
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 1 and "no CUDA GPU" in r.stdout and not r.stderr


@pytest.mark.slow
def test_cpu_mode_without_bf16_kernels_skips_only_what_it_cannot_run(tmp_path, tiny_corpus):
    """A CPU without bf16 kernels (AMD EPYC; forced here by HPCRNN_CPU_BF16=0 on any machine): the trainer's
    fp32 rule is still checked and passes, CPU bf16 autocast is skipped with the reason printed, and
    generation runs fp32 only."""
    out = tmp_path / "results.json"
    args = ("--device", "cpu", "--quick", "--only", "precision,generate", "--corpus", str(tiny_corpus))
    r = run_python("bench/gpu_check.py", *args, "--json", str(out), env={"HPCRNN_CPU_BF16": "0"})
    assert r.returncode == 0, r.stdout + r.stderr
    from bench.gpu_check import NO_CPU_BF16

    results = json.loads(out.read_text())
    assert {n: x["status"] for n, x in results.items()} == {"precision": "pass", "generate": "pass"}, r.stdout
    assert results["precision"]["reason"] == NO_CPU_BF16 and NO_CPU_BF16 in r.stdout
    assert "losses equal" in results["precision"]["figures"]
    assert results["generate"]["reason"] == "bf16 not native on this CPU: fp32 only"


@pytest.mark.slow
def test_unknown_check_is_a_usage_error():
    r = run_python("bench/gpu_check.py", "--device", "cpu", "--only", "nope")
    assert r.returncode == 2 and "unknown check" in r.stderr


def test_a_gpu_group_also_reduces_cpu_tensors():
    """The loop all-reduces CPU tensors (stop agreement, lock and checkpoint checks) on GPUs too: a plain
    "nccl" group has no backend for them, so the group must name gloo for CPU beside NCCL for CUDA."""
    from hpcrnn.train.distributed import backend_for

    assert backend_for(True) == "cpu:gloo,cuda:nccl" and backend_for(False) == "gloo"
