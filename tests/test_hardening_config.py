"""Hardening of the config loader and of the files it reads back: sections merge key by key everywhere
(overrides, sweep values, ``base:`` chains, empty sections); ``${VAR}`` and ``file:`` are expanded once, in
the user's own config, never again in a resolved config or a model file; every error is one line naming
its culprit (the file, the key, the command-line override)."""

from __future__ import annotations

import operator
from pathlib import Path

import pytest
import yaml

import hpcrnn
from hpcrnn.config import load_config, save_resolved
from hpcrnn.errors import ConfigError, HpcrnnError, InputError
from tests.helpers import ROOT, run_module, tiny_config


def _one_line(e: pytest.ExceptionInfo | Exception, *words: str) -> str:
    msg = str(e.value if isinstance(e, pytest.ExceptionInfo) else e)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def _yaml(path: Path, raw: dict | str) -> Path:
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


# ------------------------------------------------------------------ A. sections merge key by key everywhere


def test_override_mapping_merges_into_the_section(tmp_path, tiny_corpus):
    cfg_path = tiny_config(tmp_path, tiny_corpus)
    cfg = load_config(cfg_path, ["train={max_steps: 5}"])
    assert cfg.train.max_steps == 5
    assert cfg.train.batch_size == 8 and cfg.train.lr == 0.01  # the file's, not the defaults
    assert cfg.train.deterministic is True
    # an empty (or null) section changes nothing, on the command line as in a file
    for empty in ("train={}", "train=null", "train=~"):
        same = load_config(cfg_path, [empty])
        assert same.train == load_config(cfg_path).train, empty
    # nested sections merge too; later overrides win key by key
    cfg = load_config(cfg_path, ["slurm={train: {time_min: 7}}", "slurm.train={partition: p}", "train={lr: 0.5}"])
    assert cfg.slurm.train.time_min == 7 and cfg.slurm.train.partition == "p"
    assert cfg.train.lr == 0.5 and cfg.train.batch_size == 8


def test_override_into_a_mapping_value_keeps_its_other_keys(tmp_path, tiny_corpus):
    split = {k: str(tiny_corpus) for k in ("train", "val", "test")}
    cfg_path = tiny_config(tmp_path, tiny_corpus, data={"corpus": split})
    cfg = load_config(cfg_path, [f"data.corpus.val={tmp_path / 'v.txt'}"])
    assert cfg.data.corpus == {"train": str(tiny_corpus), "val": str(tmp_path / "v.txt"), "test": str(tiny_corpus)}


def test_sweep_value_mapping_over_recipes_best_keeps_the_rest_of_the_model():
    best = load_config(ROOT / "configs" / "recipes-best.yaml")
    cfg = load_config(ROOT / "configs" / "recipes-best.yaml", ["model={hidden: 256, embedding: 256}"])
    assert (cfg.model.hidden, cfg.model.embedding) == (256, 256)
    assert cfg.model.dropout == best.model.dropout == 0.4
    assert cfg.model.tie_weights is True and cfg.model.pointer == best.model.pointer == 512
    assert cfg.model.cell == best.model.cell


def test_sweep_expand_merges_mapping_values():
    from hpcrnn.cluster.sweep_dir import expand  # noqa: PLC0415

    sw = expand(
        ROOT / "configs" / "recipes-best.yaml", ["model={hidden: 256, embedding: 256},{hidden: 128, embedding: 128}"]
    )
    assert [r.cfg.model.hidden for r in sw.runs] == [256, 128]
    for r in sw.runs:
        assert r.cfg.model.dropout == 0.4 and r.cfg.model.tie_weights and r.cfg.model.pointer == 512, r.name


@pytest.mark.parametrize("empty", ["model:\n", "model: {}\n", "model: null\n"])
def test_empty_section_in_a_child_keeps_its_base(tmp_path, tiny_corpus, empty):
    parent = tiny_config(
        tmp_path, tiny_corpus, file="parent.yaml", model={"hidden": 24, "embedding": 24, "dropout": 0.25}
    )
    child = _yaml(tmp_path / "child.yaml", f"base: parent.yaml\n{empty}slurm:\n  train:\n")
    cfg = load_config(child)
    assert (cfg.model.hidden, cfg.model.embedding, cfg.model.dropout) == (24, 24, 0.25)
    assert cfg == load_config(parent, ["run.name=child"])


# ------------------------------------------ B. ${VAR} and file: once: resolved configs and model files are data


def _rewrite(src: Path, dst: Path, raw: dict) -> Path:
    """``raw`` written to ``dst`` as YAML below the comment lines that open ``src``."""
    head = [line for line in src.read_text().splitlines(keepends=True) if line.startswith("#")][:1]
    dst.write_text("".join(head) + yaml.safe_dump(raw))
    return dst


