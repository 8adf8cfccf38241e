"""Config composition (`base:`) and `--print-config`."""

from pathlib import Path

import pytest
import yaml

from hpcrnn.config import load_config, save_resolved
from hpcrnn.errors import ConfigError
from tests.helpers import ROOT, run_module


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_chain_relative_to_each_file(tmp_path):
    """A base is found relative to the file naming it; chains go on; sections merge key by key; lists and
    mappings such as data.corpus replace; run.name is the file's own."""
    write(tmp_path / "root.yaml", "run: {name: root}\nmodel: {hidden: 64, layers: 2}\ndata: {split: [0.8, 0.1, 0.1]}\n")
    write(tmp_path / "a" / "mid.yaml", "base: ../root.yaml\nmodel: {cell: gru}\ntrain: {lr: 0.01}\n")
    leaf = write(
        tmp_path / "a" / "b" / "leaf.yaml", "base: ../mid.yaml\nmodel: {hidden: 32}\ndata: {split: [0.9, 0.1, 0.0]}\n"
    )
    cfg = load_config(leaf)
    assert (cfg.model.cell, cfg.model.hidden, cfg.model.layers) == ("gru", 32, 2)
    assert cfg.train.lr == 0.01 and cfg.data.split == [0.9, 0.1, 0.0]
    assert cfg.run.name == "leaf"
    assert "base" not in cfg.to_dict()
    # overrides come last, over the whole chain
    assert load_config(leaf, ["model.layers=3"]).model.layers == 3


def test_cycle_is_one_line_naming_the_files(tmp_path):
    a = write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError) as e:
        load_config(a)
    msg = str(e.value)
    assert "\n" not in msg and "cycle" in msg and "a.yaml" in msg and "b.yaml" in msg
    self_ref = write(tmp_path / "s.yaml", "base: ./s.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(self_ref)


def test_errors_name_the_file_that_holds_them(tmp_path):
    write(tmp_path / "base.yaml", "train: {max_step: 5}\n")
    child = write(tmp_path / "child.yaml", "base: base.yaml\n")
    with pytest.raises(ConfigError, match=r"base\.yaml: train\.max_step: unknown key"):
        load_config(child)
    missing = write(tmp_path / "m.yaml", "base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match=r"m\.yaml: base: .*nowhere\.yaml is not a config file"):
        load_config(missing)
    bad = write(tmp_path / "n.yaml", "base: [x]\n")
    with pytest.raises(ConfigError, match=r"n\.yaml: base: expected the path"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not on the command line"):
        load_config(child, ["base=other.yaml"])


def test_gru256_is_lstm256_with_a_gru(tmp_path):
    """The shipped gru256.yaml inherits lstm256.yaml: its resolved config differs in the run name and the
    cell only, and names no key with lstm256's value (it repeats nothing)."""
    lstm = load_config(ROOT / "configs" / "lstm256.yaml").to_dict()
    gru = load_config(ROOT / "configs" / "gru256.yaml").to_dict()
    assert gru["model"]["cell"] == "gru" and gru["run"]["name"] == "gru256"
    lstm["model"]["cell"], lstm["run"]["name"] = "gru", "gru256"
    assert gru == lstm
    raw = yaml.safe_load((ROOT / "configs" / "gru256.yaml").read_text())
    assert raw["base"] == "lstm256.yaml" and set(raw) == {"base", "run", "model"}


def test_resolved_config_is_self_contained(tmp_path, tiny_corpus):
    write(tmp_path / "base.yaml", f"data: {{corpus: {tiny_corpus}}}\nmodel: {{hidden: 8, embedding: 8}}\n")
    child = write(tmp_path / "exp" / "child.yaml", f"base: ../base.yaml\npaths: {{scratch: {tmp_path / 's'}}}\n")
    cfg = load_config(child)
    out = save_resolved(cfg)
    (tmp_path / "base.yaml").unlink()  # the run no longer needs its base
    again = load_config(out.parent)
    assert again.to_dict() == cfg.to_dict()
    assert "base" not in yaml.safe_load(out.read_text())


@pytest.mark.parametrize(
    "module",
    [
        "hpcrnn.launch",
        "hpcrnn.preprocess",
        # these three load torch before they read their arguments: about 3 s a process on 2 cores, so slow
        pytest.param("hpcrnn.train", marks=pytest.mark.slow),
        pytest.param("hpcrnn.generate", marks=pytest.mark.slow),
        pytest.param("hpcrnn.evaluate", marks=pytest.mark.slow),
    ],
)
def test_print_config_runs_nothing(tmp_path, tiny_corpus, module):
    scratch = tmp_path / "scratch"
    write(
        tmp_path / "base.yaml", f"data: {{corpus: {tiny_corpus}}}\npaths: {{scratch: {scratch}, jobs: {tmp_path}/j}}\n"
    )
    child = write(tmp_path / "child.yaml", "base: base.yaml\nmodel: {cell: rnn}\n")
    r = run_module(module, str(child), "train.lr=0.5", "--print-config")
    assert r.returncode == 0, r.stderr
    printed = yaml.safe_load(r.stdout)
    assert printed["model"]["cell"] == "rnn" and printed["train"]["lr"] == 0.5
    assert printed["data"]["corpus"] == str(tiny_corpus) and printed["run"]["name"] == "child"
    assert not scratch.exists() and not (tmp_path / "j").exists()


def test_recipes_best_is_lstm256_widened_with_a_pointer():
    """recipes-best.yaml trains as lstm256.yaml does (mode, optimizer, schedule, data) and differs only in
    the network, the epochs and the sampling that docs/results.md measured."""
    lstm = load_config(ROOT / "configs" / "lstm256.yaml").to_dict()
    best = load_config(ROOT / "configs" / "recipes-best.yaml").to_dict()
    assert best["model"] == {
        **lstm["model"],
        "hidden": 512,
        "embedding": 512,
        "tie_weights": True,
        "dropout": 0.4,
        "pointer": 512,
    }
    assert best["data"] == lstm["data"]
    assert {k: v for k, v in best["train"].items() if k != "epochs"} == {
        k: v for k, v in lstm["train"].items() if k != "epochs"
    }
    assert best["train"]["epochs"] == 10
    g = best["generate"]
    assert (g["temperature"], g["top_p"], g["listed_bias"], g["unlisted_bias"]) == (1.0, 1.0, 4.0, 4.0)
    assert g["prompt_ingredients"] == "all"
