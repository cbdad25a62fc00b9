"""Audio loading and Kaldi-compatible features against kaldi-native-fbank and the reference."""

from __future__ import annotations

import kaldi_native_fbank as knf
import numpy as np
import pytest
import soundfile as sf
import torch

from tera.audio import (
    compute_deltas,
    fbank,
    load_audio,
    load_crop,
    mfcc,
    mfcc39,
    num_frames,
    tera_targets,
)
from tera.errors import UserError

from .paths import COMPAT, FLAC


def kaldi(wave: torch.Tensor, kind: str, bins: int) -> np.ndarray:
    opts = knf.FbankOptions() if kind == "fbank" else knf.MfccOptions()
    opts.frame_opts.dither = 0
    opts.frame_opts.samp_freq = 16000
    opts.mel_opts.num_bins = bins
    if kind == "mfcc":
        opts.use_energy = False
    computer = knf.OnlineFbank(opts) if kind == "fbank" else knf.OnlineMfcc(opts)
    computer.accept_waveform(16000, wave.tolist())
    computer.input_finished()
    return np.stack([computer.get_frame(i) for i in range(computer.num_frames_ready)])


@pytest.fixture(scope="module")
def flac() -> torch.Tensor:
    return load_audio(FLAC)


def signals() -> list[torch.Tensor]:
    torch.manual_seed(0)
    t = torch.arange(7321) / 16000
    # A pure tone leaves mel bands ~1e-11 below its peak, where Kaldi's own float32 FFT
    # round-off dominates; a little noise (-50 dB) keeps every band meaningful.
    tone = torch.sin(2 * torch.pi * 440 * t) * 0.5 + torch.randn(len(t)) * 1.5e-3
    return [torch.randn(4000) * 0.3, tone, torch.randn(16000) * 1e-3]


# Measured: max |ours - kaldi-native-fbank| is 5.7e-4 (log-fbank) and 5.0e-4 (MFCC) on the
# LibriSpeech file (MFCC values up to ~70: float32 round-off), at most 2.3e-4 on the random
# signals; the tests assert 1e-3.
def test_fbank_and_mfcc_match_kaldi_on_speech(flac):
    assert np.abs(fbank(flac)[0].numpy() - kaldi(flac, "fbank", 80)).max() < 1e-3
    assert np.abs(mfcc(flac)[0].numpy() - kaldi(flac, "mfcc", 23)).max() < 1e-3


@pytest.mark.parametrize("index", range(3))
def test_fbank_and_mfcc_match_kaldi_on_signals(index):
    wave = signals()[index]
    assert np.abs(fbank(wave)[0].numpy() - kaldi(wave, "fbank", 80)).max() < 1e-3
    assert np.abs(mfcc(wave)[0].numpy() - kaldi(wave, "mfcc", 23)).max() < 1e-3


def test_mfcc39_matches_the_reference_target(flac):
    expected = np.load(COMPAT / "tera2_expected_hidden.npz")["mfcc39"]
    ours, length = mfcc39(flac)
    assert ours.shape == expected.shape and int(length) == expected.shape[0]
    assert np.abs(ours.numpy() - expected).max() < 1e-3  # measured 4.1e-4


def test_padded_batch_equals_each_utterance_alone():
    waves = [torch.randn(n) * 0.2 for n in (16000, 5000, 9999)]
    batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    lengths = torch.tensor([len(w) for w in waves])
    feats, frames = mfcc39(batch, lengths)
    targets, target_frames = tera_targets(batch, lengths)
    for i, wave in enumerate(waves):
        alone, n = mfcc39(wave)
        assert int(frames[i]) == int(n) == num_frames(len(wave))
        torch.testing.assert_close(feats[i, :n], alone, atol=1e-4, rtol=1e-5)
        assert (feats[i, n:] == 0).all()
        alone_targets, m = tera_targets(wave.unsqueeze(0))
        assert int(target_frames[i]) == int(m[0]) == int(n) // 2
        torch.testing.assert_close(targets[i, : m[0]], alone_targets[0], atol=1e-4, rtol=1e-5)


