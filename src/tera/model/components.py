"""The building blocks of TERA2: conv feature extractor, positional conv, transformer encoder.

Shapes are written `[batch, frame, feature]` (the conv extractor works in `[batch, channel,
frame]` with `F.conv1d`, or, on a CPU, as matrix products on a `[rows, channel]` slot layout:
see `ConvFeatureExtractor`). Valid lengths travel with the tensors (each conv block maps
`length -> (length - kernel) // stride + 1`), so padding is handled in one visible place and
never leaks into an utterance's frames.

Module and parameter names are those of fairseq's wav2vec 2.0 / TERA code, because the
state-dict keys are a compatibility contract (SPEC §2).
"""

from __future__ import annotations

import ctypes
import math
import sys
import weakref
from collections.abc import Callable, Iterable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from tera.errors import UserError

T = TypeVar("T")
# reuse_while_frozen's tensors per module, beside the module rather than in it, so that
# pickling, deepcopy and state dicts never carry them.
_REUSED: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def flush_denormals() -> None:
    """Compute with denormal floats as zeros (CPU). Small activations and gradients of a
    training model drift into the denormal range, where CPU arithmetic is many times slower
    (measured in the study's pre-training: 0.17 instead of 0.20 s per update)."""
    torch.set_flush_denormal(True)


def keep_freed_memory() -> None:
    """Let this process reuse the memory it frees (glibc, Linux): by default glibc maps
    every block above 32 MB afresh and unmaps it when freed, so a big activation's pages are
    faulted in again at every step (measured here: 25 ms per 50 MB tensor, a GEMM with such
    an output 1.4x slower, 10-15 % of a slim training step). Freed blocks now stay in the
    heap; the process holds on to its peak memory."""
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # another C library (musl): leave it as it is
        return
    m_trim_threshold, m_mmap_max = -1, -4
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 1 << 30)


def lengths_to_padding_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """`[batch]` lengths -> `[batch, max_length]` bool mask, True on padding."""
    positions = torch.arange(max_length, device=lengths.device)
    return positions.unsqueeze(0) >= lengths.unsqueeze(1)


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast computes products in on this device type, or None when it is off."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def reuse_while_frozen(module: nn.Module, key: object, build: Callable[[], T]) -> T:
    """`build()`: tensors made from `module`'s parameters (a cast, fused or re-laid-out
    weight), kept beside the module (a weak map: pickles and copies of it never carry them)
    while no gradient is recorded, and reused until a parameter changes, so that inference
    does not remake them at every call (slim in bf16: the casts of every weight, the q/k/v
    concatenations, the conv taps and the positional conv's weight norm were about 5 % of
    its time on 2 threads). A parameter has changed when its version counter moved (any
    in-place update: an optimizer step, `load_state_dict`) or its storage did (a move or a
    dtype conversion; the cache holds the old storage, so its address cannot be given to a
    new one meanwhile). `key` names what is built, with whatever else it depends on (the
    dtype). Under gradient recording, or for parameters made under `torch.inference_mode`
    (which have no version counter): `build()` each time."""
    if torch.is_grad_enabled():
        return build()
    params = list(module.parameters())
    if any(p.is_inference() for p in params):
        return build()
    cache = _REUSED.setdefault(module, {})
    if key in cache:
        sources, versions, value = cache[key]
        if len(sources) == len(params) and all(
            p.data_ptr() == s.data_ptr() and p._version == v and p.shape == s.shape
            and p.dtype == s.dtype for p, s, v in zip(params, sources, versions)
        ):
            return value
    value = build()
    cache[key] = ([p.detach() for p in params], [p._version for p in params], value)
    return value


