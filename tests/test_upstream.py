"""The upstream API: reference hidden states from every checkpoint format, padding, the
feature baselines and SUPERB's Featurizer."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from tera.audio import load_audio, mfcc39
from tera.errors import UserError
from tera.upstream import Featurizer, load_upstream

from .paths import COMPAT, FLAC

S3PRL = COMPAT / "tera2_s3prl_converted.pt"
FAIRSEQ = COMPAT / "tera2_fairseq.pt"


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    return dict(np.load(COMPAT / "tera2_expected_hidden.npz"))


@pytest.fixture(scope="module")
def flac() -> torch.Tensor:
    return load_audio(FLAC)


def layers(upstream, wave: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.stack(upstream([wave])["hidden_states"])[:, 0].numpy()


@pytest.mark.parametrize("path", [S3PRL, FAIRSEQ], ids=["s3prl", "fairseq"])
def test_reference_files_reproduce_reference_hidden_states(path, expected, flac):
    upstream = load_upstream("tera2", path)
    assert upstream.get_downsample_rate() == 320
    assert upstream.num_layers == 4 and upstream.hidden_size == 48
    assert np.abs(layers(upstream, flac) - expected["hidden"]).max() < 1e-4
    assert np.abs(layers(upstream, flac[:64000]) - expected["hidden_4s"]).max() < 1e-4


def test_output_contract(flac):
    upstream = load_upstream("tera2", S3PRL)
    with torch.no_grad():
        out = upstream([flac[:32000], flac[:16000]])
    assert len(out["hidden_states"]) == 4
    assert out["last_hidden_state"] is out["hidden_states"][-1]
    assert out["last_hidden_state"].shape == (2, 99, 48)
    assert out["lengths"].tolist() == [99, 49]
    assert out["padding_mask"].dtype == torch.bool and out["padding_mask"].shape == (2, 99)


def test_batched_upstream_equals_each_utterance_alone(flac):
    upstream = load_upstream("tera2", S3PRL)
    wavs = [flac[:48000], flac[:20000], flac[5000:37000]]
    with torch.no_grad():
        out = upstream(wavs)
        for i, wave in enumerate(wavs):
            alone = upstream([wave])
            n = int(out["lengths"][i])
            assert n == alone["last_hidden_state"].size(1)
            assert out["padding_mask"][i, n:].all() and not out["padding_mask"][i, :n].any()
            for a, b in zip(out["hidden_states"], alone["hidden_states"]):
                torch.testing.assert_close(a[i, :n], b[0], atol=2e-5, rtol=1e-4)


def test_a_batch_of_one_length_equals_each_utterance_alone(flac):
    """All of one length, the batch takes the unmasked paths: still each utterance's own."""
    upstream = load_upstream("tera2", S3PRL)
    wavs = [flac[:32000], flac[40000:72000] * 3, flac[80000:112000]]
    with torch.no_grad():
        out = upstream(wavs)
        assert out["lengths"].tolist() == [99] * 3 and not out["padding_mask"].any()
        for i, wave in enumerate(wavs):
            for a, b in zip(out["hidden_states"], upstream([wave])["hidden_states"]):
                torch.testing.assert_close(a[i], b[0], atol=2e-5, rtol=1e-4)


def test_too_short_or_badly_shaped_waveforms_are_user_errors(flac):
    upstream = load_upstream("tera2", S3PRL)
    with pytest.raises(UserError, match="399 samples; tera2 needs at least 400"):
        upstream([flac[:16000], flac[:399]])
    with pytest.raises(UserError, match=r"shape \(1, 16000\)"):
        upstream([flac[None, :16000]])
    with pytest.raises(UserError, match="at least one waveform"):
        load_upstream("mfcc")([])


@pytest.mark.parametrize("name, dim", [("fbank", 80), ("mfcc", 39)])
def test_baseline_upstreams_shapes_and_rates(flac, name, dim):
    upstream = load_upstream(name)
    out = upstream([flac, flac[:16000]])
    assert upstream.get_downsample_rate() == 160 and upstream.num_layers == 1
    assert upstream.hidden_size == dim
    assert out["last_hidden_state"].shape == (2, 1191, dim)
    assert out["lengths"].tolist() == [1191, 98]
    assert not out["last_hidden_state"][1, 98:].any()  # padding frames are zero


def test_mfcc_upstream_is_the_reference_target(flac, expected):
    feats = load_upstream("mfcc")([flac])["last_hidden_state"][0]
    torch.testing.assert_close(feats, mfcc39(flac[None])[0][0])
    assert np.abs(feats.numpy() - expected["mfcc39"]).max() < 1e-3


