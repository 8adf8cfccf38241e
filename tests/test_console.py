"""The `hpcrnn` console script: each command is its `python -m hpcrnn.<command>` form."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hpcrnn import __version__, console
from tests.helpers import ROOT, run_python, tiny_config


def hpcrnn(*args, **kw):
    """Run the console entry point in a fresh process, as the installed script does."""
    return run_python("-c", "from hpcrnn.console import console; console()", *map(str, args), **kw)


def test_declared_in_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["scripts"]["hpcrnn"] == "hpcrnn.console:console"


def test_version_and_usage(capsys):
    assert console.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"hpcrnn {__version__}"
    assert console.main([]) == 2
    err = capsys.readouterr().err
    for name in ("launch", "preprocess", "train", "evaluate", "generate", "status", "sweep", "plot", "export"):
        assert f"  {name} " in err
    assert console.main(["--help"]) == 0 and "usage: hpcrnn" in capsys.readouterr().out


def test_unknown_and_unavailable_commands_are_one_line(capsys, monkeypatch):
    assert console.main(["trian", "x.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "did you mean 'train'" in err
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "hpcrnn.sweep" else real(name, *a)
    )
    assert console.main(["sweep", "x.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == f"hpcrnn: error: 'hpcrnn sweep' is not available in this version ({__version__}): no module hpcrnn.sweep"
    )


def test_every_command_with_a_module_dispatches_to_it():
    for name in console.COMMANDS:
        present = importlib.util.find_spec(f"hpcrnn.{name}") is not None
        assert present or name in ("sweep", "plot", "export")


@pytest.mark.slow
def test_commands_take_the_python_m_arguments_and_exit_statuses(tmp_path, tiny_corpus):
    cfg = tiny_config(tmp_path, tiny_corpus, train={"max_steps": 3})
    r = hpcrnn("train", cfg, "model.cell=gru", "--print-config")
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["model"]["cell"] == "gru"
    r = hpcrnn("preprocess", cfg)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "scratch" / "tiny" / "corpus.h5").is_file()
    r = hpcrnn("train", cfg, "train.max_stepz=3")
    assert r.returncode == 2 and "did you mean 'train.max_steps'" in r.stderr
    r = hpcrnn("status", tmp_path / "scratch" / "tiny", "--json")
    assert r.returncode == 0, r.stderr
    assert '"preprocess"' in r.stdout
    r = hpcrnn("train", "--help")
    assert r.returncode == 0 and "usage: hpcrnn.train" in r.stdout


@pytest.mark.skipif(not (Path(sys.executable).parent / "hpcrnn").exists(), reason="package not installed with pip")
def test_installed_script():
    script = shutil.which("hpcrnn", path=str(Path(sys.executable).parent))
    r = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout.strip()) == (0, f"hpcrnn {__version__}")
