"""Long recordings: conv windows (exact), encoder chunks with context (a stated bound), and
the upstream / `tera extract` paths that use them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tera.audio import load_audio
from tera.checkpoint import load_checkpoint
from tera.cli import main
from tera.model.long_audio import extract_long, windowed_conv_features
from tera.model.tera import TeraModel
from tera.presets import load_preset, model_config
from tera.upstream import TeraUpstream

from .paths import COMPAT, FLAC


@pytest.fixture(scope="module")
def wave() -> torch.Tensor:
    return load_audio(FLAC)  # 11.9 s


@pytest.fixture(scope="module")
def reference() -> TeraModel:
    return load_checkpoint(COMPAT / "tera2_s3prl_converted.pt").model


@pytest.mark.parametrize("mode", ["default", "layer_norm"])
def test_windowed_conv_extractor_equals_one_pass(wave, mode):
    """Windows of 37 frames (0.74 s) over 11.9 s: the same features as one pass, the first
    block's utterance-wide instance norm included."""
    torch.manual_seed(0)
    cfg = model_config(load_preset("tiny"))
    cfg.extractor_mode = mode
    model = TeraModel(cfg).eval()
    with torch.no_grad():
        whole = model.feature_extractor(wave[None])[0]
        windowed = windowed_conv_features(model.feature_extractor, wave, 37)
    assert windowed.shape == whole.shape
    torch.testing.assert_close(windowed, whole, atol=1e-4, rtol=1e-5)


def test_chunked_encoder_stays_within_the_stated_bound(wave, reference):
    """36 s in chunks of 10 s with 10 s of context on each side, on the reference model (its
    random weights attend everywhere alike: a worst case for chunking). README states the
    bound: mean absolute difference under 3 % of the mean absolute state in every layer,
    h_0 exact (the positional conv sees all it needs)."""
    long_wave = wave.repeat(3)
    with torch.no_grad():
        whole = reference.extract_features(long_wave[None]).hidden_states
    chunked = extract_long(reference, long_wave, chunk_frames=500, context_frames=500)
    assert int(chunked.frame_lengths) == whole[0].size(1)
    torch.testing.assert_close(chunked.hidden_states[0], whole[0], atol=1e-4, rtol=1e-5)
    for ours, exact in zip(chunked.hidden_states, whole):
        assert ((ours - exact).abs().mean() / exact.abs().mean()) < 0.03
    # longer chunks, closer: 6 x 11.9 s in chunks of 20 s with 10 s of context
    longer = wave.repeat(6)
    with torch.no_grad():
        whole = reference.extract_features(longer[None]).hidden_states
    chunked = extract_long(reference, longer, chunk_frames=1000, context_frames=500)
    for ours, exact in zip(chunked.hidden_states, whole):
        assert ((ours - exact).abs().mean() / exact.abs().mean()) < 0.02


def test_upstream_batch_with_a_long_recording(wave, reference):
    upstream = TeraUpstream(reference, chunk_seconds=5.0, context_seconds=5.0)
    short = wave[:40000]
    out = upstream([short, wave])
    alone = upstream([short])
    long = extract_long(reference, wave, upstream.chunk_frames, upstream.context_frames)
    frames = int(out["lengths"][0])
    assert out["lengths"].tolist() == [alone["lengths"][0], long.frame_lengths[0]]
    assert out["padding_mask"][0, frames:].all() and not out["padding_mask"][1].any()
    for batch, one, chunked in zip(out["hidden_states"], alone["hidden_states"],
                                   long.hidden_states):
        torch.testing.assert_close(batch[0, :frames], one[0])
        torch.testing.assert_close(batch[1], chunked[0])


def test_extract_of_a_long_file_in_chunks(tmp_path):
    """`tera extract --chunk-seconds 4`: h_0 as the reference computes it on the whole file;
    the layers within the chunking bound."""
    expected = np.load(COMPAT / "tera2_expected_hidden.npz")["hidden"]
    out = tmp_path / "h.npz"
    assert main(["extract", "-k", str(COMPAT / "tera2_fairseq.pt"), "--chunk-seconds", "4",
                 "--context-seconds", "4", "--precision", "fp32", str(FLAC), "-o", str(out)]) == 0
    hidden = np.load(out)[FLAC.stem]
    assert hidden.shape == expected.shape
    assert np.abs(hidden[0] - expected[0]).max() < 1e-4
    for ours, exact in zip(hidden[1:], expected[1:]):
        assert np.abs(ours - exact).mean() / np.abs(exact).mean() < 0.05