def _prompt_run(tmp_path, tiny_corpus, text="Title: soup for $GUESTS and ${GUESTS}\n"):
    (tmp_path / "prompt.txt").write_text(text)
    cfg_path = tiny_config(tmp_path, tiny_corpus, generate={"prompt": f"file:{tmp_path / 'prompt.txt'}"})
    cfg = load_config(cfg_path)
    assert cfg.generate.prompt == text
    save_resolved(cfg)
    return cfg


def test_resolved_config_is_not_expanded_again(tmp_path, tiny_corpus, monkeypatch):
    monkeypatch.delenv("GUESTS", raising=False)
    cfg = _prompt_run(tmp_path, tiny_corpus)
    again = load_config(cfg.run_dir)
    assert again.generate.prompt == cfg.generate.prompt
    assert again == cfg
    monkeypatch.setenv("GUESTS", "twelve")  # set, it must not change the prompt silently
    assert load_config(cfg.run_dir).generate.prompt == cfg.generate.prompt
    assert load_config(cfg.run_dir / "config.yaml").generate.prompt == cfg.generate.prompt


def test_resolved_prompt_naming_a_file_is_text(tmp_path, tiny_corpus, monkeypatch):
    """A resolved prompt is never read as a file again, nor a ${VAR} in its paths expanded."""
    cfg = _prompt_run(tmp_path, tiny_corpus, text="Title: x\n")
    raw = yaml.safe_load((cfg.run_dir / "config.yaml").read_text())
    raw["generate"]["prompt"] = "file:/etc/hostname"
    raw["slurm"]["defaults"]["partition"] = "${SECRET}"
    _rewrite(cfg.run_dir / "config.yaml", cfg.run_dir / "config.yaml", raw)
    monkeypatch.setenv("SECRET", "hunter2")
    again = load_config(cfg.run_dir)
    assert again.generate.prompt == "file:/etc/hostname"
    assert again.slurm.defaults.partition == "${SECRET}"


def test_resolved_config_written_before_the_marker_is_data(tmp_path, tiny_corpus, monkeypatch):
    """A run directory's config.yaml from an older hpcrnn (no first-line marker) is still its resolved copy."""
    monkeypatch.delenv("GUESTS", raising=False)
    cfg = _prompt_run(tmp_path, tiny_corpus)
    (cfg.run_dir / "config.yaml").write_text(cfg.to_yaml())
    assert load_config(cfg.run_dir).generate.prompt == cfg.generate.prompt


def test_overrides_on_a_resolved_config_are_still_expanded(tmp_path, tiny_corpus, monkeypatch):
    monkeypatch.delenv("GUESTS", raising=False)
    cfg = _prompt_run(tmp_path, tiny_corpus)
    (tmp_path / "p2.txt").write_text("Title: pie\n")
    monkeypatch.setenv("PART", "gpu-big")
    again = load_config(cfg.run_dir, [f"generate.prompt=file:{tmp_path / 'p2.txt'}", "slurm.train.partition=${PART}"])
    assert again.generate.prompt == "Title: pie\n"
    assert again.slurm.train.partition == "gpu-big"


def test_a_copied_resolved_config_under_another_name_is_a_users_config(tmp_path, tiny_corpus, monkeypatch):
    cfg = _prompt_run(tmp_path, tiny_corpus, text="Title: x\n")
    raw = yaml.safe_load((cfg.run_dir / "config.yaml").read_text())
    raw["slurm"]["defaults"]["partition"] = "${PART}"
    monkeypatch.setenv("PART", "batch")
    new = _rewrite(cfg.run_dir / "config.yaml", tmp_path / "new.yaml", raw)
    assert load_config(new).slurm.defaults.partition == "batch"


def test_status_of_a_run_whose_prompt_holds_a_dollar(tmp_path, tiny_corpus, monkeypatch):
    monkeypatch.delenv("GUESTS", raising=False)
    cfg = _prompt_run(tmp_path, tiny_corpus)
    r = run_module("hpcrnn.status", str(cfg.run_dir), timeout=120)
    assert r.returncode == 0, r.stderr


