"""The TERA2 objective: L1 reconstruction of stacked MFCC frames at the masked positions,
plus the weighted feature penalty (SPEC §1)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tera.audio import tera_targets
from tera.model.tensors import frame_mean_std, masked_standardize
from tera.model.tera import TeraModel


@dataclass
class TargetStats:
    """Per-dimension mean and standard deviation of the 78-dim targets over a training set."""

    mean: torch.Tensor  # [78], float32
    std: torch.Tensor  # [78], float32

    def standardize(self, targets: torch.Tensor) -> torch.Tensor:
        """`[batch, frame, 78]` -> the same, standardised."""
        return (targets - self.mean.to(targets.device)) / self.std.to(targets.device)

    def to_dict(self) -> dict[str, list[float]]:
        """Mean and std as lists, for a checkpoint."""
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, state: dict) -> TargetStats:
        """The statistics back from `to_dict`'s form."""
        return cls(torch.tensor(state["mean"], dtype=torch.float32),
                   torch.tensor(state["std"], dtype=torch.float32))


def target_statistics(waves: Iterable[torch.Tensor]) -> TargetStats:
    """Mean and standard deviation of every target dimension over all frames of `waves`
    (1-D 16 kHz tensors)."""
    mean, std = frame_mean_std(tera_targets(wave.unsqueeze(0))[0][0] for wave in waves)
    return TargetStats(mean, std.clamp(min=1e-4))


@dataclass
class LossOutput:
    """What `tera_loss` returns: the loss to back-propagate and its parts, for the logs."""
    loss: torch.Tensor  # the value to back-propagate (reconstruction + weight * penalty)
    reconstruction: torch.Tensor  # mean L1 over masked, non-padded frames and all 78 dims
    features_pen: torch.Tensor
    masked_frames: int
    frames: int  # non-padded frames that entered the encoder


def tera_loss(
    model: TeraModel | torch.nn.parallel.DistributedDataParallel,
    waves: torch.Tensor,
    lengths: torch.Tensor | None = None,
    *,
    feature_pen_weight: float = 10.0,
    target_norm: str = "none",
    target_stats: TargetStats | None = None,
) -> LossOutput:
    """The pre-training forward (masking, head) and the loss for a batch.

    waves `[batch, sample]`, lengths `[batch]` valid samples. Targets come from the clean
    waveform (the alterations act on the encoder input only); features and targets are cut to
    the shorter of the two sequences, as the reference does.

    target_norm "none" regresses the raw MFCC frames (the reference). On raw targets c0
    (values near 50) dominates the L1 and a small model spends its first thousand updates
    learning per-utterance means (measured: a tiny model on one utterance is still at the
    mean-predictor level after 400 updates; standardised, it halves its loss in 200).
    "dataset" standardises each of the 78 dimensions with the training set's mean and
    standard deviation (`target_stats`): every dimension counts alike, and what sets one
    utterance apart from another (speaker, channel) stays in the target. "utterance"
    standardises over the utterance's own frames, which removes exactly that: the model is
    never asked for a speaker's spectral envelope.
    """
    targets, target_lengths = tera_targets(waves, lengths)
    if target_norm == "dataset":
        if target_stats is None:
            raise ValueError("target_norm 'dataset' needs target_stats (see target_statistics)")
        targets = target_stats.standardize(targets)
    elif target_norm == "utterance":
        targets = masked_standardize(targets, target_lengths)
    elif target_norm != "none":
        raise ValueError(f"target_norm must be 'none', 'dataset' or 'utterance', got "
                         f"{target_norm!r}")
    output = model(waves, lengths, target_frames=targets.size(1))
    frames = output.predictions.size(1)
    targets = targets[:, :frames]
    valid = torch.arange(frames, device=waves.device) < torch.minimum(
        output.frame_lengths, target_lengths
    ).unsqueeze(1)
    selected = valid if output.mask_indices is None else valid & output.mask_indices
    predictions = output.predictions[selected].float()
    reconstruction = F.l1_loss(predictions, targets[selected].float())
    loss = reconstruction + feature_pen_weight * output.features_pen
    return LossOutput(
        loss=loss,
        reconstruction=reconstruction.detach(),
        features_pen=output.features_pen.detach(),
        masked_frames=int(selected.sum()),
        frames=int(valid.sum()),
    )
