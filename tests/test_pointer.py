"""The pointer over the document so far (model.pointer, hpcrnn/model/pointer.py): a proper distribution, the
memory carried exactly across chunks, documents kept apart, the stepper equal to the model, and a
pointer that learns to copy what a plain LM cannot predict."""

from __future__ import annotations

import copy

import pytest
import torch

from hpcrnn.config import ModelConfig
from hpcrnn.generate.stepper import Stepper
from hpcrnn.model.pointer import Pointer
from hpcrnn.model.rnn import build_model, token_loss, whole_distribution
from hpcrnn.train import checkpoint as ckpt
from hpcrnn.train.loop import run_train
from tests.helpers import prepared, stop_at

torch.set_num_threads(1)

V, B = 50, 3


def lively(cell: str = "lstm", memory: int = 64, boundary: int = 3, layers: int = 2, key: int = 0):
    """A random model whose pointer takes a real share of the mass (``key``: model.pointer_key)."""
    torch.manual_seed(0)
    cfg = ModelConfig(cell=cell, hidden=16, embedding=8, layers=layers, pointer=memory, pointer_key=key)
    m = build_model(cfg, V, boundary)
    with torch.no_grad():
        m.pointer.sentinel_bias.fill_(0.0)
        m.pointer.query.weight.normal_(0, 1)
        if key:
            m.pointer.key.weight.normal_(0, 1)
    return m.eval()


# the outputs as keys (Merity et al.), and a key projected to 6 of the 16 dimensions
KEYS = pytest.mark.parametrize("key", [0, 6], ids=["outputs", "projected"])


@KEYS
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_output_is_a_distribution_and_the_state_carries_the_memory(cell, key):
    m = lively(cell, key=key)
    width = key or 16
    x = torch.randint(4, V, (B, 20))
    logp, state = m(x)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(B, 20))
    keys, toks = state[-2:]
    # the newest places only, never padded to the 64 it may grow to (a windows step allocates its window)
    assert keys.shape == (20, B, width) and toks.shape == (20, B)
    assert toks.t().tolist() == (x + 1).tolist()  # token + 1, newest last
    _, state = m(torch.randint(4, V, (B, 50)), state)
    assert state[-2].shape == (64, B, width)  # at most the memory


def test_a_projected_key_is_what_the_memory_holds_and_scores():
    """model.pointer_key: the memory holds K h (not h), and the key's weights reach the loss."""
    m = lively(key=6).train()
    x = torch.randint(4, V, (B, 10))
    h, _ = m.rnn(m.embed(x))
    logp, state = m(x)
    torch.testing.assert_close(state[-2], m.pointer.key(h).transpose(0, 1).detach())
    logp[..., 7].sum().backward()
    assert m.pointer.key.weight.grad.abs().sum() > 0
    assert m.pointer.sentinel.shape == (6,) and m.pointer.query.weight.shape == (6, 16)


@KEYS
def test_chunks_with_the_carried_memory_equal_one_pass(key):
    m = lively(memory=64, key=key)
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


@KEYS
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_stepper_equals_the_model_with_temperature_and_banned_tokens(cell, key):
    m = lively(cell, memory=40, key=key)
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
        # the stepper's logits are log p / temperature up to a constant per row (all sampling needs)
        torch.testing.assert_close(got.log_softmax(-1), ref.log_softmax(-1), rtol=1e-4, atol=1e-4)


