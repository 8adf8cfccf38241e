"""A pointer over the document so far: lets the recurrent LM copy a word it has already read.

Pointer sentinel mixture (Merity et al. 2016, "Pointer sentinel mixture models"). At every position the
last layer's output ``h_t`` asks ``q_t = tanh(W h_t + b)``; it scores the keys ``k_j`` of the positions
read so far in the same document (the current one included; the newest ``memory`` before the current
chunk, plus the chunk's own up to ``t``) and a learned sentinel:
``a = softmax([q_t . k_j ..., q_t . s + b_s])``. The keys are the outputs themselves, ``k_j = h_j`` (Merity
et al.), or with ``key`` > 0 a learned projection ``k_j = K h_j`` of ``key`` dimensions (``q_t`` too):
generation rescans every remembered key at every step, and training scores ``memory`` places at every
position, so the width of a key is what the pointer's arithmetic and its memory scale with. The
sentinel's weight ``g`` is the share left to the softmax over the vocabulary; the rest points at the words
read at those positions:

    p(w) = g * softmax(W_o h_t)(w) + sum over j with x_j = w of a_j

Nothing says which words to copy: the network learns it from the loss, the same next-word loss as
without the pointer (a recipe's instructions mostly name what its ingredient list named, so that is what
it learns to copy there). The model returns ``log p`` where it returned logits, so cross entropy,
accuracy, top-k/top-p sampling and temperature work unchanged (``log_softmax`` of log-probabilities is
the identity). Training's loss needs only the target's probability: given the targets, the model returns
``log p(y)`` alone (:meth:`Pointer.target_logp`), never building the [B, T, V] mixture, which cost 43% of
training's speed.

The memory is carried like the recurrent state: the keys (detached) and the tokens of the newest (up to)
``memory`` positions, ``[M, B, D]`` (D: the key width) and ``[M, B]`` (token + 1; 0 marks an empty place), rows on
dim 1 like ``nn.LSTM``'s state, so truncated BPTT, checkpoints (rows split by rank) and evaluation carry
it as they carry ``(h, c)``. A document starts at the boundary token (``<eor>``, which precedes every
recipe): nothing before the newest boundary is pointed at. Generation keeps it in a ring of its own
(hpcrnn/generate/ring.py).
"""

from __future__ import annotations

import torch
from torch import nn

# log(0) guard, added rather than clamped (a clamp's backward costs two more passes over [B, T, V]): a word
# that neither the vocabulary softmax (underflowed) nor the pointer gives any mass
_TINY = 1e-30
# the sentinel's score starts this high, so a new model starts as the plain LM (g near 1 for a few hundred
# remembered positions) and learns to point, rather than starting with its mass spread over the memory
SENTINEL_BIAS = 7.0


