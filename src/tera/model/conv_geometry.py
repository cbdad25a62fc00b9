"""Where a conv stack's output frames sit on its input: frame counts, hop, receptive field.

A conv layer of kernel k and stride s makes `(n - k) // s + 1` frames of `n` inputs
(`conv_frames`, the one formula); a stack of them is described by `ConvGeometry`, which the
conv feature extractor owns and which presets build from a config's layer list. Plain
Python: counts may be ints or integer tensors, and nothing here imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def conv_frames(num_inputs: Any, kernel: int, stride: int) -> Any:
    """Frames one conv layer makes of `num_inputs` inputs (an int, or an integer tensor
    element-wise): `(num_inputs - kernel) // stride + 1`, and 0 when too short."""
    frames = (num_inputs - kernel) // stride + 1
    return max(frames, 0) if isinstance(frames, int) else frames.clamp(min=0)


@dataclass(frozen=True)
class ConvGeometry:
    """The (kernel, stride) of each layer of a conv stack, first layer first.

    hop: input samples between consecutive output frames (the product of the strides).
    receptive_field: input samples one output frame sees (400 for TERA2's extractor).
    Output frame t sees samples `t * hop ... t * hop + receptive_field - 1`.
    """

    layers: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, conv_layers: Sequence[tuple[int, int, int]]) -> ConvGeometry:
        """From fairseq's layer list, (channels, kernel, stride) per layer
        (`TeraConfig.conv_layers`, what `ConvFeatureExtractor` is built from)."""
        return cls(tuple((kernel, stride) for _, kernel, stride in conv_layers))

    @property
    def hop(self) -> int:
        """Input samples between two output frames (the product of the strides)."""
        return math.prod(stride for _, stride in self.layers)

    @property
    def receptive_field(self) -> int:
        """Input samples one output frame sees (also the fewest samples that give a frame)."""
        field = 1
        for kernel, stride in reversed(self.layers):
            field = (field - 1) * stride + kernel
        return field

    def layer_frames(self, num_samples: Any) -> list[Any]:
        """Frames out of each layer for `num_samples` input samples (int or tensor)."""
        frames = []
        for kernel, stride in self.layers:
            num_samples = conv_frames(num_samples, kernel, stride)
            frames.append(num_samples)
        return frames

    def num_frames(self, num_samples: Any) -> Any:
        """Output frames of the stack for `num_samples` input samples (int or tensor)."""
        return self.layer_frames(num_samples)[-1]

    def samples(self, start: int, end: int) -> slice:
        """The input samples output frames `start ... end - 1` see, as a slice."""
        return slice(start * self.hop, (end - 1) * self.hop + self.receptive_field)

    def head(self, count: int) -> ConvGeometry:
        """The geometry of the first `count` layers."""
        return ConvGeometry(self.layers[:count])
