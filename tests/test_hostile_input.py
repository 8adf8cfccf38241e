"""Config strings are hostile: they reach sbatch scripts, shell lines and file names (issue 14, 9-16)."""

from __future__ import annotations

import re

import pytest

from hpcrnn.config import load_config
from hpcrnn.errors import ConfigError
from tests.helpers import run_module


@pytest.fixture
def cfg_file(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text(f"paths: {{scratch: {tmp_path / 'scratch'}, jobs: {tmp_path / 'jobs'}}}\n")
    return p


@pytest.mark.parametrize(
    "override",
    [
        'slurm.train.partition="gpu\\n#SBATCH --uid=0"',
        'slurm.defaults.account="proj\\rx"',
        'slurm.generate.qos="a\\tb"',
        'slurm.preprocess.constraint="x\\u0000y"',
        'slurm.defaults.additional={mail-type: "END\\nrm -rf ~"}',
        'data.corpus="a\\nb.txt"',
        'paths.jobs="jobs\\n"',
    ],
)
def test_control_characters_in_config_strings_are_refused(cfg_file, override):
    key = re.escape(override.split("=", 1)[0])
    with pytest.raises(ConfigError, match=rf"{key}.*control character"):
        load_config(cfg_file, [override])


def test_control_characters_from_environment_expansion_are_refused(cfg_file, monkeypatch):
    monkeypatch.setenv("PART", "gpu\n#SBATCH --exclusive")
    with pytest.raises(ConfigError, match=r"slurm\.train\.partition.*control character"):
        load_config(cfg_file, ["slurm.train.partition=${PART}"])


@pytest.mark.parametrize("key", ["mail type", "a\\nb", "--x", "Mail-Type", "x;y"])
def test_additional_sbatch_keys_are_plain_option_names(cfg_file, key):
    with pytest.raises(ConfigError, match=r"(?s)slurm\.train\.additional\..*option name"):
        load_config(cfg_file, [f'slurm.train.additional={{"{key}": 1}}'])


def test_plain_additional_keys_and_multiline_prompts_are_accepted(cfg_file):
    cfg = load_config(
        cfg_file,
        ["slurm.train.additional={mail-type: END, mail_user: me@example.org}", 'generate.prompt="Title: Soup\\n\\tx"'],
    )
    assert cfg.slurm.train.additional == {"mail-type": "END", "mail_user": "me@example.org"}
    assert cfg.generate.prompt == "Title: Soup\n\tx"


@pytest.mark.parametrize("override", ["run.name=..", "run.name=.", "generate.name=..", "generate.name=...."])
def test_names_made_only_of_dots_are_refused(cfg_file, override):
    key = re.escape(override.split("=")[0])
    with pytest.raises(ConfigError, match=rf"{key}: .*outside"):
        load_config(cfg_file, [override])


def test_names_with_dots_inside_are_fine(cfg_file):
    assert load_config(cfg_file, ["run.name=v1.2", "generate.name=a..b"]).run.name == "v1.2"


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGSTOP"])
def test_uncatchable_stop_signal_is_refused(cfg_file, sig):
    with pytest.raises(ConfigError, match=rf"train\.stop_signal: {sig} cannot be caught"):
        load_config(cfg_file, [f"train.stop_signal={sig}"])


@pytest.mark.parametrize("sig", ["SIG_DFL", "SIGNOPE", "USR2"])
def test_unknown_stop_signal_is_refused(cfg_file, sig):
    with pytest.raises(ConfigError, match=r"train\.stop_signal: .* not a signal name"):
        load_config(cfg_file, [f"train.stop_signal={sig}"])


@pytest.mark.slow
def test_scratch_that_is_a_regular_file_is_a_one_line_input_error(tmp_path, cfg_file):
    f = tmp_path / "afile"
    f.write_text("keep me\n")
    r = run_module("hpcrnn.train", str(cfg_file), f"paths.scratch={f}")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "paths.scratch" in r.stderr and "not a directory" in r.stderr
    assert f.read_text() == "keep me\n"


@pytest.mark.parametrize(
    "module,opts",
    [
        ("hpcrnn.launch", ["--cluster", "debug", "--stages", "preprocess"]),
        ("hpcrnn.status", ["--json"]),
        # these two load torch first: about 3 s a process on 2 cores, so slow
        pytest.param("hpcrnn.generate", ["--num-shards", "1"], marks=pytest.mark.slow),
        pytest.param("hpcrnn.train", ["--debug"], marks=pytest.mark.slow),
        ("hpcrnn.preprocess", ["--debug"]),
    ],
)
def test_options_may_come_before_overrides(cfg_file, module, opts):
    """`launch CONFIG --cluster local key=value` is how people type it: the override still applies."""
    r = run_module(module, str(cfg_file), *opts, "run.name=..")
    assert "unrecognized arguments" not in r.stderr
    assert r.returncode == 2 and "run.name: '..' would name a folder outside" in r.stderr, r.stderr


def test_sbatch_without_a_controller_points_to_cluster_local(tmp_path, tiny_corpus):
    """A login node with Slurm down, or a laptop with only the client: say that --cluster local runs it here."""
    import os
    import stat

    from tests.helpers import tiny_config

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    err = "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)"
    for name, body in (("sbatch", f"echo '{err}' >&2; exit 1"), ("squeue", "exit 1"), ("srun", "exit 0")):
        p = bin_dir / name
        p.write_text(f"#!/bin/sh\n{body}\n")
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    cfg_path = tiny_config(tmp_path, tiny_corpus)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    r = run_module("hpcrnn.launch", str(cfg_path), "--cluster", "slurm", env=env)
    assert r.returncode == 2, r.stderr
    ours = r.stderr.strip().splitlines()[-1]  # (sbatch's own line above it passes through)
    assert ours.startswith("hpcrnn.launch: error: sbatch cannot reach a Slurm controller"), r.stderr
    assert "--cluster local` runs the pipeline here" in ours
