"""Small layers the model shares: `Dropout` with cheap random numbers on a CPU, and
`GradMultiply` (fairseq's `feature_grad_mult`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GradMultiply(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `scale` (fairseq's `feature_grad_mult`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # noqa: ANN001
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        return grad * ctx.scale, None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout` with cheaper random numbers on a CPU: 16-bit integers cut from 64-bit
    draws instead of `bernoulli_` (a training step draws one per activation). An element is
    dropped with probability round(p * 2^16) / 2^16 (0.1000061 for 0.1). The draws come
    from the global generator, so `torch.manual_seed` governs them."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    count = x.numel()
    draws = torch.randint(-(2**63), 2**63 - 1, ((count + 3) // 4,), dtype=torch.int64)
    keep = draws.view(torch.int16)[:count].view(x.shape) >= round(p * 2**16) - 2**15
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Module):
    """`nn.Dropout` through `dropout` (cheap random numbers on a CPU)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
