"""One rule per compatibility question (hpcrnn/run/compat.py): the launcher's refusal, the trainer's and the
readers' checks and train.init_from agree on what a model shape is, and an older checkpoint that lacks a
newer key is compared as that key's default."""

from __future__ import annotations

import dataclasses

import pytest

from hpcrnn.cluster.plan import check_compatible_run
from hpcrnn.config import ModelConfig, load_config
from hpcrnn.errors import ConfigError, InputError
from hpcrnn.run.compat import check_compatible, shape_diff
from hpcrnn.train.checkpoint import save_checkpoint
from tests.helpers import prepared


def test_a_missing_key_is_its_default():
    old = dataclasses.asdict(ModelConfig())
    del old["pointer"]  # a checkpoint from before model.pointer existed
    assert shape_diff(old, dataclasses.asdict(ModelConfig())) == []
    assert shape_diff(old, dataclasses.asdict(ModelConfig(pointer=64))) == [("pointer", 0, 64)]
    assert shape_diff(old, dataclasses.asdict(ModelConfig(dropout=0.5))) == []  # dropout changes no weight


@pytest.mark.parametrize("pointer, fits", [(0, True), (64, False)])
def test_launcher_and_trainer_agree(tmp_path, tiny_corpus, pointer, fits):
    cfg_path, cfg = prepared(tmp_path, tiny_corpus)
    meta_cfg = cfg.to_dict()
    del meta_cfg["model"]["pointer"]
    meta = {"config": meta_cfg, "vocab_hash": "v", "vocab_size": 3, "epoch": 0}
    save_checkpoint(cfg.checkpoint_dir, 2, {}, {}, meta)
    new = load_config(cfg_path, [f"model.pointer={pointer}"])
    launcher_ok = trainer_ok = True
    try:
        check_compatible_run(new)
    except ConfigError:
        launcher_ok = False
    try:
        check_compatible(meta, new, "v", cfg.checkpoint_dir)
    except InputError:
        trainer_ok = False
    assert launcher_ok == trainer_ok == fits
