"""TERA2: waveform in, masked reconstruction of stacked MFCC frames out (SPEC §1).

    waves [B, S] --conv extractor--> [B, T, 512] (50 Hz) --LayerNorm--> post_extract_proj
      --> dropout_input --> alterations (time mask with mask_emb, channel, magnitude)
      --> transformer encoder --> hidden states h_0..h_L --> final_proj --> [B, T, 78]

Two entry points, as torchaudio's `Wav2Vec2Model` / `HuBERTPretrainModel`:
`extract_features` (waveforms -> hidden states, no alterations, no head) for upstreams, and
`forward` (the pre-training pass: alterations, encoder, head) for the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tera.model.components import Dropout, GradMultiply
from tera.model.config import TARGET_DIM, TeraConfig
from tera.model.encoder import TransformerEncoder
from tera.model.feature_extractor import ConvFeatureExtractor
from tera.model.frozen_cache import Linear
from tera.model.masking import add_magnitude_noise, compute_span_mask, mask_channels
from tera.model.tensors import lengths_to_padding_mask, masked_standardize


@dataclass
class TeraFeatures:
    """What `extract_features` returns.

    hidden_states: [h_0, ..., h_L], each `[batch, frame, dim]`.
    padding_mask: `[batch, frame]`, True on padding (None when nothing is padded).
    frame_lengths: `[batch]` valid frames per utterance.
    """

    hidden_states: list[torch.Tensor]
    padding_mask: torch.Tensor | None
    frame_lengths: torch.Tensor

    @property
    def last_hidden_state(self) -> torch.Tensor:
        """The final layer's output, (B, T, D)."""
        return self.hidden_states[-1]


@dataclass
class TeraPretrainOutput:
    """What the pre-training forward returns.

    predictions: `[batch, frame, 78]` reconstruction of the stacked MFCC target frames.
    mask_indices: `[batch, frame]`, True on time-masked frames (None when mask_prob is 0).
    padding_mask: `[batch, frame]`, True on padding (None when nothing is padded).
    frame_lengths: `[batch]` valid frames per utterance.
    features_pen: mean square of the conv features over valid frames (scalar, float32).
    """

    predictions: torch.Tensor
    mask_indices: torch.Tensor | None
    padding_mask: torch.Tensor | None
    frame_lengths: torch.Tensor
    features_pen: torch.Tensor


