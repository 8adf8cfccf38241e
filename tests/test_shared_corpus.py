"""A corpus file shared by runs (data.h5_path; a sweep's corpus-<hash>.h5) is never rebuilt under a run that
trained on it: the rule "never replace a corpus that complete checkpoints were trained on" holds for every
run that uses the file, not only the run that preprocessed it."""

import pytest
import torch

from hpcrnn.config import load_config
from hpcrnn.data.build import run_preprocess
from hpcrnn.errors import InputError
from hpcrnn.train import checkpoint as ckpt
from hpcrnn.train import loop
from tests.helpers import make_recipes, tiny_config

torch.set_num_threads(1)


def test_a_shared_corpus_is_not_rebuilt_under_another_runs_checkpoints(tmp_path):
    corpus = tmp_path / "recipes.txt"
    corpus.write_text(make_recipes(40))
    shared = tmp_path / "shared" / "corpus-abc.h5"
    train = {"max_steps": 3, "eval_every": 100, "checkpoint_every": 100}
    a = load_config(tiny_config(tmp_path / "a", corpus, run={"name": "a"}, data={"h5_path": str(shared)}, train=train))
    run_preprocess(a)
    assert loop.run_train(a).status == "done"
    before = shared.read_bytes()

    corpus.write_text(make_recipes(40, seed=1))  # the corpus file changed; a second sweep, same data hash
    b = load_config(tiny_config(tmp_path / "b", corpus, run={"name": "b"}, data={"h5_path": str(shared)}, train=train))
    with pytest.raises(
        InputError, match=r"corpus-abc.h5: its inputs or data settings changed, but complete checkpoint"
    ):
        run_preprocess(b)
    assert shared.read_bytes() == before  # a's checkpoints still match their corpus
    assert ckpt.latest(a.checkpoint_dir).meta["done"]
