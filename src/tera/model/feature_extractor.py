"""The conv feature extractor: waveform `[batch, sample]` -> features `[batch, frame, C]`.

A stack of conv blocks (Conv1d, optional norm, GELU). Valid lengths travel with the tensors
(each block maps `length -> (length - kernel) // stride + 1`, `conv_geometry`), so padding
is handled in one visible place and never leaks into an utterance's frames. On a CPU the
same weights run as matrix products (`tera.model.conv_gemm`) in a slot layout.

Module and parameter names are those of fairseq's wav2vec 2.0 / TERA code, because the
state-dict keys are a compatibility contract (SPEC §2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tera.errors import UserError
from tera.model.conv_gemm import (
    NormalizedWindowConv,
    StridedConvGemm,
    conv_taps,
    strided_conv_products,
)
from tera.model.conv_geometry import ConvGeometry, conv_frames
from tera.model.frozen_cache import reuse_while_frozen
from tera.model.tensors import autocast_dtype


class MaskedInstanceNorm(nn.Module):
    """GroupNorm with one group per channel, statistics over valid frames only.

    fairseq's first conv block uses `GroupNorm(C, C)`, which normalises each channel over
    time *including padding*, so an utterance's features change with the batch it is in.
    Here mean and variance come from the utterance's own frames; for an unpadded utterance
    the result is identical. Computed in float32 like fairseq's `Fp32GroupNorm`.
    Parameter names (`weight`, `bias`) match `nn.GroupNorm`.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """x `[batch, channel, frame]` -> same shape."""
        dtype = x.dtype
        x = x.float()
        frames = x.size(2)
        weight, bias = self.weight.float(), self.bias.float()
        if lengths is None or bool((lengths >= frames).all()):  # nothing padded: fused kernel
            return F.group_norm(x, x.size(1), weight, bias, self.eps).to(dtype)
        # The fused kernel on each utterance's own frames, padding set to zero: faster
        # than masked sums over the padded batch.
        rows = [F.pad(F.group_norm(x[i : i + 1, :, : max(n, 1)], x.size(1), weight, bias,
                                   self.eps), (0, frames - max(n, 1)))
                for i, n in enumerate(lengths.clamp(max=frames).tolist())]
        return torch.cat(rows).to(dtype)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of every frame (the extractor's "layer_norm" mode), in
    float32.

    Its LayerNorm is child "1" so that keys read `conv_layers.i.2.1.weight` as in fairseq's
    `Sequential(TransposeLast, Fp32LayerNorm, TransposeLast)`.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.add_module("1", nn.LayerNorm(channels))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """x `[batch, channel, frame]` -> same shape."""
        norm: nn.LayerNorm = self._modules["1"]  # type: ignore[assignment]
        y = F.layer_norm(
            x.float().transpose(1, 2), norm.normalized_shape, norm.weight.float(),
            norm.bias.float(), norm.eps,
        )
        return y.transpose(1, 2).to(x.dtype)


class ConvLayerBlock(nn.Module):
    """One conv block: Conv1d (no bias by default) -> [norm] -> GELU.

    The norm is a per-channel instance norm on the first block in "default" mode, a channel
    LayerNorm on every block in "layer_norm" mode. The children are registered as "0" (conv)
    and "2" (norm) so that state-dict keys match fairseq's `Sequential(conv, dropout, norm,
    gelu)`. `forward` is the `F.conv1d` path (`[batch, channel, frame]`); on a CPU the
    extractor runs the same weights as matrix products instead (`gemm_forward`).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, norm: str, bias: bool
    ) -> None:
        super().__init__()
        self.in_channels, self.kernel, self.stride = in_channels, kernel, stride
        conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, bias=bias)
        nn.init.kaiming_normal_(conv.weight)
        self.add_module("0", conv)
        if norm == "instance":
            self.add_module("2", MaskedInstanceNorm(out_channels))
        elif norm == "layer":
            self.add_module("2", ChannelLayerNorm(out_channels))

    @property
    def conv(self) -> nn.Conv1d:
        """The block's Conv1d (index 0, as in fairseq's state dict)."""
        return self._modules["0"]  # type: ignore[return-value]

    @property
    def norm(self) -> MaskedInstanceNorm | ChannelLayerNorm | None:
        """The block's norm, if any (index 2, as in fairseq's state dict)."""
        return self._modules.get("2")  # type: ignore[return-value]

    @property
    def gemm_friendly(self) -> bool:
        """Whether `gemm_forward` covers this block: the first block (one input channel,
        any kernel) or a kernel of at most two strides (one or two matrix products)."""
        return self.in_channels == 1 or self.kernel <= 2 * self.stride

    def out_lengths(self, lengths: torch.Tensor | None) -> torch.Tensor | None:
        """The block's output frames of `[batch]` input lengths (None stays None)."""
        return None if lengths is None else conv_frames(lengths, self.kernel, self.stride)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x `[batch, in_channel, frame]` -> (`[batch, out_channel, frame']`, lengths')."""
        if x.size(2) < self.kernel:
            raise UserError(
                f"audio too short for the conv extractor: {x.size(2)} frames reach a block "
                f"of kernel {self.kernel}"
            )
        x = self.conv(x)
        lengths = self.out_lengths(lengths)
        if self.norm is not None:
            x = self.norm(x, lengths)
        return F.gelu(x), lengths

    def gemm_forward(self, x: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """The block on rows: x `[rows, in_channel]` (the slot layout of
        `ConvFeatureExtractor`; for the first block the waveform's windows `[batch, slot
        frames, kernel]`) -> `[rows / stride, out_channel]`. `valid` `[batch]`: the frames
        each utterance's instance-norm statistics are taken over (first block only)."""
        weight, bias = self.conv.weight, self.conv.bias
        if self.in_channels == 1:  # windows x weight: a 1-tap conv over `kernel` channels
            windows = x
            if isinstance(self.norm, MaskedInstanceNorm):
                x = NormalizedWindowConv.apply(windows, valid, weight, self.norm.weight,
                                               self.norm.bias, self.norm.eps)
                return F.gelu(x.view(-1, x.size(-1)))
            x = StridedConvGemm.apply(windows.reshape(-1, self.kernel),
                                      weight.view(weight.size(0), self.kernel, 1), bias, 1)
        elif torch.is_grad_enabled():
            x = StridedConvGemm.apply(x, weight, bias, self.stride)
        else:  # inference: the taps kept in x's dtype between calls
            taps = reuse_while_frozen(self.conv, ("taps", x.dtype),
                                      lambda: conv_taps(weight.detach(), x.dtype))
            if bias is not None:
                bias = bias.to(x.dtype)
            x = strided_conv_products(x, taps, bias, self.kernel, self.stride)
        if isinstance(self.norm, ChannelLayerNorm):
            norm: nn.LayerNorm = self.norm._modules["1"]  # type: ignore[assignment]
            x = F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        return F.gelu(x)


class ConvFeatureExtractor(nn.Module):
    """Waveform `[batch, sample]` -> features `[batch, frame, C]` at 16000 / prod(strides) Hz.

    mode "default": instance norm on the first block only; "layer_norm": LayerNorm on every
    block (fairseq's `extractor_mode`). `geometry` says how frames sit on the waveform (hop,
    receptive field, frame counts).

    On a CPU the blocks run as matrix products (bf16 GEMMs reach the matrix units, a bf16
    `F.conv1d` much less) in a slot layout: the batch is one `[rows, channel]` matrix in
    which every utterance owns a slot (its samples padded to a multiple of the hop, so
    `slot / hop` rows after the last block), its valid frames first. Rows past an
    utterance's frames hold values no valid frame depends on (a frame only sees the inputs
    of its own receptive field), so nothing is masked, copied or padded between blocks,
    and each utterance keeps its own statistics. On CUDA (cuDNN) and for layer strings the
    GEMM path does not cover, `F.conv1d` runs in `[batch, channel, frame]`.
    """

    def __init__(
        self, layers: list[tuple[int, int, int]], mode: str = "default", bias: bool = False
    ) -> None:
        super().__init__()
        blocks = []
        in_channels = 1
        for i, (channels, kernel, stride) in enumerate(layers):
            if mode == "layer_norm":
                norm = "layer"
            else:
                norm = "instance" if i == 0 else "none"
            blocks.append(ConvLayerBlock(in_channels, channels, kernel, stride, norm, bias))
            in_channels = channels
        self.conv_layers = nn.ModuleList(blocks)
        self.geometry = ConvGeometry.of(layers)

    def uses_gemm(self, waves: torch.Tensor) -> bool:
        """Whether `forward` takes the matrix-product path for these waveforms."""
        return (waves.device.type == "cpu" and not waves.requires_grad
                and all(block.gemm_friendly for block in self.conv_layers))

    def forward(
        self, waves: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """waves `[batch, sample]`, lengths `[batch]` valid samples (None: all valid) ->
        (features `[batch, frame, C]`, `[batch]` valid frames or None)."""
        if waves.dim() != 2:
            raise UserError(
                f"expected waveforms of shape [batch, sample], got {tuple(waves.shape)}"
            )
        if self.uses_gemm(waves):
            return self.gemm_forward(waves, lengths)
        return self.conv1d_forward(waves, lengths)

    def conv1d_forward(
        self, waves: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`forward` with `F.conv1d` in `[batch, channel, frame]`, whatever the device."""
        x = waves.unsqueeze(1)
        for block in self.conv_layers:
            x, lengths = block(x, lengths)
        return x.transpose(1, 2), lengths

    def gemm_forward(
        self, waves: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`forward` as matrix products in the slot layout (CPU; every block
        `gemm_friendly`)."""
        batch, samples = waves.shape
        first = self.conv_layers[0]
        frames = self.geometry.num_frames(samples)
        if frames < 1:
            raise UserError(f"audio too short for the conv extractor: {samples} samples give "
                            "no frame")
        dtype = autocast_dtype("cpu") or waves.dtype
        # Each utterance's slot: its samples padded to a multiple of the strides' product (and
        # the first kernel's overhang), so that every block's rows divide by its stride.
        hop = self.geometry.hop
        slot = -(-samples // hop) * hop
        overhang = max(first.kernel - first.stride, 0)
        with torch.autocast("cpu", enabled=False):
            padded = F.pad(waves, (0, slot - samples + overhang)).to(dtype)
            x = padded.unfold(1, first.kernel, first.stride)  # [B, slot / stride, kernel]
            lengths = first.out_lengths(lengths)
            valid = lengths if lengths is not None else torch.full(
                (batch,), conv_frames(samples, first.kernel, first.stride), device=waves.device)
            x = first.gemm_forward(x.contiguous(), valid)
            for block in self.conv_layers[1:]:
                x = block.gemm_forward(x)
                lengths = block.out_lengths(lengths)
        return x.view(batch, -1, x.size(-1))[:, :frames], lengths
