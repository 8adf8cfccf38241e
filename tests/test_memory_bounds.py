"""Resources: a clear one-line refusal before the allocation, never an internal error or the OOM killer.
The memory a stage needs is estimated from its config (hpcrnn/model/memory.py); a model file's weights are
checked against its declared shape before the model is built; the generation ring holds no more places
than a recipe reads; and a windows-mode pointer allocates no memory it never uses."""

import pytest
import torch

from hpcrnn.config import ModelConfig, load_config
from hpcrnn.errors import ConfigError, InputError
from hpcrnn.export import run_export
from hpcrnn.generate.job import run_generate
from hpcrnn.generate.stepper import Stepper
from hpcrnn.model.file import read_model_file
from hpcrnn.model.rnn import build_model
from hpcrnn.train import loop
from tests.helpers import prepared

torch.set_num_threads(1)
FAST = {"max_steps": 2, "eval_every": 100, "checkpoint_every": 100, "eval_batches": 1}


def test_a_huge_stream_pointer_is_refused_before_it_is_allocated(tmp_path, tiny_corpus):
    _, cfg = prepared(tmp_path, tiny_corpus, model={"pointer": 10**8}, data={"sequences": "stream"}, train=FAST)
    with pytest.raises(ConfigError, match=r"needs at least [\d,.]+ GB .* has [\d,.]+ GB: lower .*model.pointer"):
        loop.run_train(cfg)
    assert not cfg.checkpoint_dir.exists()


def test_a_huge_windows_pointer_allocates_only_its_window(tmp_path, tiny_corpus):
    """Windows start from an empty memory: 10^8 places cost nothing (they used to be padded: 205 GB)."""
    _, cfg = prepared(tmp_path, tiny_corpus, model={"pointer": 10**8}, train=FAST)
    assert loop.run_train(cfg).status == "done"


def test_generation_batch_beyond_memory_is_refused(tmp_path, tiny_corpus):
    cfg_path, cfg = prepared(tmp_path, tiny_corpus, train=FAST)
    loop.run_train(cfg)
    big = load_config(cfg_path, ["generate.batch_size=1000000000", "generate.num_recipes=2"])
    with pytest.raises(ConfigError, match=r"lower generate.batch_size"):
        run_generate(big)
    assert not (cfg.run_dir / "generated").exists()


def test_model_file_shapes_are_checked_before_the_model_is_built(tmp_path, tiny_corpus):
    cfg_path, cfg = prepared(tmp_path, tiny_corpus, train=FAST)
    loop.run_train(cfg)
    out = tmp_path / "m.pt"
    run_export(cfg, out)
    obj = torch.load(out, weights_only=True)
    obj["model"]["hidden"] = 10**6  # would be 16 TB of weights
    torch.save(obj, out)
    with pytest.raises(InputError, match=r"m.pt: weight .*: shape .* the declared model has"):
        read_model_file(out).build_model()


def test_the_generation_ring_holds_what_a_recipe_reads():
    model = build_model(ModelConfig(hidden=16, embedding=8, pointer=512), 40).eval()
    for memory, places in ((60, 60), (None, 512), (10**6, 512)):
        step = Stepper(model, memory=memory)
        step.zero_state(3)
        assert step.ring.keys.shape == (3, places, 16) and step.ring.toks.shape == (3, places)
