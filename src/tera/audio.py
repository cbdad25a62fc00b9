"""Audio in, features out: loading to 16 kHz mono, and Kaldi-compatible fbank / MFCC / deltas
computed in torch on padded batches, plus the TERA2 targets.

The features reproduce Kaldi's (and `torchaudio.compliance.kaldi`'s) defaults: 25 ms
povey windows every 10 ms with `snip_edges`, per-frame DC removal, pre-emphasis 0.97, a
512-point power spectrum, triangular mel filters (20 Hz to Nyquist), log floored at float32
epsilon, and for MFCC an orthonormal DCT-II with cepstral liftering 22. They are always
computed in float64 up to the log-mel energies and returned in float32 (autocast is switched
off inside): a bf16 log-spectrum would be too coarse for a regression target, and float64
keeps us within float32 round-off of Kaldi even on near-silent bins.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from tera.errors import UserError

SAMPLE_RATE = 16000
FRAME_LENGTH = 400  # 25 ms
FRAME_SHIFT = 160  # 10 ms
FFT_SIZE = 512  # FRAME_LENGTH rounded up to a power of two
PREEMPHASIS = 0.97
LOW_FREQ = 20.0
EPSILON = float(np.finfo(np.float32).eps)


# --- loading ---------------------------------------------------------------------------------


def audio_info(path: str | Path) -> tuple[int, int, int]:
    """(num_frames, sample_rate, channels) read from the file header, without decoding."""
    with _opened(path) as sound:
        return sound.frames, sound.samplerate, sound.channels


def load_audio(path: str | Path, *, sample_rate: int = SAMPLE_RATE, min_samples: int = 1,
               start: int = 0, samples: int | None = None) -> torch.Tensor:
    """Read any file soundfile reads as a float32 mono 1-D tensor at `sample_rate`.

    Several channels are averaged to mono; another rate is resampled with soxr (its "HQ"
    quality). `start` / `samples` ask for a span of the audio at `sample_rate` (all of it
    from `start` when `samples` is None): from a WAV or FLAC file (or another PCM container)
    at that rate only the span is decoded (a seek), so a span costs the same from a 10 s and
    a 20-minute file; other files are decoded (and resampled) whole, then cut. Missing,
    unreadable, empty, too short (under `min_samples`) or non-finite audio raises
    `UserError` naming the file.
    """
    with _opened(path) as sound:
        return _decode(sound, Path(path), sample_rate, min_samples, start, samples)


def load_crop(path: str | Path, max_samples: int, choose_start: Callable[[int], int]
              ) -> torch.Tensor:
    """At most `max_samples` samples of a file at 16 kHz: all of it when it is no longer,
    else the span from `choose_start(excess)` (between 0 and `excess`, how many samples the
    audio is too long). Only the span is decoded (see `load_audio`); the file is opened
    once, its header giving the length."""
    path = Path(path)
    with _opened(path) as sound:
        if sound.samplerate != SAMPLE_RATE or sound.format not in _EXACT_SEEK:
            # decoded whole (see load_audio); a resampled file's length is known only then
            wave = _decode(sound, path, SAMPLE_RATE, 1, 0, None)
            excess = len(wave) - max_samples
            start = choose_start(excess) if excess > 0 else 0
            return wave[start : start + max_samples]
        excess = sound.frames - max_samples
        start = choose_start(excess) if excess > 0 else 0
        return _decode(sound, path, SAMPLE_RATE, 1, start, max_samples)


# containers whose seek lands on the exact sample (libsndfile's Vorbis / MP3 seeks can miss
# near the end of a file: those are decoded whole, then cut)
_EXACT_SEEK = {"WAV", "WAVEX", "FLAC", "AIFF", "W64", "RF64", "CAF", "AU"}


@contextlib.contextmanager
def _opened(path: str | Path) -> Iterator[sf.SoundFile]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such audio file")
    try:
        sound = sf.SoundFile(str(path))
    except Exception as err:  # libsndfile reports every unreadable file as its own error
        raise UserError(f"{path}: not a readable audio file ({_reason(err)})") from err
    with sound:
        yield sound


def _decode(sound: sf.SoundFile, path: Path, sample_rate: int, min_samples: int, start: int,
            samples: int | None) -> torch.Tensor:
    """The span [start, start + samples) at `sample_rate` of an open file, checked."""
    seek = sound.samplerate == sample_rate and sound.format in _EXACT_SEEK
    try:
        if seek and start:
            sound.seek(min(start, sound.frames))
        data = sound.read(samples if seek and samples is not None else -1,
                          dtype="float32", always_2d=True)
    except Exception as err:
        raise UserError(f"{path}: not a readable audio file ({_reason(err)})") from err
    if data.size == 0:
        raise UserError(f"{path}: the audio is empty (0 samples)")
    if not np.isfinite(data).all():
        raise UserError(f"{path}: the audio contains NaN or infinite samples")
    wave = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if not seek:
        if sound.samplerate != sample_rate:
            wave = resample(wave, sound.samplerate, sample_rate)
        wave = wave[start : None if samples is None else start + samples]
    if len(wave) < min_samples:
        raise UserError(
            f"{path}: too short: {len(wave)} samples at {sample_rate} Hz, "
            f"at least {min_samples} needed"
        )
    return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))


def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """`wave` (1-D, at `rate_in` Hz) at `rate_out` Hz, band-limited by soxr (its "HQ"
    quality), as float32."""
    return soxr.resample(wave, rate_in, rate_out, quality="HQ").astype(np.float32)


def _reason(err: Exception) -> str:
    return str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__


# --- framing -----------------------------------------------------------------------------------


def num_frames(num_samples: int | torch.Tensor, frame_length: int = FRAME_LENGTH,
               frame_shift: int = FRAME_SHIFT) -> int | torch.Tensor:
    """Kaldi's frame count with `snip_edges`: 1 + (S - 400) // 160, and 0 below one window.
    Works on ints and tensors (element-wise)."""
    if isinstance(num_samples, torch.Tensor):
        frames = torch.div(num_samples - frame_length, frame_shift, rounding_mode="floor") + 1
        return frames.clamp(min=0)
    return max(0, (num_samples - frame_length) // frame_shift + 1)


def _as_batch(waves: torch.Tensor, lengths: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor, bool]:
    single = waves.dim() == 1
    if single:
        waves = waves.unsqueeze(0)
    if waves.dim() != 2:
        raise UserError(f"expected waveforms [batch, sample] or [sample], got {tuple(waves.shape)}")
    if lengths is None:
        lengths = torch.full((waves.size(0),), waves.size(1), device=waves.device)
    return waves.float(), lengths.to(waves.device).long(), single


def _frame_mask(frame_lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """`[batch, frames, 1]` float: 1 on an utterance's own frames, 0 past them."""
    positions = torch.arange(frames, device=frame_lengths.device)
    return (positions < frame_lengths.unsqueeze(1)).unsqueeze(-1).float()


