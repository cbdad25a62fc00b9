"""TERA's input alterations: time (span masking), channel and magnitude.

The time mask follows fairseq's `compute_mask_indices` with static span lengths, but runs
vectorised on the tensors' device instead of a numpy loop per utterance:

1. per utterance of `n` valid frames, `max(min_masks, floor(p * n / L + U))` spans of `L`
   frames (U uniform: stochastic rounding);
2. span starts drawn without replacement among the first `n - L` frames (fewer if the
   utterance is so short that they would not fit), spans may overlap and are cut at `n`;
3. every row is then thinned at random to the smallest masked count in the batch, as fairseq
   does, so all rows mask the same number of frames.

With p = 0.8 and L = 10 about 1 - e^-0.8 ≈ 55 % of the frames end up masked.
"""

from __future__ import annotations

import torch


def compute_span_mask(
    lengths: torch.Tensor, max_length: int, mask_prob: float, mask_length: int, min_masks: int = 2
) -> torch.Tensor:
    """Random span mask `[batch, max_length]` (True = masked), never on padding.

    lengths `[batch]`: valid frames per row.
    """
    device = lengths.device
    batch = lengths.size(0)
    lengths = lengths.long()
    num_spans = (mask_prob * lengths / mask_length + torch.rand(batch, device=device)).floor()
    num_spans = num_spans.long().clamp(min=min_masks)
    # fairseq shortens the start range when the spans would not fit; it keeps at least
    # num_spans + 1 candidate starts.
    start_range = torch.where(
        lengths - mask_length <= num_spans, num_spans + 1, lengths - mask_length
    )
    start_range = torch.minimum(start_range, lengths).clamp(min=0)
    num_spans = torch.minimum(num_spans, start_range)
    most_spans = int(num_spans.max().item()) if batch else 0
    mask = torch.zeros(batch, max_length + 1, dtype=torch.bool, device=device)
    if most_spans == 0:
        return mask[:, :max_length]

    # Starts without replacement: the top-k of random scores among the allowed positions.
    positions = torch.arange(max_length, device=device)
    scores = torch.rand(batch, max_length, device=device)
    scores = scores.masked_fill(positions >= start_range.unsqueeze(1), -1.0)
    starts = scores.topk(most_spans, dim=1).indices  # [B, most_spans]
    used = torch.arange(most_spans, device=device) < num_spans.unsqueeze(1)

    frames = starts.unsqueeze(-1) + torch.arange(mask_length, device=device)  # [B, S, L]
    inside = used.unsqueeze(-1) & (frames < lengths.view(-1, 1, 1))
    frames = torch.where(inside, frames, max_length)  # column max_length is a dump slot
    mask.scatter_(1, frames.view(batch, -1), True)
    mask = mask[:, :max_length]
    return _thin_to_smallest_count(mask, lengths > 0)


def _thin_to_smallest_count(mask: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Randomly unmask frames so that every row in `rows` keeps the smallest masked count."""
    counts = mask.sum(dim=1)
    if not bool(rows.any()):
        return mask
    keep = int(counts[rows].min().item())
    scores = torch.rand(mask.shape, device=mask.device).masked_fill(~mask, -1.0)
    kept = torch.zeros_like(mask)
    if keep > 0:
        kept.scatter_(1, scores.topk(keep, dim=1).indices, True)
    return kept & mask


def mask_channels(
    x: torch.Tensor, mask_prob: float, mask_length: int
) -> torch.Tensor:
    """Channel alteration: zero random spans of feature channels, the same for every frame
    of an utterance. x `[batch, frame, channel]`."""
    batch, _, channels = x.shape
    full = torch.full((batch,), channels, device=x.device)
    channel_mask = compute_span_mask(full, channels, mask_prob, mask_length, min_masks=0)
    return x.masked_fill(channel_mask.unsqueeze(1), 0.0)


def add_magnitude_noise(x: torch.Tensor, prob: float, std: float) -> torch.Tensor:
    """Magnitude alteration: with probability `prob` per utterance, add N(0, std²) noise to
    all of its frames. x `[batch, frame, channel]`."""
    chosen = torch.rand(x.size(0), 1, 1, device=x.device) < prob
    return x + chosen * torch.randn_like(x) * std
