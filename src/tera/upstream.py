"""Upstreams: what downstream tasks see of a model (SPEC §2, s3prl's contract).

An upstream takes a list of 1-D 16 kHz waveforms and returns every hidden state, padded to
the longest utterance, with the valid frame count of each:

    {"hidden_states": [h_0, ..., h_L] each [B, T, D], "last_hidden_state": [B, T, D],
     "lengths": [B], "padding_mask": [B, T] (True = pad)}

`tera2` is a TERA checkpoint in any format (50 Hz); `fbank` and `mfcc` are the classic
feature baselines (100 Hz). `Featurizer` is SUPERB's learnable weighted sum of layers.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from tera.audio import fbank, mfcc39
from tera.errors import UserError
from tera.model.components import lengths_to_padding_mask
from tera.model.tera import TeraModel

log = logging.getLogger(__name__)
UPSTREAMS = ("tera2", "fbank", "mfcc")


def _pad(wavs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    if not wavs:
        raise UserError("an upstream needs at least one waveform")
    lengths = torch.tensor([len(w) for w in wavs], device=wavs[0].device)
    return pad_sequence([w.float() for w in wavs], batch_first=True), lengths


class Upstream(nn.Module):
    """Base class: subclasses set `name`, `num_layers`, `hidden_size` and implement
    `forward` and `get_downsample_rate`."""

    name = "upstream"
    num_layers = 1
    hidden_size = 0

    def get_downsample_rate(self) -> int:
        raise NotImplementedError

    def identity(self) -> str:
        """A stable hash of the weights and options, for caches of computed features."""
        digest = hashlib.sha256(self.name.encode())
        digest.update(repr(sorted(self.options().items())).encode())
        for key, tensor in sorted(self.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def options(self) -> dict:
        return {}

    @staticmethod
    def _result(hidden_states: list[torch.Tensor], lengths: torch.Tensor) -> dict:
        return {
            "hidden_states": hidden_states,
            "last_hidden_state": hidden_states[-1],
            "lengths": lengths,
            "padding_mask": lengths_to_padding_mask(lengths, hidden_states[-1].size(1)),
        }


class TeraUpstream(Upstream):
    name = "tera2"

    def __init__(self, model: TeraModel) -> None:
        super().__init__()
        self.model = model.eval()
        self.num_layers = model.cfg.encoder_layers + 1
        self.hidden_size = model.cfg.encoder_embed_dim

    def get_downsample_rate(self) -> int:
        rate = 1
        for _, _, stride in self.model.cfg.conv_layers:
            rate *= stride
        return rate

    def forward(self, wavs: list[torch.Tensor]) -> dict:
        waves, lengths = _pad(wavs)
        out = self.model(waves, lengths if len(wavs) > 1 else None)
        return self._result(out.hidden_states, out.frame_lengths)


class FbankUpstream(Upstream):
    name = "fbank"

    def __init__(self, num_mel_bins: int = 80, deltas: bool = False) -> None:
        super().__init__()
        self.num_mel_bins, self.deltas = num_mel_bins, deltas
        self.hidden_size = num_mel_bins * (3 if deltas else 1)

    def options(self) -> dict:
        return {"num_mel_bins": self.num_mel_bins, "deltas": self.deltas}

    def get_downsample_rate(self) -> int:
        return 160

    def forward(self, wavs: list[torch.Tensor]) -> dict:
        waves, lengths = _pad(wavs)
        feats, frames = fbank(waves, lengths, num_mel_bins=self.num_mel_bins)
        if self.deltas:
            from tera.audio import compute_deltas

            first = compute_deltas(feats, lengths=frames)
            feats = torch.cat([feats, first, compute_deltas(first, lengths=frames)], dim=-1)
            feats = feats * (~lengths_to_padding_mask(frames, feats.size(1))).unsqueeze(-1)
        return self._result([feats], frames)


class MfccUpstream(Upstream):
    name = "mfcc"
    hidden_size = 39

    def get_downsample_rate(self) -> int:
        return 160

    def forward(self, wavs: list[torch.Tensor]) -> dict:
        waves, lengths = _pad(wavs)
        feats, frames = mfcc39(waves, lengths)
        return self._result([feats], frames)


def random_tera(preset: str = "slim", seed: int = 0) -> TeraModel:
    """A randomly initialised TERA2 of a preset, the same for a given seed."""
    from tera.presets import load_preset, model_config

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return TeraModel(model_config(load_preset(preset)))
    finally:
        torch.random.set_rng_state(generator_state)


def load_upstream(name: str, ckpt: str | Path | None = None, *, preset: str = "slim",
                  seed: int = 0, deltas: bool = False) -> Upstream:
    """Build an upstream by name: "tera2" (from `ckpt` in any checkpoint format, or a random
    model of `preset` when no checkpoint is given), "fbank" or "mfcc"."""
    if name in ("tera2", "tera"):
        if ckpt is None:
            log.warning("tera2 without a checkpoint: a randomly initialised %s model "
                        "(seed %d)", preset, seed)
            return TeraUpstream(random_tera(preset, seed))
        from tera.checkpoint import load_checkpoint

        return TeraUpstream(load_checkpoint(ckpt).model)
    if name == "fbank":
        return FbankUpstream(deltas=deltas)
    if name == "mfcc":
        return MfccUpstream()
    raise UserError(f"unknown upstream {name!r}; choose one of {', '.join(UPSTREAMS)}")


class Featurizer(nn.Module):
    """SUPERB's weighted sum of an upstream's layers with learnable softmax weights.

    With `layer_norm`, each layer is normalised (no affine) before the sum.
    """

    def __init__(self, num_layers: int, hidden_size: int, layer_norm: bool = False) -> None:
        super().__init__()
        self.hidden_size, self.layer_norm = hidden_size, layer_norm
        self.weights = nn.Parameter(torch.zeros(num_layers))

    @property
    def layer_weights(self) -> torch.Tensor:
        return F.softmax(self.weights.detach(), dim=0)

    def forward(self, hidden_states: list[torch.Tensor]) -> torch.Tensor:
        if len(hidden_states) != self.weights.numel():
            raise UserError(f"the featurizer expects {self.weights.numel()} layers, got "
                            f"{len(hidden_states)}")
        if len(hidden_states) == 1:
            return hidden_states[0]
        stacked = torch.stack(hidden_states)  # [L, B, T, D]
        if self.layer_norm:
            stacked = F.layer_norm(stacked, stacked.shape[-1:])
        weights = F.softmax(self.weights, dim=0).to(stacked.dtype)
        return (weights.view(-1, 1, 1, 1) * stacked).sum(dim=0)