def _model_file(tmp_path: Path, *, config: dict | None = None, provenance=None, name="m.pt") -> Path:
    import torch  # noqa: PLC0415

    from hpcrnn.config import ModelConfig  # noqa: PLC0415
    from hpcrnn.model.file import Vocabulary, write_model_file  # noqa: PLC0415
    from hpcrnn.model.rnn import build_model  # noqa: PLC0415

    tokens = ["<unk>", "Title:", "soup", "pie", "<eor>"]
    model_cfg = ModelConfig(hidden=8, embedding=8)
    torch.manual_seed(0)
    weights = build_model(model_cfg, len(tokens)).state_dict()
    settings = {"tokenizer": "recipe", "document_start": "^Title:", "format": "plain", "repair": True}
    settings.update(rare="unk", min_count=1, window=4)
    vocab = Vocabulary(tokens, "recipe", settings, tmp_path / "x")
    full = dict(config or {})
    full["model"] = dict(model_cfg.__dict__)
    out = tmp_path / name
    write_model_file(out, weights=weights, vocabulary=vocab, title_ids=[1], config=full, provenance={"step": 3})
    if provenance is not None:  # as a damaged or hostile file holds it
        obj = torch.load(out, weights_only=True)
        obj["provenance"] = provenance
        torch.save(obj, out)
    return out


def test_model_file_config_is_data(tmp_path, tiny_corpus, monkeypatch):
    secret = tmp_path / "secret.txt"
    secret.write_text("the secret\n")
    cfg = load_config(tiny_config(tmp_path, tiny_corpus)).to_dict()
    cfg["generate"]["prompt"] = f"file:{secret}"
    cfg["slurm"]["defaults"]["partition"] = "${SECRET}"
    cfg["data"]["corpus"] = "${SECRET}/corpus.txt"
    path = _model_file(tmp_path, config=cfg)
    monkeypatch.setenv("SECRET", "hunter2")
    lm = hpcrnn.load(path, device="cpu")
    assert lm.config.generate.prompt == f"file:{secret}"
    assert lm.config.slurm.defaults.partition == "${SECRET}"
    assert "hunter2" not in lm.config.to_yaml() and "the secret" not in lm.config.to_yaml()
    monkeypatch.delenv("SECRET")
    assert hpcrnn.load(path, device="cpu").config.slurm.defaults.partition == "${SECRET}"


# ---------------------------------------------------------------------------- C. an override's error names it


def test_bad_override_value_names_the_override(tmp_path, tiny_corpus):
    cfg_path = tiny_config(tmp_path, tiny_corpus)
    with pytest.raises(ConfigError) as e:
        load_config(cfg_path, ["train.lr=-1"])
    assert _one_line(e).startswith("override train.lr=-1: train.lr: -1.0 must be greater than 0.0")
    with pytest.raises(ConfigError) as e:
        load_config(cfg_path, ["train={lr: -1, batch_size: 3}"])
    assert _one_line(e).startswith("override train={lr: -1, batch_size: 3}: train.lr:")
    with pytest.raises(ConfigError) as e:
        load_config(cfg_path, ["train.lr=-1", "train={batch_size: 4}"])
    assert _one_line(e).startswith("override train.lr=-1: ")
    with pytest.raises(ConfigError) as e:
        load_config(cfg_path, ["train.lrr=1"])
    assert _one_line(e, "train.lrr", "train.lr'").startswith("override train.lrr=1: ")
    with pytest.raises(ConfigError) as e:
        load_config(cfg_path, ["data.split=[1, 1, 1]"])
    assert _one_line(e).startswith("override data.split=[1, 1, 1]: data.split: ")
    with pytest.raises(ConfigError) as e:
        load_config(cfg_path, ["slurm.train.partition=${HPCRNN_SURELY_UNSET_VAR}"])
    assert _one_line(e, "HPCRNN_SURELY_UNSET_VAR").startswith("override slurm.train.partition=")


def test_bad_file_value_still_names_the_file(tmp_path, tiny_corpus):
    cfg_path = tiny_config(tmp_path, tiny_corpus, train={"lr": -1.0})
    with pytest.raises(ConfigError) as e:
        load_config(cfg_path, ["train.batch_size=4"])
    assert _one_line(e).startswith(f"{cfg_path}: train.lr: -1.0 must be greater than 0.0")


# ------------------------------------------------------------------------ D. did-you-mean, YAML's booleans


def test_device_alias_suggests_cuda(tmp_path, tiny_corpus):
    cfg_path = tiny_config(tmp_path, tiny_corpus)
    for key in ("train.device", "generate.device"):
        with pytest.raises(ConfigError) as e:
            load_config(cfg_path, [f"{key}=gpu"])
        assert "did you mean 'cuda'?" in _one_line(e, key)
    with pytest.raises(ConfigError) as e:
        load_config(cfg_path, ["model.cell=LSTM"])
    assert "did you mean 'lstm'?" in _one_line(e)