class TeraModel(nn.Module):
    """TERA2 (module docstring): `extract_features` for hidden states, `forward` for the
    pre-training pass. Built from a `TeraConfig`; parameter names are fairseq's."""

    def __init__(self, cfg: TeraConfig, num_label_classes: int = 0) -> None:
        """`num_label_classes` > 0 adds the unused HuBERT `label_embs_concat` parameter, only
        so that checkpoints that carry it load and export unchanged."""
        super().__init__()
        self.cfg = cfg
        dim = cfg.encoder_embed_dim
        feature_dim = cfg.feature_dim
        self.feature_extractor = ConvFeatureExtractor(
            cfg.conv_layers, mode=cfg.extractor_mode, bias=cfg.conv_bias
        )
        self.layer_norm = nn.LayerNorm(feature_dim)
        self.post_extract_proj = Linear(feature_dim, dim) if feature_dim != dim else None
        self.dropout_input = Dropout(cfg.dropout_input)
        self.mask_emb = nn.Parameter(torch.empty(dim).uniform_())
        self.encoder = TransformerEncoder(
            dim=dim,
            ffn_dim=cfg.encoder_ffn_embed_dim,
            layers=cfg.encoder_layers,
            heads=cfg.encoder_attention_heads,
            conv_pos=cfg.conv_pos,
            conv_pos_groups=cfg.conv_pos_groups,
            dropout=cfg.dropout,
            attention_dropout=cfg.attention_dropout,
            activation_dropout=cfg.activation_dropout,
            layerdrop=cfg.encoder_layerdrop,
            layer_norm_first=cfg.layer_norm_first,
        )
        self.final_proj = nn.Linear(dim, TARGET_DIM)
        if num_label_classes > 0:
            final_dim = cfg.final_dim if cfg.final_dim > 0 else dim
            self.label_embs_concat = nn.Parameter(torch.rand(num_label_classes, final_dim))
        self._init_encoder_weights()

    def _init_encoder_weights(self) -> None:
        """BERT-style init of the transformer's linears (fairseq's `init_bert_params`)."""
        for module in self.encoder.layers.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                nn.init.zeros_(module.bias)

    def num_frames(self, num_samples: int | torch.Tensor) -> int | torch.Tensor:
        """Frames (50 Hz) the model makes from `num_samples` waveform samples."""
        return self.feature_extractor.geometry.num_frames(num_samples)

    def extract_features(self, waves: torch.Tensor, lengths: torch.Tensor | None = None,
                         num_layers: int | None = None) -> TeraFeatures:
        """Waveforms -> hidden states (no masking, no head): what upstreams use.

        waves `[batch, sample]` 16 kHz; lengths `[batch]` valid samples (None: all valid);
        num_layers: stop after this many transformer layers.
        """
        x, padding_mask, frame_lengths, _ = self._encoder_input(waves, lengths)
        return TeraFeatures(self.encoder(x, padding_mask, num_layers=num_layers), padding_mask,
                            frame_lengths)

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor | None = None,
                target_frames: int | None = None) -> TeraPretrainOutput:
        """Pre-training: waveforms -> masked encoding -> reconstruction head.

        waves `[batch, sample]` 16 kHz; lengths `[batch]` valid samples (None: all valid);
        target_frames: the number of target frames, to which the conv features are cut (the
        two sequences can differ by a frame). The training alterations (time, channel and
        magnitude masking) are applied to the encoder input; the head runs here so that
        data-parallel wrappers see every parameter used.
        """
        x, padding_mask, frame_lengths, features = self._encoder_input(waves, lengths,
                                                                       target_frames)
        features_pen = self._feature_penalty(features, padding_mask)
        x, mask_indices = self._alter(x, frame_lengths)
        hidden = self.encoder(x, padding_mask)[-1]
        return TeraPretrainOutput(self.final_proj(hidden), mask_indices, padding_mask,
                                  frame_lengths, features_pen)

    def _encoder_input(self, waves: torch.Tensor, lengths: torch.Tensor | None,
                       max_frames: int | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(encoder input `[batch, frame, dim]`, padding mask, frame lengths, conv features
        `[batch, frame, C]`): conv extractor, LayerNorm, projection, input dropout."""
        if lengths is not None and bool((lengths >= waves.size(1)).all()):
            lengths = None  # nothing is padded: take the unmasked (faster) paths
        if self.cfg.normalize:
            waves = standardize(waves, lengths)
        features, frame_lengths = self._extract(waves, lengths)
        if max_frames is not None:
            features = features[:, :max_frames]
        frames = features.size(1)
        if frame_lengths is None:
            frame_lengths = torch.full((features.size(0),), frames, device=features.device)
            padding_mask = None
        else:
            frame_lengths = frame_lengths.clamp(max=frames)
            padding_mask = lengths_to_padding_mask(frame_lengths, frames)
        x = self.layer_norm(features)
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        return self.dropout_input(x), padding_mask, frame_lengths, features

    def _extract(
        self, waves: torch.Tensor, lengths: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        mult = self.cfg.feature_grad_mult
        if mult <= 0 or not torch.is_grad_enabled():
            with torch.no_grad():
                return self.feature_extractor(waves, lengths)
        features, frame_lengths = self.feature_extractor(waves, lengths)
        if mult != 1.0:
            features = GradMultiply.apply(features, mult)
        return features, frame_lengths

    @staticmethod
    def _feature_penalty(features: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        """Mean square of the conv features; unlike the reference, padding is not counted."""
        squares = features.float().pow(2)
        if padding_mask is None:
            return squares.mean()
        valid = (~padding_mask).unsqueeze(-1).float()
        return (squares * valid).sum() / (valid.sum() * features.size(-1)).clamp(min=1.0)

    def _alter(
        self, x: torch.Tensor, frame_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg = self.cfg
        mask_indices = None
        if cfg.mask_prob > 0:
            mask_indices = compute_span_mask(
                frame_lengths, x.size(1), cfg.mask_prob, cfg.mask_length
            )
            x = torch.where(mask_indices.unsqueeze(-1), self.mask_emb.to(x.dtype), x)
        if cfg.mask_channel_prob > 0:
            x = mask_channels(x, cfg.mask_channel_prob, cfg.mask_channel_length)
        if cfg.mask_noise_prob > 0:
            x = add_magnitude_noise(x, cfg.mask_noise_prob, cfg.mask_noise_std)
        return x, mask_indices


def standardize(waves: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Zero mean, unit variance per utterance over its valid samples (the reference's
    `F.layer_norm(wav, wav.shape)`, eps 1e-5); padding stays zero."""
    if lengths is None:
        return torch.nn.functional.layer_norm(waves, waves.shape[-1:])
    return masked_standardize(waves.unsqueeze(-1), lengths).squeeze(-1)


def build_model(cfg: TeraConfig | dict, num_label_classes: int = 0) -> TeraModel:
    """A TERA2 model from a config (a `TeraConfig` or a reference-style dict)."""
    if isinstance(cfg, dict):
        cfg = TeraConfig.from_dict(cfg)
    return TeraModel(cfg, num_label_classes)
