"""s3prl's sox effects, sample for sample: the `gain` and `silence` effects as s3prl's data
pipelines apply them through torchaudio's `apply_effects_file`.

    Speech Commands (KS):  channels 1, rate 16000, gain -3.0
    VoxCeleb1 (ASV):       channels 1, rate 16000, gain -3.0,
                           silence 1 0.1 0.1% -1 0.1 0.1%

Both corpora are 16 kHz mono, where `channels 1` and `rate 16000` do nothing. sox carries every
sample as a 32-bit integer (full scale 2**31), so the effects below work on those integers and
only the result is turned back into float32 (integer / 2**31, as torchaudio returns it). No
dither is involved: libsox adds none to an effects chain by itself (the `sox` command adds it
when it writes a file of lower precision), and torchaudio's chain ends in a 32-bit buffer.
"""

from __future__ import annotations

import math

import numpy as np
import torch

FULL_SCALE = 2**31  # sox's 32-bit sample: float 1.0 is 2**31
SAMPLE_MAX = 2**31 - 1
SAMPLE_MIN = -(2**31)
S3PRL_GAIN_DB = -3.0
S3PRL_SILENCE_DURATION_S = 0.1
S3PRL_SILENCE_THRESHOLD_PERCENT = 0.1
S3PRL_RATE = 16000


# --- public API ------------------------------------------------------------------------------


def gain(wave: torch.Tensor | np.ndarray, db: float) -> torch.Tensor:
    """sox's `gain DB` (no options): every 32-bit sample times 10**(db/20), rounded half away
    from zero and clipped to the 32-bit range; returned as 1-D float32."""
    return _to_float(_gain_samples(_to_samples(wave), db))


def remove_silence(wave: torch.Tensor | np.ndarray, rate: int = S3PRL_RATE, *,
                   duration: float = S3PRL_SILENCE_DURATION_S,
                   threshold_percent: float = S3PRL_SILENCE_THRESHOLD_PERCENT) -> torch.Tensor:
    """sox's `silence 1 DURATION THRESHOLD% -1 DURATION THRESHOLD%` on a mono wave.

    The rule of sox 14.4.2's `silence` effect (the sox torchaudio builds; later sources have
    the same), for a wave of 32-bit samples:

    - Loudness is the RMS of a 20 ms window ending at the current sample (`rate // 50`
      samples; samples from before the last restart count as zeros, and the sum is always
      divided by the full window size), truncated to an integer. A sample is *loud* when
      that RMS exceeds `threshold_percent` of 2**31 - 1.
    - Start: drop everything up to the first run of `duration` seconds of consecutive loud
      samples (`round(rate * duration)` samples, at least one window); output starts with
      that run.
    - Middle: copy samples; a run of quiet samples shorter than `duration` is kept whole.
      When the quiet run reaches `duration`, those samples are dropped, the RMS window is
      emptied and the start rule applies again from the next sample: everything is dropped
      up to the next `duration` of consecutive loud samples.
    - End: a trailing quiet run shorter than `duration` is kept; a trailing loud run shorter
      than `duration` found while looking for a start is dropped.

    So audio with no `duration` of loud samples (all silent, or shorter than `duration`)
    comes out empty, as it does from sox. sox keeps the window's running sum in floating
    point; here it is exact, which can only matter for an RMS within rounding error of the
    threshold. `wave` is taken at the level sox sees, i.e. after `gain` in s3prl's chain: the
    threshold is relative to the attenuated signal, and after a gain sox's samples have full
    32-bit precision, so no low bits are masked. Called on `gain`'s float32 output the samples
    are rounded to float32 in between; `s3prl_effects` keeps them exact. Returns 1-D float32.
    """
    samples = _to_samples(wave)
    keep = _loud_segments(samples, rate, duration, threshold_percent)
    return _to_float(_concatenate(samples, keep))


def s3prl_effects(wave: torch.Tensor | np.ndarray, *, silence: bool) -> torch.Tensor:
    """s3prl's chain on a 16 kHz mono wave (as `tera.audio.load_audio` returns it):
    `gain -3.0`, then, when `silence` (VoxCeleb1), `silence 1 0.1 0.1% -1 0.1 0.1%` on the
    attenuated 32-bit samples. 1-D float32, equal to what torchaudio's `apply_effects_file`
    returns for a 16 kHz mono file."""
    samples = _gain_samples(_to_samples(wave), S3PRL_GAIN_DB)
    if silence:
        kept = _loud_segments(samples, S3PRL_RATE, S3PRL_SILENCE_DURATION_S,
                              S3PRL_SILENCE_THRESHOLD_PERCENT)
        samples = _concatenate(samples, kept)
    return _to_float(samples)


# --- 32-bit samples --------------------------------------------------------------------------


