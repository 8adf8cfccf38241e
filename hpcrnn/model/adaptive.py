"""The adaptive softmax (``model.softmax: adaptive``): the output layer for vocabularies of 100k words and more.

Grave et al. 2017 ("Efficient softmax approximation for GPUs"). Word ids are ordered by train count
(specials first, then by descending count: hpcrnn/data/encode.py), so the first ``cutoffs[0]`` ids are the
frequent words. The head scores those words and one entry per cluster; cluster ``i`` scores the ids
``[cutoffs[i], cutoffs[i + 1])`` through a projection to ``hidden / 4^(i + 1)`` dimensions:

    log p(w) = log p_head(w)                                  (w in the head)
    log p(w) = log p_head(cluster of w) + log p_cluster(w)    (otherwise)

Training's loss needs log p(y) alone: the head at every position, a cluster's layers only at the positions
whose target falls in it, so most of a large vocabulary's weights are not multiplied for most tokens, which
is where a full softmax's time goes. Evaluation, accuracy and generation use the whole distribution
(:meth:`AdaptiveHead.log_prob`).

torch's ``nn.AdaptiveLogSoftmaxWithLoss`` holds the weights and gives the whole distribution;
:meth:`AdaptiveHead.target_logp` is ours: it lets padding targets through (the loss ignores them) and
touches every cluster's weights at every step (a zero-weighted term where no target falls in one), so
DistributedDataParallel finds a gradient for every parameter at every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hpcrnn.errors import InputError

# automatic cutoffs (model.cutoffs: []): those below the vocabulary's size, as in the literature's word LMs
# (Grave et al.: 2k / 10k; transformer-XL on WikiText-103: 20k / 40k / 200k); part of the model file's format
AUTO_CUTOFFS = (2000, 10000, 50000)
DIV_VALUE = 4.0


def cutoffs_for(cutoffs, vocab_size: int) -> list[int]:
    """The cutoffs a model of ``vocab_size`` words uses: ``model.cutoffs``, or the automatic ones (a quarter
    of the vocabulary in the head for a vocabulary below 2,000 words)."""
    cut = list(cutoffs) or [c for c in AUTO_CUTOFFS if c < vocab_size] or [max(1, vocab_size // 4)]
    if cut[-1] >= vocab_size:
        raise InputError(f"model.cutoffs: {cut}: every cutoff must be below the vocabulary's {vocab_size} words")
    return cut


class AdaptiveHead(nn.Module):
    def __init__(self, hidden: int, vocab_size: int, cutoffs: list[int]):
        super().__init__()
        self.asm = nn.AdaptiveLogSoftmaxWithLoss(hidden, vocab_size, cutoffs, div_value=DIV_VALUE, head_bias=True)

    def log_prob(self, h: torch.Tensor) -> torch.Tensor:
        """log p of every word: h [..., H] -> [..., V]."""
        return self.asm.log_prob(h.reshape(-1, h.shape[-1])).view(*h.shape[:-1], -1)

    def target_logp(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y): h [..., H], y [...] -> [...]. A target below 0 (padding) gets a value the loss ignores."""
        a = self.asm
        flat, t = h.reshape(-1, h.shape[-1]), y.reshape(-1).clamp_min(0)
        head = F.log_softmax(a.head(flat).float(), -1)  # [N, shortlist + clusters]
        out = head.gather(1, t.clamp_max(a.shortlist_size - 1)[:, None])[:, 0]
        unused = out.new_zeros(())
        for i, tail in enumerate(a.tail):
            lo, hi = a.cutoffs[i], a.cutoffs[i + 1]
            rows = ((t >= lo) & (t < hi)).nonzero()[:, 0]
            if len(rows) == 0:
                unused = unused + sum(p.sum() for p in tail.parameters()) * 0.0
                continue
            inside = F.log_softmax(tail(flat.index_select(0, rows)).float(), -1)
            lp = head[rows, a.shortlist_size + i] + inside.gather(1, (t[rows] - lo)[:, None])[:, 0]
            out = out.index_put((rows,), lp)
        return (out + unused).view(y.shape)
