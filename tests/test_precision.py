"""train.precision: resolution per device, the train.bf16 alias, and fp16's gradient scaler in checkpoints."""

import pytest
import torch

from hpcrnn.config import load_config
from hpcrnn.errors import ConfigError
from hpcrnn.model import precision as P
from hpcrnn.train import checkpoint as ckpt
from hpcrnn.train import loop
from tests.helpers import prepared, stop_at, tiny_config

torch.set_num_threads(1)
CUDA = torch.device("cuda", 0)


def test_resolution_per_device(monkeypatch):
    for want in ("auto", "bf16", "fp16", "fp32"):
        assert P.resolve_precision(want, torch.device("cpu"), "train") == "fp32"  # the CPU trains in fp32
    monkeypatch.setattr(P, "native_bf16", lambda device: True)  # an A100 or later
    assert [P.resolve_precision(w, CUDA, "train") for w in ("auto", "bf16", "fp16", "fp32")] == [
        "bf16",
        "bf16",
        "fp16",
        "fp32",
    ]
    monkeypatch.setattr(P, "native_bf16", lambda device: False)  # a V100
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-32GB")
    assert P.resolve_precision("auto", CUDA, "train") == "fp16"
    with pytest.raises(ConfigError, match=r"exp.yaml: train.precision: bf16: Tesla V100-SXM2-32GB has no native bf16"):
        P.resolve_precision("bf16", CUDA, "train", "exp.yaml")


def test_one_rule_for_every_stage(monkeypatch):
    """bf16 only where native; the CPU trains fp32; generation falls back to fp32 and says so; the
    environment override forces the probe either way (so CI on an AMX machine runs the AMD path)."""
    cpu = torch.device("cpu")
    monkeypatch.setenv("HPCRNN_CPU_BF16", "0")
    assert not P.native_bf16(cpu)
    said = []
    assert [P.resolve_precision(w, cpu, "generate", say=said.append) for w in ("auto", "bf16", "fp32")] == ["fp32"] * 3
    assert len(said) == 1 and "generating in fp32" in said[0]
    monkeypatch.setenv("HPCRNN_CPU_BF16", "1")
    assert P.native_bf16(cpu) and P.resolve_precision("auto", cpu, "generate") == "bf16"
    assert P.resolve_precision("bf16", cpu, "train") == "fp32"  # the CPU trains in fp32 even with bf16 kernels
    monkeypatch.setattr(P, "native_bf16", lambda device: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-32GB")
    assert P.resolve_precision("auto", CUDA, "generate") == "fp32"  # the stepper has no fp16
    assert P.resolve_precision("bf16", CUDA, "generate", say=said.append) == "fp32"
    assert said[-1] == "generate.precision: bf16: Tesla V100-SXM2-32GB has no native bf16 kernels; generating in fp32"


def test_bf16_is_an_alias(tmp_path, tiny_corpus):
    def cfg(**train):
        return load_config(tiny_config(tmp_path, tiny_corpus, train=train)).train

    assert (cfg().precision, cfg().bf16) == ("auto", None)
    assert cfg(bf16=False).precision == "fp32" and cfg(bf16=False).bf16 is None
    assert cfg(bf16=True).precision == "auto"
    assert cfg(bf16=True, precision="bf16").precision == "bf16"
    with pytest.raises(ConfigError, match="train.bf16: False contradicts train.precision: fp16"):
        cfg(bf16=False, precision="fp16")
    with pytest.raises(ConfigError, match="train.precision: 'fp8' is not one of"):
        cfg(precision="fp8")


def test_fp16_scaler_state_is_checkpointed_and_resumes_exactly(tmp_path, tiny_corpus, monkeypatch):
    """fp16 autocast with a GradScaler (as on a V100), exercised on the CPU: the scaler's state is in
    train_state.pt and a resumed run is bitwise the uninterrupted one."""
    monkeypatch.setattr(loop, "resolve_precision", lambda want, device, stage, src="": "fp16")
    # a plain RNN: the CPU's oneDNN has no fp16 LSTM (CUDA has), and its RNN really runs in fp16
    model = {"cell": "rnn"}
    _, ref = prepared(tmp_path / "ref", tiny_corpus, model=model)
    assert loop.run_train(ref).status == "done"
    want = (ckpt.latest(ref.checkpoint_dir).path / "model.pt").read_bytes()

    _, cfg = prepared(tmp_path / "cut", tiny_corpus, model=model)
    assert loop.run_train(cfg, stop_at(7)).status == "requeue"
    scaler = ckpt.load_train_state(ckpt.latest(cfg.checkpoint_dir))["scaler"]
    assert scaler["scale"] > 0 and "_growth_tracker" in scaler
    assert loop.run_train(cfg).status == "done"
    assert (ckpt.latest(cfg.checkpoint_dir).path / "model.pt").read_bytes() == want


def test_fp32_checkpoint_has_an_empty_scaler(tmp_path, tiny_corpus):
    _, cfg = prepared(tmp_path, tiny_corpus, train={"max_steps": 5})
    assert loop.run_train(cfg).status == "done"
    assert ckpt.load_train_state(ckpt.latest(cfg.checkpoint_dir))["scaler"] == {}
