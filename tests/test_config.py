import dataclasses
import typing
from pathlib import Path

import pytest

from hpcrnn.config import Config, SlurmResources, load_config, save_resolved
from hpcrnn.errors import ConfigError
from tests.helpers import ROOT


def write(tmp_path: Path, text: str, name="exp.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_and_name_from_stem(tmp_path):
    cfg = load_config(write(tmp_path, "model: {cell: gru}\n", "myexp.yaml"))
    assert cfg.run.name == "myexp"
    assert cfg.model.cell == "gru" and cfg.model.hidden == 256
    assert cfg.data.window == 50 and cfg.data.min_count == 5 and cfg.train.keep_last == 2
    assert Path(cfg.paths.scratch).is_absolute()
    assert cfg.run_dir == Path(cfg.paths.scratch) / "myexp"


def test_min_count_defaults_by_tokenizer(tmp_path):
    """Words: 5; characters: 1 (every character kept); an explicit value wins; the resolved config says so."""
    p = write(tmp_path, "data: {tokenizer: char}\n")
    assert load_config(p).data.min_count == 1
    assert load_config(p, ["data.min_count=3"]).data.min_count == 3
    assert load_config(p, ["data.tokenizer=whitespace"]).data.min_count == 5
    assert "min_count: 1" in load_config(p).to_yaml()


def test_overrides_are_yaml_values(tmp_path):
    cfg = load_config(
        write(tmp_path, "train: {max_steps: 10}\n"),
        [
            "train.max_steps=200",
            "model.cell=gru",
            "data.split=[0.8, 0.1, 0.1]",
            "train.deterministic=true",
            "generate.prompt=Title: Soup",
            "train.lr=1e-3",
        ],
    )
    assert cfg.train.lr == 0.001
    assert cfg.train.max_steps == 200 and cfg.model.cell == "gru"
    assert cfg.data.split == [0.8, 0.1, 0.1] and cfg.train.deterministic is True
    assert cfg.generate.prompt == "Title: Soup"


@pytest.mark.parametrize(
    "text,overrides,needle",
    [
        ("model: {hiden: 3}\n", [], "model.hiden: unknown key (did you mean 'model.hidden'?)"),
        ("modle: {}\n", [], "modle: unknown key (did you mean 'model'?)"),
        ("model: {hidden: big}\n", [], "model.hidden: expected an integer"),
        ("model: {cell: lstmm}\n", [], "model.cell: 'lstmm' is not one of lstm|gru|rnn (did you mean 'lstm'?)"),
        ("train: {keep_last: 1}\n", [], "train.keep_last: 1 is below the minimum 2"),
        ("generate: {top_p: 1.5}\n", [], "generate.top_p: 1.5 is above the maximum 1.0"),
        ("train: {deterministic: 1}\n", [], "train.deterministic: expected true or false"),
        ("data: {split: [0.5, 0.1]}\n", [], "data.split"),
        (
            "paths: {scratch: '${HPCRNN_SURELY_UNSET_VAR}/x'}\n",
            [],
            "paths.scratch: environment variable ${HPCRNN_SURELY_UNSET_VAR} is not set",
        ),
        ("model: 3\n", [], "model: expected a mapping"),
        ("", ["train.max_steps"], "expected dotted key=value"),
        ("", ["train..x=1"], "is not a dotted key"),
        ("", ["train.max_steps=[1"], "value is not valid YAML"),
        ("", ["train.nope=1"], "train.nope: unknown key"),
        ("", ["train.max_steps.x=1"], "train.max_steps"),
        ("model: {tie_weights: true, embedding: 10, hidden: 20}\n", [], "model.tie_weights"),
        ("data: {document_start: '(['}\n", [], "data.document_start: invalid regex"),
        ("a: [\n", [], "invalid YAML"),
        ("- 1\n- 2\n", [], "expected a mapping of sections"),
    ],
)
def test_errors_name_key_and_file(tmp_path, text, overrides, needle):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p, overrides)
    msg = str(e.value)
    assert needle in msg
    assert "\n" not in msg
    if not overrides:
        assert str(p) in msg


def test_env_expansion(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_SCRATCH", str(tmp_path / "s"))
    cfg = load_config(write(tmp_path, "paths: {scratch: '${MY_SCRATCH}/runs', jobs: '${NOPE_X:-jobs2}'}\n"))
    assert cfg.paths.scratch == str(tmp_path / "s" / "runs")
    assert cfg.paths.jobs.endswith("jobs2")


def test_relative_paths_resolve_against_cwd(tmp_path, monkeypatch):
    sub = tmp_path / "conf"
    sub.mkdir()
    p = write(sub, "data: {corpus: data/x.txt}\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(p)
    assert cfg.data.corpus == str(tmp_path / "data" / "x.txt")


def test_resolved_config_round_trip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = write(
        tmp_path,
        "paths: {scratch: s}\ndata: {corpus: {train: a.txt, val: b.txt, test: c.txt}}\n"
        "slurm: {train: {time_min: 7}, defaults: {additional: {mail-type: END}}}\n",
    )
    cfg = load_config(p, ["model.cell=rnn"])
    out = save_resolved(cfg)
    assert out == tmp_path / "s" / "exp" / "config.yaml"
    again = load_config(out)
    assert again == cfg
    assert again.run.name == "exp"
    # and by run directory, from another cwd: absolute paths make it cwd-independent
    monkeypatch.chdir("/")
    assert load_config(out.parent) == cfg
    assert cfg.slurm.for_stage("train").time_min == 7
    assert cfg.slurm.for_stage("generate").time_min == 60
    assert cfg.slurm.for_stage("train").additional == {"mail-type": "END"}


def test_shipped_configs_load():
    for p in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(p)
        assert cfg.run.name == p.stem


def test_every_key_is_documented():
    """docs/configuration.md is the key reference: a key added to a section must be added there too."""
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for section, cls in typing.get_type_hints(Config).items():
        if section == "source":
            continue
        assert f"### `{section}`" in doc, section
        keys = dataclasses.fields(SlurmResources) if section == "slurm" else dataclasses.fields(cls)
        missing = [k.name for k in keys if f"`{k.name}`" not in doc]
        assert not missing, (section, missing)
    assert "`slurm.max_num_timeout`" in doc


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
