"""The pointer over the document so far (model.pointer, hpcrnn/model/pointer.py): a proper distribution, the
memory carried exactly across chunks, documents kept apart, the stepper equal to the model, and a
pointer that learns to copy what a plain LM cannot predict."""

from __future__ import annotations

import pytest
import torch

from hpcrnn.config import ModelConfig
from hpcrnn.generate.stepper import Stepper
from hpcrnn.model.pointer import Pointer
from hpcrnn.model.rnn import build_model, token_loss
from hpcrnn.train import checkpoint as ckpt
from hpcrnn.train.loop import run_train
from tests.helpers import prepared, stop_at

torch.set_num_threads(1)

V, B = 50, 3


def lively(cell: str = "lstm", memory: int = 64, boundary: int = 3, layers: int = 2):
    """A random model whose pointer takes a real share of the mass."""
    torch.manual_seed(0)
    m = build_model(ModelConfig(cell=cell, hidden=16, embedding=8, layers=layers, pointer=memory), V, boundary)
    with torch.no_grad():
        m.pointer.sentinel_bias.fill_(0.0)
        m.pointer.query.weight.normal_(0, 1)
    return m.eval()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_output_is_a_distribution_and_the_state_carries_the_memory(cell):
    m = lively(cell)
    x = torch.randint(4, V, (B, 20))
    logp, state = m(x)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(B, 20))
    keys, toks = state[-2:]
    # the newest places only, never padded to the 64 it may grow to (a windows step allocates its window)
    assert keys.shape == (20, B, 16) and toks.shape == (20, B)
    assert toks.t().tolist() == (x + 1).tolist()  # token + 1, newest last
    _, state = m(torch.randint(4, V, (B, 50)), state)
    assert state[-2].shape == (64, B, 16)  # at most the memory


def test_chunks_with_the_carried_memory_equal_one_pass():
    m = lively(memory=64)
    x = torch.randint(0, V, (B, 30))
    x[1, 12] = 3  # a document boundary inside a chunk
    whole, _ = m(x)
    parts, state = [], None
    for a in range(0, 30, 7):
        out, state = m(x[:, a : a + 7], state)
        parts.append(out)
    torch.testing.assert_close(torch.cat(parts, 1), whole, rtol=1e-5, atol=1e-5)


def test_nothing_before_the_document_boundary_is_pointed_at():
    torch.manual_seed(0)
    p = Pointer(8, memory=16, boundary=3)
    with torch.no_grad():
        p.sentinel_bias.fill_(0.0)
    h, logits = torch.randn(1, 10, 8), torch.zeros(1, 10, V)
    x = torch.tensor([[10, 11, 12, 3, 20, 21, 22, 23, 24, 25]])
    logp, _ = p(h, x, logits)
    before = logp[0, 4:].exp()
    # the words of the earlier document get only the vocabulary's share, those of this one more
    share = before[:, 30]  # a word never read: the vocabulary share g / V
    for w in (10, 11, 12):
        torch.testing.assert_close(before[:, w], share)
    assert (before[:, 20] > share).all()
    # changing the earlier document changes nothing after the boundary
    y = x.clone()
    y[0, :3] = torch.tensor([20, 21, 22])
    logp2, _ = p(h, y, logits)
    torch.testing.assert_close(logp2[0, 3:], logp[0, 3:])
    # with no boundary token the whole memory is one document
    p.boundary.fill_(-1)
    logp3, _ = p(h, x, logits)
    assert (logp3[0, 4:, 10].exp() > share).all()


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_stepper_equals_the_model_with_temperature_and_banned_tokens(cell):
    m = lively(cell, memory=40)
    x = torch.randint(4, V, (B, 25))
    x[0, 0] = x[2, 9] = 3  # a boundary at the start of one slot and inside another
    want, _ = m(x)
    for temperature, banned in ((0.0, ()), (0.7, (5, 7))):
        step, state, got = Stepper(m, temperature=temperature, banned=banned), None, []
        for t in range(25):
            out, state = step(x[:, t], state)
            got.append(out.clone())
        got = torch.stack(got, 1)
        ref = want / temperature if temperature else want.clone()
        ref[..., list(banned)] = float("-inf")
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_the_pointer_learns_to_copy_what_a_plain_lm_cannot_predict():
    """Sequences ``a b c d = a b c d`` of random words: the second half is predictable only by copying."""
    g = torch.Generator().manual_seed(0)

    def batch():
        first = torch.randint(4, V, (32, 4), generator=g)
        eq = torch.full((32, 1), 2)
        return torch.cat([torch.full((32, 1), 3), first, eq, first], 1)  # boundary, a..d, =, a..d

    def train(pointer: int) -> float:
        torch.manual_seed(0)
        m = build_model(ModelConfig(hidden=32, embedding=16, pointer=pointer), V, boundary=3)
        opt = torch.optim.Adam(m.parameters(), lr=0.01)
        for _ in range(150):
            b = batch()
            out, _ = m(b[:, :-1])
            loss = token_loss(m, out[:, 5:].reshape(-1, V), b[:, 6:].reshape(-1))  # the copied half
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss.item()

    plain, pointed = train(0), train(16)
    assert plain > 2.5  # about log(46): guessing
    assert pointed < 0.5, (plain, pointed)


def test_checkpoint_carries_the_memory_of_every_row(tmp_path, tiny_corpus):
    stream = {"sequences": "stream", "window": 12}
    _, cfg = prepared(tmp_path, tiny_corpus, data=stream, model={"pointer": 20})
    run_train(cfg, stop_at(3))
    carry = ckpt.load_train_state(ckpt.latest(cfg.checkpoint_dir))["carry"]
    h, c, keys, toks = carry
    assert h.shape == (1, 8, 16) and keys.shape == (20, 8, 16) and toks.shape == (20, 8)
    assert (toks > 0).all()  # 3 steps of 12 tokens filled the 20 places
    model, _ = ckpt.load_model(ckpt.latest(cfg.checkpoint_dir))
    from hpcrnn.data.corpus import open_corpus
    from hpcrnn.data.sequences import document_token_id

    assert int(model.pointer.boundary) == document_token_id(open_corpus(cfg.h5_path))


def test_pointer_must_not_be_negative(tmp_path, tiny_corpus):
    from hpcrnn.config import load_config
    from hpcrnn.errors import ConfigError
    from tests.helpers import tiny_config

    with pytest.raises(ConfigError, match=r"model\.pointer"):
        load_config(tiny_config(tmp_path, tiny_corpus, model={"pointer": -1}))


@pytest.mark.slow
def test_a_pointer_model_exports_loads_and_generates_the_same(tmp_path, tiny_corpus):
    import hpcrnn
    from tests.helpers import run_module

    stream = {"sequences": "stream", "window": 12}
    _, cfg = prepared(tmp_path, tiny_corpus, data=stream, model={"pointer": 30}, train={"max_steps": 10})
    assert run_train(cfg).status == "done"
    out = tmp_path / "tiny.pt"
    r = run_module("hpcrnn.export", str(cfg.run_dir), "-o", str(out))
    assert r.returncode == 0, r.stderr
    run_lm, file_lm = hpcrnn.load(cfg.run_dir), hpcrnn.load(out)
    assert file_lm.config.model.pointer == 30
    assert int(file_lm.model.pointer.boundary) == int(run_lm.model.pointer.boundary) >= 0
    assert file_lm.generate(n=3) == run_lm.generate(n=3)
