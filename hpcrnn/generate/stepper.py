"""One generation step of a trained RecurrentLM, rearranged for speed: ``Stepper(model, ...)(tokens, state)``.

A generation step feeds one token per slot and returns the next-token logits. Done the plain way
(``RecurrentLM.step``: embedding, ``nn.LSTM`` on a length-1 sequence, linear) it costs, per slot,
``E x 4H`` + ``H x 4H`` + ``H x V`` multiply-adds. The stepper does the same arithmetic with three
rearrangements that change no result beyond float rounding:

* **input table** — the first layer's input projection of a token only depends on the token, so
  ``embedding @ W_ih^T + biases`` is computed once for the whole vocabulary (``V x 4H`` floats, e.g.
  21 MB for 5,288 words and ``H`` 256) and a step gathers rows from it instead of multiplying (skipped
  when the table would be larger than ``TABLE_LIMIT_BYTES``);
* **in-place cell** — the gate nonlinearities and the state update run in place on one ``[B, 4H]`` buffer
  and on the state tensors, with no per-step allocations (the state passed in is updated in place);
* **folded sampling constants** — ``1 / temperature`` is folded into the output layer's weights and bias
  (``(W / T) h + b / T``), and the banned tokens (``<unk>``) get a bias of ``-inf``, so the logits come out
  ready to sample with no extra pass over ``[B, V]``.

``precision`` is that of the matrix products, as under ``torch.autocast``: ``fp32``, or ``bf16`` — the
recurrent and output products take bf16 inputs and sum in fp32 (many times faster where the hardware
multiplies bf16 natively: AMX on a CPU, a GPU's tensor cores), while the input table, the gate
nonlinearities and the recurrent state stay fp32; the logits come out bf16 (rounded once, after summing).
Which precision a job uses is decided once, in hpcrnn/model/precision.py.

The logits are returned in a buffer that the next call (with the same or a smaller batch) overwrites.

The state layout is ``nn.LSTM``'s: ``(h, c)`` of shape ``[layers, B, H]`` (``h`` alone for GRU/RNN).
A model with a pointer (hpcrnn/model/pointer.py) keeps its memory in a ring the stepper allocates once
(hpcrnn/generate/ring.py) and adds two small parts to the state, ``slot [1, B]`` and ``count [1, B]`` (rows
on dim 1, so a slot is reset or dropped like ``(h, c)``); its step mixes the pointer into the
probabilities, so the temperature and the banned tokens are applied to the mixture's log-probabilities
(into a reused buffer) instead of being folded into the output layer. One state at a time per stepper:
``zero_state`` starts a new ring.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from hpcrnn.generate.ring import Ring
from hpcrnn.model.precision import product

TABLE_LIMIT_BYTES = 512 * 2**20  # larger input tables (huge vocabularies) multiply per step instead


class Stepper:
    """``step(tokens [B], state) -> (logits [B, V], state)`` for a RecurrentLM (see the module doc).

    ``temperature`` > 0 divides the logits by it (0: greedy, logits unscaled); ``banned`` tokens get
    ``-inf``. The model itself is left untouched; the stepper keeps its own (derived) weights."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        precision: str = "fp32",
        temperature: float = 0.0,
        banned: Sequence[int] = (),
        device="cpu",
        memory: int | None = None,
    ):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
        self.device = device = torch.device(device)
        rnn = model.rnn
        self.cell = model.cell
        self.act = torch.relu_ if getattr(rnn, "nonlinearity", "tanh") == "relu" else torch.tanh_
        self.hidden = rnn.hidden_size
        self.layers = rnn.num_layers
        self.mm_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        pointer = getattr(model, "pointer", None)
        self.pointer = None if pointer is None else copy.deepcopy(pointer).to(device=device, dtype=torch.float32)
        if self.pointer is not None and memory:  # a recipe never reads more: its ring needs no more places
            self.pointer.memory = min(self.pointer.memory, memory)
        self.temperature, self.banned = temperature, sorted(set(int(t) for t in banned))
        if self.pointer is not None:  # sampling constants go on the mixture, not the raw logits
            temperature, banned = 0.0, ()
        with torch.no_grad():
            w_ih0_t = self._recurrent_weights(rnn, device)
            emb = model.embed.weight.detach().to(device=device, dtype=torch.float32)
            self.vocab_size = V = emb.shape[0]
            self.embed = emb
            self.table: torch.Tensor | None = None
            if V * w_ih0_t.shape[1] * 4 <= TABLE_LIMIT_BYTES:  # computed once, in fp32 whatever the precision
                self.table = torch.addmm(self.bias[0], emb, w_ih0_t)
            # the adaptive softmax gives log p itself (hpcrnn/model/adaptive.py), in fp32, scaled after it
            self.adaptive = None
            if model.adaptive:
                self.adaptive = copy.deepcopy(model.head).to(device=device, dtype=torch.float32).requires_grad_(False)
            if self.adaptive is None:
                self._head_weights(model.head, temperature, banned, device)
            else:
                self.head_scale, self.head_banned = temperature, sorted(set(int(t) for t in banned))
        self._out: dict = {}  # per batch size: reused output buffers (see __call__)
        self.ring: Ring | None = None  # a pointer's memory, made by zero_state

    def _recurrent_weights(self, rnn: torch.nn.Module, device: torch.device) -> torch.Tensor:
        """Per layer: transposed weights in the product precision and the summed biases (GRU: the n gate's
        hidden bias apart). Returns the first layer's input weights, transposed, in fp32 (for the table)."""
        H = self.hidden
        G = {"lstm": 4, "gru": 3, "rnn": 1}[self.cell] * H
        f32 = dict(device=device, dtype=torch.float32)
        self.w_ih_t, self.w_hh_t, self.bias, self.b_hn = [], [], [], []
        for layer in range(self.layers):
            w_ih = getattr(rnn, f"weight_ih_l{layer}").detach().to(**f32)
            w_hh = getattr(rnn, f"weight_hh_l{layer}").detach().to(**f32)
            zeros = torch.zeros(G, **f32)
            b_ih = getattr(rnn, f"bias_ih_l{layer}", None)
            b_hh = getattr(rnn, f"bias_hh_l{layer}", None)
            b_ih = zeros if b_ih is None else b_ih.detach().to(**f32)
            b_hh = zeros if b_hh is None else b_hh.detach().to(**f32)
            if self.cell == "gru":  # the n gate's hidden bias sits inside r * (W_hn h + b_hn)
                self.bias.append(b_ih + torch.cat([b_hh[: 2 * H], zeros[:H]]))
                self.b_hn.append(torch.cat([zeros[: 2 * H], b_hh[2 * H :]]))
            else:
                self.bias.append(b_ih + b_hh)
                self.b_hn.append(None)
            if layer == 0:
                w_ih0_t = w_ih.t().contiguous()
            self.w_ih_t.append(w_ih.t().contiguous().to(self.mm_dtype))
            self.w_hh_t.append(w_hh.t().contiguous().to(self.mm_dtype))
        return w_ih0_t

    def _head_weights(self, head: torch.nn.Linear, temperature: float, banned: Sequence[int], device) -> None:
        """The output layer with the sampling constants folded in: ``1 / temperature`` and ``-inf`` biases."""
        f32 = dict(device=device, dtype=torch.float32)
        w = head.weight.detach().to(**f32)
        b = torch.zeros(self.vocab_size, **f32) if head.bias is None else head.bias.detach().to(**f32)
        if temperature > 0:
            w, b = w / temperature, b / temperature
        ban = sorted(set(int(t) for t in banned))
        if ban:
            b = b.clone()
            b[ban] = float("-inf")
        self.head_b = b
        if self.mm_dtype == torch.float32:
            self.head_w_t = w.t().contiguous()  # [H, V]
            return
        # The bias rides inside the bf16 product as one more input row (its input column is 1): adding an
        # fp32 bias to a bf16 product afterwards is a mixed-type pass over [B, V] that costs more than the
        # product. K is padded to a multiple of 32 (whole AMX tiles).
        k = -(-(self.hidden + 1) // 32) * 32
        wa = torch.zeros(k, self.vocab_size, **f32)
        wa[: self.hidden] = w.t()
        wa[self.hidden] = b
        self.head_w_t = wa.to(self.mm_dtype)

    def _buffer(self, name: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        """A reused buffer; a smaller batch (the batch shrinks as the last recipes end) gets the first rows
        of the one it has, rather than a fresh allocation (past malloc's mmap threshold every new one would
        be mapped afresh and page-fault)."""
        buf = self._out.get(name)
        if buf is None or buf.shape[1:] != shape[1:] or buf.shape[0] < shape[0]:
            buf = self._out[name] = torch.empty(shape, dtype=dtype, device=self.device)
            if name == "head_in":  # the bias column
                buf.zero_()[:, self.hidden] = 1.0
        return buf[: shape[0]]

    def zero_state(self, batch: int):
        z = torch.zeros(self.layers, batch, self.hidden, device=self.device)
        state = (z, z.clone()) if self.cell == "lstm" else z
        if self.pointer is None:
            return state
        self.ring = Ring(self.pointer, batch, self.device, self.mm_dtype)
        return (*(state if isinstance(state, tuple) else (state,)), *self.ring.state(batch))

    def __call__(self, tokens: torch.Tensor, state=None):
        if state is None:
            state = self.zero_state(tokens.shape[0])
        H = self.hidden
        hs = state[0] if self.cell == "lstm" or self.pointer is not None else state
        x = None
        for layer in range(self.layers):
            if layer == 0 and self.table is not None:
                gates = self.table.index_select(0, tokens)
            else:
                inp = self.embed.index_select(0, tokens) if layer == 0 else x
                gates = product(inp, self.w_ih_t[layer], self.bias[layer])
            h = hs[layer]
            if self.cell == "lstm":
                c = state[1][layer]
                product(h, self.w_hh_t[layer], out=gates)
                gates[:, : 2 * H].sigmoid_()  # input and forget gates
                gates[:, 2 * H : 3 * H].tanh_()  # candidate
                gates[:, 3 * H :].sigmoid_()  # output gate
                i, f, g, o = gates.split(H, 1)
                c.mul_(f).addcmul_(i, g)
                torch.tanh(c, out=h).mul_(o)
            elif self.cell == "gru":
                gh = product(h, self.w_hh_t[layer], self.b_hn[layer])
                rz = gates[:, : 2 * H].add_(gh[:, : 2 * H]).sigmoid_()
                r, z = rz.split(H, 1)
                n = gates[:, 2 * H :].addcmul_(r, gh[:, 2 * H :]).tanh_()
                h.sub_(n).mul_(z).add_(n)  # (1 - z) n + z h
            else:
                product(h, self.w_hh_t[layer], out=gates)
                h.copy_(self.act(gates))
            x = h
        if self.pointer is None:
            return self._head(x), state
        return self._point(tokens, x, state), state

    def _point(self, tokens: torch.Tensor, x: torch.Tensor, state) -> torch.Tensor:
        """The pointer's mixture as sampling-ready logits: log p / temperature (up to a constant per row),
        banned tokens -inf."""
        if self.ring is None:
            raise ValueError("a pointer model's generation state comes from Stepper.zero_state")
        B, V = len(tokens), self.vocab_size
        logits = self._head(x)
        if logits.dtype != torch.float32:  # bf16 products: the mixture is formed in fp32
            logits = self._buffer("logits32", (B, V), torch.float32).copy_(logits)
        work = self._buffer("work", (B, V), torch.float32)
        logp = self.ring.step(x, tokens, logits, *state[-2:], work)
        if self.temperature > 0 and self.temperature != 1.0:
            logp.mul_(1.0 / self.temperature)
        if self.banned:
            logp[:, self.banned] = float("-inf")
        return logp

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [B, V] into a buffer reused at the next step of the same batch size (a fresh tensor of
        megabytes every step costs page faults comparable to the arithmetic): fp32, or bf16 (products summed
        in fp32, rounded once at the end) when the precision is bf16."""
        B = x.shape[0]
        if self.adaptive is not None:
            out = self.adaptive.log_prob(x)
            if self.head_scale > 0 and self.head_scale != 1.0:
                out.mul_(1.0 / self.head_scale)
            if self.head_banned:
                out[:, self.head_banned] = float("-inf")
            return out
        out = self._buffer("logits", (B, self.vocab_size), self.mm_dtype)
        if self.mm_dtype == torch.float32:
            return torch.addmm(self.head_b, x, self.head_w_t, out=out)
        xa = self._buffer("head_in", (B, self.head_w_t.shape[0]), self.mm_dtype)
        xa[:, : self.hidden].copy_(x)
        return torch.mm(xa, self.head_w_t, out=out)