def _to_samples(wave: torch.Tensor | np.ndarray) -> np.ndarray:
    """A float wave as sox's 32-bit samples (held in int64), rounded and clipped like sox."""
    values = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else np.asarray(wave)
    if values.ndim != 1:
        raise ValueError(f"expected a 1-D mono wave, got shape {tuple(values.shape)}")
    return _round_clip(values.astype(np.float64) * FULL_SCALE)


def _to_float(samples: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((samples / FULL_SCALE).astype(np.float32))


def _round_clip(values: np.ndarray) -> np.ndarray:
    """Round half away from zero, saturating at the 32-bit limits (sox's SOX_ROUND_CLIP)."""
    rounded = np.where(values < 0, np.trunc(values - 0.5), np.trunc(values + 0.5))
    return np.clip(rounded, SAMPLE_MIN, SAMPLE_MAX).astype(np.int64)


def _gain_samples(samples: np.ndarray, db: float) -> np.ndarray:
    factor = math.exp(db * math.log(10) * 0.05)  # sox's dB_to_linear, term for term
    return _round_clip(samples * factor)


def _concatenate(samples: np.ndarray, segments: list[tuple[int, int]]) -> np.ndarray:
    if not segments:
        return samples[:0]
    return np.concatenate([samples[start:end] for start, end in segments])


# --- the silence rule ------------------------------------------------------------------------


def _loud_segments(samples: np.ndarray, rate: int, duration: float,
                   threshold_percent: float) -> list[tuple[int, int]]:
    """The [start, end) sample ranges sox's silence rule keeps, in order."""
    window = int(rate / 50)  # sox's RMS window: the last 20 ms
    run = int(rate * duration + 0.5)  # sox's rounding of a duration to samples
    if run < window:
        raise ValueError(f"silence duration {duration} s is shorter than the {window}-sample "
                         "RMS window; this rule needs at least one window")
    loud_energy = window * _loud_rms(threshold_percent) ** 2
    # Capping each square at the threshold energy keeps every window sum below 2**63 and
    # changes no comparison with it.
    squares = np.minimum(samples * samples, loud_energy).astype(np.uint64)
    loud = _window_energy(squares, window, 0) >= loud_energy
    loud_starts = _run_starts(loud, run)
    quiet_starts = _run_starts(~loud, run)

    segments: list[tuple[int, int]] = []
    restart = 0  # where the RMS window was last emptied
    while restart < len(samples):
        start = _first_loud_run(squares, loud, loud_starts, restart, window, run, loud_energy)
        if start is None:
            break
        # Past the first window after a restart the RMS equals the global one.
        quiet = _first_at_or_after(quiet_starts, start + run)
        end = len(samples) if quiet is None else quiet
        segments.append((start, end))
        restart = end + run
    return segments


def _loud_rms(threshold_percent: float) -> int:
    """The smallest integer RMS that sox counts as above `threshold_percent` of full scale,
    found with sox's own floating-point comparison."""
    rms = max(int(threshold_percent / 100 * SAMPLE_MAX) - 2, 0)
    while not rms / SAMPLE_MAX * 100 > threshold_percent:
        rms += 1
    return rms


def _window_energy(squares: np.ndarray, window: int, origin: int) -> np.ndarray:
    """Sum of squares over the `window` samples ending at each sample from `origin` on,
    counting samples before `origin` as zeros. Exact: the running sum wraps modulo 2**64
    (numpy's unsigned arithmetic) but every difference of it is a true window sum."""
    running = np.concatenate(([np.uint64(0)], np.cumsum(squares[origin:], dtype=np.uint64)))
    ends = np.arange(1, len(running))
    return running[ends] - running[np.maximum(ends - window, 0)]


def _run_starts(flags: np.ndarray, run: int) -> np.ndarray:
    """Sorted indices i where flags[i:i + run] are all True."""
    if len(flags) < run:
        return np.zeros(0, dtype=np.int64)
    counts = np.concatenate(([0], np.cumsum(flags, dtype=np.int64)))
    return np.flatnonzero(counts[run:] - counts[:-run] == run)


def _first_at_or_after(sorted_indices: np.ndarray, position: int) -> int | None:
    i = int(np.searchsorted(sorted_indices, position))
    return int(sorted_indices[i]) if i < len(sorted_indices) else None


def _first_loud_run(squares: np.ndarray, loud: np.ndarray, loud_starts: np.ndarray,
                    restart: int, window: int, run: int, loud_energy: int) -> int | None:
    """Start of the first `run` consecutive loud samples at or after `restart`, with the RMS
    window emptied at `restart`: its first window - 1 samples see a partly empty window."""
    if restart == 0:
        return _first_at_or_after(loud_starts, 0)
    head_end = min(len(squares), restart + window - 1)
    span_end = min(len(squares), head_end + run - 1)
    head = _window_energy(squares[:head_end], window, restart) >= loud_energy
    flags = np.concatenate((head, loud[head_end:span_end]))
    in_head = _run_starts(flags, run)
    in_head = in_head[in_head < head_end - restart]
    if in_head.size:
        return restart + int(in_head[0])
    return _first_at_or_after(loud_starts, head_end)