@KEYS
def test_bf16_products_take_the_pointer_s_projections_and_stay_close_to_fp32(key):
    """generate.precision bf16 (autocast's rule): the query and key projections are bf16 products summed
    in fp32; the ring's keys, the scores and the mixture stay fp32; the mixture stays close to fp32's over
    carried steps, through a boundary."""
    m = lively("lstm", memory=40, key=key)
    x = torch.randint(4, V, (B, 20))
    x[1, 7] = 3
    f32, b16 = Stepper(m), Stepper(m, precision="bf16")
    s32 = s16 = None
    for t in range(20):
        want, s32 = f32(x[:, t], s32)
        got, s16 = b16(x[:, t], s16)
        assert got.dtype == torch.float32 and b16.ring.keys.dtype == torch.float32
        torch.testing.assert_close(got.log_softmax(-1), want.log_softmax(-1), rtol=0, atol=0.1)
    assert b16.ring.query_w.dtype == torch.bfloat16 and f32.ring.query_w is None
    assert (b16.ring.key_w is None) == (key == 0) and (key == 0 or b16.ring.key_w.dtype == torch.bfloat16)
    # the bf16 products are used: not bitwise the fp32 mixture
    assert not torch.equal(got.log_softmax(-1), want.log_softmax(-1))


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
    with pytest.raises(ConfigError, match=r"model\.pointer_key: 8 needs a pointer"):
        load_config(tiny_config(tmp_path, tiny_corpus, model={"pointer_key": 8}))


@pytest.mark.slow
def test_a_pointer_model_exports_loads_and_generates_the_same(tmp_path, tiny_corpus):
    import hpcrnn
    from tests.helpers import run_module

    stream = {"sequences": "stream", "window": 12}
    model = {"pointer": 30, "pointer_key": 8}
    _, cfg = prepared(tmp_path, tiny_corpus, data=stream, model=model, train={"max_steps": 10})
    assert run_train(cfg).status == "done"
    out = tmp_path / "tiny.pt"
    r = run_module("hpcrnn.export", str(cfg.run_dir), "-o", str(out))
    assert r.returncode == 0, r.stderr
    run_lm, file_lm = hpcrnn.load(cfg.run_dir), hpcrnn.load(out)
    assert file_lm.config.model.pointer == 30 and file_lm.config.model.pointer_key == 8
    assert file_lm.model.pointer.key.weight.shape == (8, file_lm.config.model.hidden)
    assert int(file_lm.model.pointer.boundary) == int(run_lm.model.pointer.boundary) >= 0
    assert file_lm.generate(n=3) == run_lm.generate(n=3)


# ------------------------------------------------------------------ training's loss from the targets alone


def _grads(m, loss) -> dict:
    m.zero_grad()
    loss.backward()
    return {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}


def _chunked_losses(m, x, y, chunk: int, carry: bool, targets: bool, **kw):
    """The loss of every chunk (the memory carried, detached, from one to the next when ``carry``), and
    the gradients of their sum."""
    losses, state = [], None
    for a in range(0, x.shape[1], chunk):
        xs, ys = x[:, a : a + chunk], y[:, a : a + chunk]
        out, new = m(xs, state if carry else None, targets=ys if targets else None)
        out = out.reshape(-1, *out.shape[2:])
        losses.append(token_loss(m, out, ys.reshape(-1), **kw))
        state = tuple(s.detach() for s in new)
    total = torch.stack(losses).sum()
    return torch.stack(losses).detach(), _grads(m, total)


@KEYS
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("carry", [True, False], ids=["memory carried", "windows"])
def test_the_loss_from_the_targets_equals_the_loss_of_the_whole_distribution(cell, carry, key):
    """model(x, state, targets=y) gives log p(y) without building the mixture: the same losses and
    gradients as the whole distribution's, chunk after chunk, with document boundaries inside chunks."""
    m = lively(cell, memory=12, key=key).train()  # the memory (12) fills up and wraps within the 40 positions
    x, y = torch.randint(0, V, (B, 40)), torch.randint(0, V, (B, 40))
    x[0, 5] = x[1, 17] = x[2, 30] = 3  # boundaries inside chunks
    y[:, ::3] = x[:, ::3]  # targets the pointer can copy: its mass takes part
    for kw in ({}, {"ignore_index": -100, "reduction": "sum"}):
        yk = y.clone()
        if kw:
            yk[1, 20:] = -100  # a padded tail (documents mode)
        torch.manual_seed(1)
        want, want_g = _chunked_losses(m.eval(), x, yk, 9, carry, targets=False, **kw)
        got, got_g = _chunked_losses(m.eval(), x, yk, 9, carry, targets=True, **kw)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert want_g.keys() == got_g.keys() and "pointer.query.weight" in got_g
        for k in want_g:
            torch.testing.assert_close(got_g[k], want_g[k], rtol=1e-4, atol=1e-6, msg=k)


