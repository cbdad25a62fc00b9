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

from tera.audio import FRAME_LENGTH, FRAME_SHIFT, compute_deltas, fbank, mfcc39
from tera.errors import UserError
from tera.model.config import TeraConfig
from tera.model.long_audio import extract_long
from tera.model.tensors import lengths_to_padding_mask
from tera.model.tera import TeraModel

log = logging.getLogger(__name__)
UPSTREAMS = ("tera2", "fbank", "mfcc")
# s3prl's names for a TERA2 checkpoint given with -k (its tera2 hub entries; the fork's README
# uses `tera2_local`): the same upstream as `tera2`.
TERA2_CHECKPOINT_NAMES = ("tera2_local", "tera2_custom", "tera2_url")
PRECISIONS = ("auto", "bf16", "fp32")


def _pad(wavs: list[torch.Tensor], device: torch.device | None = None
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D waveforms into `[B, S]` (zero padded) with their lengths `[B]`."""
    if not wavs:
        raise UserError("an upstream needs at least one waveform")
    for i, wave in enumerate(wavs):
        if wave.dim() != 1:
            raise UserError(f"waveform {i} has shape {tuple(wave.shape)}; an upstream takes "
                            "1-D 16 kHz waveforms")
    device = device or wavs[0].device
    lengths = torch.tensor([len(w) for w in wavs], device=device)
    return pad_sequence([w.to(device, torch.float32) for w in wavs], batch_first=True), lengths


class Upstream(nn.Module):
    """Base class: subclasses set `name`, `num_layers`, `hidden_size`, `min_samples` (the
    shortest waveform that gives one frame) and implement `forward` and
    `get_downsample_rate`."""

    name = "upstream"
    num_layers = 1
    hidden_size = 0
    min_samples = 1

    def get_downsample_rate(self) -> int:
        """Waveform samples per output frame."""
        raise NotImplementedError

    def identity(self) -> str:
        """A stable hash of the weights and options, for caches of computed features."""
        digest = hashlib.sha256(self.name.encode())
        digest.update(repr(sorted(self.options().items())).encode())
        for key, tensor in sorted(self.state_dict().items()):
            digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            # As raw bytes, which every dtype (bfloat16 included) can give.
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    def options(self) -> dict:
        """Settings that change the output without changing the weights."""
        return {}

    @staticmethod
    def _result(hidden_states: list[torch.Tensor], lengths: torch.Tensor) -> dict:
        hidden_states = [h.float() for h in hidden_states]  # bf16 computations give float32
        return {
            "hidden_states": hidden_states,
            "last_hidden_state": hidden_states[-1],
            "lengths": lengths,
            "padding_mask": lengths_to_padding_mask(lengths, hidden_states[-1].size(1)),
        }


class TeraUpstream(Upstream):
    """A TERA2 model: h_0 (the encoder input) and the output of each of its L layers, 50 Hz.

    A recording longer than `chunk_seconds` is processed alone in bounded memory
    (`tera.model.long_audio`): the conv extractor in windows (exact), the encoder in chunks
    of `chunk_seconds` with `context_seconds` of context on each side (approximate). 0 turns
    this off: the whole recording at once.

    precision "fp32" computes as the reference does; "bf16" runs the model under bf16
    autocast (on a CPU with bf16 matrix units about twice as fast; hidden states within
    about 1 % of fp32, README "Checkpoints and the upstream"), returning float32 states;
    "auto" is bf16 on such a CPU and fp32 elsewhere.
    """

    name = "tera2"

    def __init__(self, model: TeraModel, chunk_seconds: float = 60.0,
                 context_seconds: float = 10.0, *, precision: str = "fp32") -> None:
        super().__init__()
        if chunk_seconds < 0 or context_seconds < 0:
            raise UserError(f"chunk length {chunk_seconds} s and context {context_seconds} s "
                            "must not be negative")
        if precision not in PRECISIONS:
            raise UserError(f"unknown precision {precision!r}; choose one of "
                            f"{', '.join(PRECISIONS)}")
        self.model = model.eval()
        self.precision = precision
        self.num_layers = model.cfg.encoder_layers + 1
        self.hidden_size = model.cfg.encoder_embed_dim
        self.min_samples = model.feature_extractor.geometry.receptive_field
        self.chunk_seconds, self.context_seconds = chunk_seconds, context_seconds
        frames_per_second = 16000 / self.get_downsample_rate()
        self.chunk_frames = round(chunk_seconds * frames_per_second)
        self.context_frames = round(context_seconds * frames_per_second)

    def options(self) -> dict:
        """The chunking and precision settings, which change the features but not the weights."""
        return {"chunk_seconds": self.chunk_seconds, "context_seconds": self.context_seconds,
                "dtype": str(self.compute_dtype())}

    def compute_dtype(self) -> torch.dtype:
        """The dtype the model's products run in on its current device."""
        device = self.model.mask_emb.device
        if self.precision == "bf16" or (self.precision == "auto" and device.type == "cpu"
                                        and cpu_has_bf16_matmul()):
            return torch.bfloat16
        return torch.float32

    def get_downsample_rate(self) -> int:
        """The extractor's hop (320 samples for the presets)."""
        return self.model.feature_extractor.geometry.hop

    def forward(self, wavs: list[torch.Tensor]) -> dict:
        """wavs: 1-D float 16 kHz tensors -> hidden states `[B, T, D]` x (L+1) (see module)."""
        waves, lengths = _pad(wavs, self.model.mask_emb.device)
        shortest = int(lengths.min())
        if shortest < self.min_samples:
            raise UserError(f"a waveform has {shortest} samples; tera2 needs at least "
                            f"{self.min_samples} (one frame)")
        dtype = self.compute_dtype()
        with torch.autocast(waves.device.type, dtype=dtype, enabled=dtype != torch.float32):
            frames = self.model.num_frames(lengths)
            if self.chunk_frames > 0 and int(frames.max()) > self.chunk_frames:
                result = self._one_by_one(wavs)
            else:
                # A batch without padding (one utterance, or all of one length) takes the
                # model's unmasked paths: `TeraModel` drops lengths that pad nothing.
                out = self.model.extract_features(waves, lengths)
                result = self._result(out.hidden_states, out.frame_lengths)
        return result

    def _one_by_one(self, wavs: list[torch.Tensor]) -> dict:
        """A batch holding a long recording: each utterance alone (the long ones through
        `extract_long`), then padded together."""
        device = self.model.mask_emb.device
        outputs = []
        for wave in wavs:
            wave = wave.to(device, torch.float32)
            if self.model.num_frames(len(wave)) > self.chunk_frames:
                outputs.append(extract_long(self.model, wave, self.chunk_frames,
                                            self.context_frames))
            else:
                outputs.append(self.model.extract_features(wave[None]))
        lengths = torch.cat([out.frame_lengths for out in outputs])
        if len(outputs) == 1:
            return self._result(outputs[0].hidden_states, lengths)
        hidden = [pad_sequence([out.hidden_states[layer][0] for out in outputs],
                               batch_first=True) for layer in range(self.num_layers)]
        return self._result(hidden, lengths)


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX)."""
    return bool(torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class FbankUpstream(Upstream):
    """80-dim Kaldi log-Mel filterbank at 100 Hz (240-dim with Δ and ΔΔ)."""

    name = "fbank"
    min_samples = FRAME_LENGTH

    def __init__(self, num_mel_bins: int = 80, deltas: bool = False) -> None:
        super().__init__()
        self.num_mel_bins, self.deltas = num_mel_bins, deltas
        self.hidden_size = num_mel_bins * (3 if deltas else 1)

    def options(self) -> dict:
        """The mel bins and whether deltas are appended."""
        return {"num_mel_bins": self.num_mel_bins, "deltas": self.deltas}

    def get_downsample_rate(self) -> int:
        """Kaldi's 10 ms frame shift in samples."""
        return FRAME_SHIFT

    def forward(self, wavs: list[torch.Tensor]) -> dict:
        waves, lengths = _pad(wavs)
        feats, frames = fbank(waves, lengths, num_mel_bins=self.num_mel_bins)
        if self.deltas:
            first = compute_deltas(feats, lengths=frames)
            feats = torch.cat([feats, first, compute_deltas(first, lengths=frames)], dim=-1)
            feats = feats * (~lengths_to_padding_mask(frames, feats.size(1))).unsqueeze(-1)
        return self._result([feats], frames)


