"""The training precision's gradient scaler; which precision a device trains in is hpcrnn/model/precision.py.

bf16 keeps fp32's exponent range, so it needs no loss scaling; fp16 (for GPUs without native bf16, such as
the V100) does: its GradScaler's state is saved in train_state.pt so that a resumed run continues with the
scale it had reached.
"""

from __future__ import annotations

import torch


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (a disabled scaler otherwise: its calls pass through)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