def test_targets_give_log_p_of_each_target_and_the_last_word_alone():
    m = lively(memory=30)
    x, y = torch.randint(0, V, (B, 15)), torch.randint(0, V, (B, 15))
    full, state_full = m(x)
    got, state = m(x, targets=y)
    torch.testing.assert_close(got, full.gather(-1, y[..., None])[..., 0], rtol=1e-5, atol=1e-5)
    for a, b in zip(state, state_full):
        assert torch.equal(a, b)  # the same memory carried
    last, _ = m(x, last_only=True, targets=y[:, -1])
    torch.testing.assert_close(last, full[:, -1].gather(-1, y[:, -1:])[:, 0], rtol=1e-5, atol=1e-5)
    with whole_distribution(m):  # a step that reports accuracy gets the distribution
        assert torch.equal(m(x, targets=y)[0], full)
    assert m(x, targets=y)[0].shape == (B, 15)


def test_the_plain_model_returns_logits_with_or_without_targets():
    torch.manual_seed(0)
    m = build_model(ModelConfig(hidden=16, embedding=8), V).eval()
    x, y = torch.randint(0, V, (B, 10)), torch.randint(0, V, (B, 10))
    a, b = m(x)[0], m(x, targets=y)[0]
    assert torch.equal(a, b) and a.shape == (B, 10, V)


def test_the_trainer_feeds_the_targets_and_reports_accuracy_from_the_whole_distribution(tmp_path, tiny_corpus):
    from hpcrnn.fsutil import read_jsonl
    from hpcrnn.train import loop

    stream = {"sequences": "stream", "window": 12}
    _, cfg = prepared(tmp_path, tiny_corpus, data=stream, model={"pointer": 20}, train={"max_steps": 4, "log_every": 2})
    shapes = []
    real = loop.lm_loss

    def spy(model, batch, loss_mode, state=None):
        out = real(model, batch, loss_mode, state)
        shapes.append(out[1].dim())
        return out

    loop.lm_loss, saved = spy, loop.lm_loss
    try:
        assert run_train(cfg).status == "done"
    finally:
        loop.lm_loss = saved
    assert shapes == [1, 2, 1, 2]  # log p(y) alone, the distribution at the log points (steps 2 and 4)
    train = [r for r in read_jsonl(cfg.metrics_path) if r.get("split") == "train"]
    assert [r["step"] for r in train] == [2, 4] and all(0 <= r["acc"] <= r["top5"] <= 1 for r in train)


# ------------------------------------------------------------------ generation: the ring stays in place


def _one_at_a_time(m, seq: torch.Tensor) -> torch.Tensor:
    """log p after each token, the model fed one token at a time (its memory then holds at most the newest
    ``memory`` places, as the generation ring does; one pass over a chunk scores the whole chunk)."""
    out, state = [], None
    for t in seq:
        logp, state = m(t.view(1, 1), state)
        out.append(logp[0, 0])
    return torch.stack(out).log_softmax(-1)


