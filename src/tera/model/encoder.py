"""wav2vec 2.0's transformer encoder: positional conv, self-attention layers, every hidden
state returned. Shapes are `[batch, frame, feature]`.

Module and parameter names are those of fairseq's wav2vec 2.0 / TERA code, because the
state-dict keys are a compatibility contract (SPEC §2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tera.model.components import Dropout, dropout
from tera.model.frozen_cache import Linear, reuse_while_frozen
from tera.model.tensors import autocast_dtype


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
        """The conv weight `[C_out, C_in/groups, K]` the two parameters stand for."""
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=(0, 1), keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x `[batch, frame, channel]` -> `[batch, frame', channel]` (frame' = frame + 1 for an
        even kernel)."""
        bias = self.bias
        if x.device.type != "cpu":
            y = F.conv1d(x.transpose(1, 2), self.weight(), bias, padding=self.padding,
                         groups=self.groups)
            return y.transpose(1, 2)
        # On a CPU, as a 2-D conv over `[batch, channel, 1, frame]` in channels-last memory
        # (which `[batch, frame, channel]` already is): oneDNN's grouped kernels for that
        # layout are faster than `F.conv1d`'s. In float32 under autocast too: its output is
        # added to every frame, so its rounding error reaches every hidden state (and
        # torch 2.13's bf16 conv1d kernels are wrong for groups of fewer than 16 channels
        # with a kernel that is a multiple of 8).
        weight = reuse_while_frozen(self, "conv2d", lambda: self.weight().float().unsqueeze(2)
                                    .contiguous(memory_format=torch.channels_last))
        with torch.autocast("cpu", enabled=False):
            y = F.conv2d(x.float().unsqueeze(1).permute(0, 3, 1, 2), weight, bias.float(),
                         padding=(0, self.padding), groups=self.groups)
        return y.permute(0, 2, 3, 1).squeeze(1)

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
        y = self[0](x)
        if self.trim:
            y = y[:, : -self.trim]
        return F.gelu(y)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (fairseq names) on a fused
    q/k/v product: `F.scaled_dot_product_attention`, or on a CPU in bf16 or with attention
    dropout, softmax(q k^T / sqrt(d)) v written out (with the cheap `dropout`)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.k_proj = Linear(dim, dim)
        self.v_proj = Linear(dim, dim)
        self.q_proj = Linear(dim, dim)
        self.out_proj = Linear(dim, dim)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        """x `[batch, frame, dim]`, padding_mask `[batch, frame]` (True = pad)."""
        batch, frames, dim = x.shape
        weight, bias = reuse_while_frozen(self, ("qkv", autocast_dtype(x.device.type)),
                                          self._fused_projection)
        qkv = F.linear(x, weight, bias).view(batch, frames, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, T, dim/H]
        attn_mask = None if padding_mask is None else ~padding_mask[:, None, None, :]
        p = self.dropout if self.training else 0.0
        if x.device.type == "cpu" and (p > 0 or q.dtype == torch.bfloat16):
            # Written out: SDPA's CPU kernel is slower in bf16, and with dropout it would
            # use torch's costlier random numbers.
            scores = (q * q.size(-1) ** -0.5) @ k.transpose(-2, -1)  # [B, H, T, T]
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            y = dropout(scores.softmax(-1), p) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p)
        return self.out_proj(y.transpose(1, 2).reshape(batch, frames, dim))

    def _fused_projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The q/k/v projections as one weight and bias (in the autocast dtype when on)."""
        weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        bias = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
        dtype = autocast_dtype(weight.device.type)
        if dtype is None or torch.is_grad_enabled():  # autocast casts it in the product
            return weight, bias
        return weight.to(dtype), bias.to(dtype)


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
        self.fc1 = Linear(dim, ffn_dim)
        self.fc2 = Linear(ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.dropout = Dropout(dropout)
        self.activation_dropout = Dropout(activation_dropout)

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
        self.dropout = Dropout(dropout)
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
