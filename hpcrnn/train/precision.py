"""The training precision on this device: train.precision resolved, its autocast, and its gradient scaler.

Mixed precision applies on CUDA only; the CPU trains in fp32. bf16 keeps fp32's exponent range, so it needs
no loss scaling; fp16 (for GPUs without native bf16, such as the V100) does: its GradScaler's state is saved
in train_state.pt so that a resumed run continues with the scale it had reached.
"""

from __future__ import annotations

import torch

from hpcrnn.errors import ConfigError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Does this GPU multiply bf16 in hardware (compute capability 8.0 and later), not by emulation?"""
    return device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(want: str, device: torch.device, src: str = "") -> str:
    """``want`` (auto, bf16, fp16, fp32) as this device trains it. Raises ConfigError for bf16 on a GPU
    without native bf16, where emulation would make it slower than fp32."""
    if device.type != "cuda":
        return "fp32"
    native = native_bf16(device)
    if want == "auto":
        return "bf16" if native else "fp16"
    if want == "bf16" and not native:
        name = torch.cuda.get_device_name(device)
        raise ConfigError(
            f"{src + ': ' if src else ''}train.precision: bf16: {name} has no native bf16; use fp16 or auto"
        )
    return want


def autocast(precision: str, device: torch.device):
    """The autocast context of ``precision`` (a disabled one for fp32)."""
    dtype = _DTYPES.get(precision)
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (a disabled scaler otherwise: its calls pass through)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
