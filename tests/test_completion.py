"""Shell completion (hpcrnn/completion.py): commands, options, config keys after a config, run directories."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpcrnn.completion import complete, config_keys
from hpcrnn.console import COMMANDS

ROOT = Path(__file__).resolve().parents[1]


def ask(line: str) -> list[str]:
    return complete(line, len(line), list(COMMANDS))


def test_commands():
    assert ask("hpcrnn ") == [*COMMANDS, "--help", "--version", "--completion"]
    assert ask("hpcrnn sa") == ["sample"]
    assert ask("hpcrnn nope x") == []


def test_keys_one_level_at_a_time_after_a_config(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert ask("hpcrnn launch configs/lstm256.yaml tr") == ["train."]
    assert "train.lr=" in ask("hpcrnn launch configs/lstm256.yaml train.l")
    assert "train.wandb." in ask("hpcrnn launch configs/lstm256.yaml train.w")
    assert ask("hpcrnn launch configs/lstm256.yaml train.wandb.pro") == ["train.wandb.project="]
    # the override habits: --key=value, +key=value, ~key (no value)
    assert ask("hpcrnn sweep configs/lstm256.yaml --train.max_s") == ["--train.max_steps="]
    assert ask("hpcrnn launch configs/lstm256.yaml ~model.poi") == ["~model.pointer", "~model.pointer_key"]
    # a value is the user's to type
    assert ask("hpcrnn launch configs/lstm256.yaml train.lr=0.") == []


def test_every_schema_key_is_offered():
    keys = config_keys()
    assert {"train.lr", "model.hidden", "data.sequences", "generate.top_p", "slurm"} <= set(keys)
    for k in keys:
        parent, _, last = k.rpartition(".")
        offered = ask(f"hpcrnn launch configs/lstm256.yaml {k}")
        assert f"{k}." in offered or f"{k}=" in offered, k


def test_paths_and_run_directories(tmp_path, monkeypatch):
    run = tmp_path / "scratch" / "lstm256"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("run: {name: lstm256}\n")
    (tmp_path / "scratch" / "notes.txt").write_text("")
    (tmp_path / "exp.yaml").write_text("")
    monkeypatch.chdir(tmp_path)
    assert ask("hpcrnn status scr") == ["scratch/"]
    assert ask("hpcrnn status scratch/") == ["scratch/lstm256/"]  # a text file is not a run
    assert ask("hpcrnn launch e") == ["exp.yaml"]
    # a run directory counts as the config: keys come next
    assert ask("hpcrnn evaluate scratch/lstm256 gen") == ["generate."]


def test_options_of_a_command():
    assert {"--temperature", "--top-p", "--interactive", "--print-config"} <= set(ask("hpcrnn sample --"))
    assert ask("hpcrnn sample --inter") == ["--interactive"]


def test_the_shell_part_after_a_word_break():
    # bash splits words at = and :, and replaces only its own word: the candidate starts after them
    assert complete("hpcrnn sample x --prompt file:con", None, list(COMMANDS)) == []
    assert ask("hpcrnn launch configs/lstm256.yaml train.l")  # sanity for the next line
    line = "hpcrnn launch configs/lstm256.yaml --print-config +train.wandb.pro"
    assert ask(line) == ["+train.wandb.project="]


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash on this machine")
def test_bash_function_end_to_end(monkeypatch):
    """The script ``hpcrnn --completion bash`` prints, sourced into bash, fills COMPREPLY (the trainer's
    module is imported for its options without re-executing the process)."""
    hpcrnn = Path(sys.executable).with_name("hpcrnn")
    if not hpcrnn.exists():
        pytest.fail(f"{hpcrnn}: the console script is not installed (pip install -e .)")
    env = {**os.environ, "PATH": f"{hpcrnn.parent}{os.pathsep}{os.environ['PATH']}"}
    script = subprocess.run([hpcrnn, "--completion", "bash"], capture_output=True, text=True, check=True).stdout
    probe = (
        script
        + 'COMP_LINE="hpcrnn train --pri"; COMP_POINT=${#COMP_LINE}; _hpcrnn_complete; echo "${COMPREPLY[*]}"\n'
        + 'COMP_LINE="hpcrnn launch configs/lstm256.yaml model.hid"; COMP_POINT=${#COMP_LINE}; _hpcrnn_complete;'
        + ' echo "${COMPREPLY[*]}"\n'
    )
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["--print-config", "model.hidden="]


def test_console_refuses_an_unknown_shell():
    from hpcrnn.console import main

    assert main(["--completion", "fish"]) == 2
