"""The pointer's memory in generation: one preallocated ring per slot, never copied when slots come and go.

A pointer model (hpcrnn/model/pointer.py) generating in a batch of slots remembers, per slot, the
keys (its last-layer outputs, or their projection: ``model.pointer_key``) and the tokens of the newest
``memory`` positions of its recipe: ``[B, M, D]``, a gigabyte for 1,000 slots x 512 places x 512 floats.
The decoder (hpcrnn/generate/decode.py) treats every part of the state alike: it zeroes a slot's row when
the slot takes a new recipe and keeps the rows of the live slots (``index_select`` on dim 1) when the batch
shrinks. Done to the keys themselves, every shrink copied the whole ring into freshly mapped pages (the
kernel's time, page faults, was half the job's).

So the keys and tokens live here, allocated once, and the state carries only two small tensors per slot
(rows on dim 1, like ``(h, c)``): ``slot [1, B]``, the ring row a slot uses (plus 1; 0: a new recipe, any
free row will do), and ``count [1, B]``, how many tokens it has read (0 empties its memory: a place is
filled iff its index is below the count). Rows in use are always ``[0, B)``: a refilled slot takes the row
of the recipe it replaces; after a shrink the live rows above B move into the freed rows below it, one row
copy per finished recipe at most.

A ring serves one batch (one state) at a time: the Stepper makes a new one for every ``zero_state``.
Its projections (the query; the key, if any) take the stepper's product precision, as under autocast:
bf16 inputs summed in fp32; the keys, the scores and the mixture stay fp32.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from hpcrnn.model.pointer import Pointer
from hpcrnn.model.precision import product

MIN_SLOTS_A_THREAD = 32  # fewer: a thread's hand-off costs more than its share of the scan
_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``workers`` threads for the scan (made once; its threads idle between steps)."""
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="hpcrnn-ring")
    return _POOLS[workers]


os.register_at_fork(after_in_child=_POOLS.clear)  # a forked child has none of its parent's threads


