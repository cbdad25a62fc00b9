"""The building blocks of TERA2: conv feature extractor, positional conv, transformer encoder.

Shapes are written `[batch, frame, feature]` (the conv extractor works in
`[batch, channel, frame]` inside). Valid lengths travel with the tensors (each
conv block maps `length -> (length - kernel) // stride + 1`), so padding is handled in one
visible place and never leaks into an utterance's frames.

Module and parameter names are those of fairseq's wav2vec 2.0 / TERA code, because the
state-dict keys are a compatibility contract (SPEC §2).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from tera.errors import UserError


def flush_denormals() -> None:
    """Compute with denormal floats as zeros (CPU). Small activations and gradients of a
    training model drift into the denormal range, where CPU arithmetic is many times slower
    (measured in the study's pre-training: 0.17 instead of 0.20 s per update)."""
    torch.set_flush_denormal(True)


def lengths_to_padding_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """`[batch]` lengths -> `[batch, max_length]` bool mask, True on padding."""
    positions = torch.arange(max_length, device=lengths.device)
    return positions.unsqueeze(0) >= lengths.unsqueeze(1)


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


class GradMultiply(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `scale` (fairseq's `feature_grad_mult`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # noqa: ANN001
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        return grad * ctx.scale, None


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
        # The fused kernel on each utterance's own frames, padding set to zero: masked sums
        # over the padded batch made a training step of the extractor 1.4x slower.
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
    gelu)`. (A zero-copy strided-matmul formulation was measured against `F.conv1d` on this
    CPU, bf16 and fp32, forward and backward: conv1d was as fast or faster.)
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, norm: str, bias: bool
    ) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, bias=bias)
        nn.init.kaiming_normal_(conv.weight)
        self.add_module("0", conv)
        if norm == "instance":
            self.add_module("2", MaskedInstanceNorm(out_channels))
        elif norm == "layer":
            self.add_module("2", ChannelLayerNorm(out_channels))

    @property
    def conv(self) -> nn.Conv1d:
        return self._modules["0"]  # type: ignore[return-value]

    @property
    def norm(self) -> MaskedInstanceNorm | ChannelLayerNorm | None:
        return self._modules.get("2")  # type: ignore[return-value]

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
        if lengths is not None:
            lengths = torch.div(lengths - self.kernel, self.stride, rounding_mode="floor") + 1
            lengths = lengths.clamp(min=0)
        if self.norm is not None:
            x = self.norm(x, lengths)
        return F.gelu(x), lengths


class ConvFeatureExtractor(nn.Module):
    """Waveform `[batch, sample]` -> features `[batch, frame, C]` at 16000 / prod(strides) Hz.

    mode "default": instance norm on the first block only; "layer_norm": LayerNorm on every
    block (fairseq's `extractor_mode`).
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

    def forward(
        self, waves: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if waves.dim() != 2:
            raise UserError(
                f"expected waveforms of shape [batch, sample], got {tuple(waves.shape)}"
            )
        x = waves.unsqueeze(1)
        for block in self.conv_layers:
            x, lengths = block(x, lengths)
        return x.transpose(1, 2), lengths


def output_frames(num_samples: int | torch.Tensor, layers: list[tuple[int, int, int]]):
    """Number of frames the conv extractor makes from `num_samples` (int or tensor)."""
    for _, kernel, stride in layers:
        num_samples = (num_samples - kernel) // stride + 1
    if isinstance(num_samples, torch.Tensor):
        return num_samples.clamp(min=0)
    return max(num_samples, 0)


class WeightNormConv1d(nn.Module):
    """Conv1d whose weight is `weight_g * weight_v / ||weight_v||`, the norm taken over every
    dimension but the kernel axis (fairseq's `weight_norm(conv, dim=2)`).

    Stored as `weight_g` `[1, 1, K]` and `weight_v` `[C_out, C_in/groups, K]`, the names of
    fairseq checkpoints; the newer `parametrizations.weight.original0/1` names load too.
    """

    def __init__(self, channels: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.padding = kernel // 2
        std = math.sqrt(4.0 / (kernel * channels))
        weight = torch.randn(channels, channels // groups, kernel) * std
        self.weight_g = nn.Parameter(weight.norm(dim=(0, 1), keepdim=True))
        self.weight_v = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(channels))

    def weight(self) -> torch.Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=(0, 1), keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x `[batch, channel, frame]`."""
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # torch 2.13's CPU kernels get grouped bf16 convolutions wrong when a group has
            # fewer than 16 channels and the kernel is a multiple of 8 (over 100 % relative
            # error; the tiny preset's 128 channels in 16 groups, kernel 64, are such a case),
            # so on CPU this conv runs in float32.
            with torch.autocast("cpu", enabled=False):
                return F.conv1d(x.float(), self.weight().float(), self.bias.float(),
                                padding=self.padding, groups=self.groups)
        return F.conv1d(x, self.weight(), self.bias, padding=self.padding, groups=self.groups)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        for old, new in (("original0", "weight_g"), ("original1", "weight_v")):
            key = f"{prefix}parametrizations.weight.{old}"
            if key in state_dict:
                state_dict[prefix + new] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ConvolutionalPositionalEmbedding(nn.Sequential):
    """Relative positional embedding: grouped conv over time (length kept), then GELU.

    A Sequential so that the conv's keys are `pos_conv.0.*` as in fairseq.
    """

    def __init__(self, channels: int, kernel: int, groups: int) -> None:
        super().__init__(WeightNormConv1d(channels, kernel, groups))
        self.trim = 1 if kernel % 2 == 0 else 0  # an even kernel yields one extra frame

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x `[batch, frame, channel]` -> same shape."""
        y = self[0](x.transpose(1, 2))
        if self.trim:
            y = y[..., : -self.trim]
        return F.gelu(y).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (fairseq names), computed
    by `F.scaled_dot_product_attention` on a fused q/k/v product."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        """x `[batch, frame, dim]`, padding_mask `[batch, frame]` (True = pad)."""
        batch, frames, dim = x.shape
        weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        bias = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
        qkv = F.linear(x, weight, bias).view(batch, frames, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, T, dim/H]
        attn_mask = None if padding_mask is None else ~padding_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(y.transpose(1, 2).reshape(batch, frames, dim))


class EncoderLayer(nn.Module):
    """Transformer layer. Post-LN (TERA2's default): x = LN(x + attn(x)); x = LN(x + FFN(x)).
    Pre-LN (`layer_norm_first`): x = x + attn(LN(x)); x = x + FFN(LN(x))."""

    def __init__(self, dim: int, ffn_dim: int, heads: int, dropout: float,
                 attention_dropout: float, activation_dropout: float,
                 layer_norm_first: bool = False) -> None:
        super().__init__()
        self.layer_norm_first = layer_norm_first
        self.self_attn = SelfAttention(dim, heads, attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.activation_dropout = nn.Dropout(activation_dropout)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        if self.layer_norm_first:
            x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), padding_mask))
            return x + self.dropout(self._feed_forward(self.final_layer_norm(x)))
        x = self.self_attn_layer_norm(x + self.dropout(self.self_attn(x, padding_mask)))
        return self.final_layer_norm(x + self.dropout(self._feed_forward(x)))

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_dropout(F.gelu(self.fc1(x))))


class TransformerEncoder(nn.Module):
    """wav2vec 2.0's encoder. Post-LN: x + posconv(x) -> LayerNorm -> dropout -> layers.
    Pre-LN (`layer_norm_first`): x + posconv(x) -> dropout -> layers -> LayerNorm.

    `forward` returns every hidden state: h_0 is the input of the first layer, h_i the
    output of layer i, the last one the encoder's output (after the final LayerNorm in
    pre-LN), as s3prl's tera2 upstream reports them (SPEC §2). The reference pads the
    sequence to an even length before the layers; that frame is masked out of attention and
    dropped again, so it changes nothing and is not reproduced here.
    """

    def __init__(self, dim: int, ffn_dim: int, layers: int, heads: int, conv_pos: int,
                 conv_pos_groups: int, dropout: float, attention_dropout: float,
                 activation_dropout: float, layerdrop: float,
                 layer_norm_first: bool = False) -> None:
        super().__init__()
        self.layer_norm_first = layer_norm_first
        self.dropout = nn.Dropout(dropout)
        self.layerdrop = layerdrop
        self.pos_conv = ConvolutionalPositionalEmbedding(dim, conv_pos, conv_pos_groups)
        self.layer_norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            EncoderLayer(dim, ffn_dim, heads, dropout, attention_dropout, activation_dropout,
                         layer_norm_first)
            for _ in range(layers)
        )

    def forward(
        self, x: torch.Tensor, padding_mask: torch.Tensor | None, num_layers: int | None = None
    ) -> list[torch.Tensor]:
        """x `[batch, frame, dim]` -> [h_0, ..., h_L], each `[batch, frame, dim]`.

        `num_layers` stops after that many layers (for extracting a middle layer cheaply).
        With LayerDrop in training a skipped layer adds no entry.
        """
        if padding_mask is not None:
            # Zero the padding so the positional conv sees what it would see for the
            # utterance alone (its own zero padding).
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        hidden_states = [x]
        layers = self.layers if num_layers is None else self.layers[:num_layers]
        for layer in layers:
            if self.training and self.layerdrop > 0 and torch.rand(()) < self.layerdrop:
                continue
            x = layer(x, padding_mask)
            hidden_states.append(x)
        if self.layer_norm_first and len(hidden_states) > 1:
            hidden_states[-1] = self.layer_norm(hidden_states[-1])
        return hidden_states
