"""How much memory a stage will need, from its config, against what this machine (or the Slurm job, or the
GPU) has: refused in one line naming the keys before anything is allocated, not an internal error or the
OOM killer halfway through. The figures are lower bounds (weights, optimizer state, the output layer's
activations, the pointer's scores and memory), so a refusal is never a false alarm."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from hpcrnn.config import Config, ModelConfig
from hpcrnn.errors import ConfigError
from hpcrnn.model.adaptive import cutoffs_for
from hpcrnn.model.rnn import shapes

F32 = 4
GB = 2**30


def parameters(cfg: ModelConfig, vocab_size: int) -> int:
    n = 0
    for shape in shapes(cfg, vocab_size).values():
        k = 1
        for d in shape:
            k *= d
        n += k
    if cfg.tie_weights:
        n -= vocab_size * cfg.embedding  # one tensor under two names
    return n


def train_bytes(cfg: Config, vocab_size: int, world_size: int = 1) -> int:
    """A lower bound of one training rank's memory: weights, gradients and optimizer state; the logits and
    their gradient for one step; the pointer's scores over its memory and the memory itself."""
    t, d, m = cfg.train, cfg.data, cfg.model
    p = parameters(m, vocab_size)
    states = {"adam": 2, "adamw": 2}.get(t.optimizer, 1 if t.momentum else 0)
    b = max(1, t.batch_size // max(1, world_size))
    rows = b * (1 if t.loss == "last" else d.window)
    # the output layer's scores a row: the whole vocabulary, or the adaptive softmax's head (its clusters
    # score only the rows whose target falls in them)
    cols = vocab_size if m.softmax == "full" else cutoffs_for(m.cutoffs, vocab_size)[0]
    total = (2 + states) * p * F32 + 2 * rows * cols * F32
    if m.pointer:
        # windows start from an empty memory; stream and documents carry up to model.pointer places
        mem = 0 if d.sequences == "windows" else m.pointer
        total += 2 * b * d.window * (mem + d.window) * F32 + b * mem * (m.pointer_key or m.hidden) * F32
        total += rows * cols * F32
    return total


def generate_bytes(cfg: Config, model_cfg: ModelConfig, vocab_size: int, ring: int) -> int:
    """A lower bound of a generation job's memory: the weights, the batch's output-layer buffers and, with
    a pointer, its ring of ``ring`` places per slot (keys and tokens)."""
    b = cfg.generate.batch_size
    total = parameters(model_cfg, vocab_size) * F32 + 3 * b * vocab_size * F32
    if model_cfg.pointer:
        total += b * min(model_cfg.pointer, ring) * ((model_cfg.pointer_key or model_cfg.hidden) * F32 + 8)
        total += 2 * b * vocab_size * F32  # the ring's mixture: its work and mass buffers
    return total


def available(device: torch.device) -> tuple[int, str]:
    """(bytes, where): the GPU's memory, else the Slurm job's memory, the cgroup's limit or the machine's."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory, torch.cuda.get_device_name(device)
    mb = os.environ.get("SLURM_MEM_PER_NODE")
    if mb and mb.isdigit():
        return int(mb) * 2**20, f"Slurm job {os.environ.get('SLURM_JOB_ID', '?')} (--mem {mb}M)"
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            return int(limit), "this cgroup's memory.max"
    except OSError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024, "this machine"
    except (OSError, ValueError, IndexError):
        pass
    return 0, "unknown"


def check(need: int, device: torch.device, keys: str, src: str, ranks_here: int = 1) -> None:
    """Refuse (ConfigError naming ``keys``) when ``need`` bytes, ``ranks_here`` times over, exceed what
    ``device`` has. Unknown capacity refuses nothing."""
    have, where = available(device)
    if device.type == "cpu":
        need *= max(1, ranks_here)
    if have and need > have:
        per = f" ({ranks_here} ranks on this node)" if device.type == "cpu" and ranks_here > 1 else ""
        raise ConfigError(
            f"{src + ': ' if src else ''}needs at least {need / GB:,.1f} GB{per} but {where} has "
            f"{have / GB:,.1f} GB: lower {keys}"
        )