class Linear(nn.Linear):
    """`nn.Linear` that, in inference under autocast, keeps its weight and bias in the
    autocast dtype (`reuse_while_frozen`) instead of having autocast cast them at every call.
    Same parameters and state-dict keys as `nn.Linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = autocast_dtype(x.device.type)
        if torch.is_grad_enabled() or dtype is None or self.weight.dtype == dtype:
            return super().forward(x)
        weight, bias = reuse_while_frozen(self, dtype, lambda: (
            self.weight.to(dtype), None if self.bias is None else self.bias.to(dtype)))
        return F.linear(x.to(dtype), weight, bias)


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
        return self._modules["0"]  # type: ignore[return-value]

    @property
    def norm(self) -> MaskedInstanceNorm | ChannelLayerNorm | None:
        return self._modules.get("2")  # type: ignore[return-value]

    @property
    def gemm_friendly(self) -> bool:
        """Whether `gemm_forward` covers this block: the first block (one input channel,
        any kernel) or a kernel of at most two strides (one or two matrix products)."""
        return self.in_channels == 1 or self.kernel <= 2 * self.stride

    def out_lengths(self, lengths: torch.Tensor | None) -> torch.Tensor | None:
        if lengths is None:
            return None
        return (torch.div(lengths - self.kernel, self.stride, rounding_mode="floor") + 1
                ).clamp(min=0)

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


def tap_groups(kernel: int, stride: int) -> list[tuple[int, int]]:
    """The kernel's taps in groups of `stride`: [(first tap, end tap), ...]. Group `j` meets
    the input rows `stride * (t + j) ...` of output frame `t`."""
    return [(start, min(start + stride, kernel)) for start in range(0, kernel, stride)]


def conv_taps(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A conv weight `[C_out, C_in, kernel]` as the matrix `[C_out, kernel * C_in]` in
    `dtype`: the columns of tap j are j * C_in ... (j + 1) * C_in - 1."""
    c_out, c_in, kernel = weight.shape
    return weight.permute(0, 2, 1).to(dtype).reshape(c_out, kernel * c_in)


def strided_conv_products(x: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor | None,
                          kernel: int, stride: int) -> torch.Tensor:
    """The forward of `StridedConvGemm`: x `[rows, C_in]`, taps `[C_out, kernel * C_in]`
    (`conv_taps`) and bias in x's dtype -> `[rows / stride, C_out]`."""
    c_in = taps.size(1) // kernel
    rows = x.size(0) // stride
    view = x.view(rows, stride * c_in)
    out = None
    for shift, (start, end) in enumerate(tap_groups(kernel, stride)):
        inputs = view[shift:, : (end - start) * c_in]
        weights = taps[:, start * c_in : end * c_in].t()
        if out is None:
            out = inputs @ weights if bias is None else torch.addmm(bias, inputs, weights)
        else:
            out[: rows - shift].addmm_(inputs, weights)
    return out


