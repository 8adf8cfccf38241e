"""Shared test helpers, plain functions and constants (the fixtures are in ``tests/conftest.py``): one
config builder (``tiny_config``), one way to run the entry points as real processes
(``run_python``/``start_python``), synthetic corpora (``make_recipes``). Import them as
``from tests.helpers import ...``. Shared data is used when present."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RECIPES_5K = SHARED / "recipes" / "recipes-5k.txt"
FORMATS = SHARED / "formats"


def _process_env(env: dict | None) -> dict:
    """The environment of a child: ours, the project first on PYTHONPATH, one thread unless told."""
    e = dict(os.environ)
    e.setdefault("OMP_NUM_THREADS", "1")
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.update(env or {})
    return e


def start_python(*args: str, env=None, cwd=None, stdout=subprocess.PIPE, stderr=subprocess.PIPE) -> subprocess.Popen:
    """Start `python args...` (`-m module ...`, a script or `-c code`) as a real process, text output,
    for a test that signals, kills or watches it while it runs."""
    argv = [sys.executable, *map(str, args)]
    return subprocess.Popen(argv, cwd=cwd or ROOT, env=_process_env(env), stdout=stdout, stderr=stderr, text=True)


def run_python(*args: str, env=None, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    """Run `python args...` to the end and capture its output (text)."""
    argv = [sys.executable, *map(str, args)]
    return subprocess.run(argv, cwd=cwd or ROOT, env=_process_env(env), capture_output=True, text=True, timeout=timeout)


def start_module(module: str, *args: str, **kw) -> subprocess.Popen:
    """``start_python("-m", module, ...)``."""
    return start_python("-m", module, *args, **kw)


def run_module(module: str, *args: str, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run `python -m <module> args...` as a real process and capture its output."""
    return run_python("-m", module, *args, cwd=cwd, env=env, timeout=timeout)


_TITLES = [
    "apple pie",
    "bean soup",
    "corn bread",
    "dill salad",
    "egg curry",
    "fig jam",
    "garlic bread",
    "ham stew",
    "leek soup",
    "mint tea",
    "nut cake",
    "onion tart",
    "pea soup",
    "rice pudding",
]
_INGR = [
    "flour",
    "sugar",
    "salt",
    "butter",
    "milk",
    "eggs",
    "onion",
    "garlic",
    "rice",
    "beans",
    "apples",
    "water",
    "oil",
    "pepper",
    "dill",
    "mint",
    "nuts",
    "figs",
    "leeks",
    "ham",
]
_UNITS = ["c ", "ts", "tb", "lb", "oz"]
_VERBS = ["mix", "stir", "bake", "boil", "chop", "add", "serve", "cool", "fold", "heat"]


def make_recipes(n: int, seed: int = 0) -> str:
    """A small synthetic MealMaster-like corpus (Title:/Categories:/Yield:, ingredients, instructions)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        title = rng.choice(_TITLES).upper()
        ingr = rng.sample(_INGR, rng.randint(3, 6))
        lines = [
            f"Title: {title}",
            f"Categories: {rng.choice(['Soups', 'Desserts', 'Breads'])}",
            f"Yield: {rng.randint(1, 8)} Servings",
        ]
        lines += [f"{rng.randint(1, 4)} {rng.choice(_UNITS)} {w.capitalize()}" for w in ingr]
        for _ in range(rng.randint(1, 3)):
            a, b = rng.sample(ingr, 2)
            lines.append(f"{rng.choice(_VERBS).capitalize()} the {a} and {b} -- {rng.randint(5, 60)} minutes at 350F.")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def tiny_config(tmp_path: Path, corpus, *, file: str = "tiny.yaml", replace=(), **sections) -> Path:
    """Write a small experiment YAML for fast tests as ``tmp_path/file`` and return its path. Each section
    given (``train={"max_steps": 5}``) updates the default section, or stands instead of it when its name
    is in ``replace``."""
    raw = {
        "run": {"name": "tiny"},
        "paths": {"scratch": str(tmp_path / "scratch"), "jobs": str(tmp_path / "jobs")},
        "data": {"corpus": str(corpus), "document_start": "^Title:", "min_count": 1, "window": 12},
        "model": {"hidden": 16, "embedding": 16},
        "train": {
            "batch_size": 8,
            "max_steps": 24,
            "checkpoint_every": 5,
            "eval_every": 10,
            "log_every": 5,
            "eval_batches": 2,
            "deterministic": True,
            "threads": 1,
            "lr": 0.01,
        },
        "generate": {"num_recipes": 4, "batch_size": 4, "max_tokens": 60, "quality_sample": 5},
    }
    for sec, vals in sections.items():
        if sec in replace:
            raw[sec] = dict(vals)
        else:
            raw.setdefault(sec, {}).update(vals)
    tmp_path.mkdir(parents=True, exist_ok=True)
    p = tmp_path / file
    p.write_text(yaml.safe_dump(raw))
    return p


def prepared(tmp_path: Path, corpus: Path, **sections):
    """Write a tiny config (see ``tiny_config``), load it and preprocess its corpus: (config path, cfg)."""
    from hpcrnn.config import load_config
    from hpcrnn.data.build import run_preprocess

    cfg_path = tiny_config(tmp_path, corpus, **sections)
    cfg = load_config(cfg_path)
    run_preprocess(cfg)
    return cfg_path, cfg


def stop_at(step: int):
    """A ``run_train`` step-boundary hook: "checkpoint and requeue me" once the run reaches ``step``."""
    from hpcrnn.train.stopflag import STOP_REQUEUE

    def hook(at: int, flag) -> None:
        if at >= step:
            flag.request(STOP_REQUEUE, "stop_at_step")

    return hook
