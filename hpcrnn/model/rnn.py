"""The recurrent language model: embedding -> LSTM/GRU/RNN -> linear over the vocabulary (-> pointer).

The lecture's Keras script (one-hot 50-word windows, LSTM(256)) feeds one-hot vectors into the LSTM; an
embedding lookup is the same function (a one-hot vector times a weight matrix selects one row) at a
fraction of the cost. ``step`` runs one token for a whole batch and carries the recurrent state, which is
what makes batched generation cheap.

With ``model.pointer`` > 0 a pointer over the document so far (hpcrnn/model/pointer.py) mixes copies of
words already read into the prediction; the model then returns log-probabilities where it returned logits,
and its state is the recurrent state followed by the pointer's memory: ``(h, c, keys, tokens)`` (LSTM) or
``(h, keys, tokens)``, every part with its rows on dim 1.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from hpcrnn.config import ModelConfig
from hpcrnn.model.adaptive import AdaptiveHead, cutoffs_for
from hpcrnn.model.pointer import Pointer

_CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class RecurrentLM(nn.Module):
    def __init__(self, vocab_size: int, cfg: ModelConfig, boundary: int = -1):
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
        self.adaptive = cfg.softmax == "adaptive"
        if self.adaptive:  # hpcrnn/model/adaptive.py (tied weights are refused by the config's validation)
            self.head = AdaptiveHead(cfg.hidden, vocab_size, cutoffs_for(cfg.cutoffs, vocab_size))
        else:
            self.head = nn.Linear(cfg.hidden, vocab_size)
        if cfg.tie_weights:
            self.head.weight = self.embed.weight  # same shape when embedding == hidden (validated)
        self.pointer = Pointer(cfg.hidden, cfg.pointer, boundary, cfg.pointer_key) if cfg.pointer else None
        self.whole = False  # see whole_distribution
        # what forward returns for the whole distribution: log-probabilities (a pointer's mixture, the
        # adaptive softmax) or logits
        self.returns_logp = self.pointer is not None or self.adaptive

    def forward(self, x: torch.Tensor, state=None, last_only: bool = False, targets: torch.Tensor | None = None):
        """x: [B, T] token ids -> logits [B, T, V] (or [B, V] with last_only; log-probabilities with a
        pointer or the adaptive softmax: ``returns_logp``), new state. ``targets`` [B, T] ([B] with
        last_only), for a loss that needs no more: a pointer or adaptive model returns log p(target) [B, T]
        ([B]) instead of the whole distribution (unless inside :func:`whole_distribution`); the plain model
        returns its logits all the same (cross entropy wants them)."""
        rnn_state, mem = self.split_state(state)
        h, rnn_state = self.rnn(self.drop(self.embed(x)), rnn_state)
        out = self.drop(h[:, -1] if last_only else h)
        targets = None if self.whole else targets
        logits = vocab_logp = None
        if not self.adaptive:
            logits = self.head(out)
        elif targets is not None:
            vocab_logp = self.head.target_logp(out, targets)
        else:
            logits = self.head.log_prob(out)
        if self.pointer is None:
            return (logits if vocab_logp is None else vocab_logp), rnn_state
        logp, mem = self.pointer(h, x, logits, mem, last_only, targets, vocab_logp)
        return logp, (*(rnn_state if isinstance(rnn_state, tuple) else (rnn_state,)), *mem)

    def split_state(self, state):
        """(the recurrent layers' state, the pointer's memory or None)."""
        if self.pointer is None or state is None:
            return state, None
        n = 2 if self.cell == "lstm" else 1
        rnn_state = tuple(state[:n]) if n == 2 else state[0]
        return rnn_state, tuple(state[n:])

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, state=None):
        """One generation step: tokens [B] -> logits [B, V], carried state."""
        logits, state = self.forward(tokens[:, None], state)
        return logits[:, 0], state


def build_model(cfg: ModelConfig, vocab_size: int, boundary: int = -1) -> RecurrentLM:
    """The model a new training run starts from, in the word-LM initialisation (Zaremba et al.,
    pytorch/examples word_language_model, AWD-LSTM): small uniform embedding and output weights, zero output
    bias. PyTorch's defaults (N(0, 1) embedding rows) start the softmax far from uniform, and SGD at the
    field's lr 20 recovers from that slowly. ``boundary``: the token that starts a document, for the
    pointer (a loaded checkpoint brings its own)."""
    model = RecurrentLM(vocab_size, cfg, boundary)
    with torch.no_grad():
        nn.init.uniform_(model.embed.weight, -0.1, 0.1)  # tied: the head's weight too
        if not model.adaptive:  # the adaptive softmax keeps nn.Linear's initialisation of its layers
            nn.init.uniform_(model.head.weight, -0.1, 0.1)
            nn.init.zeros_(model.head.bias)
    return model


def shapes(cfg: ModelConfig, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """The shape of every weight of the model ``cfg`` declares, worked out on the meta device: nothing is
    allocated, so a file that declares an absurd model is refused before it costs memory."""
    with torch.device("meta"), _no_embedding_init():
        return {k: tuple(v.shape) for k, v in RecurrentLM(vocab_size, cfg).state_dict().items()}


@contextlib.contextmanager
def _no_embedding_init():
    """nn.Embedding's N(0, 1) initialisation, skipped while a model is built on the meta device: there are
    no values there, and torch runs it through torch._refs, whose first use imports torch._dynamo (seconds
    of every model load). Real models are built and seeded as always."""
    saved = nn.Embedding.reset_parameters
    nn.Embedding.reset_parameters = lambda self: None
    try:
        yield
    finally:
        nn.Embedding.reset_parameters = saved


def check_weights(cfg: ModelConfig, vocab_size: int, weights: dict, src: str) -> None:
    """Refuse (InputError, naming the first mismatch) weights that are not those of the declared model."""
    from hpcrnn.errors import InputError  # noqa: PLC0415

    want = shapes(cfg, vocab_size)
    got = {k: tuple(getattr(v, "shape", ())) for k, v in weights.items()}
    for k in sorted(set(want) | set(got)):
        if want.get(k) != got.get(k):
            what = "missing" if k not in got else ("unexpected" if k not in want else f"shape {list(got[k])}")
            declared = f", the declared model has {list(want[k])}" if k in want else ""
            raise InputError(f"{src}: weight {k}: {what}{declared}: the weights do not fit its model section")


@contextlib.contextmanager
def whole_distribution(net: nn.Module, wanted: bool = True):
    """Within: a model (``net`` may be DDP-wrapped) given ``targets`` still returns the whole distribution,
    for a step that also reports accuracy (its argmax). A switch on the model rather than an argument, so
    that the trainer's loss function keeps its signature."""
    model = getattr(net, "module", net)
    saved, model.whole = model.whole, wanted
    try:
        yield
    finally:
        model.whole = saved


def token_loss(net: nn.Module, out: torch.Tensor, y: torch.Tensor, **kw) -> torch.Tensor:
    """The next-word cross entropy of a model's output (``net`` may be DDP-wrapped), with ``F.nll_loss``'s
    ``ignore_index`` and ``reduction``. A pointer model's output is already log-probabilities: the whole
    distribution [N, V] (``nll_loss`` gives the same value without another log-softmax pass over it and
    its backward), or log p(y) [N] itself (from ``targets``)."""
    if out.shape == y.shape:  # log p(y): the negated mean (or sum) over the positions not ignored
        keep = y != kw.get("ignore_index", -100)
        total = -torch.where(keep, out.float(), 0.0).sum()
        return total if kw.get("reduction", "mean") == "sum" else total / keep.sum()
    logp = getattr(net, "module", net).returns_logp
    return (F.nll_loss if logp else F.cross_entropy)(out.float(), y, **kw)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