class StridedConvGemm(torch.autograd.Function):
    """A strided conv over rows as matrix products on views, forward and backward.

    x `[rows, C_in]` with `rows` a multiple of the stride is viewed as `[rows / stride,
    stride * C_in]`: row t then holds the inputs of taps 0..stride-1 of output t, and row
    t + 1 those of taps stride..2 stride-1. So a kernel of at most two strides (wav2vec 2.0's
    k3/s2 and k2/s2) is one or two GEMMs on views, and the backward writes the input's
    gradient with GEMMs into the same views: nothing is copied, gathered or scattered. The
    last output row of an utterance's slot sees the next slot's first rows (or, at the end,
    misses its second product): the slot layout keeps such rows past the valid frames.
    weight `[C_out, C_in, kernel]` (any dtype; the product runs in x's dtype).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride):  # noqa: ANN001, ANN205
        kernel = weight.size(2)
        taps = conv_taps(weight.detach(), x.dtype)
        out = strided_conv_products(x, taps, None if bias is None else bias.detach().to(x.dtype),
                                    kernel, stride)
        ctx.save_for_backward(x, taps)
        ctx.stride, ctx.weight_shape, ctx.weight_dtype = stride, weight.shape, weight.dtype
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, taps = ctx.saved_tensors
        stride = ctx.stride
        c_out, c_in, kernel = ctx.weight_shape
        grad = grad.contiguous()
        rows = grad.size(0)
        view = x.view(rows, stride * c_in)
        groups = tap_groups(kernel, stride)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_view = torch.empty_like(view)
            for shift, (start, end) in enumerate(groups):
                weights = taps[:, start * c_in : end * c_in]
                if shift == 0:
                    torch.mm(grad, weights, out=grad_view[:, : (end - start) * c_in])
                    grad_view[:, (end - start) * c_in :].zero_()
                else:
                    grad_view[shift:, : (end - start) * c_in].addmm_(grad[: rows - shift], weights)
            grad_x = grad_view.view_as(x)
        if ctx.needs_input_grad[1]:
            grad_taps = torch.empty_like(taps)
            for shift, (start, end) in enumerate(groups):
                torch.mm(grad[: rows - shift].t(), view[shift:, : (end - start) * c_in],
                         out=grad_taps[:, start * c_in : end * c_in])
            grad_weight = (grad_taps.view(c_out, kernel, c_in).permute(0, 2, 1)
                           .to(ctx.weight_dtype).contiguous())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0, dtype=torch.float32).to(ctx.weight_dtype)
        return grad_x, grad_weight, grad_bias, None


class NormalizedWindowConv(torch.autograd.Function):
    """The first conv block's product and its per-utterance instance norm in one GEMM.

    windows `[batch, frame, K]` (the waveform's K-sample windows, one per output frame),
    weight `[C, 1, K]`, norm scale/shift `[C]` -> `[batch, frame, C]`, the instance-normed
    conv output before the GELU. Mean and variance of y = windows @ w over an utterance's
    `valid` frames follow from the windows' K-dim mean m and covariance S: mean m.w, variance
    w.S.w. So the normalised output is (windows - m) @ (w * scale / std) + shift, one GEMM per
    utterance that writes the normalised values directly (no pass over the conv output for
    statistics, no normalisation pass). The backward needs only G = (windows - m)^T grad
    (plus the gradient's sum): the gradients of w, scale and shift follow from G, S and the
    statistics in closed form. Statistics in float64. Frames past `valid` are normalised
    with the utterance's statistics and never enter them (padding-invariant).
    """

    @staticmethod
    def forward(ctx, windows, valid, weight, scale, shift, eps):  # noqa: ANN001, ANN205
        batch, frames, width = windows.shape
        count = valid.clamp(min=1).to(torch.float64)
        mask = (torch.arange(frames, device=windows.device) < valid[:, None]).unsqueeze(-1)
        wide = windows.to(torch.float64)
        mean = (wide * mask).sum(1) / count[:, None]  # [B, K]
        centered = wide - mean[:, None]
        masked = centered * mask
        covariance = masked.transpose(1, 2) @ masked / count[:, None, None]  # [B, K, K]
        w = weight.detach().reshape(-1, width).t().to(torch.float64)  # [K, C]
        rstd = (((covariance @ w) * w).sum(1) + eps).rsqrt()  # [B, C]
        gain = rstd * scale.detach().to(torch.float64)
        # [centered windows | 1] @ [w * gain; shift]: the ones column adds the shift in the
        # product, and gives the gradient's sum in the backward.
        augmented = torch.cat([centered, torch.ones_like(centered[..., :1])], -1).to(windows.dtype)
        product = torch.cat([w * gain[:, None],
                             shift.detach().to(torch.float64).expand(batch, 1, -1)], 1)
        out = augmented @ product.to(windows.dtype)
        ctx.save_for_backward(augmented, covariance, w, rstd, scale)
        ctx.weight_shape, ctx.weight_dtype = weight.shape, weight.dtype
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        augmented, covariance, w, rstd, scale = ctx.saved_tensors
        moments = (augmented.transpose(1, 2) @ grad.to(augmented.dtype)).to(torch.float64)
        centered_grad, grad_sum = moments[:, :-1], moments[:, -1]  # [B, K, C], [B, C]
        along_w = (centered_grad * w).sum(1)  # [B, C]: sum_t grad_t * (centered_t . w)
        gamma = scale.detach().to(torch.float64)
        grad_w = (gamma * rstd)[:, None] * centered_grad \
            - (gamma * rstd.pow(3) * along_w)[:, None] * (covariance @ w)
        grad_weight = grad_w.sum(0).t().reshape(ctx.weight_shape).to(ctx.weight_dtype)
        grad_scale = (rstd * along_w).sum(0).to(scale.dtype)
        grad_shift = grad_sum.sum(0).to(scale.dtype)
        return None, None, grad_weight, grad_scale, grad_shift, None


class ConvFeatureExtractor(nn.Module):
    """Waveform `[batch, sample]` -> features `[batch, frame, C]` at 16000 / prod(strides) Hz.

    mode "default": instance norm on the first block only; "layer_norm": LayerNorm on every
    block (fairseq's `extractor_mode`).

    On a CPU the blocks run as matrix products (bf16 GEMMs reach the matrix units, a bf16
    `F.conv1d` much less) in a slot layout: the batch is one `[rows, channel]` matrix in
    which every utterance owns `slot / stride_product` rows per block, its valid frames
    first. Rows past an utterance's frames hold values no valid frame depends on (a frame
    only sees the inputs of its own receptive field), so nothing is masked, copied or
    padded between blocks, and each utterance keeps its own statistics. On CUDA (cuDNN)
    and for layer strings the GEMM path does not cover, `F.conv1d` runs in `[batch, channel,
    frame]`.
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
        self.stride_product = math.prod(stride for _, _, stride in layers)

    def uses_gemm(self, waves: torch.Tensor) -> bool:
        """Whether `forward` takes the matrix-product path for these waveforms."""
        return (waves.device.type == "cpu" and not waves.requires_grad
                and all(block.gemm_friendly for block in self.conv_layers))

    def forward(
        self, waves: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
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
        frames = output_frames(samples, [(0, b.kernel, b.stride) for b in self.conv_layers])
        if frames < 1:
            raise UserError(f"audio too short for the conv extractor: {samples} samples give "
                            "no frame")
        dtype = autocast_dtype("cpu") or waves.dtype
        # Each utterance's slot: its samples padded to a multiple of the strides' product (and
        # the first kernel's overhang), so that every block's rows divide by its stride.
        slot = -(-samples // self.stride_product) * self.stride_product
        overhang = max(first.kernel - first.stride, 0)
        with torch.autocast("cpu", enabled=False):
            padded = F.pad(waves, (0, slot - samples + overhang)).to(dtype)
            x = padded.unfold(1, first.kernel, first.stride)  # [B, slot / stride, kernel]
            lengths = first.out_lengths(lengths)
            valid = lengths if lengths is not None else torch.full(
                (batch,), (samples - first.kernel) // first.stride + 1, device=waves.device)
            x = first.gemm_forward(x.contiguous(), valid)
            for block in self.conv_layers[1:]:
                x = block.gemm_forward(x)
                lengths = block.out_lengths(lengths)
        return x.view(batch, -1, x.size(-1))[:, :frames], lengths


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
        """x `[batch, frame, channel]` -> `[batch, frame', channel]` (frame' = frame + 1 for an
        even kernel)."""
        bias = self.bias
        if x.device.type != "cpu":
            y = F.conv1d(x.transpose(1, 2), self.weight(), bias, padding=self.padding,
                         groups=self.groups)
            return y.transpose(1, 2)
        # On a CPU, as a 2-D conv over `[batch, channel, 1, frame]` in channels-last memory
        # (which `[batch, frame, channel]` already is): oneDNN's grouped kernels for that
        # layout took half the time of `F.conv1d`'s (slim: 0.14 s instead of 0.30 s forward
        # and backward, 4 x 4 s). In float32 under autocast too: its output is added to every
        # frame, and in bf16 it took slim's bf16 hidden states from 1.0 % to 1.5 % off fp32
        # (torch 2.13's bf16 conv1d kernels are also wrong for groups of fewer than 16
        # channels with a kernel that is a multiple of 8).
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


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout` with cheaper random numbers on a CPU: 16-bit integers cut from 64-bit
    draws instead of `bernoulli_` (the dropout of 1.3 M bf16 values: 2.9 ms instead of 6.2;
    slim's training step draws 23 M). An element is dropped with probability
    round(p * 2^16) / 2^16 (0.1000061 for 0.1). Same global generator: seeding works as
    before."""
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
            # Written out: SDPA's CPU kernel takes twice as long in bf16 (4 x 8 heads x 200
            # frames: 3.8 ms against 2.2), and dropout sends it down this path anyway.
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
