"""Continuous batched decoding: many recipes through one batch of slots (``generate_batched``).

The lecture generated one recipe at a time and re-ran its whole 50-word window through the network for
every new word. Here a fixed number of *slots* each hold one recipe; every step feeds one token per slot
through :class:`hpcrnn.generate.stepper.Stepper` (carrying the recurrent state) and picks the next tokens with
:mod:`hpcrnn.generate.sampling`. A slot whose recipe ends (stop token or ``max_tokens``) takes the next recipe at
once (its state zeroed), so the batch stays full until the queue runs dry.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hpcrnn.generate.sampling import greedy, sample_scaled
from hpcrnn.generate.stepper import Stepper


@dataclass
class Job:
    key: int
    prompt: list[int]  # fed first (non-empty); its sampled outputs are ignored
    # float32 [max_tokens] or [max_tokens, rounds]: the uniforms of each generated token (one per draw,
    # see hpcrnn.sampling); None for greedy
    uniforms: np.ndarray | None


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
) -> Iterator[tuple[int, list[int], bool]]:
    """Continuous batched generation with a RecurrentLM. Yields ``(key, generated ids without the stop
    token, stopped at the stop token)`` as recipes finish (not in job order).

    Every slot holds one job. Each step feeds one token per slot: the next prompt token while the prompt
    lasts, then the token sampled at the previous step. The host looks at the slots every ``sync_every``
    steps (1 on CPU, where looking is free; 8 on a GPU, where it costs a synchronisation); a slot that
    finished in between idles until then. Finished slots take the next job; when none is left the batch
    shrinks to the live slots. ``precision``: that of the matrix products (see :mod:`hpcrnn.generate.stepper`).
    """
    device = torch.device(device)
    if sync_every is None:
        sync_every = 1 if device.type == "cpu" else 8
    jobs_it = iter(jobs)
    is_greedy = temperature == 0.0
    step_fn = Stepper(model, precision=precision, temperature=temperature, banned=banned, device=device)

    first = []
    for job in jobs_it:
        first.append(job)
        if len(first) == batch_size:
            break
    if not first:
        return
    b = len(first)
    P = max(len(j.prompt) for j in first)
    keys: list[int | None] = [j.key for j in first]
    prompt = torch.zeros(b, P, dtype=torch.long)
    plen = torch.zeros(b, dtype=torch.long)
    # uniforms per generated token: as many as the first job brings (one per draw; see hpcrnn.sampling)
    rounds = 1 if is_greedy else int(np.asarray(first[0].uniforms).reshape(len(first[0].uniforms), -1).shape[1])
    uni = torch.zeros(b if not is_greedy else 1, max_tokens, rounds, dtype=torch.float32)
    for r, j in enumerate(first):
        if not j.prompt:
            raise ValueError("a job needs a non-empty prompt")
        prompt[r, : len(j.prompt)] = torch.tensor(j.prompt, dtype=torch.long)
        plen[r] = len(j.prompt)
        if not is_greedy:
            uni[r] = _uniforms(j, max_tokens, rounds)
    prompt, plen, uni = prompt.to(device), plen.to(device), uni.to(device)
    pos = torch.zeros(b, dtype=torch.long, device=device)
    ngen = torch.zeros(b, dtype=torch.long, device=device)
    gen = torch.zeros(b, max_tokens, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    cur = prompt[:, 0].clone()
    state = None
    work = None  # the sampler's float32 buffer, reused while the batch keeps its shape
    exhausted = False
    step = 0

    while True:
        finished = []
        # inference mode per step, not around the loop: a generator suspended inside the block would leave
        # the consumer running in inference mode
        with torch.inference_mode():
            logits, state = step_fn(cur, state)  # already divided by the temperature, banned -inf
            gidx = ngen.clamp(max=max_tokens - 1)
            if work is None or work.shape != logits.shape:
                work = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)
            if is_greedy:
                nxt = greedy(logits, work)
            else:
                u = uni[torch.arange(len(gidx), device=device), gidx]  # [b, rounds]
                nxt = sample_scaled(logits, u, top_k, top_p, work=work)
            forcing = (pos + 1) < plen
            live = ~forcing & ~done
            old = gen.gather(1, gidx[:, None])[:, 0]
            gen.scatter_(1, gidx[:, None], torch.where(live, nxt, old)[:, None])
            ngen += live.long()
            done |= live & ((nxt == stop_id) | (ngen >= max_tokens))
            pnext = prompt.gather(1, (pos + 1).clamp(max=P - 1)[:, None])[:, 0]
            cur = torch.where(forcing, pnext, nxt)
            pos += 1
            step += 1
            if step % sync_every:
                continue
            rows = [r for r in done.nonzero()[:, 0].tolist() if keys[r] is not None]
            if not rows:
                continue
            sel = torch.tensor(rows, dtype=torch.long, device=device)
            host_gen = gen.index_select(0, sel).cpu().numpy()
            host_n = ngen.index_select(0, sel).cpu().tolist()
            dead = []
            for k, r in enumerate(rows):
                toks = host_gen[k, : host_n[k]].tolist()
                stopped = bool(toks) and toks[-1] == stop_id
                if stopped:
                    toks.pop()
                finished.append((keys[r], toks, stopped))
                job = None if exhausted else next(jobs_it, None)
                if job is None:
                    exhausted = True
                    keys[r] = None
                    dead.append(r)
                    continue
                if not job.prompt:
                    raise ValueError("a job needs a non-empty prompt")
                keys[r] = job.key
                if len(job.prompt) > P:  # widen the prompt buffer for a longer prompt
                    prompt = torch.nn.functional.pad(prompt, (0, len(job.prompt) - P))
                    P = len(job.prompt)
                prompt[r].zero_()
                prompt[r, : len(job.prompt)] = torch.tensor(job.prompt, dtype=torch.long, device=device)
                plen[r] = len(job.prompt)
                if not is_greedy:
                    uni[r] = _uniforms(job, max_tokens, rounds).to(device)
                pos[r] = 0
                ngen[r] = 0
                done[r] = False
                cur[r] = prompt[r, 0]

                def zero(s, r=r):
                    s[:, r] = 0
                    return s

                state = _map_state(state, zero)
            keep = [r for r in range(len(keys)) if keys[r] is not None]
            if dead and keep:  # no job left for some slots: shrink the batch to the live ones
                ks = torch.tensor(keep, dtype=torch.long, device=device)
                keys = [keys[r] for r in keep]
                prompt, plen, pos, ngen, gen, done, cur = (
                    t.index_select(0, ks) for t in (prompt, plen, pos, ngen, gen, done, cur)
                )
                if not is_greedy:
                    uni = uni.index_select(0, ks)
                state = _map_state(state, lambda s: s.index_select(1, ks).contiguous())
        yield from finished
        if not keep:
            return
