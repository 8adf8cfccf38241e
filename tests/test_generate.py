"""The generation job: sampling, batched generation against a plain reference, files, reruns, shards,
bad input, and an end-to-end preprocess -> train -> generate run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hpcrnn.config import ModelConfig, load_config
from hpcrnn.errors import ConfigError, InputError
from hpcrnn.generate import decode as D
from hpcrnn.generate import describe as DS
from hpcrnn.generate import job as G
from hpcrnn.generate import prompts as P
from hpcrnn.generate import sampling as S
from hpcrnn.generate import stepper as ST
from hpcrnn.generate.corpus_view import CorpusView
from hpcrnn.model import precision as MP
from hpcrnn.model.rnn import RecurrentLM, build_model
from hpcrnn.run import generated as F
from hpcrnn.train import checkpoint as ckpt
from tests.helpers import make_recipes, run_module, start_module, tiny_config

torch.set_num_threads(1)


# the tiny config with generation's own defaults: a val/test split for quality figures, a CPU run
_GENERATION = {
    "data": {"split": [0.8, 0.1, 0.1]},
    "train": {
        "max_steps": 30,
        "checkpoint_every": 10,
        "log_every": 10,
        "lr": 0.02,
        "deterministic": False,
        "device": "cpu",
    },
    "generate": {"num_recipes": 7, "batch_size": 3, "max_tokens": 40, "quality_sample": 5, "device": "cpu"},
}


def write_config(tmp: Path, **sections) -> Path:
    """``tiny_config`` on a 200-recipe corpus with generation's defaults, then ``sections`` on top."""
    corpus = tmp / "recipes.txt"
    if not corpus.exists():
        corpus.write_text(make_recipes(200))
    merged = {sec: {**_GENERATION.get(sec, {}), **sections.get(sec, {})} for sec in {*_GENERATION, *sections}}
    return tiny_config(tmp, corpus, **merged)


def save_random_checkpoint(cfg, step: int = 5, seed: int = 0, eor_bias: float = 1.2, vocab_hash=None) -> Path:
    """A checkpoint of a random-weight model (so these tests do not need training). The end-of-recipe
    logit is raised so that recipes end at different lengths, some before max_tokens."""
    from hpcrnn.data.corpus import open_corpus

    c = open_corpus(cfg.h5_path)
    torch.manual_seed(seed)
    model = build_model(cfg.model, len(c.vocab), c.eor_id)
    with torch.no_grad():
        model.head.bias[c.eor_id] += eor_bias
    meta = {"config": cfg.to_dict(), "vocab_hash": vocab_hash or c.vocab_hash, "vocab_size": len(c.vocab)}
    return ckpt.save_checkpoint(cfg.checkpoint_dir, step, model.state_dict(), {}, meta)


def prepared_run(tmp: Path, checkpoint: bool = True, **sections):
    """A preprocessed run of ``write_config`` with a random-weight checkpoint (unless ``checkpoint=False``):
    (config path, cfg)."""
    from hpcrnn.data.build import run_preprocess

    path = write_config(tmp, **sections)
    cfg = load_config(path)
    run_preprocess(cfg)
    if checkpoint:
        save_random_checkpoint(cfg)
    return path, cfg


def with_(cfg_path: Path, *overrides: str):
    return load_config(cfg_path, list(overrides))


def files_of(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("recipe-*.txt"))}


# ------------------------------------------------------------------------------------ sampling


def test_sample_next_greedy_topk_topp_and_inverse_cdf():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    logits[:, 7] = float("-inf")  # a banned token
    u = torch.rand(4)
    assert torch.equal(S.sample_next(logits, None, 0.0, 0, 1.0), logits.argmax(-1))
    assert torch.equal(S.sample_next(logits, u, 1.0, 1, 1.0), logits.argmax(-1))  # top_k 1 is greedy
    assert torch.equal(S.sample_next(logits, u, 1.0, 0, 1e-6), logits.argmax(-1))  # so is a tiny top_p
    # inverse CDF over evenly spaced u reproduces the softmax distribution
    row = torch.tensor([[2.0, 1.0, 0.0, float("-inf"), -1.0]])
    n = 20000
    us = (torch.arange(n) + 0.5) / n
    picks = S.sample_next(row.expand(n, -1), us, 1.0, 0, 1.0)
    freq = torch.bincount(picks, minlength=5).float() / n
    assert torch.allclose(freq, torch.softmax(row[0], -1), atol=2e-4)
    assert freq[3] == 0  # never the banned token, even for u next to 1
    assert S.sample_next(row, torch.tensor([0.9999999]), 1.0, 0, 1.0).item() == 4
    # temperature sharpens; top_k 2 keeps the two most likely; top_p 0.7 keeps {0, 1} (0.66 + 0.24)
    p_hot = torch.bincount(S.sample_next(row.expand(n, -1), us, 0.5, 0, 1.0), minlength=5).float() / n
    assert torch.allclose(p_hot, torch.softmax(row[0] / 0.5, -1), atol=2e-4)
    assert set(S.sample_next(row.expand(n, -1), us, 1.0, 2, 1.0).tolist()) == {0, 1}
    assert set(S.sample_next(row.expand(n, -1), us, 1.0, 0, 0.7).tolist()) == {0, 1}
    topk = torch.bincount(S.sample_next(row.expand(n, -1), us, 1.0, 2, 1.0), minlength=5).float() / n
    assert topk[0] == pytest.approx(np.exp(2) / (np.exp(2) + np.exp(1)), abs=2e-4)