class Pointer(nn.Module):
    def __init__(self, hidden: int, memory: int, boundary: int = -1, key: int = 0):
        super().__init__()
        self.memory = memory
        self.width = key or hidden  # of a key, a query and the sentinel
        self.query = nn.Linear(hidden, self.width)
        self.key = nn.Linear(hidden, key, bias=False) if key else None
        self.sentinel = nn.Parameter(torch.zeros(self.width))
        self.sentinel_bias = nn.Parameter(torch.full((), SENTINEL_BIAS))
        # the document boundary token travels with the weights (a checkpoint's model knows its corpus');
        # -1: none, the memory is one document
        self.register_buffer("boundary", torch.tensor(int(boundary)))

    def forward(
        self,
        h: torch.Tensor,
        x: torch.Tensor,
        logits: torch.Tensor | None,
        mem=None,
        last_only: bool = False,
        targets=None,
        vocab_logp: torch.Tensor | None = None,
    ):
        """h [B, T, H]: last-layer outputs; x [B, T]: the tokens read; logits [B, T, V] ([B, V] with
        ``last_only``: the last position only) -> (log p of the same shape, the new memory). With
        ``targets`` [B, T] ([B]): log p(target) [B, T] ([B]) instead, the whole distribution never built;
        the vocabulary's share of it from ``logits``, or given as ``vocab_logp`` (log p_vocab(target), the
        shape of ``targets``: an adaptive softmax's, whose logits are never built)."""
        B, T, H = h.shape
        # no memory yet (windows mode, a stream's first step): score the chunk alone rather than a memory
        # of empty places, which would be masked out anyway
        keys_m, toks_m = self._none(B, self.width, h.device) if mem is None else mem
        M = keys_m.shape[0]
        h, keys_m = h.float(), keys_m.float()
        toks = torch.cat([toks_m.t(), x + 1], 1)  # [B, M + T]
        valid = self._valid(toks, M, T)  # [B, T, M + T]
        hq = h
        if last_only:
            hq, valid = h[:, -1:], valid[:, -1:]
            logits = None if logits is None else logits[:, None]
            targets = None if targets is None else targets[:, None]
            vocab_logp = None if vocab_logp is None else vocab_logp[:, None]
        with torch.autocast(h.device.type, enabled=False):
            q = torch.tanh(self.query(hq))
            k = self.keys(h)
            # the memory's scores and the chunk's, apart: no [B, M + T, D] copy of the keys
            scores = torch.cat([torch.bmm(q, keys_m.permute(1, 2, 0)), torch.bmm(q, k.transpose(1, 2))], -1)
            scores = scores.masked_fill(~valid, float("-inf"))
            if targets is None:
                out = self.mix(q, scores, toks, logits.float())
            else:
                if vocab_logp is None:
                    y = targets.clamp_min(0)[..., None]
                    vocab_logp = torch.log_softmax(logits.float(), -1).gather(-1, y)[..., 0]
                out = self.target_logp(q, scores, toks, vocab_logp.float(), targets)
        return (out[:, 0] if last_only else out), self._newest(keys_m, k.detach(), toks)

    def keys(self, h: torch.Tensor) -> torch.Tensor:
        """The keys of outputs ``h`` [..., H] -> [..., D]: the outputs themselves, or their projection."""
        return h if self.key is None else self.key(h)

    def _none(self, batch: int, hidden: int, device):
        return torch.zeros(0, batch, hidden, device=device), torch.zeros(0, batch, dtype=torch.long, device=device)

    def _newest(self, keys_m: torch.Tensor, h: torch.Tensor, toks: torch.Tensor):
        """The carried memory: the newest ``memory`` places of the memory ``keys_m`` [M, B, D] followed by
        the chunk's keys ``h`` [B, T, D] (tokens: of ``toks`` [B, M + T]). Never padded to ``memory``: it
        grows to that length over the first steps of a stream (every rank's carry has the same length at
        the same step, so checkpoints join it by rows), and a windows-mode step, whose carry is dropped,
        allocates no more than its window."""
        keep, T = self.memory, h.shape[1]
        if T >= keep:
            keys = h[:, -keep:].transpose(0, 1)
        else:
            keys = torch.cat([keys_m[max(0, keys_m.shape[0] + T - keep) :], h.transpose(0, 1)], 0)
        return keys.contiguous(), toks[:, -keep:].t().contiguous()

    def _valid(self, toks: torch.Tensor, M: int, T: int) -> torch.Tensor:
        """Which remembered position each query may point at: filled, not after the query, and in the
        query's document. Documents are told apart by counting boundary tokens (with no boundary, -1, the
        count rises only over empty places, which come first and are never pointed at)."""
        L = M + T
        seg = (toks == self.boundary + 1).cumsum(1)
        pos = torch.arange(L, device=toks.device)
        causal = pos[None, :] <= pos[M:, None]  # [T, L]
        same = seg[:, None, :] == seg[:, M:, None]  # [B, T, L]
        return causal[None] & same & (toks > 0)[:, None, :]

    def mix(self, q, scores, toks, logits) -> torch.Tensor:
        """log p: the vocabulary softmax weighted by the sentinel's share, plus the pointer's mass on the
        remembered tokens. q [B, T, D], scores [B, T, L] (-inf where not pointed at), toks [B, L], logits
        [B, T, V]."""
        sentinel = (q @ self.sentinel + self.sentinel_bias)[..., None]
        a = torch.softmax(torch.cat([scores, sentinel], -1), -1)
        p = torch.softmax(logits, -1) * a[..., -1:]
        idx = (toks - 1).clamp_min(0)[:, None, :].expand(-1, q.shape[1], -1)
        return p.scatter_add(2, idx, a[..., :-1]).add(_TINY).log()

    def target_logp(self, q, scores, toks, vocab_logp, targets) -> torch.Tensor:
        """log p(target) [B, T] of the same mixture as :meth:`mix`, for training's loss, which needs no
        other word: ``log(g * p_vocab(y) + sum over j with x_j = y of a_j + tiny)``, as the log-sum of its
        two parts (no [B, T, V] mixture, no scatter); ``vocab_logp`` [B, T] is log p_vocab(y) (from the
        logits: ``log_softmax`` + gather, what cross entropy does). The pointer's mass on y compares the
        remembered tokens with y: [B, T, L]. A target below 0 (padding) gets a value that the loss
        ignores."""
        sentinel = (q @ self.sentinel + self.sentinel_bias)[..., None]
        la = torch.log_softmax(torch.cat([scores, sentinel], -1), -1)
        y = targets.clamp_min(0)[..., None]
        vocab = la[..., -1] + vocab_logp
        hit = toks[:, None, :] == y + 1  # [B, T, L]; an empty place (0) never matches
        mass = torch.where(hit, la[..., :-1].exp(), 0.0).sum(-1)
        return torch.logaddexp(vocab, (mass + _TINY).log())
