"""Override habits users bring from argparse/nanoGPT (``--train.max_steps=50``) and Hydra (``+key=value``,
``~key``), and ``--print-config`` and ``--help`` where a new user looks for them (docs/configuration.md)."""

from __future__ import annotations

import argparse

import pytest
import yaml

from hpcrnn import plot
from hpcrnn.cli import main_for, make_parser, parse_cli
from hpcrnn.cluster import launch as launch_cmd
from hpcrnn.cluster import status as status_cmd
from hpcrnn.cluster import sweep, sweep_dir, sweep_table
from hpcrnn.config import TrainConfig, load_config
from hpcrnn.errors import ConfigError
from tests.helpers import run_module, tiny_config


@pytest.fixture
def cfg_path(tmp_path, tiny_corpus):
    # the file sets train.lr and train.seed away from their defaults, and two sbatch parameters
    return tiny_config(
        tmp_path,
        tiny_corpus,
        train={"lr": 0.5, "seed": 7},
        slurm={"train": {"time_min": 30, "additional": {"mail-type": "END", "foo": 1}}},
    )


def _cfg_of(argv: list[str]):
    """The Config a command built with the shared parser gets for ``argv``."""
    seen = []
    code = main_for("hpcrnn.test", "test", lambda cfg, args: seen.append(cfg), argv)
    assert code == 0 and len(seen) == 1
    return seen[0]