def test_fbank_deltas_are_padding_free(flac):
    upstream = load_upstream("fbank", deltas=True)
    assert upstream.hidden_size == 240
    out = upstream([flac[:32000], flac[:16000]])
    alone = upstream([flac[:16000]])["last_hidden_state"][0]
    torch.testing.assert_close(out["last_hidden_state"][1, :98], alone)
    torch.testing.assert_close(out["last_hidden_state"][0, :, :80],
                               load_upstream("fbank")([flac[:32000]])["last_hidden_state"][0])


def test_identity_follows_weights_and_options():
    a, b = load_upstream("tera2", S3PRL), load_upstream("tera2", FAIRSEQ)
    assert a.identity() == b.identity()  # same weights, two formats
    with torch.no_grad():
        b.model.mask_emb.add_(1.0)
    assert a.identity() != b.identity()
    assert load_upstream("fbank").identity() != load_upstream("fbank", deltas=True).identity()
    assert load_upstream("fbank").identity() != load_upstream("mfcc").identity()


def test_random_tera_is_seeded_and_says_so(caplog):
    state = torch.random.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="tera.upstream"):
        first = load_upstream("tera2", preset="tiny")
    assert "randomly initialised tiny" in caplog.text
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is untouched
    assert first.identity() == load_upstream("tera2", preset="tiny").identity()
    assert first.identity() != load_upstream("tera2", preset="tiny", seed=1).identity()
    assert first.num_layers == 4 and first.hidden_size == 128


def test_unknown_upstream_and_checkpoint_for_a_baseline_are_user_errors():
    with pytest.raises(UserError, match="unknown upstream 'wav2vec'"):
        load_upstream("wav2vec")
    with pytest.raises(UserError, match="fbank upstream takes no checkpoint"):
        load_upstream("fbank", S3PRL)


# --- Featurizer -----------------------------------------------------------------------------


def test_featurizer_is_a_softmax_weighted_sum():
    featurizer = Featurizer(3, 4)
    torch.testing.assert_close(featurizer.layer_weights, torch.full((3,), 1 / 3))
    with torch.no_grad():
        featurizer.weights.copy_(torch.tensor([0.0, 1.0, 2.0]))
    layers_ = [torch.randn(2, 5, 4) for _ in range(3)]
    weights = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
    torch.testing.assert_close(featurizer.layer_weights, weights)
    expected = sum(w * layer for w, layer in zip(weights, layers_))
    torch.testing.assert_close(featurizer(layers_), expected)


def test_featurizer_layer_norm_and_gradients():
    featurizer = Featurizer(2, 4, layer_norm=True)
    layers_ = [torch.randn(1, 3, 4) * 5 + 2, torch.randn(1, 3, 4)]
    normed = [(x - x.mean(-1, keepdim=True)) / (x.var(-1, unbiased=False, keepdim=True)
                                                + 1e-5).sqrt() for x in layers_]
    torch.testing.assert_close(featurizer(layers_), (normed[0] + normed[1]) / 2)
    featurizer(layers_).pow(2).sum().backward()
    assert featurizer.weights.grad is not None and featurizer.weights.grad.abs().sum() > 0
    assert not featurizer.layer_weights.requires_grad


def test_featurizer_single_layer_and_wrong_count():
    single = [torch.randn(1, 2, 4)]
    assert Featurizer(1, 4)(single) is single[0]
    with pytest.raises(UserError, match="expects 3 layers, got 2"):
        Featurizer(3, 4)([torch.zeros(1, 2, 4)] * 2)


def test_featurizer_standardises_each_layer_and_keeps_padding_zero():
    featurizer = Featurizer(2, 3, standardize=True)
    mean = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 5.0]])
    std = torch.tensor([[2.0, 1.0, 0.5], [1.0, 4.0, 2.0]])
    featurizer.set_statistics(mean, std)
    layers_ = [torch.randn(2, 4, 3) * 3 + 1 for _ in range(2)]
    lengths = torch.tensor([4, 2])
    mixed = featurizer(layers_, lengths)
    expected = sum((x - m) / s for x, m, s in zip(layers_, mean, std)) / 2
    torch.testing.assert_close(mixed[0], expected[0])
    torch.testing.assert_close(mixed[1, :2], expected[1, :2])
    assert (mixed[1, 2:] == 0).all()
    # the statistics travel with the featurizer's state (downstream checkpoints)
    restored = Featurizer(2, 3, standardize=True)
    restored.load_state_dict(featurizer.state_dict())
    torch.testing.assert_close(restored(layers_, lengths), mixed)


def test_featurizer_on_upstream_output(flac):
    upstream = load_upstream("tera2", S3PRL)
    featurizer = Featurizer(upstream.num_layers, upstream.hidden_size)
    with torch.no_grad():
        out = upstream([flac[:16000]])
        mixed = featurizer(out["hidden_states"])
    assert mixed.shape == out["last_hidden_state"].shape
    torch.testing.assert_close(mixed, torch.stack(out["hidden_states"]).mean(0))