@KEYS
def test_the_ring_follows_slots_that_end_are_refilled_and_dropped_without_moving(key):
    """The decoder's row operations on the state (a refilled slot's row zeroed, a shrink keeping some rows,
    hpcrnn/generate/decode.py) give every slot what the model gives its own tokens; the ring is neither
    copied nor reallocated, and the state's pointer parts are two numbers a slot."""
    m = lively(memory=8, key=key)  # the memory wraps within the 14 steps
    seqs = {k: torch.randint(4, V, (14,)) for k in range(7)}
    seqs[2][6] = 3  # a boundary inside a slot's recipe
    # the ring's 8 places hold the current token and the 7 before it: the model carrying 7 scores the same
    ref = copy.deepcopy(m)
    ref.pointer.memory = 7
    want = {k: _one_at_a_time(ref, s) for k, s in seqs.items()}
    step = Stepper(m)
    state = step.zero_state(4)
    keys = step.ring.keys
    assert [tuple(s.shape) for s in state[-2:]] == [(1, 4), (1, 4)] and keys.shape == (4, 8, key or 16)
    slots, pos = [0, 1, 2, 3], [0, 0, 0, 0]  # the recipe each slot reads, and where it is in it
    events = {
        3: ("refill", 1, 4),
        5: ("shrink", [0, 2, 3]),
        7: ("refill", 0, 5),
        8: ("shrink", [1, 2]),
        9: ("refill", 1, 6),
    }
    for t in range(14):
        if t in events:
            ev = events[t]
            if ev[0] == "refill":  # as decode._refill: every part of the slot's row zeroed
                _, r, k = ev
                for s in state:
                    s[:, r] = 0
                slots[r], pos[r] = k, 0
            else:  # as decode._shrink
                ks = torch.tensor(ev[1])
                state = tuple(s.index_select(1, ks).contiguous() for s in state)
                slots, pos = [slots[i] for i in ev[1]], [pos[i] for i in ev[1]]
        tokens = torch.stack([seqs[k][p] for k, p in zip(slots, pos)])
        out, state = step(tokens, state)
        for r, (k, p) in enumerate(zip(slots, pos)):
            torch.testing.assert_close(out[r].log_softmax(-1), want[k][p], rtol=1e-4, atol=1e-4, msg=f"t {t} slot {r}")
        pos = [p + 1 for p in pos]
    assert step.ring.keys is keys  # never reallocated
    assert sorted(state[-2][0].tolist()) == [1, 2]  # the two live slots use rows 0 and 1


def test_the_generation_ring_has_the_places_a_recipe_reads():
    model = build_model(ModelConfig(hidden=16, embedding=8, pointer=512), 40).eval()
    for memory, places in ((60, 60), (None, 512), (10**6, 512)):
        step = Stepper(model, memory=memory)
        step.zero_state(3)
        assert step.ring.keys.shape == (3, places, 16) and step.ring.toks.shape == (3, places)


@KEYS
def test_the_ring_s_batched_scores_for_a_gpu_equal_the_per_slot_scores(monkeypatch, key):
    """A GPU scores every slot's places in one batched product, masked beyond each slot's count (the CPU
    loops over slots' filled places): run here on the CPU, it gives the model's distribution through refills
    and shrinks as well."""
    import hpcrnn.generate.ring as ring

    made = ring.Ring.__init__

    def batched(self, *a, **kw):
        made(self, *a, **kw)
        self.cpu = False

    monkeypatch.setattr(ring.Ring, "__init__", batched)
    test_the_ring_follows_slots_that_end_are_refilled_and_dropped_without_moving(key)


def test_the_scan_shared_over_torch_s_threads_gives_the_same_scores_bitwise(monkeypatch):
    """With several torch threads the slots' scans are shared out over a pool (the matrix products use
    every thread; a scan on one would be the bottleneck): each slot's product is the same call wherever it
    runs, so the scores are bitwise those of one thread, -inf beyond each slot's count."""
    import hpcrnn.generate.ring as ring

    torch.manual_seed(0)
    b, m = 4 * ring.MIN_SLOTS_A_THREAD + 3, 20
    r = ring.Ring(Pointer(16, m), b, torch.device("cpu"))
    r.keys.normal_()
    q, rows = torch.randn(b, 16), torch.randperm(b)
    count = torch.randint(0, m + 5, (b,))  # some beyond the ring's places: all of them are read
    used = []
    pool = ring._pool
    monkeypatch.setattr(ring, "_pool", lambda w: used.append(w) or pool(w))
    one = r._filled_scores(q, rows, count, m)
    assert used == []
    torch.set_num_threads(3)
    try:
        three = r._filled_scores(q, rows, count, m)
    finally:
        torch.set_num_threads(1)
    assert used == [2] and torch.equal(one, three)
    want = torch.einsum("bd,bmd->bm", q, r.keys[rows])
    filled = torch.arange(m) < count.clamp(max=m)[:, None]
    torch.testing.assert_close(one[filled], want[filled])
    assert bool(one[~filled].eq(float("-inf")).all()) and bool(filled.sum(1).eq(count.clamp(max=m)).all())
