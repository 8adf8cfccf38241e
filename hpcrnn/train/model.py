"""The recurrent language model: embedding -> LSTM/GRU/RNN -> linear over the vocabulary.

The lecture's Keras script (one-hot 50-word windows, LSTM(256)) feeds one-hot vectors into the LSTM; an
embedding lookup is the same function (a one-hot vector times a weight matrix selects one row) at a
fraction of the cost. ``step`` runs one token for a whole batch and carries the recurrent state, which is
what makes batched generation cheap.
"""

from __future__ import annotations

import torch
from torch import nn

from hpcrnn.config import ModelConfig

_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class RecurrentLM(nn.Module):
    def __init__(self, vocab_size: int, cfg: ModelConfig):
        super().__init__()
        self.cell = cfg.cell
        self.embed = nn.Embedding(vocab_size, cfg.embedding)
        # no dropout module at all when p = 0: even a no-op dropout costs a pass over the activations
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        # dropout between stacked layers only (PyTorch warns on it for a single layer)
        self.rnn = _CELLS[cfg.cell](
            cfg.embedding,
            cfg.hidden,
            num_layers=cfg.layers,
            batch_first=True,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
        )
        self.head = nn.Linear(cfg.hidden, vocab_size)
        if cfg.tie_weights:
            self.head.weight = self.embed.weight  # same shape when embedding == hidden (validated)

    def forward(self, x: torch.Tensor, state=None, last_only: bool = False):
        """x: [B, T] token ids -> logits [B, T, V] (or [B, V] with last_only), new state."""
        h, state = self.rnn(self.drop(self.embed(x)), state)
        if last_only:
            h = h[:, -1]
        return self.head(self.drop(h)), state

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, state=None):
        """One generation step: tokens [B] -> logits [B, V], carried state."""
        logits, state = self.forward(tokens[:, None], state)
        return logits[:, 0], state


def build_model(cfg: ModelConfig, vocab_size: int) -> RecurrentLM:
    """The model a new training run starts from, in the word-LM initialisation (Zaremba et al.,
    pytorch/examples word_language_model, AWD-LSTM): small uniform embedding and output weights, zero output
    bias. PyTorch's defaults (N(0, 1) embedding rows) start the softmax far from uniform, and SGD at the
    field's lr 20 recovers from that slowly."""
    model = RecurrentLM(vocab_size, cfg)
    with torch.no_grad():
        nn.init.uniform_(model.embed.weight, -0.1, 0.1)  # tied: the head's weight too
        nn.init.uniform_(model.head.weight, -0.1, 0.1)
        nn.init.zeros_(model.head.bias)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