@pytest.mark.parametrize("n", [1024, 3001, 8000])
def test_two_level_inverse_cdf(n):
    """The CPU's two-level search (block sums, then one block) picks what the flat running sum picks, and
    never a token of zero weight (banned ones, whole empty blocks, the short last block)."""
    g = torch.Generator().manual_seed(n)
    w = torch.rand(1, n, generator=g) ** 4
    w[0, 64:192] = 0  # two empty blocks
    w[0, 5] = 0
    w[0, n - 1] = 0  # the very last token banned
    m = 20000
    u = (torch.arange(m) + 0.5) / m
    got = S.inverse_cdf(w.expand(m, n).clone(), u)[0]
    cdf = w[0].cumsum(0)
    flat = torch.searchsorted(cdf, (u * (1 - 1e-6)) * cdf[-1], right=True).clamp(max=n - 1)
    assert (got != flat).float().mean() < 1e-3  # only float rounding at a boundary may differ
    assert (w[0][got] > 0).all()
    freq = torch.bincount(got, minlength=n).float() / m
    assert (freq - w[0] / w[0].sum()).abs().max() < 2e-4
    # every row searches on its own: one row alone gives what it gives in the batch
    assert all(S.inverse_cdf(w.clone(), u[k : k + 1])[0].item() == got[k].item() for k in (0, 777, 19999))
    assert torch.allclose(S.inverse_cdf(w, u[:1])[1], w.sum(-1))  # and the row's total


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sample_next_with_a_work_buffer_is_the_same(dtype):
    """The engine reuses a float32 buffer; the answer must not depend on it (nor on bf16 logits being
    widened before the temperature, not after)."""
    torch.manual_seed(0)
    logits = (torch.randn(64, 500) * 3).to(dtype)
    u = torch.rand(64)
    for args in ((0.0, 0, 1.0), (0.8, 0, 1.0), (0.8, 5, 1.0), (0.8, 0, 0.9), (1.3, 10, 0.5)):
        want = S.sample_next(logits.float(), u, *args)
        assert torch.equal(S.sample_next(logits, u, *args), want), args
        assert torch.equal(S.sample_next(logits, u, *args, work=torch.full((64, 500), float("nan"))), want), args


def reference_generate(model, prompt, uniforms, max_tokens, stop_id, temperature, top_k, top_p, banned):
    """One recipe, the plain way: run the prompt, then one token at a time with its own state."""
    with torch.no_grad():
        logits, state = model(torch.tensor([prompt]), None)
        logits = logits[:, -1]
        out = []
        while len(out) < max_tokens:
            logits[:, banned] = float("-inf")
            u = None if uniforms is None else torch.from_numpy(np.array([uniforms[len(out)]]))
            t = int(S.sample_next(logits, u, temperature, top_k, top_p)[0])
            out.append(t)
            if t == stop_id:
                break
            logits, state = model.step(torch.tensor([t]), state)
    stopped = bool(out) and out[-1] == stop_id
    return (out[:-1] if stopped else out), stopped


