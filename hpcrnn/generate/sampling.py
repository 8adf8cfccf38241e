"""Choosing the next token from a batch of logits: greedy, temperature, top_k, top_p.

Every row draws from its own uniform numbers (``u``), so a row's choice depends on its logits and its
numbers only — never on the other rows, the batch size or the order (what makes generation reproducible).

* Greedy (temperature 0): the first index of the maximum.
* Sampling: softmax, then **inverse-CDF** sampling in vocabulary order: the first token whose running sum
  of probabilities exceeds ``u`` (one uniform per token). On a CPU the running sum goes in two levels
  (block sums, then one block), see :func:`inverse_cdf`.
* ``top_k`` / ``top_p`` (truncation) by **rejection**, so the vocabulary is never sorted: draw from the
  whole distribution; accept the token if it belongs to the kept set, else drop it and every token not more
  likely than it (none of those can belong to the set either) and draw again from what is left with the
  row's next uniform. The kept set holds at least ``top_p`` of the probability, so a first draw is
  accepted with probability ``>= top_p``; the accepted token follows the distribution restricted to the
  kept set, renormalised — exactly what sorting and truncating gives. A row still rejected when its
  uniforms run out (``ROUNDS`` per token: very rare; with one uniform per token, every rejected row) gets
  the kept set by a sort and draws with what is left of its last uniform (where it fell inside the
  rejected token's share, rescaled).
  Definitions (ties kept together): token *j* is in the top-k set when fewer than ``top_k`` tokens are
  strictly more likely, and in the top-p nucleus when the tokens strictly more likely than *j* hold less
  than ``top_p`` of the probability (the smallest set of most likely tokens reaching ``top_p``, plus any
  tokens tied with its least likely one). With both, top_p applies to the renormalised top-k set.

On a CPU these are all vectorised passes over ``[b, V]``; the costly sort and ``topk`` of the vocabulary,
scalar loops on a CPU, are avoided (``topk`` remains only for top_k and top_p combined). On a GPU, where
sorting is fast and every rejection round would cost a host synchronisation, the kept set comes from a
sort and the first uniform draws from it (so a GPU's recipes differ from a CPU's for the same seed).
"""

from __future__ import annotations

import numpy as np
import torch

ROUNDS = 4  # uniforms per generated token when top_k or top_p truncate: one per draw
_BLOCK = 64


def uniforms_per_token(top_k: int, top_p: float) -> int:
    return ROUNDS if (top_k > 0 or top_p < 1.0) else 1


def greedy(logits: torch.Tensor, work: torch.Tensor | None = None) -> torch.Tensor:
    """The first index of each row's maximum. ``work``: an optional float32 buffer of the logits' shape."""
    if logits.device.type != "cpu":
        return logits.argmax(-1)
    # torch's CPU argmax is a scalar loop (slower still in bf16); numpy's is vectorised. Same answer: the
    # first index of the maximum.
    if logits.dtype != torch.float32:
        logits = work.copy_(logits) if work is not None and work.shape == logits.shape else logits.float()
    return torch.from_numpy(np.argmax(logits.numpy(), axis=-1).astype(np.int64))


def sample_next(
    logits: torch.Tensor,
    u: torch.Tensor | None,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    work: torch.Tensor | None = None,
) -> torch.Tensor:
    """Next token per row from raw logits [b, V] (banned tokens already -inf). ``u``: uniforms in [0, 1),
    [b] or [b, rounds] (one per draw; see the module doc). ``work``: an optional float32 buffer."""
    if temperature == 0.0:
        return greedy(logits, work)
    x = logits.float() * (1.0 / temperature)  # widen first: bf16 logits scaled in bf16 would be rounded again
    return sample_scaled(x, u, top_k, top_p, work=x)


