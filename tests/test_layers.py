"""The architecture's properties (docs/architecture.md), checked on the code itself: every import points
down the layers, no cycle, the launcher and status without torch, and small modules and functions."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

PKG = ROOT / "hpcrnn"

# (rank, module prefixes), lowest first: a module may import modules of its own package at its rank and
# anything of a lower rank; packages that share a rank (train and generate; the base modules) never import
# each other.
LAYERS = [
    (0, ["hpcrnn.errors", "hpcrnn.fsutil", "hpcrnn.progress", "hpcrnn.process", "hpcrnn.text"]),
    (1, ["hpcrnn.config"]),
    (2, ["hpcrnn.cli", "hpcrnn.completion"]),  # completion reads the schema; commands' parsers only by runpy
    (3, ["hpcrnn.run"]),
    # the corpus file, read (and its tokens' memory map)
    (4, ["hpcrnn.data.corpus", "hpcrnn.data.token_map", "hpcrnn.data.sources", "hpcrnn.data.documents"]),
    (5, ["hpcrnn.model"]),
    (6, ["hpcrnn.data"]),  # building and batching the corpus: the preprocess stage and training's input
    (7, ["hpcrnn.evaluate"]),  # held-out figures, shared by training, the command and the API
    (8, ["hpcrnn.train", "hpcrnn.generate"]),
    (9, ["hpcrnn.cluster"]),
    (
        10,
        [
            "hpcrnn.api",
            "hpcrnn.export",
            "hpcrnn.plot",
            "hpcrnn.console",
            "hpcrnn.launch",
            "hpcrnn.status",
            "hpcrnn.sweep",
            "hpcrnn.preprocess",
            "hpcrnn.sample",
            "hpcrnn.evaluate.__main__",  # --complete generates: the entry point sits above generate
        ],
    ),
]
# hpcrnn/__init__.py is the package's facade: hpcrnn.load is hpcrnn.api.load, imported on first use.
FACADE = "hpcrnn"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def layer(mod: str) -> tuple[int, str]:
    """(rank, the longest matching prefix)."""
    best = max(((r, p) for r, ps in LAYERS for p in ps if mod == p or mod.startswith(p + ".")), key=lambda x: len(x[1]))
    return best


def imports(mod: str) -> set[str]:
    """Every hpcrnn module ``mod`` imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(MODULES[mod].read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        out |= {n for n in names if n in MODULES and n != mod}
    return out


def package(mod: str) -> str:
    return ".".join(mod.split(".")[:2])


def test_every_module_has_a_layer():
    assert [
        m for m in MODULES if m != FACADE and not any(m == p or m.startswith(p + ".") for _, ps in LAYERS for p in ps)
    ] == []


def test_every_import_points_down():
    wrong = []
    for mod in MODULES:
        if mod == FACADE:
            continue
        rank, _ = layer(mod)
        for dep in imports(mod):
            if dep == FACADE:  # hpcrnn.__version__
                continue
            drank, _ = layer(dep)
            sideways = drank == rank and package(dep) != package(mod)
            if drank > rank or sideways:
                wrong.append(f"{mod} -> {dep}")
    assert wrong == []


def test_nothing_imports_the_api_and_the_launcher_no_stage():
    for mod in MODULES:
        deps = imports(mod)
        if mod != FACADE:
            assert "hpcrnn.api" not in deps, mod
        if mod.startswith("hpcrnn.cluster"):
            assert not {d for d in deps if d.startswith(("hpcrnn.train", "hpcrnn.generate", "hpcrnn.evaluate"))}, mod


def test_no_import_cycle():
    graph = {m: imports(m) for m in MODULES}
    state: dict[str, int] = {}
    cycles = []

    def visit(m, stack):
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d) :] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in MODULES:
        if m not in state:
            visit(m, [m])
    # a package importing its own submodule from __init__ is no cycle of behaviour; there is none today
    assert cycles == []


def test_small_modules_and_functions():
    long_modules = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 500}
    assert long_modules == {}
    long_functions = []
    for m, p in MODULES.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long_functions.append(f"{m}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert long_functions == []


def test_the_launcher_status_and_sweep_import_no_torch():
    code = (
        "import sys, json; import hpcrnn.cluster.launch, hpcrnn.cluster.status, hpcrnn.cluster.sweep, "
        "hpcrnn.cluster.jobs, hpcrnn.launch, hpcrnn.status, hpcrnn.sweep; "
        "print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('hpcrnn.train', "
        "'hpcrnn.generate', 'hpcrnn.evaluate')))))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == []


def test_status_of_a_trained_run_answers_without_torch(tmp_path, tiny_corpus):
    """`python -m hpcrnn.status RUN` on a run with complete checkpoints and recipes never imports torch: a
    meta-path hook makes any torch import fail in that process."""
    from hpcrnn.train.checkpoint import save_checkpoint
    from tests.helpers import prepared

    cfg_path, cfg = prepared(tmp_path, tiny_corpus)
    meta = {"config": cfg.to_dict(), "vocab_hash": "x", "vocab_size": 3, "done": True, "epoch": 1}
    save_checkpoint(cfg.checkpoint_dir, 4, {}, {}, meta)
    code = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch imported by status')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from hpcrnn.cluster.status import main\n"
        f"sys.exit(main([{str(cfg_path)!r}]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "step 4" in r.stdout or "00000004" in r.stdout, r.stdout
