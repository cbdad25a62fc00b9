"""tera.effects against sox's own output (tests/data/sox, made by scripts/check_sox_effects.py;
the sox binary is not needed here) and the silence rule's edge cases."""

import numpy as np
import pytest
import torch

from tera.effects import FULL_SCALE, gain, remove_silence, s3prl_effects
from tests.paths import DATA

RATE = 16000


@pytest.fixture(scope="module")
def sox_reference() -> dict[str, np.ndarray]:
    with np.load(DATA / "sox" / "s3prl_effects.npz") as stored:
        return dict(stored)


def as_float(pcm16: np.ndarray) -> np.ndarray:
    return pcm16.astype(np.float32) / 32768


def as_torchaudio(sox_samples: np.ndarray) -> np.ndarray:
    """sox's 32-bit samples as torchaudio's apply_effects_file returns them."""
    return (sox_samples / FULL_SCALE).astype(np.float32)


def test_gain_matches_sox(sox_reference):
    wave = as_float(sox_reference["input"])
    expected = as_torchaudio(sox_reference["ks"])
    np.testing.assert_array_equal(gain(wave, -3.0).numpy(), expected)
    np.testing.assert_array_equal(s3prl_effects(wave, silence=False).numpy(), expected)


def test_silence_removal_matches_sox(sox_reference):
    out = s3prl_effects(as_float(sox_reference["input"]), silence=True)
    expected = as_torchaudio(sox_reference["asv"])
    assert len(sox_reference["asv"]) < len(sox_reference["input"]) - RATE // 2  # it removes
    assert out.dtype == torch.float32 and out.shape == expected.shape
    np.testing.assert_array_equal(out.numpy(), expected)


def test_remove_silence_after_float_gain_matches_sox(sox_reference):
    # Two public calls round to float32 in between; lengths still agree and samples differ by
    # at most that rounding.
    attenuated = gain(as_float(sox_reference["input"]), -3.0)
    out = remove_silence(attenuated, RATE).numpy()
    expected = as_torchaudio(sox_reference["asv"])
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=2**-23, atol=0)


def test_all_silent_input_comes_out_empty():
    # sox returns no samples at all when nothing is ever loud for 0.1 s.
    silent = np.zeros(RATE, np.float32)
    assert s3prl_effects(silent, silence=True).shape == (0,)
    assert s3prl_effects(silent, silence=False).shape == (RATE,)


@pytest.mark.parametrize("length, kept", [(200, 0), (1599, 0), (1600, 1600), (1601, 1601)])
def test_loud_input_is_kept_only_from_a_tenth_of_a_second(length, kept):
    # Checked with sox 14.4.2: constant 0.5 for 1599 samples gives nothing, 1600 gives 1600;
    # 200 samples is shorter than the 320-sample RMS window as well.
    out = s3prl_effects(np.full(length, 0.5, np.float32), silence=True)
    assert len(out) == kept


def tone(samples: int) -> np.ndarray:
    return (0.5 * np.cos(2 * np.pi * 440 * np.arange(samples) / RATE)).astype(np.float32)


def test_pause_shorter_than_a_tenth_of_a_second_is_kept_whole():
    wave = np.concatenate([tone(3200), np.zeros(1200, np.float32), tone(3200)])
    out = s3prl_effects(wave, silence=True).numpy()
    np.testing.assert_array_equal(out, gain(wave, -3.0).numpy())


def test_long_pause_is_removed_but_for_the_rms_windows_tail():
    # The 20 ms RMS window stays loud for under 320 samples into the pause; the rest goes.
    pause = 8000
    wave = np.concatenate([tone(3200), np.zeros(pause, np.float32), tone(3200)])
    removed = len(wave) - len(s3prl_effects(wave, silence=True))
    assert pause - 320 < removed <= pause


def test_torch_and_numpy_inputs_agree(sox_reference):
    wave = as_float(sox_reference["input"][:8000])
    from_numpy = s3prl_effects(wave, silence=True)
    from_torch = s3prl_effects(torch.from_numpy(wave), silence=True)
    assert torch.equal(from_numpy, from_torch)


def test_bad_shapes_and_durations_are_refused():
    with pytest.raises(ValueError, match="1-D mono"):
        gain(np.zeros((2, 100), np.float32), -3.0)
    with pytest.raises(ValueError, match="shorter than the 320-sample RMS window"):
        remove_silence(np.zeros(100, np.float32), RATE, duration=0.01)