class Ring:
    def __init__(self, pointer: Pointer, batch: int, device: torch.device, dtype: torch.dtype = torch.float32):
        self.pointer = pointer
        low = dtype != torch.float32  # transposed weights in the product precision (bf16)
        self.query_w = pointer.query.weight.detach().t().to(dtype).contiguous() if low else None
        self.key_w = pointer.key.weight.detach().t().to(dtype).contiguous() if low and pointer.key else None
        self.memory = M = pointer.memory
        # never read beyond a slot's count (a CPU scores each slot's filled places, a GPU masks the rest), so
        # not zeroed: a gigabyte's pages are touched only as recipes fill them
        self.keys = torch.empty(batch, M, pointer.width, device=device)
        self.toks = torch.zeros(batch, M, dtype=torch.long, device=device)
        self.rows = batch  # rows in use: [0, rows)
        self.in_order = True  # slot i uses row i (until the first shrink)
        self.cpu = torch.device(device).type == "cpu"
        self._mass: torch.Tensor | None = None  # [B, V] zeros between steps (see step)

    def state(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        slot = torch.arange(1, batch + 1, device=self.keys.device)[None]
        return slot, torch.zeros(1, batch, dtype=torch.long, device=self.keys.device)

    def place(self, slot: torch.Tensor) -> torch.Tensor:
        """The ring row of every slot [B] after the decoder's changes to the rows (updates ``slot``)."""
        s = slot[0]
        if len(s) != self.rows:
            self._compact(s)
        elif not self.cpu or not bool((s > 0).all()):
            self._take_free_rows(s)
        return s - 1

    def _take_free_rows(self, s: torch.Tensor) -> None:
        """Slots that took a new recipe (0) take the rows no live slot uses (those of the recipes they
        replaced), on the device without a host read."""
        live = s > 0
        used = torch.zeros(len(s), dtype=torch.long, device=s.device)
        used.scatter_add_(0, (s - 1).clamp_min(0), live.long())
        free = torch.argsort((used > 0).int(), stable=True)  # the free rows first
        k = (~live).long().cumsum(0).sub_(1).clamp_min_(0)
        s.copy_(torch.where(live, s, free[k] + 1))  # in order stays in order: the free rows are the zeros'

    def _compact(self, s: torch.Tensor) -> None:
        """After a shrink to B slots: live rows at or above B move into free rows below B; new recipes take
        the remaining free rows. One host read; at most one row copy per finished recipe."""
        B, want = len(s), s.tolist()
        if B > self.keys.shape[0]:
            raise ValueError(f"a batch of {B} slots for a pointer ring of {self.keys.shape[0]}: start a new state")
        used = {v - 1 for v in want if v}
        free = iter(sorted(set(range(B)) - used))
        for k, v in enumerate(want):
            if v and v - 1 < B:
                continue
            row = next(free)
            if v:  # a live slot's memory moves down
                self.keys[row].copy_(self.keys[v - 1])
                self.toks[row].copy_(self.toks[v - 1])
            want[k] = row + 1
        s.copy_(torch.tensor(want, dtype=s.dtype))
        self.rows = B
        self.in_order = want == list(range(1, B + 1))

    @torch.no_grad()
    def step(
        self, x: torch.Tensor, tokens: torch.Tensor, logits: torch.Tensor, slot, count, work: torch.Tensor
    ) -> torch.Tensor:
        """One generation step of every slot: x [B, H] the last layer's output, tokens [B] the tokens read,
        logits [B, V] fp32 (overwritten: the result), ``work`` a float32 buffer of its shape -> the
        mixture's log p [B, V] up to a constant per row (what sampling and argmax need), with the ring and
        ``slot``/``count`` [1, B] updated in place. A boundary token empties its slot's memory first. On a CPU
        only each slot's filled places are scored (one host read of the counts).

        ``p(w) = g softmax(z)(w) + sum over j with x_j = w of a_j`` is ``z_w`` shifted by ``log g - lse(z)``
        for a word not remembered; the remembered words' entries become ``logaddexp(z_w, log mass_w +
        lse - log g)``, [B, n] work. The logits are not rewritten: ``lse`` is the one pass over [B, V]."""
        P, M = self.pointer, self.memory
        rows, c = self.place(slot), count[0]
        c.mul_(tokens != P.boundary)
        at = c % M
        self.keys[rows, at] = P.keys(x) if self.key_w is None else product(x, self.key_w)
        self.toks[rows, at] = tokens
        c.add_(1)
        n = min(M, int(c.max())) if self.cpu else M
        q = torch.tanh(P.query(x) if self.query_w is None else product(x, self.query_w, P.query.bias))
        toks = self.toks[: len(rows), :n]
        if not self.in_order:
            toks = toks.index_select(0, rows)
        if self.cpu:
            scores = self._filled_scores(q, rows, c, n)
        else:  # one batched product over the ring in place, in row order: q goes to the rows, scores come back
            by_row = q if self.in_order else torch.empty_like(q).index_copy_(0, rows, q)
            scores = torch.bmm(by_row[:, None], self.keys[: len(rows), :n].transpose(1, 2))[:, 0]
            scores = scores if self.in_order else scores.index_select(0, rows)
            scores.masked_fill_(torch.arange(n, device=c.device) >= c[:, None], float("-inf"))
        la = torch.log_softmax(torch.cat([scores, (q @ P.sentinel + P.sentinel_bias)[:, None]], 1), 1)
        lse = logits[:, :1] - torch.log_softmax(logits, 1, out=work)[:, :1]
        self._add_pointer_mass(logits, toks, la[:, :-1].exp_(), lse - la[:, -1:])
        return logits

    def _filled_scores(self, q: torch.Tensor, rows: torch.Tensor, count: torch.Tensor, n: int) -> torch.Tensor:
        """``q . key`` for the filled places of every slot, -inf beyond them: q [B, D] -> [B, n]. The step's
        largest read (a gigabyte a step for 1,000 slots x 512 places x 512 floats, bound by memory
        bandwidth), so on a CPU each slot reads its own filled places only, in place in its ring row: slots
        are at every stage of their recipes, and reading the fullest one's ``n`` places for all (one
        batched product) reads about twice the keys. One matrix-vector product a slot costs microseconds
        of Python; a GPU takes the batched product instead (the host loop would be its bottleneck). The
        slots are shared out over torch's threads (numpy's product releases the GIL): the matrix products
        use them all, and a scan on one would be the step's bottleneck on a many-core node."""
        keys, qn = self.keys.numpy(), q.numpy()
        out = np.full((len(q), n), -np.inf, dtype=np.float32)
        slots = list(zip(range(len(q)), rows.tolist(), count.clamp(max=n).tolist()))

        def score(part) -> None:
            for i, r, k in part:
                np.dot(keys[r, :k], qn[i], out=out[i, :k])

        ways = min(torch.get_num_threads(), len(slots) // MIN_SLOTS_A_THREAD)
        if ways <= 1:
            score(slots)
        else:  # interleaved: every part gets slots at every stage of their recipes
            pool = _pool(ways - 1)
            done = [pool.submit(score, slots[w::ways]) for w in range(1, ways)]
            score(slots[0::ways])
            for d in done:
                d.result()
        return torch.from_numpy(out)

    def _add_pointer_mass(self, z: torch.Tensor, toks: torch.Tensor, a: torch.Tensor, shift: torch.Tensor) -> None:
        """``z[w] = logaddexp(z[w], log mass(w) + shift)`` for the remembered words, where a word's mass
        sums its places (a word may be remembered at several; empty places carry 0)."""
        if self._mass is None or self._mass.shape[0] < z.shape[0] or self._mass.shape[1] != z.shape[1]:
            self._mass = torch.zeros_like(z)
        buf = self._mass[: z.shape[0]]
        mass = buf.scatter_add_(1, toks, a).gather(1, toks)
        buf.scatter_(1, toks, 0.0)  # zeros again for the next step, touching [B, n] places only
        old = z.gather(1, toks)
        z.scatter_(1, toks, torch.where(mass > 0, torch.logaddexp(old, mass.log_().add_(shift)), old))
