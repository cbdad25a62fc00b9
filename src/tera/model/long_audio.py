"""Hidden states of a long recording in bounded memory.

Run whole, a 10-minute file takes 10.1 GB with slim (the first conv block's output alone is
512 channels at 3.2 kHz, and attention is quadratic in length). Here:

1. The conv extractor runs over windows of `window_frames` output frames (10 s: its first
   block alone makes 512 x 3200 floats per second of audio). Every output frame
   sees a finite stretch of waveform (its receptive field, 400 samples for TERA2), so windows
   that overlap by that stretch give exactly the frames of one pass; the one non-local step,
   the first block's per-channel normalisation over the whole utterance ("default" mode),
   takes its mean and variance from a first pass over the same windows (float64 sums).
2. The encoder runs over chunks of `chunk_frames` frames, each with `context_frames` frames
   of left and right context that are computed and dropped. Attention inside a chunk does not
   see beyond its context, so this is an approximation; with 10 s of context the hidden
   states stay close to the whole-file pass (bounds in the README and the tests).

Memory is then the waveform, the conv features and the hidden states kept (all O(length),
a few MB per minute for each), plus one window or chunk of activations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tera.model.feature_extractor import ConvFeatureExtractor, MaskedInstanceNorm
from tera.model.tera import TeraFeatures, TeraModel, standardize

CONV_WINDOW_FRAMES = 500  # 10 s at 50 Hz


@torch.no_grad()
def first_block_statistics(extractor: ConvFeatureExtractor, wave: torch.Tensor,
                           window_frames: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-channel mean and variance of the first conv block's output over the whole
    waveform `[sample]` (what its instance norm uses), computed window by window; None
    when the first block has no such norm ("layer_norm" mode)."""
    first = extractor.conv_layers[0]
    if not isinstance(first.norm, MaskedInstanceNorm):
        return None
    geometry = extractor.geometry.head(1)
    frames = geometry.num_frames(wave.numel())
    step = window_frames * (extractor.geometry.hop // geometry.hop)  # its frames per window
    total = torch.zeros(first.conv.out_channels, dtype=torch.float64, device=wave.device)
    squares = torch.zeros_like(total)
    for start in range(0, frames, step):
        end = min(start + step, frames)
        piece = wave[geometry.samples(start, end)]
        y = first.conv(piece.view(1, 1, -1)).double()[0]  # [C, frames]
        total += y.sum(1)
        squares += y.pow(2).sum(1)
    mean = total / frames
    return mean, (squares / frames - mean.pow(2)).clamp(min=0)


@torch.no_grad()
def windowed_conv_features(extractor: ConvFeatureExtractor, wave: torch.Tensor,
                           window_frames: int) -> torch.Tensor:
    """The conv extractor's features of one waveform `[sample]` -> `[1, frame, C]`, computed
    over windows of `window_frames` output frames: equal to one pass over the whole
    waveform (within float rounding)."""
    geometry = extractor.geometry
    frames = geometry.num_frames(wave.numel())
    if frames < 1:
        return extractor(wave.view(1, -1))[0]  # too short: the extractor's own error
    statistics = first_block_statistics(extractor, wave, window_frames)
    first, rest = extractor.conv_layers[0], extractor.conv_layers[1:]
    pieces = []
    for start in range(0, frames, window_frames):
        end = min(start + window_frames, frames)
        x = wave[geometry.samples(start, end)].view(1, 1, -1)
        if statistics is None:
            x, _ = first(x, None)
        else:  # the first block, normalised with the whole waveform's statistics
            mean, var = statistics
            norm = first.norm
            y = first.conv(x).float()
            y = (y - mean.float()[:, None]) * torch.rsqrt(var.float()[:, None] + norm.eps)
            x = F.gelu((y * norm.weight.float()[:, None] + norm.bias.float()[:, None])
                       .to(x.dtype))
        for block in rest:
            x, _ = block(x, None)
        pieces.append(x.transpose(1, 2))
    return torch.cat(pieces, dim=1)


@torch.no_grad()
def chunked_hidden_states(model: TeraModel, x: torch.Tensor, chunk_frames: int,
                          context_frames: int, num_layers: int | None = None
                          ) -> list[torch.Tensor]:
    """The encoder over `x` `[1, frame, dim]` in chunks of `chunk_frames` frames, each with
    `context_frames` frames of context on both sides: [h_0, ..., h_L], each `[1, frame,
    dim]` (one tensor per layer, so that a caller can free them one by one)."""
    frames = x.size(1)
    layers = model.cfg.encoder_layers if num_layers is None else num_layers
    hidden = [torch.empty_like(x) for _ in range(layers + 1)]
    for start in range(0, frames, chunk_frames):
        end = min(start + chunk_frames, frames)
        left, right = max(0, start - context_frames), min(frames, end + context_frames)
        states = model.encoder(x[:, left:right], None, num_layers=num_layers)
        for kept, state in zip(hidden, states):
            kept[:, start:end] = state[:, start - left : end - left]
    return hidden


@torch.no_grad()
def extract_long(model: TeraModel, wave: torch.Tensor, chunk_frames: int,
                 context_frames: int, num_layers: int | None = None,
                 window_frames: int = CONV_WINDOW_FRAMES) -> TeraFeatures:
    """`model.extract_features` of one long waveform `[sample]` in bounded memory: conv
    windows of `window_frames` frames (exact), encoder chunks of `chunk_frames` with
    `context_frames` of context (approximate; exact when `chunk_frames` covers the whole
    recording). The model must be in eval mode."""
    if model.training:
        raise ValueError("extract_long is for inference: call model.eval() first")
    if model.cfg.normalize:
        wave = standardize(wave.view(1, -1), None)[0]
    features = windowed_conv_features(model.feature_extractor, wave, window_frames)
    x = model.layer_norm(features)
    if model.post_extract_proj is not None:
        x = model.post_extract_proj(x)
    del features
    hidden = chunked_hidden_states(model, x, chunk_frames, context_frames, num_layers)
    lengths = torch.tensor([x.size(1)], device=x.device)
    return TeraFeatures(hidden, None, lengths)