@functools.lru_cache(maxsize=8)
def _povey_window(device: torch.device) -> torch.Tensor:
    n = torch.arange(FRAME_LENGTH, dtype=torch.float64)
    window = (0.5 - 0.5 * torch.cos(2 * math.pi * n / (FRAME_LENGTH - 1))).pow(0.85)
    return window.to(device)


def _mel(freq: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log1p(freq / 700.0)


@functools.lru_cache(maxsize=8)
def _mel_banks(num_bins: int, device: torch.device) -> torch.Tensor:
    """`[FFT_SIZE // 2 + 1, num_bins]` Kaldi triangular filters (zero on the Nyquist bin)."""
    nyquist = SAMPLE_RATE / 2
    mel_low, mel_high = _mel(torch.tensor(LOW_FREQ)), _mel(torch.tensor(nyquist))
    delta = (mel_high - mel_low) / (num_bins + 1)
    left = mel_low + torch.arange(num_bins) * delta
    center, right = left + delta, left + 2 * delta
    bin_mel = _mel(torch.arange(FFT_SIZE // 2) * (SAMPLE_RATE / FFT_SIZE)).unsqueeze(1)
    up = (bin_mel - left) / (center - left)
    down = (right - bin_mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    banks = torch.cat([banks, torch.zeros(1, num_bins)])  # the Nyquist bin
    return banks.double().to(device)


@functools.lru_cache(maxsize=8)
def _dct_lifter(num_ceps: int, num_bins: int, lifter: float, device: torch.device
                ) -> torch.Tensor:
    """`[num_bins, num_ceps]`: orthonormal DCT-II rows (Kaldi's) times the cepstral lifter."""
    n = torch.arange(num_bins, dtype=torch.float64) + 0.5
    k = torch.arange(num_ceps, dtype=torch.float64)
    dct = torch.cos(math.pi / num_bins * n.unsqueeze(1) * k) * math.sqrt(2.0 / num_bins)
    dct[:, 0] = math.sqrt(1.0 / num_bins)
    if lifter > 0:
        dct = dct * (1.0 + 0.5 * lifter * torch.sin(math.pi * k / lifter))
    return dct.float().to(device)


# --- features ----------------------------------------------------------------------------------


def _log_mel(waves: torch.Tensor, num_bins: int) -> torch.Tensor:
    """`[batch, sample]` float32 -> `[batch, frame, num_bins]` log mel energies."""
    frames = waves.unfold(1, FRAME_LENGTH, FRAME_SHIFT)  # [B, T, 400]
    frames = frames - frames.mean(dim=-1, keepdim=True)
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    frames = (frames - PREEMPHASIS * previous) * _povey_window(waves.device).to(waves.dtype)
    spectrum = torch.fft.rfft(frames, n=FFT_SIZE)
    power = spectrum.real.square() + spectrum.imag.square()  # abs().pow(2) takes a square root
    energies = power @ _mel_banks(num_bins, waves.device).to(power.dtype)
    return energies.clamp(min=EPSILON).log()


def fbank(waves: torch.Tensor, lengths: torch.Tensor | None = None, *, num_mel_bins: int = 80
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Kaldi log-Mel filterbank.

    waves `[batch, sample]` (or `[sample]`), lengths `[batch]` valid samples ->
    (features `[batch, frame, num_mel_bins]` at 100 Hz, zero past each utterance's frames;
    frame_lengths `[batch]`). A 1-D input gives `[frame, num_mel_bins]` and a 0-d length.
    """
    with torch.autocast(waves.device.type, enabled=False):
        batch, lengths, single = _as_batch(waves, lengths)
        frame_lengths = num_frames(lengths)
        if batch.size(1) < FRAME_LENGTH:
            feats = batch.new_zeros(batch.size(0), 0, num_mel_bins)
        else:
            feats = _log_mel(batch.double(), num_mel_bins).float()
            feats = feats * _frame_mask(frame_lengths, feats.size(1))
    return (feats[0], frame_lengths[0]) if single else (feats, frame_lengths)


def mfcc(waves: torch.Tensor, lengths: torch.Tensor | None = None, *, num_ceps: int = 13,
         num_mel_bins: int = 23, cepstral_lifter: float = 22.0
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Kaldi MFCC (`use_energy` false: c0 is kept). Shapes as `fbank`, with num_ceps dims."""
    log_mel, frame_lengths = fbank(waves, lengths, num_mel_bins=num_mel_bins)
    with torch.autocast(log_mel.device.type, enabled=False):
        ceps = log_mel @ _dct_lifter(num_ceps, num_mel_bins, cepstral_lifter, log_mel.device)
    return ceps, frame_lengths  # padded frames stay zero: the DCT is linear


def compute_deltas(x: torch.Tensor, win_length: int = 5, lengths: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Regression deltas along time of `[..., frame, feature]`, as torchaudio's
    `compute_deltas`: d[t] = sum_k k (x[t+k] - x[t-k]) / (2 sum_k k²), edges replicated.

    With `lengths` (`[batch]` for a `[batch, frame, feature]` input) each utterance
    replicates its own last frame, so padding never enters its deltas.
    """
    half = (win_length - 1) // 2
    denominator = half * (half + 1) * (2 * half + 1) / 3
    frames = x.size(-2)
    last = (
        torch.full(x.shape[:-2], frames - 1, device=x.device)
        if lengths is None
        else (lengths.to(x.device) - 1).clamp(min=0)
    )
    positions = torch.arange(frames, device=x.device)
    out = torch.zeros_like(x)
    for k in range(1, half + 1):
        ahead = torch.minimum(positions + k, last.unsqueeze(-1)).clamp(min=0)
        behind = (positions - k).clamp(min=0)
        index = torch.broadcast_to(ahead.unsqueeze(-1), x.shape)
        out = out + k * (x.gather(-2, index) - x[..., behind, :])
    return out / denominator


def mfcc39(waves: torch.Tensor, lengths: torch.Tensor | None = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """MFCC + Δ + ΔΔ: `[batch, frame, 39]` at 100 Hz (zero past each utterance) and lengths."""
    ceps, frame_lengths = mfcc(waves, lengths)
    single = ceps.dim() == 2
    if single:
        ceps, frame_lengths = ceps.unsqueeze(0), frame_lengths.view(1)
    deltas = compute_deltas(ceps, lengths=frame_lengths)
    double = compute_deltas(deltas, lengths=frame_lengths)
    out = torch.cat([ceps, deltas, double], dim=-1) * _frame_mask(frame_lengths, ceps.size(1))
    return (out[0], frame_lengths[0]) if single else (out, frame_lengths)


def tera_targets(waves: torch.Tensor, lengths: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The TERA2 regression target (SPEC §1): MFCC+Δ+ΔΔ at 100 Hz, trimmed to an even frame
    count and stacked in pairs, frame t = [mfcc39[2t], mfcc39[2t+1]] -> `[batch, frame, 78]`
    at 50 Hz, with per-utterance target lengths `[batch]`. Computed without gradient."""
    with torch.no_grad():
        feats, frame_lengths = mfcc39(waves, lengths)
        if feats.dim() == 2:
            feats, frame_lengths = feats.unsqueeze(0), frame_lengths.view(1)
        pairs = feats.size(1) // 2
        stacked = feats[:, : 2 * pairs].reshape(feats.size(0), pairs, 2 * feats.size(2))
    return stacked, torch.div(frame_lengths, 2, rounding_mode="floor")
