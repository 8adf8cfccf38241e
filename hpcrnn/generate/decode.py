"""Continuous batched decoding: many recipes through one batch of slots (``generate_batched``).

A fixed number of *slots* each hold one recipe; every step feeds one token per slot through
:class:`hpcrnn.generate.stepper.Stepper` (carrying the recurrent state, rather than re-running a window of
past words per new word) and picks the next tokens with :mod:`hpcrnn.generate.sampling`. A slot whose
recipe ends (stop token or ``max_tokens``) takes the next recipe at once (its state zeroed), so the batch
stays full until the queue runs dry. With a :class:`hpcrnn.generate.constrain.Lexicon` (``generate.listed_bias``
/ ``unlisted_bias``, ``prompt_ingredients``), each slot's bias is added to its logits before sampling; without
one, nothing of it runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hpcrnn.generate.constrain import Lexicon, Tracker
from hpcrnn.generate.sampling import greedy, sample_scaled
from hpcrnn.generate.stepper import Stepper


@dataclass
class Job:
    key: int
    prompt: list[int]  # fed first (non-empty); its sampled outputs are ignored
    # float32 [max_tokens] or [max_tokens, rounds]: the uniforms of each generated token (one per draw,
    # see hpcrnn.generate.sampling); None for greedy
    uniforms: np.ndarray | None
    close: bool = False  # an ingredient block the prompt ends with is the whole list (constrain.Tracker)


@dataclass(frozen=True)
class _Rule:
    """How every slot decodes."""

    max_tokens: int
    stop_id: int
    top_k: int
    top_p: float
    greedy: bool
    rounds: int  # uniforms per generated token


@dataclass
class _Batch:
    """The slots, one row each, on the device. A slot feeds its prompt, then what it sampled; it is done
    at the stop token or ``max_tokens``, and its row is refilled or dropped when the host looks."""

    keys: list[int | None]  # the job of each slot; None: done, and no job was left for it
    prompt: torch.Tensor  # [b, P] long, zero-padded
    plen: torch.Tensor  # [b] prompt lengths
    uni: torch.Tensor  # [b, max_tokens, rounds] float32; [1, ...] and unused when greedy
    pos: torch.Tensor  # [b] steps taken by the slot's job
    ngen: torch.Tensor  # [b] tokens generated
    gen: torch.Tensor  # [b, max_tokens] the generated tokens
    done: torch.Tensor  # [b] bool
    cur: torch.Tensor  # [b] the tokens fed at the next step
    state: Any = None  # the recurrent state (nn.LSTM's layout)
    work: torch.Tensor | None = None  # the sampler's float32 buffer, reused while the batch keeps its shape
    con: Tracker | None = None  # the slots' bias (lexically constrained decoding); None: off


class _Queue:
    """The jobs not started yet; once empty, never asked again."""

    def __init__(self, jobs: Iterable[Job]):
        self.it, self.empty = iter(jobs), False

    def next(self) -> Job | None:
        job = None if self.empty else next(self.it, None)
        self.empty = job is None
        if job is not None and not job.prompt:
            raise ValueError("a job needs a non-empty prompt")
        return job


def _uniforms(job: Job, max_tokens: int, rounds: int) -> torch.Tensor:
    u = np.asarray(job.uniforms, dtype=np.float32)
    u = u.reshape(len(u), -1)[:max_tokens, :rounds]
    if u.shape != (max_tokens, rounds):
        raise ValueError(f"job {job.key}: uniforms of shape {u.shape}, need ({max_tokens}, {rounds})")
    return torch.from_numpy(np.ascontiguousarray(u))


def _map_state(state, fn):
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(fn(s) for s in state)
    return fn(state)


def generate_batched(
    model: torch.nn.Module,
    jobs: Iterable[Job],
    *,
    batch_size: int,
    max_tokens: int,
    stop_id: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    banned: Sequence[int] = (),
    device="cpu",
    precision: str = "fp32",
    sync_every: int | None = None,
    memory: int | None = None,
    lexicon: Lexicon | None = None,
) -> Iterator[tuple[int, list[int], bool]]:
    """Continuous batched generation with a RecurrentLM. Yields ``(key, generated ids without the stop
    token, stopped at the stop token)`` as recipes finish (not in job order).

    Every slot holds one job. Each step feeds one token per slot: the next prompt token while the prompt
    lasts, then the token sampled at the previous step. The host looks at the slots every ``sync_every``
    steps (1 on CPU, where looking is free; 8 on a GPU, where it costs a synchronisation); a slot that
    finished in between idles until then. Finished slots take the next job; when none is left the batch
    shrinks to the live slots. ``precision``: that of the matrix products (see :mod:`hpcrnn.generate.stepper`).
    ``memory``: the most tokens one job reads (its prompt and ``max_tokens``): a pointer's ring is no longer.
    ``lexicon``: the tables of lexically constrained decoding (:mod:`hpcrnn.generate.constrain`); None: off.
    """
    device = torch.device(device)
    if sync_every is None:
        sync_every = 1 if device.type == "cpu" else 8
    step_fn = Stepper(model, precision=precision, temperature=temperature, banned=banned, device=device, memory=memory)
    queue = _Queue(jobs)
    first: list[Job] = []
    while len(first) < batch_size and (job := queue.next()) is not None:
        first.append(job)
    if not first:
        return
    is_greedy = temperature == 0.0
    # uniforms per generated token: as many as the first job brings (one per draw; see hpcrnn.generate.sampling)
    rounds = 1 if is_greedy else int(np.asarray(first[0].uniforms).reshape(len(first[0].uniforms), -1).shape[1])
    rule = _Rule(max_tokens, stop_id, top_k, top_p, is_greedy, rounds)
    batch = _start(first, rule, device, lexicon)
    step = 0
    while True:
        # inference mode per step, not around the loop: a generator suspended inside the block would leave
        # the consumer running in inference mode
        with torch.inference_mode():
            _step(batch, step_fn, rule)
            step += 1
            if step % sync_every:
                continue
            finished = _turn_over(batch, queue, rule)
            if not finished:
                continue
        yield from finished
        if all(k is None for k in batch.keys):
            return


def _start(first: list[Job], rule: _Rule, device: torch.device, lexicon: Lexicon | None) -> _Batch:
    """The batch of the first jobs, one slot each (and their tracker, with a ``lexicon``)."""
    b, P = len(first), max(len(j.prompt) for j in first)
    prompt = torch.zeros(b, P, dtype=torch.long)
    plen = torch.zeros(b, dtype=torch.long)
    uni = torch.zeros(1 if rule.greedy else b, rule.max_tokens, rule.rounds, dtype=torch.float32)
    for r, j in enumerate(first):
        prompt[r, : len(j.prompt)] = torch.tensor(j.prompt, dtype=torch.long)
        plen[r] = len(j.prompt)
        if not rule.greedy:
            uni[r] = _uniforms(j, rule.max_tokens, rule.rounds)
    prompt, plen, uni = prompt.to(device), plen.to(device), uni.to(device)
    zeros = torch.zeros(b, dtype=torch.long, device=device)
    batch = _Batch(
        keys=[j.key for j in first],
        prompt=prompt,
        plen=plen,
        uni=uni,
        pos=zeros,
        ngen=zeros.clone(),
        gen=torch.zeros(b, rule.max_tokens, dtype=torch.long, device=device),
        done=torch.zeros(b, dtype=torch.bool, device=device),
        cur=prompt[:, 0].clone(),
    )
    if lexicon is not None:
        batch.con = Tracker(lexicon, b, device)
        for r, j in enumerate(first):
            batch.con.begin(r, j.prompt, j.close)
    return batch


def _step(batch: _Batch, step_fn: Stepper, rule: _Rule) -> None:
    """One token through every slot: sample, record what the live slots generate, choose the next inputs."""
    t = batch
    logits, t.state = step_fn(t.cur, t.state)  # already divided by the temperature, banned -inf
    gidx = t.ngen.clamp(max=rule.max_tokens - 1)
    if t.work is None or t.work.shape != logits.shape:
        t.work = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
    if t.con is not None:
        logits = t.con.add(logits, t.work)  # float32, in the sampler's buffer (which it may overwrite)
    if rule.greedy:
        nxt = greedy(logits, t.work)
    else:
        u = t.uni[torch.arange(len(gidx), device=gidx.device), gidx]  # [b, rounds]
        nxt = sample_scaled(logits, u, rule.top_k, rule.top_p, work=t.work)
    forcing = (t.pos + 1) < t.plen
    live = ~forcing & ~t.done
    old = t.gen.gather(1, gidx[:, None])[:, 0]
    t.gen.scatter_(1, gidx[:, None], torch.where(live, nxt, old)[:, None])
    t.ngen += live.long()
    t.done |= live & ((nxt == rule.stop_id) | (t.ngen >= rule.max_tokens))
    pnext = t.prompt.gather(1, (t.pos + 1).clamp(max=t.prompt.shape[1] - 1)[:, None])[:, 0]
    t.cur = torch.where(forcing, pnext, nxt)
    t.pos += 1
    if t.con is not None:
        t.con.after(t.gen, t.ngen, nxt, live)


def _turn_over(batch: _Batch, queue: _Queue, rule: _Rule) -> list[tuple[int, list[int], bool]]:
    """The host's look at the slots: collect the finished recipes, give their slots the next jobs, and
    shrink the batch to the live slots when no job is left for some."""
    rows = [r for r in batch.done.nonzero()[:, 0].tolist() if batch.keys[r] is not None]
    if not rows:
        return []
    sel = torch.tensor(rows, dtype=torch.long, device=batch.gen.device)
    host_gen = batch.gen.index_select(0, sel).cpu().numpy()
    host_n = batch.ngen.index_select(0, sel).cpu().tolist()
    finished, dead = [], False
    for k, r in enumerate(rows):
        toks = host_gen[k, : host_n[k]].tolist()
        stopped = bool(toks) and toks[-1] == rule.stop_id
        if stopped:
            toks.pop()
        finished.append((batch.keys[r], toks, stopped))
        job = queue.next()
        if job is None:
            batch.keys[r] = None
            dead = True
        else:
            _refill(batch, r, job, rule)
    keep = [r for r, key in enumerate(batch.keys) if key is not None]
    if dead and keep:
        _shrink(batch, keep, rule)
    return finished


def _refill(batch: _Batch, r: int, job: Job, rule: _Rule) -> None:
    """Slot ``r`` starts ``job`` from a zero state."""
    t, device = batch, batch.prompt.device
    t.keys[r] = job.key
    if len(job.prompt) > t.prompt.shape[1]:  # widen the prompt buffer for a longer prompt
        t.prompt = torch.nn.functional.pad(t.prompt, (0, len(job.prompt) - t.prompt.shape[1]))
    t.prompt[r].zero_()
    t.prompt[r, : len(job.prompt)] = torch.tensor(job.prompt, dtype=torch.long, device=device)
    t.plen[r] = len(job.prompt)
    if not rule.greedy:
        t.uni[r] = _uniforms(job, rule.max_tokens, rule.rounds).to(device)
    t.pos[r] = 0
    t.ngen[r] = 0
    t.done[r] = False
    t.cur[r] = t.prompt[r, 0]
    if t.con is not None:
        t.con.begin(r, job.prompt, job.close)

    def zero(s):
        s[:, r] = 0
        return s

    t.state = _map_state(t.state, zero)


def _shrink(batch: _Batch, keep: list[int], rule: _Rule) -> None:
    """Keep only the slots ``keep`` (no job is left for the others)."""
    t = batch
    ks = torch.tensor(keep, dtype=torch.long, device=t.prompt.device)
    t.keys = [t.keys[r] for r in keep]
    t.prompt, t.plen, t.pos, t.ngen, t.gen, t.done, t.cur = (
        x.index_select(0, ks) for x in (t.prompt, t.plen, t.pos, t.ngen, t.gen, t.done, t.cur)
    )
    if not rule.greedy:
        t.uni = t.uni.index_select(0, ks)
    if t.con is not None:
        t.con.keep(ks, keep)
    t.state = _map_state(t.state, lambda s: s.index_select(1, ks).contiguous())
