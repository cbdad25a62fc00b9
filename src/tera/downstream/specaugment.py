"""SpecAugment on the featurizer's output, in training only, as s3prl's ASR recipe applies it
(`downstream/specaug.py`, switched on by the `specaug` block of `asr/config.yaml`).

The features are the weighted sum of the upstream's layers, `[batch, frame, dim]`; the
"frequency" axis is the feature dimension. Per utterance, in this order:

1. time warp: the utterance's frames are split at a random centre `c` (at least `window`
   frames from either end) and the two parts are resized (bicubic) so that the split moves to
   a random point within `window` frames of `c`; utterances of at most `2 * window` frames are
   left as they are;
2. `freq_masks` feature bands and 3. `time_masks` frame spans set to zero, each of a width
   drawn from `[low, high)` and a start drawn from `[0, axis - widest)`, where `axis` is the
   feature dimension or the batch's padded length and `widest` the widest mask drawn in the
   batch (so a time mask can fall on padding).

Random draws come from torch's generator, which the runner seeds per epoch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tera.errors import UserError


class SpecAugment(nn.Module):
    """Augments `[batch, frame, dim]` features with `[batch]` lengths while training; the
    identity in evaluation (`module.eval()`). Padding frames come back as zeros."""

    def __init__(self, time_warp_window: int = 5, freq_masks: int = 4,
                 freq_mask_widths: tuple[int, int] = (0, 50), time_masks: int = 2,
                 time_mask_widths: tuple[int, int] = (0, 40)) -> None:
        super().__init__()
        self.time_warp_window = time_warp_window
        self.freq_masks, self.freq_mask_widths = freq_masks, tuple(freq_mask_widths)
        self.time_masks, self.time_mask_widths = time_masks, tuple(time_mask_widths)

    def extra_repr(self) -> str:
        return (f"time_warp_window={self.time_warp_window}, freq_masks={self.freq_masks} "
                f"widths {self.freq_mask_widths}, time_masks={self.time_masks} widths "
                f"{self.time_mask_widths}")

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if self.time_warp_window > 0:
            x = torch.stack([_pad_to(time_warp(row[:n], self.time_warp_window), x.size(1))
                             for row, n in zip(x, lengths.tolist())])
        if self.freq_masks > 0:
            x = mask_along(x, 2, self.freq_masks, self.freq_mask_widths)
        if self.time_masks > 0:
            x = mask_along(x, 1, self.time_masks, self.time_mask_widths)
        return x


def time_warp(x: torch.Tensor, window: int) -> torch.Tensor:
    """One utterance `[frame, dim]` time-warped (see the module's docstring)."""
    frames = x.size(0)
    if frames - window <= window:
        return x
    centre = int(torch.randint(window, frames - window, (1,)))
    moved = int(torch.randint(centre - window, centre + window, (1,))) + 1
    image = x[None, None]  # [1, 1, frame, dim]: resized along frames only

    def resize(part: torch.Tensor, size: int) -> torch.Tensor:
        return F.interpolate(part, (size, x.size(1)), mode="bicubic", align_corners=False)

    return torch.cat([resize(image[:, :, :centre], moved),
                      resize(image[:, :, centre:], frames - moved)], dim=2)[0, 0]


def mask_along(x: torch.Tensor, axis: int, count: int, widths_range: tuple[int, int]
               ) -> torch.Tensor:
    """`count` spans per utterance along `axis` (1: frames, 2: features) of `x`
    `[batch, frame, dim]` set to zero, `widths_range[0] <= width < widths_range[1]`."""
    batch, size = x.size(0), x.size(axis)
    low, high = widths_range
    widths = torch.randint(low, high, (batch, count), device=x.device).unsqueeze(2)
    starts = torch.randint(0, max(1, size - int(widths.max())), (batch, count),
                           device=x.device).unsqueeze(2)
    positions = torch.arange(size, device=x.device)[None, None, :]
    masked = ((starts <= positions) & (positions < starts + widths)).any(dim=1)
    masked = masked.unsqueeze(2) if axis == 1 else masked.unsqueeze(1)
    return x.masked_fill(masked, 0.0)


def _pad_to(x: torch.Tensor, frames: int) -> torch.Tensor:
    return F.pad(x, (0, 0, 0, frames - x.size(0)))


def build_specaugment(cfg: dict | None) -> SpecAugment | None:
    """The SpecAugment a recipe's `downstream_expert.specaug` block asks for (s3prl's keys:
    apply_time_warp, time_warp_window, apply_freq_mask, num_freq_mask,
    freq_mask_width_range, apply_time_mask, num_time_mask, time_mask_width_range), or None
    when it asks for none."""
    if not cfg or not any(cfg.get(k) for k in ("apply_time_warp", "apply_freq_mask",
                                                "apply_time_mask")):
        return None

    def widths(key: str, default: tuple[int, int]) -> tuple[int, int]:
        value = cfg.get(key, default)
        if len(value) != 2 or not 0 <= int(value[0]) < int(value[1]):
            raise UserError(f"downstream_expert.specaug.{key}: expected [low, high) with "
                            f"0 <= low < high, got {list(value)}")
        return int(value[0]), int(value[1])

    return SpecAugment(
        time_warp_window=int(cfg.get("time_warp_window", 5)) if cfg.get("apply_time_warp")
        else 0,
        freq_masks=int(cfg.get("num_freq_mask", 2)) if cfg.get("apply_freq_mask") else 0,
        freq_mask_widths=widths("freq_mask_width_range", (0, 20)),
        time_masks=int(cfg.get("num_time_mask", 2)) if cfg.get("apply_time_mask") else 0,
        time_mask_widths=widths("time_mask_width_range", (0, 100)))