def _one_line_error(path, overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------- --SECTION.KEY=VALUE


def test_option_form_is_an_override(cfg_path):
    assert _cfg_of([str(cfg_path), "--train.max_steps=50"]).train.max_steps == 50
    assert _cfg_of(["--train.max_steps=50", str(cfg_path)]).train.max_steps == 50
    cfg = _cfg_of([str(cfg_path), "--train.max_steps", "60", "--model.cell", "gru", "--train.seed", "-1"])
    assert (cfg.train.max_steps, cfg.model.cell, cfg.train.seed) == (60, "gru", -1)
    assert _cfg_of([str(cfg_path), "--generate.prompt=Title: Soup"]).generate.prompt == "Title: Soup"


def test_option_and_positional_forms_apply_in_order(cfg_path):
    assert _cfg_of([str(cfg_path), "train.max_steps=5", "--train.max_steps=7"]).train.max_steps == 7
    assert _cfg_of([str(cfg_path), "--train.max_steps=7", "train.max_steps=5"]).train.max_steps == 5
    assert _cfg_of([str(cfg_path), "--train.max_steps", "7", "--debug", "train.max_steps=5"]).train.max_steps == 5


def test_option_form_swallows_no_real_option(cfg_path, capsys):
    p = make_parser("hpcrnn.test", "test")
    p.add_argument("--cluster", default="auto")
    p.add_argument("--stages", default="all")
    p.add_argument("--json", action="store_true")
    p.add_argument("--text", nargs="+", action="extend", default=[])  # greedy, as evaluate's
    args = parse_cli(
        p,
        [str(cfg_path), "--train.lr=0.1", "--cluster", "local", "--stages", "train", "--json"]
        + ["--text", "a.txt", "--data.window=50", "--print-config", "--debug"],
    )
    assert (args.cluster, args.stages, args.json, args.print_config, args.debug) == ("local", "train", True, True, True)
    assert args.text == ["a.txt"]
    assert args.overrides == ["train.lr=0.1", "data.window=50"]
    assert args.config == str(cfg_path)


@pytest.mark.parametrize("tail", [[], ["--debug"], ["-h"]])
def test_option_form_without_a_value_is_a_usage_error(cfg_path, capsys, tail):
    p = make_parser("hpcrnn.test", "test")
    with pytest.raises(SystemExit) as e:
        parse_cli(p, [str(cfg_path), "--train.lr", *tail])
    assert e.value.code == 2
    assert "--train.lr=VALUE" in capsys.readouterr().err


def test_launch_takes_the_option_form(cfg_path, capsys):
    argv = [str(cfg_path), "--cluster", "local", "--train.max_steps=50", "--stages", "train", "--print-config"]
    assert launch_cmd.main(argv) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["max_steps"] == 50


def test_sweep_takes_the_option_form_and_hydra_signs(cfg_path, capsys):
    argv = [str(cfg_path), "--train.lr=0.1,0.2", "+train.max_steps=9", "~train.seed", "--print-config"]
    assert sweep.main(argv) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert sorted(d["train"]["lr"] for d in docs) == [0.1, 0.2]
    assert {d["train"]["max_steps"] for d in docs} == {9}
    assert {d["train"]["seed"] for d in docs} == {TrainConfig().seed}
    plain, swept = sweep_dir.parse_args(["+train.lr=0.1,0.2", "+model.cell=gru", "~train.seed"])
    assert swept == {"train.lr": ["0.1", "0.2"]} and plain == ["model.cell=gru", "~train.seed"]
    with pytest.raises(ConfigError, match="cannot be swept"):
        sweep_dir.parse_args(["+run.name=a,b"])
    with pytest.raises(ConfigError, match="takes no value"):
        sweep_dir.parse_args(["~train.seed=1,2", "train.lr=1,2"])


# ---------------------------------------------------------------- Hydra's +key=value and ~key


def test_plus_sets_a_key(cfg_path):
    assert load_config(cfg_path, ["+train.max_steps=50"]).train.max_steps == 50
    assert load_config(cfg_path, ["++train.max_steps=51"]).train.max_steps == 51
    assert _cfg_of([str(cfg_path), "+model.cell=gru"]).model.cell == "gru"


def test_plus_adds_an_entry_to_a_free_form_mapping(cfg_path):
    cfg = load_config(cfg_path, ["+slurm.train.additional.mail-user=me@example.org"])
    assert cfg.slurm.train.additional == {"mail-type": "END", "foo": 1, "mail-user": "me@example.org"}


def test_tilde_resets_a_key_to_its_default(cfg_path):
    cfg = load_config(cfg_path, ["~train.lr", "~slurm.train.time_min"])
    assert cfg.train.lr == TrainConfig().lr != 0.5
    assert cfg.train.seed == 7  # the rest of the section stays
    assert cfg.slurm.train.time_min is None  # inherits slurm.defaults again
    cfg = load_config(cfg_path, ["~train"])
    assert (cfg.train.lr, cfg.train.seed, cfg.train.max_steps) == (TrainConfig().lr, TrainConfig().seed, 0)
    # in order: a later override sets it again
    assert load_config(cfg_path, ["~train.lr", "train.lr=0.3"]).train.lr == 0.3
    assert load_config(cfg_path, ["train.lr=0.3", "~train.lr"]).train.lr == TrainConfig().lr


def test_tilde_resets_what_a_base_config_set(tmp_path, cfg_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"base: {cfg_path.name}\nmodel: {{cell: gru}}\n")
    assert load_config(child, ["~train.lr"]).train.lr == TrainConfig().lr
    assert load_config(child, ["~model.cell"]).model.cell == "lstm"


def test_tilde_removes_an_entry_of_a_free_form_mapping(cfg_path):
    cfg = load_config(cfg_path, ["~slurm.train.additional.foo"])
    assert cfg.slurm.train.additional == {"mail-type": "END"}


def test_tilde_on_a_resolved_config(tmp_path, cfg_path):
    from hpcrnn.config import save_resolved

    run_dir = save_resolved(load_config(cfg_path)).parent
    assert load_config(run_dir, ["~train.lr"]).train.lr == TrainConfig().lr


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("~train.lrr", "override '~train.lrr': train.lrr: unknown key (did you mean 'train.lr'?)"),
        ("~bogus", "override '~bogus': bogus: unknown key"),
        ("~train.lr=1", "override '~train.lr=1': ~KEY resets a key to its default, it takes no value"),
        ("~slurm.train.additional.nope", "slurm.train.additional has no entry 'nope' to remove"),
        ("~train.lr.x", "override '~train.lr.x': train.lr has no entry 'x'"),
        ("~", "override '~': '' is not a dotted key"),
        ("+", "override '+': expected dotted key=value"),
        ("+train.bogus=1", "override +train.bogus=1: train.bogus: unknown key"),
        ("+train.lr=abc", "override +train.lr=abc: train.lr: expected a number"),
        ("+base=other.yaml", "override '+base=other.yaml': base is set in a config file"),
        ("~base", "override '~base': base is set in a config file"),
    ],
)
def test_hydra_sign_errors_are_one_line_naming_the_override(cfg_path, override, expected):
    assert expected in _one_line_error(cfg_path, [override])


