"""Tensor helpers the model and its losses share: padding masks, masked statistics, the
autocast dtype."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def lengths_to_padding_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """`[batch]` lengths -> `[batch, max_length]` bool mask, True on padding."""
    positions = torch.arange(max_length, device=lengths.device)
    return positions.unsqueeze(0) >= lengths.unsqueeze(1)


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast computes products in on this device type, or None when it is off."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def masked_standardize(x: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-5
                       ) -> torch.Tensor:
    """Zero mean, unit variance along dim 1 over each row's valid positions, per trailing
    feature; padding becomes zero. x `[batch, time, ...]`, lengths `[batch]`."""
    valid = torch.arange(x.size(1), device=x.device) < lengths.unsqueeze(1)
    valid = valid.view(*valid.shape, *([1] * (x.dim() - 2))).to(x.dtype)
    count = valid.sum(1, keepdim=True).clamp(min=1.0)
    mean = (x * valid).sum(1, keepdim=True) / count
    var = (((x - mean) * valid) ** 2).sum(1, keepdim=True) / count
    return (x - mean) * torch.rsqrt(var + eps) * valid


def frame_mean_std(chunks: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation over all frames of `chunks`, each `[..., frame, feature]`
    (the leading shape the same in every chunk), per leading index and feature; accumulated
    in float64, returned in float32."""
    count, total, squares = 0, 0.0, 0.0
    for chunk in chunks:
        chunk = chunk.double()
        count += chunk.size(-2)
        total = total + chunk.sum(-2)
        squares = squares + chunk.pow(2).sum(-2)
    if count == 0:
        raise ValueError("no frames to compute statistics from")
    mean = total / count
    return mean.float(), (squares / count - mean.pow(2)).clamp(min=0).sqrt().float()