@pytest.mark.parametrize(
    "cell",  # with a pointer the search for a bias that ends recipes both ways takes half a minute: slow
    [
        "lstm",
        "gru",
        pytest.param("lstm+pointer", marks=pytest.mark.slow),
        pytest.param("gru+pointer", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("temperature,top_k,top_p", [(0.0, 0, 1.0), (1.0, 0, 1.0), (0.9, 5, 0.8)])
def test_batched_generation_equals_one_at_a_time(cell, temperature, top_k, top_p):
    """Continuous batching (refilled and shrinking slots, prompts of different lengths) gives every recipe
    exactly what the plain one-recipe loop gives it, for any batch size. With a pointer, each slot's
    memory must start empty at a refill and follow its slot when the batch shrinks."""
    torch.manual_seed(1)
    V, stop = 40, 1
    cell, _, pointer = cell.partition("+")
    mcfg = ModelConfig(cell=cell, hidden=24, embedding=12, layers=2, pointer=48 if pointer else 0)
    model = RecurrentLM(V, mcfg, boundary=stop).eval()
    with torch.no_grad():
        model.embed.weight.mul_(3)  # livelier states: more varied recipes
        if pointer:  # a pointer that takes a real share of the mass, and leaves the end a chance
            model.pointer.sentinel_bias.fill_(2.0)
            model.pointer.query.weight.mul_(4)
    rng = np.random.default_rng(0)
    jobs = []
    for k in range(11):
        prompt = rng.integers(2, V, size=int(rng.integers(1, 9))).tolist()
        u = None if temperature == 0 else rng.random((30, S.uniforms_per_token(top_k, top_p)), dtype=np.float32)
        jobs.append(D.Job(k, prompt, u))
    kw = dict(max_tokens=30, stop_id=stop, temperature=temperature, top_k=top_k, top_p=top_p, banned=[0])
    bias = model.head.bias.data[stop].item()
    for extra in np.arange(0.0, 6.0, 0.02):  # an end-of-recipe bias that gives both endings
        model.head.bias.data[stop] = bias + extra
        want = {
            j.key: reference_generate(model, j.prompt, j.uniforms, 30, stop, temperature, top_k, top_p, [0])
            for j in jobs
        }
        # greedy decoding with a pointer copies itself into a loop: it ends at once or never (the prompts'
        # lengths still make the slots finish at different steps)
        lengths = 1 if pointer and temperature == 0 else 3
        if len({s for _, s in want.values()}) == 2 and len({len(t) for t, _ in want.values()}) > lengths:
            break
    else:
        pytest.fail("no bias gives recipes of both endings and several lengths")
    for bs in (1, 4, 16):
        got = {}
        for key, toks, stopped in D.generate_batched(model, iter(jobs), batch_size=bs, **kw):
            assert key not in got
            got[key] = (toks, stopped)
        assert got == want, f"batch size {bs}"
    got = {k: (t, s) for k, t, s in D.generate_batched(model, iter(jobs), batch_size=4, sync_every=5, **kw)}
    assert got == want  # a host check every 5 steps (the GPU setting) changes nothing


# ------------------------------------------------------------------------------------ the job


def test_writes_recipes_index_and_summary(tmp_path):
    cfg_path, cfg = prepared_run(tmp_path)
    r = G.run_generate(cfg)
    out = tmp_path / "scratch" / "tiny" / "generated" / "default"
    assert r.out_dir == out and r.complete and r.written == 7 and r.skipped == 0 and r.checkpoint_step == 5
    assert sorted(files_of(out)) == [f"recipe-{i:05d}.txt" for i in range(1, 8)]
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert [rec["recipe"] for rec in index] == list(range(1, 8))
    for rec in index:
        text = (out / rec["file"]).read_text()
        assert text.startswith("Title:") and "<eor>" not in text and "<unk>" not in text
        assert rec["stopped"] in ("eor", "max_tokens") and 0 < rec["tokens"] <= 40
        assert rec["checkpoint_step"] == 5 and rec["seed"] == 0 and rec["prompt_tokens"] == 2
        assert set(rec["quality"]) >= {"structure", "coherence", "repeated_4grams", "longest_copy"}
        assert rec["sampling"] == {"temperature": 0.8, "top_k": 0, "top_p": 1.0, "max_tokens": 40}
    assert {rec["stopped"] for rec in index} == {"eor", "max_tokens"}
    s = json.loads((out / "summary.json").read_text())
    assert s["num_recipes"] == 7 and s["checkpoint"]["step"] == 5 and s["generated"]["recipes"] == 7
    real = s["real_test_sample"]
    assert real["recipes"] == 5 and real["structure"] == 1.0 and real["coherence_mean"] == 1.0
    assert G.generation_done(cfg)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_never_uses_a_partial_checkpoint(tmp_path):
    """A trainer writing beside the generator: an unmarked step folder and a temporary one are ignored."""
    cfg_path, cfg = prepared_run(tmp_path)
    partial = cfg.checkpoint_dir / "step-00000009"
    partial.mkdir()
    (partial / "model.pt").write_bytes(b"half a checkpoint")
    (cfg.checkpoint_dir / ".tmp-step-00000011-4242").mkdir()
    r = G.run_generate(cfg)
    assert r.complete and r.checkpoint_step == 5


@pytest.mark.parametrize("pointer", [0, 40], ids=["plain", "pointer"])
def test_same_seed_same_files_across_batch_sizes_and_shards(tmp_path, pointer):
    cfg_path, cfg = prepared_run(tmp_path, model={"pointer": pointer})
    G.run_generate(with_(cfg_path, "generate.name=a", "generate.batch_size=4"))
    for s in range(3):
        r = G.run_generate(with_(cfg_path, "generate.name=b", "generate.batch_size=1"), shard=s, num_shards=3)
        assert r.assigned == len(range(s + 1, 8, 3)) and r.written == r.assigned
        assert r.complete == (s == 2)  # the last shard to finish merges
    gen = tmp_path / "scratch" / "tiny" / "generated"
    a, b = files_of(gen / "a"), files_of(gen / "b")
    assert len(a) == 7 and a == b
    assert (gen / "a" / "index.jsonl").read_bytes() == (gen / "b" / "index.jsonl").read_bytes()
    assert sorted(p.name for p in (gen / "b").glob("index-*")) == [f"index-0000{k}-of-00003.jsonl" for k in (1, 2, 3)]
    G.run_generate(with_(cfg_path, "generate.name=c", "generate.seed=1"))
    c = files_of(gen / "c")
    assert sum(c[k] != a[k] for k in a) >= 5  # another seed, other recipes


def test_worker_processes_describe_like_the_writer_thread(tmp_path, monkeypatch):
    """Recipes described (text, quality) in forked worker processes or in the writer thread: same files,
    same index."""
    cfg_path, cfg = prepared_run(tmp_path)
    monkeypatch.setenv("HPCRNN_QUALITY_WORKERS", "0")
    assert DS.quality_workers(torch.device("cpu"), 8) == 0
    before = torch.get_num_threads()
    G.run_generate(with_(cfg_path, "generate.name=thread", "train.threads=1"))
    assert torch.get_num_threads() == before  # the caller's thread count is given back
    monkeypatch.setenv("HPCRNN_QUALITY_WORKERS", "2")
    assert DS.quality_workers(torch.device("cpu"), 8) == 2
    G.run_generate(with_(cfg_path, "generate.name=procs"))
    gen = tmp_path / "scratch" / "tiny" / "generated"
    assert files_of(gen / "procs") == files_of(gen / "thread")
    assert (gen / "procs" / "index.jsonl").read_bytes() == (gen / "thread" / "index.jsonl").read_bytes()
    monkeypatch.delenv("HPCRNN_QUALITY_WORKERS")
    # the defaults: a quarter of a CPU node's CPUs (at least one given two), spare CPUs beside a GPU
    assert [DS.quality_workers(torch.device("cpu"), n) for n in (1, 2, 4, 16, 64)] == [0, 1, 1, 4, 8]
    assert [DS.quality_workers(torch.device("cuda"), n) for n in (1, 4, 64)] == [0, 3, 8]
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")
    from hpcrnn.process import available_cpus

    assert available_cpus() == 6


@pytest.mark.parametrize("tokenizer", ["char", "whitespace"])
def test_other_tokenizers(tmp_path, tokenizer):
    cfg_path, cfg = prepared_run(tmp_path, data={"tokenizer": tokenizer})
    r = G.run_generate(cfg)
    assert r.complete and r.written == 7
    out = tmp_path / "scratch" / "tiny" / "generated" / "default"
    index = [json.loads(x) for x in (out / "index.jsonl").read_text().splitlines()]
    for rec in index:
        text = (out / rec["file"]).read_text()
        assert text.startswith("Title:") and "<eor>" not in text and "<eos>" not in text
    if tokenizer == "whitespace":  # no end-of-document token: every recipe runs to max_tokens
        assert {rec["stopped"] for rec in index} == {"max_tokens"}
        assert {rec["tokens"] for rec in index} == {40}
    G.run_generate(with_(cfg_path, "generate.name=p", "generate.prompt=FIG JAM"))  # case kept: both
    for text in files_of(out.parent / "p").values():
        assert text.decode().startswith("Title: FIG JAM\n")


def test_bf16_on_a_cpu_without_bf16_kernels_generates_fp32_and_says_so(tmp_path, monkeypatch, capsys):
    """The AMD path, forced on any machine (HPCRNN_CPU_BF16=0): generate.precision=bf16 is one line and
    fp32 recipes, the same files as fp32's, never an internal error."""
    monkeypatch.setenv("HPCRNN_CPU_BF16", "0")
    cfg_path, _ = prepared_run(tmp_path)
    gen = tmp_path / "scratch" / "tiny" / "generated"
    assert G.run_generate(with_(cfg_path, "generate.name=b", "generate.precision=bf16")).complete
    out = capsys.readouterr().out
    assert out.count("generate.precision: bf16: this CPU has no native bf16 kernels; generating in fp32") == 1
    assert json.loads((gen / "b" / "summary.json").read_text())["precision"] == "fp32"
    G.run_generate(with_(cfg_path, "generate.name=f", "generate.precision=fp32"))
    assert files_of(gen / "b") == files_of(gen / "f")


def test_precision_auto_is_resolved_once_and_pinned(tmp_path, monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("HPCRNN_CPU_BF16", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert MP.resolve_precision("auto", cpu, "generate") == "bf16"
    assert MP.resolve_precision("fp32", cpu, "generate") == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    said = []
    assert MP.resolve_precision("auto", cpu, "generate", say=said.append) == "fp32" and not said
    assert MP.resolve_precision("bf16", cpu, "generate", say=said.append) == "fp32"  # no kernels: fp32, said
    assert said == ["generate.precision: bf16: this CPU has no native bf16 kernels; generating in fp32"]
    cfg_path, cfg = prepared_run(tmp_path)
    gen = tmp_path / "scratch" / "tiny" / "generated"
    # shard 1 of 2 starts on a machine without AMX: auto -> fp32, pinned in plan.json ...
    G.run_generate(with_(cfg_path, "generate.name=auto"), shard=0, num_shards=2)
    assert json.loads((gen / "auto" / "plan.json").read_text())["precision"] == "fp32"
    # ... and shard 2 on one with AMX follows the plan, so the set is one precision
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert G.run_generate(with_(cfg_path, "generate.name=auto"), shard=1, num_shards=2).complete
    index = [json.loads(x) for x in (gen / "auto" / "index.jsonl").read_text().splitlines()]
    assert {rec["precision"] for rec in index} == {"fp32"}
    G.run_generate(with_(cfg_path, "generate.name=fp32", "generate.precision=fp32"))
    assert files_of(gen / "auto") == files_of(gen / "fp32")
    # bf16 output layer: complete, recorded, the same files for any batch size
    G.run_generate(with_(cfg_path, "generate.name=bf16a", "generate.precision=bf16", "generate.batch_size=3"))
    G.run_generate(with_(cfg_path, "generate.name=bf16b", "generate.precision=bf16", "generate.batch_size=7"))
    assert files_of(gen / "bf16a") == files_of(gen / "bf16b")
    s = json.loads((gen / "bf16a" / "summary.json").read_text())
    assert s["precision"] == "bf16" and s["settings"]["precision"] == "bf16"
    with pytest.raises(InputError, match="generate.precision='bf16'"):  # never mixed in one folder
        G.run_generate(with_(cfg_path, "generate.name=bf16a", "generate.precision=fp32"))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("table", [True, False])
def test_stepper_matches_the_model_step(cell, layers, table, monkeypatch):
    """The stepper's rearranged arithmetic (input table or not, in-place cell, temperature and bans folded
    into the output layer) gives the model's own logits and state over several carried steps."""
    monkeypatch.setattr(ST, "TABLE_LIMIT_BYTES", 1 << 30 if table else 0)
    torch.manual_seed(0)
    model = RecurrentLM(50, ModelConfig(cell=cell, hidden=32, embedding=16, layers=layers)).eval()
    st = ST.Stepper(model, temperature=0.7, banned=[3])
    assert (st.table is not None) == table
    keep = [i for i in range(50) if i != 3]
    tok = torch.randint(0, 50, (6,))
    ref_state = state = None
    for _ in range(5):
        ref, ref_state = model.step(tok, ref_state)
        got, state = st(tok, state)
        assert bool((got[:, 3] == float("-inf")).all())
        assert torch.allclose(got[:, keep], ref[:, keep] / 0.7, atol=1e-5)
        tok = ref.argmax(-1)
    for want, have in zip(ref_state if cell == "lstm" else [ref_state], state if cell == "lstm" else [state]):
        assert torch.allclose(want, have, atol=1e-6)


@pytest.mark.parametrize("cell,layers", [("lstm", 1), ("gru", 1), ("rnn", 1), ("lstm", 2), ("gru", 2)])
def test_bf16_products_stay_close_and_keep_the_state_fp32(cell, layers):
    """bf16 matrix products (autocast's rule): bf16 logits, fp32 state, close to the fp32 stepper's over
    carried steps; the first step from a zero state only reads the fp32 input table, so its first layer's
    state is exactly the fp32 one."""
    torch.manual_seed(0)
    model = RecurrentLM(50, ModelConfig(cell=cell, hidden=32, embedding=16, layers=layers)).eval()
    f32, b16 = ST.Stepper(model), ST.Stepper(model, precision="bf16")
    assert b16.head_w_t.dtype == torch.bfloat16 and b16.table.dtype == torch.float32
    tok = torch.randint(0, 50, (5,))
    ref, ref_state = f32(tok, None)
    got, state = b16(tok, None)
    first = state[0] if cell == "lstm" else state
    assert torch.equal(first[0], (ref_state[0] if cell == "lstm" else ref_state)[0])  # layer 0
    for _ in range(6):
        assert got.dtype == torch.bfloat16 and first.dtype == torch.float32
        assert torch.allclose(got.float(), ref, atol=0.05), (got.float() - ref).abs().max()
        tok = ref.argmax(-1)
        ref, ref_state = f32(tok, ref_state)
        got, state = b16(tok, state)
        first = state[0] if cell == "lstm" else state
    assert model.head.weight.dtype == torch.float32  # the model itself is untouched


def kept_set(probs: torch.Tensor, k: int, p: float) -> set:
    """The reference: sort, keep the top k (ties kept), then the smallest prefix of the renormalised rest
    reaching p (ties with its last token kept)."""
    w = probs.double().clone()
    if k:
        w[w < w.sort(descending=True).values[k - 1]] = 0
    if p:
        vals = w.sort(descending=True).values
        cum = vals.cumsum(0)
        tau = vals[int(torch.searchsorted(cum, p * cum[-1]))]
        w[w < tau] = 0
    return set(torch.nonzero(w > 0)[:, 0].tolist())


@pytest.mark.slow
@pytest.mark.parametrize("k,p", [(0, 0.9), (0, 0.5), (40, 0.0), (20, 0.8), (1, 0.0), (0, 1e-6)])
def test_rejection_truncation_draws_from_the_truncated_distribution(k, p):
    """top_k / top_p by rejection: never a token outside the kept set (sort-based reference, ties kept),
    and the kept tokens in their renormalised proportions; rows are independent of their batch."""
    g = torch.Generator().manual_seed(k * 100 + int(p * 10))
    V, n = 1500, 20000  # rows longer than 1024: the two-level inverse CDF
    rows = torch.stack(
        [
            torch.randn(V, generator=g) * 2,  # broad
            torch.randn(V, generator=g) * 6,  # peaked
            torch.cat([torch.full((10,), 3.0), torch.randn(V - 10, generator=g)]),
        ]
    )  # ties on top
    rows[:, 7] = float("-inf")  # banned
    for row in rows:
        probs = torch.softmax(row, -1)
        kept = kept_set(probs, k, p if p < 1 else 0.0)
        u = torch.rand(n, S.ROUNDS, generator=g)
        picks = S.sample_scaled(row.expand(n, -1), u, k, p if p else 1.0)
        assert set(picks.tolist()) <= kept
        ids = torch.tensor(sorted(kept))
        want = probs[ids] / probs[ids].sum()
        freq = torch.bincount(picks, minlength=V)[ids].float() / n
        assert (freq - want).abs().max() < 4 * float(want.max() / n) ** 0.5 + 1e-3
        if not (k and p):  # the sort-based path (a GPU's; the CPU's last resort) draws the same distribution
            picks = S._sorted_fallback(probs.expand(n, -1), u[:, 0], k, p)
            freq = torch.bincount(picks, minlength=V)[ids].float() / n
            assert set(picks.tolist()) <= kept
            assert (freq - want).abs().max() < 4 * float(want.max() / n) ** 0.5 + 1e-3
        # one uniform per token: the rare rows rejected once settle by a sort; still only kept tokens
        assert set(S.sample_scaled(row.expand(2000, -1), u[:2000, 0], k, p if p else 1.0).tolist()) <= kept
    # a row's choice does not depend on the other rows of the batch
    u = torch.rand(3, S.ROUNDS, generator=g)
    together = S.sample_scaled(rows, u, k, p if p else 1.0)
    alone = [S.sample_scaled(rows[i : i + 1], u[i : i + 1], k, p if p else 1.0).item() for i in range(3)]
    assert together.tolist() == alone


def test_greedy_is_deterministic_and_topk_restricts(tmp_path):
    cfg_path, cfg = prepared_run(tmp_path)
    G.run_generate(with_(cfg_path, "generate.name=g1", "generate.temperature=0"))
    G.run_generate(with_(cfg_path, "generate.name=g2", "generate.temperature=0", "generate.seed=9"))
    gen = tmp_path / "scratch" / "tiny" / "generated"
    g1 = files_of(gen / "g1")
    assert g1 == files_of(gen / "g2")  # greedy does not use the seed
    assert len(set(g1.values())) == 1  # and every recipe from the same start is the same


def test_killed_job_leaves_no_half_file_and_rerun_completes_identically(tmp_path, monkeypatch):
    cfg_path, cfg = prepared_run(tmp_path)
    G.run_generate(with_(cfg_path, "generate.name=ref"))
    gen = tmp_path / "scratch" / "tiny" / "generated"

    real_write = F.atomic_write_text
    calls = {"n": 0}

    def dying_write(path, text):
        calls["n"] += 1
        if calls["n"] == 4:  # die in the middle of the fourth recipe's write
            Path(path).parent.joinpath(f".{Path(path).name}.junk.tmp").write_text(text[:5])
            raise KeyboardInterrupt
        return real_write(path, text)

    monkeypatch.setattr(F, "atomic_write_text", dying_write)
    with pytest.raises(KeyboardInterrupt):
        G.run_generate(with_(cfg_path, "generate.name=kill"))
    monkeypatch.setattr(F, "atomic_write_text", real_write)
    out = gen / "kill"
    assert len(files_of(out)) == 3  # the three written before the kill, whole
    assert not (out / "index.jsonl").exists() and not (out / "summary.json").exists()
    assert not G.generation_done(with_(cfg_path, "generate.name=kill"))
    # a torn last index line (killed in the middle of an append) is ignored and cut off
    with open(out / "index-00001-of-00001.jsonl", "a") as f:
        f.write('{"recipe": 4, "fil')
    assert list(out.glob(".recipe-*.tmp"))
    r = G.run_generate(with_(cfg_path, "generate.name=kill"))
    assert r.skipped == 3 and r.written == 4 and r.complete
    assert not list(out.glob(".recipe-*.tmp"))  # the dead writer's temporary is cleaned up
    assert files_of(out) == files_of(gen / "ref")
    assert (out / "index.jsonl").read_bytes() == (gen / "ref" / "index.jsonl").read_bytes()
    lines = (out / "index-00001-of-00001.jsonl").read_text().splitlines()
    assert len(lines) == 7 and all(json.loads(x) for x in lines)
    # a recipe file lost from disk is written again (the index line alone does not count)
    (out / "recipe-00002.txt").unlink()
    r = G.run_generate(with_(cfg_path, "generate.name=kill"))
    assert r.written == 1 and files_of(out) == files_of(gen / "ref")
    r = G.run_generate(with_(cfg_path, "generate.name=kill"))
    assert r.written == 0 and r.skipped == 7 and r.complete


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_matches_uninterrupted(tmp_path):
    """A real process killed with SIGKILL while writing: no half file, and the rerun completes the set
    exactly as an uninterrupted run writes it."""
    cfg_path, cfg = prepared_run(
        tmp_path, generate={"num_recipes": 400, "batch_size": 2, "max_tokens": 40, "quality_sample": 0}
    )
    out = tmp_path / "scratch" / "tiny" / "generated" / "default"
    # one describing worker even on a one-CPU machine (where the default is none): it must die with the job
    env = {"HPCRNN_QUALITY_WORKERS": "1"}
    p = start_module("hpcrnn.generate", str(cfg_path), env=env, stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("recipe-*.txt"))) < 20 and p.poll() is None:
        time.sleep(0.02)
    workers = _children(p.pid)
    assert workers, "the job described its recipes in worker processes"  # else this checks nothing
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, p.stderr.read()[-2000:]  # killed, not finished
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.05)
    assert not [w for w in workers if _alive(w)], "a worker of the killed job survived it"
    before = files_of(out)
    assert 0 < len(before) < 400
    for _name, data in before.items():  # every file present is whole: it ends its last line
        assert data.endswith(b"\n")
    r = G.run_generate(cfg)
    assert r.complete and r.skipped >= len(before) - 1 and r.written + r.skipped == 400
    G.run_generate(with_(cfg_path, "generate.name=ref"))
    assert files_of(out) == files_of(out.parent / "ref")


@pytest.mark.slow
def test_concurrent_shard_processes(tmp_path):
    """Three shard tasks at once (as a job array runs them): disjoint recipes, one complete index."""
    cfg_path, cfg = prepared_run(tmp_path, generate={"num_recipes": 12})
    procs = [start_module("hpcrnn.generate", str(cfg_path), "--shard", str(s), "--num-shards", "3") for s in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    out = tmp_path / "scratch" / "tiny" / "generated" / "default"
    shard_sets = [
        {json.loads(x)["recipe"] for x in (out / f"index-0000{s}-of-00003.jsonl").read_text().splitlines()}
        for s in (1, 2, 3)
    ]
    assert shard_sets == [set(range(s, 13, 3)) for s in (1, 2, 3)]
    assert G.generation_done(cfg)  # whichever finished last merged (or several did, with the same bytes)
    G.run_generate(with_(cfg_path, "generate.name=one"))
    assert files_of(out) == files_of(out.parent / "one")
    assert (out / "index.jsonl").read_bytes() == (out.parent / "one" / "index.jsonl").read_bytes()


def test_prompts(tmp_path):
    cfg_path, cfg = prepared_run(tmp_path)
    gen = tmp_path / "scratch" / "tiny" / "generated"
    G.run_generate(with_(cfg_path, "generate.name=title", "generate.prompt=apple pie"))
    for text in files_of(gen / "title").values():
        assert text.decode().startswith("Title: Apple Pie\n")
    G.run_generate(with_(cfg_path, "generate.name=text", "generate.prompt=Title: fig jam\nCategories: soups"))
    for text in files_of(gen / "text").values():
        assert text.decode().startswith("Title: Fig Jam\nCategories: Soups")
    cfg_r = with_(cfg_path, "generate.name=random", "generate.prompt=random")
    G.run_generate(cfg_r)
    from hpcrnn.data.corpus import open_corpus

    c = open_corpus(cfg.h5_path)
    lo, hi = c.split_ranges["test"]
    test_text = CorpusView.open(cfg.h5_path)
    for rec in map(json.loads, (gen / "random" / "index.jsonl").read_text().splitlines()):
        assert rec["prompt_tokens"] == 12  # data.window
        job, hidden = P.make_job(rec["recipe"], cfg_r, test_text, P.plan_prompt(cfg_r, test_text))
        assert hidden == 0
        assert any((c.tokens()[lo + k : lo + k + 12] == job.prompt).all() for k in range(hi - lo - 11))


def test_generation_done_and_changed_settings(tmp_path):
    cfg_path, cfg = prepared_run(tmp_path)
    assert not G.generation_done(cfg)
    G.run_generate(cfg)
    assert G.generation_done(cfg)
    assert not G.generation_done(with_(cfg_path, "generate.temperature=1.0"))
    assert not G.generation_done(with_(cfg_path, "generate.num_recipes=9"))
    hot = with_(cfg_path, "generate.temperature=1.0")  # the default name: a folder named after the settings
    assert G.run_generate(hot).out_dir.name == "t1.0" and G.generation_done(hot) and G.generation_done(cfg)
    r = G.run_generate(with_(cfg_path, "generate.num_recipes=9"))  # more recipes: only the new ones
    assert r.written == 2 and r.skipped == 7 and r.complete
    # a newer checkpoint: the recipes here belong to step 5; continuing needs generate.checkpoint=5
    nine = with_(cfg_path, "generate.num_recipes=9")
    assert G.generation_done(nine)
    save_random_checkpoint(cfg, step=9, seed=3)
    assert not G.generation_done(nine)
    with pytest.raises(InputError, match="checkpoint step 5.*generate.checkpoint=5"):
        G.run_generate(nine)
    assert G.generation_done(with_(cfg_path, "generate.num_recipes=9", "generate.checkpoint=5"))
    r = G.run_generate(with_(cfg_path, "generate.name=new"))
    assert r.checkpoint_step == 9


def one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.mark.slow
def test_bad_input_one_line_errors(tmp_path):
    cfg_path, cfg = prepared_run(tmp_path, checkpoint=False)
    gen = tmp_path / "scratch" / "tiny" / "generated"
    one_line_error(run_module("hpcrnn.generate", str(cfg_path)), "no complete checkpoint")
    save_random_checkpoint(cfg, vocab_hash="f" * 64)
    one_line_error(run_module("hpcrnn.generate", str(cfg_path)), "vocabulary", "does not match", "ffffffffffff")
    ckpt_dir = cfg.checkpoint_dir
    import shutil

    shutil.rmtree(ckpt_dir)
    save_random_checkpoint(cfg)
    one_line_error(
        run_module("hpcrnn.generate", str(cfg_path), "generate.prompt=zzqx qqxz"), "generate.prompt", "unknown"
    )
    for bad in ("0", "1.5", "-0.1"):
        one_line_error(run_module("hpcrnn.generate", str(cfg_path), f"generate.top_p={bad}"), "generate.top_p")
    one_line_error(run_module("hpcrnn.generate", str(cfg_path), "--shard", "3", "--num-shards", "3"), "shard")
    one_line_error(run_module("hpcrnn.generate", str(cfg_path), "generate.checkpoint=77"), "step-00000077")
    assert not gen.exists()  # nothing written by any refused run
    with pytest.raises(ConfigError):
        G.run_generate(cfg, shard=-1, num_shards=2)
    r = run_module("hpcrnn.generate", str(cfg_path))
    assert r.returncode == 0, r.stderr
    assert "tokens/s" in r.stdout


@pytest.mark.slow
def test_end_to_end_preprocess_train_generate(tmp_path):
    """The real pipeline on a tiny corpus: the trained model learns the layout well enough that most
    recipes have a title, ingredients and instructions."""
    cfg_path = write_config(
        tmp_path,
        train={"max_steps": 300, "batch_size": 16, "lr": 0.02, "checkpoint_every": 300, "eval_every": 300},
        model={"hidden": 64, "embedding": 32},
        generate={"num_recipes": 12, "batch_size": 6, "max_tokens": 120, "temperature": 0.5},
    )
    for stage in ("preprocess", "train", "generate"):
        r = run_module(f"hpcrnn.{stage}", str(cfg_path))
        assert r.returncode == 0, (stage, r.stderr[-2000:])
    out = tmp_path / "scratch" / "tiny" / "generated" / "default"
    s = json.loads((out / "summary.json").read_text())
    assert s["checkpoint"]["step"] == 300
    g = s["generated"]
    assert g["recipes"] == 12 and g["stopped_at_end_of_recipe"] >= 0.5
    assert g["structure"] >= 0.5 and g["has_title"] == 1.0
    assert G.generation_done(load_config(cfg_path))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_takes_on_glibc():
    """The generation job asks malloc to keep freed blocks (hpcrnn/memory.py); on Linux with glibc the
    settings must take, or every decoding step pays page faults again."""
    import platform

    from hpcrnn.process import keep_freed_memory

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert keep_freed_memory() is True