@pytest.mark.parametrize("item", ["run.name=on", "generate.prompt=yes", "generate.name=off", "slurm.train.qos=no"])
def test_a_word_yaml_reads_as_a_boolean_says_quote_it(tmp_path, tiny_corpus, item):
    key = item.partition("=")[0]
    with pytest.raises(ConfigError) as e:
        load_config(tiny_config(tmp_path, tiny_corpus), [item])
    msg = _one_line(e, key, "boolean", "quote")
    assert "expected a string, got bool" not in msg
    assert msg.startswith(f"override {item}: ")
    # quoted as the message says, it is the text
    word = item.partition("=")[2]
    cfg = load_config(tiny_config(tmp_path, tiny_corpus), [f'{key}="{word}"'])
    assert operator.attrgetter(key)(cfg) == word


def test_a_boolean_corpus_says_quote_it(tmp_path, tiny_corpus):
    with pytest.raises(ConfigError) as e:
        load_config(tiny_config(tmp_path, tiny_corpus), ["data.corpus=on"])
    assert _one_line(e, "data.corpus", "boolean", "quote").startswith("override data.corpus=on: ")


def test_a_boolean_in_a_file_says_quote_it(tmp_path, tiny_corpus):
    cfg_path = tiny_config(tmp_path, tiny_corpus)
    cfg_path.write_text(cfg_path.read_text().replace("name: tiny", "name: on"))
    with pytest.raises(ConfigError) as e:
        load_config(cfg_path)
    assert _one_line(e, "run.name", "boolean", "quote").startswith(str(cfg_path))


# ------------------------------------------------------------------------------ E. hpcrnn.load of an empty file


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_load_of_an_empty_file_is_refused(tmp_path, content):
    p = tmp_path / "empty.pt"
    p.write_text(content)
    with pytest.raises(InputError) as e:
        hpcrnn.load(p, device="cpu")
    _one_line(e, str(p), "empty file", "not a config, run directory or model file")


# ------------------------------------------------------------------------ F. malformed model-file fields


@pytest.mark.parametrize(
    "provenance, field",
    [
        ("xx", "provenance"),
        (["a", "b"], "provenance"),
        ({"step": "xx"}, "provenance.step"),
        ({"step": -4}, "provenance.step"),
        ({"step": 2.5}, "provenance.step"),
        ({"step": True}, "provenance.step"),
        ({"step": 1, "metrics": "x"}, "provenance.metrics"),
        ({"step": 1, "metrics": {"final": 3}}, "provenance.metrics.final"),
        ({"step": 1, "metrics": {"val_loss": "low"}}, "provenance.metrics.val_loss"),
        ({"step": 1, "corpus_fingerprint": 5}, "provenance.corpus_fingerprint"),
    ],
)
def test_malformed_provenance_is_a_one_line_input_error(tmp_path, tiny_corpus, provenance, field):
    from hpcrnn.model.file import read_model_file  # noqa: PLC0415

    cfg = load_config(tiny_config(tmp_path, tiny_corpus)).to_dict()
    path = _model_file(tmp_path, config=cfg, provenance=provenance)
    with pytest.raises(InputError) as e:
        read_model_file(path)
    _one_line(e, str(path), field)
    with pytest.raises(InputError) as e:
        hpcrnn.load(path, device="cpu")
    _one_line(e, str(path), field)


def test_well_formed_provenance_still_reads(tmp_path, tiny_corpus):
    from hpcrnn.model.file import read_model_file  # noqa: PLC0415

    cfg = load_config(tiny_config(tmp_path, tiny_corpus)).to_dict()
    prov = {"step": 7, "corpus_fingerprint": None, "metrics": {"val_loss": None, "final": {}}, "done": True}
    mf = read_model_file(_model_file(tmp_path, config=cfg, provenance=prov))
    assert mf.step == 7 and mf.meta["final"] == {} and mf.meta["val_loss"] is None
    assert read_model_file(_model_file(tmp_path, config=cfg, provenance={}, name="n.pt")).step == 0


# ---------------------------------------------------------------------------- G. a base: chain has a depth


def _chain(tmp_path: Path, tiny_corpus, n: int) -> Path:
    tiny_config(tmp_path, tiny_corpus, file="c0.yaml")
    for i in range(1, n):
        _yaml(tmp_path / f"c{i}.yaml", {"base": f"c{i - 1}.yaml", "train": {"max_steps": i}})
    return tmp_path / f"c{n - 1}.yaml"


def test_a_deep_base_chain_is_a_one_line_config_error(tmp_path, tiny_corpus):
    top = _chain(tmp_path, tiny_corpus, 977)
    with pytest.raises(ConfigError) as e:
        load_config(top)
    msg = _one_line(e, str(top), "base", "c975.yaml", "32")
    assert len(msg) < 1000


def test_a_base_chain_within_the_limit_loads(tmp_path, tiny_corpus):
    top = _chain(tmp_path, tiny_corpus, 32)
    assert load_config(top).train.max_steps == 31
    with pytest.raises(HpcrnnError):
        load_config(_chain(tmp_path / "more", tiny_corpus, 33))