def test_targets_stack_frame_pairs_and_trim_odd_counts():
    wave = torch.randn(400 + 160 * 10) * 0.2  # 11 frames: one is trimmed
    feats, n = mfcc39(wave)
    targets, m = tera_targets(wave)
    assert int(n) == 11 and targets.shape == (1, 5, 78) and int(m[0]) == 5
    torch.testing.assert_close(targets[0, 2], torch.cat([feats[4], feats[5]]))


def test_deltas_follow_the_regression_formula():
    x = torch.randn(7, 3)
    padded = torch.cat([x[:1], x[:1], x, x[-1:], x[-1:]])
    expected = torch.stack([
        sum(k * (padded[t + 2 + k] - padded[t + 2 - k]) for k in (1, 2)) / 10 for t in range(7)
    ])
    torch.testing.assert_close(compute_deltas(x), expected)


def test_features_are_float32_under_autocast():
    wave = torch.randn(2, 8000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats, _ = mfcc39(wave)
    assert feats.dtype == torch.float32
    torch.testing.assert_close(feats, mfcc39(wave)[0])


# --- loading ---------------------------------------------------------------------------------


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = np.random.default_rng(0).standard_normal((2, 8000)).astype(np.float32) * 0.1
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    wave = load_audio(path)
    np.testing.assert_allclose(wave.numpy(), (left + right) / 2, atol=1e-6)


def test_other_rates_are_resampled(tmp_path):
    t = np.arange(8000) / 8000
    path = tmp_path / "tone8k.wav"
    sf.write(path, 0.5 * np.sin(2 * np.pi * 300 * t), 8000)
    wave = load_audio(path)
    assert abs(len(wave) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(wave.numpy()))
    assert abs(np.argmax(spectrum) * 16000 / len(wave) - 300) < 2


def test_spans_and_crops_decode_only_the_samples_they_return(tmp_path, monkeypatch):
    """A span of a FLAC / WAV file at 16 kHz is the same samples as the whole file cut, and
    only those are decoded (so a crop costs the same from a 10 s and a 20-minute file);
    other rates and lossy files are decoded whole, then cut, to the same result."""
    wave = load_audio(FLAC).numpy()
    files = {"long.flac": (16000, np.tile(wave, 5)), "stereo.wav": (16000, None),
             "narrow.flac": (8000, wave[::2]), "lossy.ogg": (16000, wave)}
    for name, (rate, samples) in files.items():
        if samples is None:
            samples = np.stack([wave, wave[::-1]], axis=1)
        sf.write(tmp_path / name, samples, rate)
    decoded = []
    read = sf.SoundFile.read

    def counted_read(self, *args, **kwargs):
        data = read(self, *args, **kwargs)
        decoded.append(len(data))
        return data

    monkeypatch.setattr(sf.SoundFile, "read", counted_read)
    for name in files:
        whole = load_audio(tmp_path / name)
        decoded.clear()
        crop = load_crop(tmp_path / name, 4000, lambda excess: excess - 10)
        assert torch.equal(crop, whole[len(whole) - 4010 : len(whole) - 10]), name
        no_crop = load_crop(tmp_path / name, 10**8, lambda excess: pytest.fail("not too long"))
        assert torch.equal(no_crop, whole), name
        span = load_audio(tmp_path / name, start=123, samples=456)
        assert torch.equal(span, whole[123:579]), name
        if name.endswith(("long.flac", "stereo.wav")):
            assert decoded == [4000, len(whole), 456], name
        else:
            assert decoded[0] > 4000, name


@pytest.mark.parametrize("case", ["missing", "text", "empty", "nan", "short"])
def test_bad_audio_names_the_file(tmp_path, case):
    path = tmp_path / f"{case}.wav"
    if case == "text":
        path.write_text("this is not audio")
    elif case == "empty":
        sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    elif case == "nan":
        sf.write(path, np.full(1000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    elif case == "short":
        sf.write(path, np.zeros(100, dtype=np.float32), 16000)
    with pytest.raises(UserError, match=f"{case}.wav"):
        load_audio(path, min_samples=400)