def sample_scaled(
    x: torch.Tensor, u: torch.Tensor, top_k: int = 0, top_p: float = 1.0, work: torch.Tensor | None = None
) -> torch.Tensor:
    """Sample from logits already divided by the temperature (see :class:`hpcrnn.generate.stepper.Stepper`).
    ``work``: an optional float32 buffer of the logits' shape (may be ``x`` itself), overwritten; without
    one, a copy is made (``x`` is never modified otherwise)."""
    if u.dim() == 1:
        u = u[:, None]
    if work is not None and work.shape == x.shape and work.dtype == torch.float32 and work.device == x.device:
        w = work.copy_(x)
    else:
        w = x.to(torch.float32, copy=True)
    # the softmax weights, unnormalised (inverse-CDF sampling and the checks scale by the row's total), in
    # place: exp(x - row max)
    w.sub_(w.amax(-1, keepdim=True)).exp_()
    V = w.shape[1]
    k = top_k if 0 < top_k < V else 0
    p = top_p if top_p < 1.0 else 0.0
    if not k and not p:
        return inverse_cdf(w, u[:, 0])[0]
    if k and p:  # top_p of the renormalised top k: find the top k set first (a topk, the slow path)
        kth = w.topk(k, dim=-1).values[:, -1:]
        w.masked_fill_(w < kth, 0.0)
        k = 0
    if w.device.type != "cpu":  # a GPU sorts fast, and rejection's per-round checks would cost syncs
        return _sorted_fallback(w, u[:, 0], k, p)
    return _reject(w, u, k, p)


def _reject(w: torch.Tensor, u: torch.Tensor, k: int, p: float) -> torch.Tensor:
    """Truncated sampling by rejection on a CPU (see the module doc): ``w`` the softmax weights [b, V],
    unnormalised; ``u`` [b, rounds]; ``k``/``p`` the truncation (0: none)."""
    choice, total, bsums = inverse_cdf(w, u[:, 0])
    out = choice.clone()
    # The rows still to settle, their weights ``ws`` and scales: a row's true weights are ``ws * scale``
    # (each check divides a row by its drawn token's weight, so one cheap threshold pass drops the tokens
    # not likelier than the draw; inverse-CDF sampling does not mind a row's scale).
    rows = torch.arange(w.shape[0], device=w.device)
    ws, scale = w, torch.ones(w.shape[0], device=w.device)
    for r in range(1, u.shape[1] + 1):  # r: draws made so far
        wj = ws.gather(1, choice[:, None])[:, 0]
        check = (~_surely_kept(wj, scale, total[rows], bsums, k, p)).nonzero()[:, 0]
        if len(check) == 0:
            break
        wc = ws.index_select(0, check)  # a copy: becomes the next round's weights
        thr = wj.index_select(0, check)
        torch.nn.functional.threshold_(wc.div_(thr[:, None]), 1.0, 0.0)  # keeps the tokens likelier than the draw
        new_scale = scale.index_select(0, check) * thr
        ok = torch.ones(len(check), dtype=torch.bool, device=w.device)
        if k:
            ok &= (wc > 0).sum(-1) < k
        if p:
            ok &= wc.sum(-1) * new_scale < p * total[rows[check]]
        bad = (~ok).nonzero()[:, 0]
        if len(bad) == 0:
            break
        j_last, rows, last = choice[check[bad]], rows[check[bad]], check[bad]
        if r == u.shape[1]:  # out of uniforms: settle these (few) rows by a sort
            u_left = _leftover(ws.index_select(0, last), j_last, u[rows, r - 1])
            out[rows] = _sorted_fallback(w.index_select(0, rows), u_left, k, p)
            break
        ws, scale = wc.index_select(0, bad), new_scale.index_select(0, bad)
        choice, _, bsums = inverse_cdf(ws, u[rows, r])
        out[rows] = choice
    return out


def _surely_kept(
    wj: torch.Tensor, scale: torch.Tensor, total: torch.Tensor, bsums: torch.Tensor | None, k: int, p: float
) -> torch.Tensor:
    """Cheap acceptance: whether each drawn token (weight ``wj * scale``) is in the kept set whatever the
    other tokens are — likelier than (1 - top_p) of the total, or than 1/k of it — so only the other rows
    need a pass over their weights."""
    sure = torch.ones_like(wj, dtype=torch.bool)
    if p:
        sure &= wj * scale > (1.0 - p) * total
    if k:
        sure &= wj * scale * k >= total
    if p and bsums is not None:
        # a block whose sum is not above the draw holds no likelier token, so the other blocks' sums
        # bound the mass above it (free: the draw computed the block sums)
        bound = torch.where(bsums > wj[:, None], bsums, 0.0).sum(-1)
        sure |= bound * scale < p * total
    return sure