class MfccUpstream(Upstream):
    """39-dim Kaldi MFCC + Δ + ΔΔ at 100 Hz (the feature TERA reconstructs)."""

    name = "mfcc"
    hidden_size = 39
    min_samples = FRAME_LENGTH

    def get_downsample_rate(self) -> int:
        """Kaldi's 10 ms frame shift in samples."""
        return FRAME_SHIFT

    def forward(self, wavs: list[torch.Tensor]) -> dict:
        waves, lengths = _pad(wavs)
        feats, frames = mfcc39(waves, lengths)
        return self._result([feats], frames)


def random_tera(preset: str | TeraConfig = "slim", seed: int = 0) -> TeraModel:
    """A randomly initialised TERA2 of a preset (or a model config), in eval mode, the same
    for a given seed (the global RNG is left as it was)."""
    from tera.presets import load_preset, model_config  # omegaconf: kept out of `tera --help`

    cfg = model_config(load_preset(preset)) if isinstance(preset, str) else preset
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TeraModel(cfg).eval()


def upstream_name(name: str, ckpt: str | Path | None) -> str:
    """`name` with s3prl's names for a local TERA2 checkpoint (`tera2_local`, ...) mapped to
    `tera2`; like s3prl, those need the checkpoint."""
    if name not in TERA2_CHECKPOINT_NAMES:
        return name
    if ckpt is None:
        raise UserError(f"-u {name} is s3prl's name for a TERA2 checkpoint given with -k, "
                        "and no -k was given")
    return "tera2"