# ---------------------------------------------------------------- --print-config, --help


def test_print_config_needs_no_option_a_run_needs(cfg_path, capsys):
    p = make_parser("hpcrnn.test", "test")
    p.add_argument("-o", "--output", required=True)  # as export's
    args = parse_cli(p, [str(cfg_path), "--print-config", "--train.max_steps=3"])
    assert args.print_config and args.output is None and args.overrides == ["train.max_steps=3"]
    with pytest.raises(SystemExit):
        parse_cli(make_parser("hpcrnn.test", "test"), [str(cfg_path), "--output"])


def test_plot_print_config(tmp_path, cfg_path, tiny_corpus, capsys):
    assert plot.main([str(cfg_path), "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["run"]["name"] == "tiny"
    other = tiny_config(tmp_path, tiny_corpus, file="other.yaml", run={"name": "other"})
    assert plot.main([str(cfg_path), str(other), "--print-config"]) == 0
    out = capsys.readouterr().out
    assert [d["run"]["name"] for d in yaml.safe_load_all(out) if d] == ["tiny", "other"]
    assert "# run tiny:" in out and "# run other:" in out
    assert not (tmp_path / "scratch" / "tiny" / "curves.png").exists()


def test_status_help_shows_both_usages(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        status_cmd.main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for word in ("config [key=value ...]", "SWEEP_DIR", "--sort COLUMN", "--desc", "--csv", "--json", "--print-config"):
        assert word in out, word
    sweep_dir_path = tmp_path / "x-sweep"
    sweep_dir_path.mkdir()
    (sweep_dir_path / "sweep.yaml").write_text("{}\n")
    with pytest.raises(SystemExit) as e:
        status_cmd.main([str(sweep_dir_path), "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "SWEEP_DIR" in out and "CONFIG|RUN_DIR" in out
    # the sweep table still takes its options either side of the directory
    assert sweep_table.status_target(["--sort", "lr", str(sweep_dir_path)]) == str(sweep_dir_path)
    assert sweep_table.status_target([str(sweep_dir_path), "--sort", "lr"]) == str(sweep_dir_path)


def test_parse_cli_is_argparse_for_plain_command_lines(cfg_path):
    p = make_parser("hpcrnn.test", "test")
    argv = [str(cfg_path), "train.lr=0.1", "--debug", "model.cell=gru"]
    assert vars(parse_cli(p, argv)) == vars(make_parser("hpcrnn.test", "test").parse_intermixed_args(argv))
    assert isinstance(parse_cli(p, argv), argparse.Namespace)


@pytest.mark.slow
def test_option_form_and_print_config_as_processes(cfg_path):
    r = run_module("hpcrnn.launch", str(cfg_path), "--train.max_steps=50", "--cluster", "local", "--print-config")
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["train"]["max_steps"] == 50
    r = run_module("hpcrnn.status", "--help")
    assert r.returncode == 0 and "--sort" in r.stdout and "--desc" in r.stdout and "SWEEP_DIR" in r.stdout
