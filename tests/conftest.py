"""Shared fixtures. Tests write their own small corpora; shared data is used when present."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RECIPES_5K = SHARED / "recipes" / "recipes-5k.txt"
FORMATS = SHARED / "formats"


def run_module(module: str, *args: str, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run `python -m <module> args...` as a real process and capture its output."""
    e = dict(os.environ)
    e.setdefault("OMP_NUM_THREADS", "1")
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    if env:
        e.update(env)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or ROOT, env=e,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def shared_5k() -> Path:
    if not RECIPES_5K.exists():
        pytest.skip("../shared/data/recipes/recipes-5k.txt not present")
    return RECIPES_5K
