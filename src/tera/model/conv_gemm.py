"""The conv extractor's blocks as matrix products on a CPU (see `ConvFeatureExtractor`).

Two custom autograd functions: `StridedConvGemm`, a strided conv over a `[rows, channel]`
matrix as GEMMs on views of it, and `NormalizedWindowConv`, the first block's conv and
instance norm as one GEMM per utterance, each with its backward written out. bf16 GEMMs
reach a CPU's matrix units; a bf16 `F.conv1d` much less.
"""

from __future__ import annotations

import torch


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

    With W_j `[C_out, C_in]` the weight of tap j and g_t = dL/dy_t:
    y_t = b + sum_j W_j x_(s t + j), so dL/dx_r = sum_(s t + j = r) W_j^T g_t,
    dL/dW_j = sum_t g_t x_(s t + j)^T and dL/db = sum_t g_t, each a GEMM per tap group.
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
    valid `[batch]`, weight `[C, 1, K]`, the norm's scale gamma and shift beta `[C]` ->
    `[batch, frame, C]`, the instance-normed conv output before the GELU. Per utterance,
    with x_t its windows, m and S their mean and covariance over its n = valid frames, and
    w_c channel c's weight:

        y_tc = gamma_c r_c (x_t - m) . w_c + beta_c,    r_c = (w_c^T S w_c + eps)^(-1/2)

    since the conv output x_t . w_c has mean m . w_c and variance w_c^T S w_c over those
    frames. So the normalised output is [x_t - m | 1] @ [w_c gamma_c r_c ; beta_c], one GEMM
    that writes it directly (no pass over the conv output for statistics, none to
    normalise). Frames past `valid` get the same formula and never enter m or S
    (padding-invariant). Statistics in float64.

    Backward, given g_tc = dL/dy_tc over all of an utterance's frames, from one GEMM
    G_c = sum_t g_tc (x_t - m) (a K-vector per channel) and the gradient's sum:

        dL/dw_c     = gamma_c r_c G_c - gamma_c r_c^3 (G_c . w_c) S w_c
        dL/dgamma_c = r_c (G_c . w_c)
        dL/dbeta_c  = sum_t g_tc

    each summed over the batch's utterances (the second term of dL/dw_c is the path
    through r_c: dr_c/dw_c = -r_c^3 S w_c; m does not depend on w). dL/dwindows is not
    computed (None): the windows are the waveform's, and the GEMM path runs only for
    waveforms that need no gradient (`ConvFeatureExtractor.uses_gemm`).
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