def checked_device(name: str) -> torch.device:
    """`--device NAME` of the commands that run an upstream; `UserError` for a name that is
    no device, or CUDA asked for where there is none."""
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"--device {name!r} is not a device (cpu, cuda, cuda:1, ...)") from err
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: tera-speech runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use "
                        "--device cpu")
    return device


def load_upstream(name: str, ckpt: str | Path | None = None, *, preset: str = "slim",
                  seed: int = 0, deltas: bool = False, chunk_seconds: float = 60.0,
                  context_seconds: float = 10.0, precision: str = "fp32") -> Upstream:
    """Build an upstream by name.

    "tera2": from `ckpt` in any format `tera.checkpoint.load_checkpoint` reads, or without
    one a randomly initialised model of `preset` (torch seed `seed`; logged as a warning).
    "fbank" (`deltas=True` adds Δ and ΔΔ) and "mfcc" take no checkpoint. `chunk_seconds`,
    `context_seconds`: how "tera2" processes long recordings; `precision` (tera2): "fp32",
    "bf16" or "auto" (see `TeraUpstream`).
    """
    if name in ("tera2", "tera"):
        if ckpt is None:
            log.warning("tera2 without a checkpoint (-k): a randomly initialised %s model "
                        "(seed %d)", preset, seed)
            return TeraUpstream(random_tera(preset, seed), chunk_seconds, context_seconds,
                                precision=precision)
        from tera.checkpoint import load_checkpoint  # kept out of `tera --help`

        return TeraUpstream(load_checkpoint(ckpt).model, chunk_seconds, context_seconds,
                            precision=precision)
    if name not in UPSTREAMS:
        raise UserError(f"unknown upstream {name!r}; choose one of {', '.join(UPSTREAMS)}")
    if ckpt is not None:
        raise UserError(f"the {name} upstream takes no checkpoint (got {ckpt})")
    return FbankUpstream(deltas=deltas) if name == "fbank" else MfccUpstream()


class Featurizer(nn.Module):
    """SUPERB's weighted sum of an upstream's layers with learnable softmax weights.

    With `layer_norm`, each layer is normalised over its features (no affine) before the sum.
    With `standardize`, each layer's features are first standardised with fixed per-dimension
    statistics of the training set (`set_statistics`): heads trained for a few thousand steps
    (the CPU profiles) otherwise spend them scaling their weights to the upstream's range,
    which favours upstreams with large feature values. A single layer passes through
    unchanged unless standardised.
    """

    def __init__(self, num_layers: int, hidden_size: int, layer_norm: bool = False,
                 standardize: bool = False) -> None:
        super().__init__()
        self.hidden_size, self.layer_norm, self.standardize = hidden_size, layer_norm, standardize
        self.weights = nn.Parameter(torch.zeros(num_layers))
        if standardize:
            self.register_buffer("feature_mean", torch.zeros(num_layers, hidden_size))
            self.register_buffer("feature_std", torch.ones(num_layers, hidden_size))

    @property
    def layer_weights(self) -> torch.Tensor:
        """softmax of the learned weights, `[num_layers]`, detached."""
        return F.softmax(self.weights.detach(), dim=0)

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-layer feature mean and standard deviation, each `[num_layers, hidden_size]`."""
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp(min=1e-5))

    def forward(self, hidden_states: list[torch.Tensor],
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_states: `num_layers` tensors `[B, T, D]` -> `[B, T, D]`; with `lengths`
        (`[B]` valid frames) padding stays zero after standardisation."""
        if len(hidden_states) != self.weights.numel():
            raise UserError(f"the featurizer expects {self.weights.numel()} layers, got "
                            f"{len(hidden_states)}")
        if len(hidden_states) == 1 and not self.standardize:
            return hidden_states[0]
        stacked = torch.stack(hidden_states)  # [L, B, T, D]
        if self.standardize:
            stacked = (stacked - self.feature_mean[:, None, None]) / self.feature_std[:, None, None]
            if lengths is not None:
                valid = torch.arange(stacked.size(2), device=stacked.device) < lengths[:, None]
                stacked = stacked * valid[None, :, :, None].to(stacked.dtype)
        if len(hidden_states) == 1:
            return stacked[0]
        if self.layer_norm:
            stacked = F.layer_norm(stacked, stacked.shape[-1:])
        weights = F.softmax(self.weights, dim=0).to(stacked.dtype)
        return (weights.view(-1, 1, 1, 1) * stacked).sum(dim=0)