def _leftover(w: torch.Tensor, j: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Where ``u`` fell inside token ``j``'s share of the running sum, rescaled to [0, 1): a uniform
    independent of which token was drawn (with fewer bits: a rejected token's share is small)."""
    cdf = w.double().cumsum(-1)
    wj = w.gather(1, j[:, None])[:, 0].double()
    lo = cdf.gather(1, j[:, None])[:, 0] - wj
    x = (u.double() * (1.0 - 1e-6) * cdf[:, -1] - lo) / wj
    return x.clamp(0.0, 1.0 - 2**-24).float()


def _sorted_fallback(w: torch.Tensor, u: torch.Tensor, k: int, p: float) -> torch.Tensor:
    """The kept set by a sort (ties kept together), then inverse CDF: for the rare rows rejection did not
    settle."""
    vals, _ = w.sort(dim=-1, descending=True)
    keep_from = torch.full((w.shape[0], 1), float("inf"), device=w.device)
    if k:
        keep_from = vals[:, k - 1 : k]
    if p:
        cum = vals.double().cumsum(-1)
        m = torch.searchsorted(cum, (p * cum[:, -1:]), right=False).clamp(max=w.shape[1] - 1)
        tau = vals.gather(1, m)
        keep_from = tau if not k else torch.maximum(keep_from, tau)
    return inverse_cdf(torch.where(w >= keep_from, w, 0.0), u)[0]


def inverse_cdf(w: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per row, the first index whose running sum of the non-negative weights ``w`` [b, n] exceeds
    ``u`` times the row's total; returns (indices [b], totals [b], the sums of blocks of 64 weights
    [b, ceil(n / 64)] or None for the flat search). ``w`` is not modified.

    A cumulative sum is a sequential pass, the slowest of the sampler's passes on a CPU. For a long row on
    a CPU the search goes in two levels instead: the sums of blocks of 64 weights (a vectorised
    reduction), the block where the running total crosses, then the running sum inside that one block."""
    b, n = w.shape
    # r strictly below the total (the 1e-6 keeps float rounding from landing past the last kept token)
    if w.device.type != "cpu" or n < 16 * _BLOCK:
        cdf = w.cumsum(-1)
        r = (u * (1.0 - 1e-6))[:, None] * cdf[:, -1:]
        return torch.searchsorted(cdf, r, right=True).clamp_(max=n - 1)[:, 0], cdf[:, -1], None
    n0 = n - n % _BLOCK
    sums = w[:, :n0].unfold(1, _BLOCK, _BLOCK).sum(-1)  # a view: no copy of the weights
    if n0 < n:
        sums = torch.cat([sums, w[:, n0:].sum(-1, keepdim=True)], dim=1)
    cb = sums.cumsum(-1)
    r = (u * (1.0 - 1e-6))[:, None] * cb[:, -1:]
    blk = torch.searchsorted(cb, r, right=True).clamp_(max=cb.shape[1] - 1)  # [b, 1]: sums[blk] > 0
    before = torch.where(blk > 0, cb.gather(1, (blk - 1).clamp(min=0)), torch.zeros_like(r))
    cols = blk * _BLOCK + torch.arange(_BLOCK, device=w.device)  # [b, 64]
    inside = cols < n
    wb = w.gather(1, cols.clamp(max=n - 1)) * inside
    cw = wb.cumsum(-1)
    k = torch.searchsorted(cw, r - before, right=True)
    # rounding (the block's sum vs its running sum) can put r - before at or past the block's end: then
    # the block's last token of positive weight (rare: looked for only when it happens)
    past = k >= _BLOCK
    if bool(past.any()):
        last = torch.where(wb > 0, torch.arange(_BLOCK, device=w.device), -1).amax(-1, keepdim=True)
        k = torch.where(past, last, k).clamp_(min=0)
    return (blk * _BLOCK + k)[:, 0], cb[:, -1], sums
