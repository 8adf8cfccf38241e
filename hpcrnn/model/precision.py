"""Which precision a stage computes in on this device: the one rule for train.precision and generate.precision.

bf16 is used only where the hardware multiplies it natively: a CUDA GPU of compute capability 8.0 or later,
or a CPU with bf16 kernels (AMX tiles or AVX512-BF16). Elsewhere emulated bf16 is slower than fp32 and, on a
CPU, oneDNN has no bf16 LSTM at all. So:

- training on a CPU is fp32 whatever is asked (the recurrent kernels there are fp32's);
- training on a GPU: ``auto`` is bf16 where native, else fp16 (with loss scaling); ``bf16`` on a GPU without
  it is refused, since fp16 is the fast alternative there;
- generation (fp32 or bf16 matrix products, see generate/stepper.py): ``auto`` is bf16 where native, else
  fp32; ``bf16`` where it is not native runs fp32 and says so in one line.

``HPCRNN_CPU_BF16=0`` (or ``1``) overrides the CPU probe, so a machine with bf16 kernels can run the path of
one without (tests force it so), and an unusual CPU can be told.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Literal

import torch

from hpcrnn.errors import ConfigError

Stage = Literal["train", "generate"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_bf16() -> bool:
    """Does this CPU have bf16 kernels (AMX tiles or AVX512-BF16)? ``HPCRNN_CPU_BF16`` overrides the probe."""
    forced = os.environ.get("HPCRNN_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # a private probe: never let it fail a job
            continue
    return False


def native_bf16(device: torch.device) -> bool:
    """Does ``device`` multiply bf16 in hardware, not by emulation?"""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_bf16()


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "this CPU"


def resolve_precision(
    want: str, device: torch.device, stage: Stage, src: str = "", say: Callable[[str], None] | None = None
) -> str:
    """``want`` (auto, bf16, fp16, fp32) as ``stage`` computes it on ``device`` (see the module doc). A
    refusal is a ConfigError naming the key; a fallback is said once through ``say``."""
    key = f"{stage}.precision"
    native = native_bf16(device)
    if stage == "train":
        if device.type != "cuda":
            return "fp32"
        if want == "auto":
            return "bf16" if native else "fp16"
        if want == "bf16" and not native:
            where = f"{src}: " if src else ""
            raise ConfigError(f"{where}{key}: bf16: {_device_name(device)} has no native bf16; use fp16 or auto")
        return want
    if want == "auto":
        return "bf16" if native else "fp32"
    if want == "bf16" and not native:
        if say is not None:
            say(f"{key}: bf16: {_device_name(device)} has no native bf16 kernels; generating in fp32")
        return "fp32"
    return want


def autocast(precision: str, device: torch.device):
    """The autocast context of ``precision`` (a disabled one for fp32)."""
    dtype = DTYPES.get(precision)
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def product(x: torch.Tensor, w_t: torch.Tensor, bias: torch.Tensor | None = None, out: torch.Tensor | None = None):
    """``bias + x @ w_t`` (or ``out += x @ w_t``) in fp32, the product in ``w_t``'s precision: for bf16
    weights, bf16 inputs summed in fp32 (the product comes out bf16, as under autocast), added to fp32.
    Generation's weights are stored in its precision once, so this is its one rule for a matrix product."""
    if w_t.dtype == torch.float32:
        if out is not None:
            return out.addmm_(x, w_t)
        return x @ w_t if bias is None else torch.addmm(bias, x, w_t)
    prod = torch.mm(x.to(w_t.dtype), w_t)
    if out is not None:
        return out.add_(prod)
    return prod.float() if bias is None else torch.add(bias, prod)
