"""Small defects of the hardening audit, each pinned: documents mode with a vocabulary that has no
end-of-document token, TensorBoard's folder being a file, `status --sort COL SWEEP_DIR`, one config under
two spellings of its path, and a refused first launch that left an empty scratch/ behind."""

from types import SimpleNamespace

import pytest

from hpcrnn.cluster import sweep_dir as SD
from hpcrnn.cluster.launch import launch
from hpcrnn.cluster.sweep_table import status_target
from hpcrnn.config import load_config
from hpcrnn.errors import ConfigError, HpcrnnError, InputError, StorageError
from hpcrnn.train.setup import make_batches
from hpcrnn.train.tensorboard import EventLog
from tests.helpers import tiny_config


def test_documents_mode_without_an_end_of_document_token_is_one_line(tmp_path, tiny_corpus):
    cfg = load_config(tiny_config(tmp_path, tiny_corpus, data={"sequences": "documents", "max_len": 40}))
    corpus = SimpleNamespace(eor_id=None, eos_id=None)  # a data.vocab_from vocabulary without <eor>
    with pytest.raises(InputError, match="no end-of-document token"):
        make_batches(cfg, corpus, 0, 1)


def test_documents_mode_refuses_such_a_vocab_from_at_preprocess(tmp_path, tiny_corpus, monkeypatch):
    from hpcrnn.data import build, vocab_from

    cfg = load_config(tiny_config(tmp_path, tiny_corpus, data={"sequences": "documents", "max_len": 40}))
    cfg.data.vocab_from = str(tmp_path / "m.pt")
    fake = SimpleNamespace(tokenizer=cfg.data.tokenizer, eor_id=None, eos_id=None)
    monkeypatch.setattr(vocab_from, "load_vocabulary", lambda path: fake)
    with pytest.raises(InputError, match=r"data.vocab_from: .*m.pt has no end-of-document token"):
        build.fixed_vocabulary(cfg)


def test_tensorboard_folder_that_is_a_file_is_a_storage_error(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    (tmp_path / "tensorboard").write_text("not a folder")
    with pytest.raises(StorageError, match="tensorboard: cannot write TensorBoard events"):
        EventLog(tmp_path, 0)
    assert StorageError.exit_code == 4


def test_status_sort_before_the_sweep_dir(tmp_path):
    d = tmp_path / "x-sweep"
    d.mkdir()
    (d / SD.SWEEP_FILE).write_text("config: x\nkeys: {}\nruns: []\n")
    assert status_target(["--sort", "lr", str(d)]) == str(d)
    assert status_target([str(d), "--sort", "lr"]) == str(d)
    assert status_target(["--sort", str(d)]) is None  # the directory is --sort's value there


def test_one_config_under_two_spellings_is_one_sweep(tmp_path, monkeypatch):
    d = tmp_path / "w" / "x-sweep"
    d.mkdir(parents=True)
    cfg = tmp_path / "w" / "sw.yaml"
    cfg.write_text("")
    (d / SD.SWEEP_FILE).write_text(f"config: {cfg}\nkeys: {{}}\nruns: []\n")
    monkeypatch.chdir(tmp_path / "w")
    same = SD.Sweep(SD.Path("./../w/sw.yaml").absolute(), "x", d, [], {})
    SD.check_sweep_dir(same)  # not "holds a sweep of …/w/sw.yaml, not of …/w/../w/sw.yaml"
    other = SD.Sweep(tmp_path / "other.yaml", "x", d, [], {})
    with pytest.raises(ConfigError, match="holds a sweep of"):
        SD.check_sweep_dir(other)


def test_a_refused_first_launch_leaves_no_empty_scratch(tmp_path, tiny_corpus):
    scratch = tmp_path / "fresh" / "scratch"
    path = tiny_config(tmp_path, tiny_corpus, paths={"scratch": str(scratch), "jobs": str(tmp_path / "jobs")})
    cfg = load_config(path)
    with pytest.raises(HpcrnnError):
        launch(cfg, "local", ["generate"], out=lambda s: None)  # generate needs a checkpoint: refused
    assert not scratch.exists() and not (tmp_path / "fresh").exists()
