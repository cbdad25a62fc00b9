"""Which number format a pre-training run computes in."""

from __future__ import annotations

import torch


def choose_precision(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a loss scaler is needed).

    auto: bf16 on CPU (bf16 matmuls run ~5x as fast as fp32 on AVX512-BF16 or AMX; measured
    2.6x-3.5x per training step, see benchmarks/pretrain_step.py) and on CUDA GPUs that
    support it, else fp16 with a loss scaler.
    """
    if amp == "fp32":
        return None, False
    if amp == "fp16":  # fp16's narrow range needs loss scaling on any device
        return torch.float16, True
    if amp == "bf16":
        return torch.bfloat16, False
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16, True
    return torch.bfloat16, False
