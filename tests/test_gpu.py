"""The GPU checks of bench/gpu_check.py as tests (marked ``gpu``; skipped without a CUDA GPU): each check
runs through hpcrnn's own code on the device and must not fail. ``bash bench/gpu_check.sh`` runs them."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from bench.gpu_check import CHECKS, DEFAULT_CORPUS, Options, run_check, table

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here"),
]


@pytest.fixture(scope="module")
def results():
    """Every check once on the GPU, in order (later checks reuse the pipeline check's trained run)."""
    work = Path(tempfile.mkdtemp(prefix="hpcrnn-gpu-test-"))
    opts = Options(False, DEFAULT_CORPUS.resolve(), work, work / "gpu_check.log")
    done = {}
    yield done, opts
    print("\n" + table(done))


@pytest.mark.parametrize("name", [n for n, _ in CHECKS])
def test_gpu_check(results, name):
    if not DEFAULT_CORPUS.is_file():
        pytest.fail(f"{DEFAULT_CORPUS}: the shared recipes corpus is missing")
    done, opts = results
    fn = dict(CHECKS)[name]
    r = done[name] = run_check(name, fn, "cuda", opts)
    assert r.status != "fail", f"{name}: {r.reason} ({r.figures}); log: {opts.log}"
