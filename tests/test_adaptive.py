"""model.softmax: adaptive (hpcrnn/model/adaptive.py, issue 27): log p(target) without the whole distribution,
equal to the whole distribution's; with and without the pointer; generation's stepper; training across 2
ranks (every parameter gets a gradient every step); the config's refusals."""

import copy

import pytest
import torch

from hpcrnn.config import ModelConfig, load_config
from hpcrnn.errors import ConfigError, InputError
from hpcrnn.generate.stepper import Stepper
from hpcrnn.model.adaptive import AdaptiveHead, cutoffs_for
from hpcrnn.model.rnn import build_model, token_loss, whole_distribution
from hpcrnn.train import checkpoint as ckpt
from hpcrnn.train import loop
from tests.helpers import prepared, tiny_config
from tests.test_train import _launch_ranks

torch.set_num_threads(1)
V = 60


def test_cutoffs():
    assert cutoffs_for([], 150_000) == [2000, 10000, 50000]
    assert cutoffs_for([], 5288) == [2000]
    assert cutoffs_for([], 100) == [25]
    assert cutoffs_for([10, 30], 100) == [10, 30]
    with pytest.raises(InputError, match=r"model.cutoffs: \[10, 100\].*below the vocabulary's 100 words"):
        cutoffs_for([10, 100], 100)


def test_the_targets_log_p_is_the_whole_distributions_and_every_cluster_gets_a_gradient():
    torch.manual_seed(0)
    head = AdaptiveHead(16, V, [10, 30])
    h = torch.randn(5, 7, 16)
    y = torch.randint(0, V, (5, 7))
    y[0, 0], y[1, 1], y[2, 2] = 3, 20, 50  # one target in the head and in each cluster at least
    y[4, 6] = -100  # padding: any value, ignored by the loss
    got = head.target_logp(h, y)
    want = head.log_prob(h).gather(-1, y.clamp_min(0)[..., None])[..., 0]
    keep = y >= 0
    torch.testing.assert_close(got[keep], want[keep], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[keep], head.asm(h[keep], y[keep]).output, rtol=1e-5, atol=1e-5)
    # targets all in the head: the clusters' weights still get a (zero) gradient, as DDP needs
    head.zero_grad()
    head.target_logp(h, torch.randint(0, 10, (5, 7))).sum().backward()
    assert all(p.grad is not None for p in head.parameters())
    assert all(float(p.grad.abs().sum()) == 0.0 for p in head.asm.tail.parameters())


@pytest.mark.parametrize("pointer", [0, 12])
def test_the_models_loss_from_the_targets_equals_the_whole_distributions(pointer):
    torch.manual_seed(1)
    m = build_model(ModelConfig(hidden=16, embedding=8, softmax="adaptive", cutoffs=[10, 30], pointer=pointer), V, 2)
    m.eval()
    x, y = torch.randint(0, V, (3, 9)), torch.randint(0, V, (3, 9))
    got, _ = m(x, targets=y)
    with whole_distribution(m):
        whole, _ = m(x, targets=y)
    assert got.shape == y.shape and whole.shape == (3, 9, V)
    assert m.returns_logp
    torch.testing.assert_close(whole.exp().sum(-1), torch.ones(3, 9), rtol=1e-4, atol=1e-4)  # log-probabilities
    torch.testing.assert_close(got, whole.gather(-1, y[..., None])[..., 0], rtol=1e-4, atol=1e-4)
    a = token_loss(m, got.reshape(-1), y.reshape(-1))
    b = token_loss(m, whole.reshape(-1, V), y.reshape(-1))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pointer", [0, 12])
def test_generations_stepper_gives_the_models_distribution(pointer):
    torch.manual_seed(2)
    m = build_model(ModelConfig(hidden=16, embedding=8, softmax="adaptive", cutoffs=[10, 30], pointer=pointer), V, 2)
    m.eval()
    ref = copy.deepcopy(m)
    seq = torch.randint(3, V, (2, 8))
    step = Stepper(m, temperature=0.5, banned=[0])
    state, ref_state = step.zero_state(2), None
    for t in range(seq.shape[1]):
        out, state = step(seq[:, t], state)
        with torch.no_grad():
            want, ref_state = ref(seq[:, t : t + 1], ref_state)
        want = want[:, 0].log_softmax(-1) / 0.5
        want[:, 0] = float("-inf")  # banned
        assert torch.isinf(out[:, 0]).all()
        torch.testing.assert_close(out.log_softmax(-1), want.log_softmax(-1), rtol=1e-4, atol=1e-4)


def test_an_adaptive_run_trains_generates_and_resumes(tmp_path, tiny_corpus):
    model = {"softmax": "adaptive", "cutoffs": [20]}
    _, cfg = prepared(tmp_path, tiny_corpus, model=model, train={"max_steps": 6, "checkpoint_every": 3})
    assert loop.run_train(cfg).status == "done"
    state = ckpt.load_model_state(ckpt.latest(cfg.checkpoint_dir))
    assert any(k.startswith("head.asm.tail.0") for k in state) and "head.weight" not in state
    import hpcrnn

    lm = hpcrnn.load(cfg.run_dir)
    assert lm.evaluate(tiny_corpus.read_text()[:3000])["ppl"] > 1
    assert len(lm.generate(n=2, max_tokens=20, seed=0)) == 2


@pytest.mark.slow
def test_two_ranks_train_an_adaptive_model(tmp_path, tiny_corpus):
    """Targets that miss a cluster in some step leave its weights out of the graph; DDP would then wait for
    their gradient forever (or refuse): the zero-weighted term keeps every parameter in every step."""
    model = {"softmax": "adaptive", "cutoffs": [8, 125]}  # the rarest 7 words: in no step of most
    cfg_path, cfg = prepared(tmp_path, tiny_corpus, model=model, train={"max_steps": 6, "batch_size": 4})
    codes, outs = _launch_ranks(cfg_path, 2)
    assert codes == [0, 0], outs
    assert ckpt.latest(cfg.checkpoint_dir).step == 6


def test_the_config_refuses_what_cannot_work(tmp_path, tiny_corpus):
    p = tiny_config(tmp_path, tiny_corpus, model={"softmax": "adaptive", "tie_weights": True})
    with pytest.raises(ConfigError, match="model.tie_weights: needs model.softmax: full"):
        load_config(p)
    p = tiny_config(tmp_path, tiny_corpus, model={"cutoffs": [10]})
    with pytest.raises(ConfigError, match=r"model.cutoffs: \[10\] are for model.softmax: adaptive"):
        load_config(p)
    p = tiny_config(tmp_path, tiny_corpus, model={"softmax": "adaptive", "cutoffs": [30, 10]})
    with pytest.raises(ConfigError, match="must be ascending word ids"):
        load_config(p)
