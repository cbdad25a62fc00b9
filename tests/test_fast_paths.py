"""The CPU fast paths compute what the plain ones do: the conv extractor as GEMMs against
`F.conv1d` (forward and gradients, padded batches), the cheap dropout, bf16 inference."""

from __future__ import annotations

import pytest
import torch

from tera.model.components import dropout
from tera.model.config import parse_conv_layers
from tera.model.feature_extractor import ConvFeatureExtractor
from tera.upstream import TeraUpstream, load_upstream, random_tera

from .paths import FLAC

WIDE = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"  # slim, base (and the reference)
TINY = "[(128,10,5)] + [(128,3,2)] * 4 + [(128,2,2)] * 2"
STUDY = "[(64,10,5)] + [(64,3,2)] * 4 + [(128,2,2)] * 2"  # the default study's tiny models
OTHER = "[(48,400,160)] + [(32,2,1)] + [(32,1,3)]"  # frame-like first block, k < s, s = 1


def extractor(spec: str, mode: str = "default") -> ConvFeatureExtractor:
    torch.manual_seed(0)
    module = ConvFeatureExtractor(parse_conv_layers(spec), mode=mode)
    for name, param in module.named_parameters():
        if param.dim() == 1:  # norm scales and shifts away from 1 and 0
            param.data = torch.randn_like(param) * 0.5 + (1.0 if name.endswith("weight") else 0)
    return module


def both_paths(module: ConvFeatureExtractor, waves: torch.Tensor, lengths: torch.Tensor | None):
    """(features, lengths, parameter gradients) of the GEMM and the conv1d path for the same
    random objective on the valid frames."""
    results, objective = [], None
    for forward in (module.gemm_forward, module.conv1d_forward):
        module.zero_grad()
        features, frames = forward(waves, lengths)
        if objective is None:
            objective = torch.randn_like(features)
        valid = torch.ones_like(features[..., :1], dtype=torch.bool)
        if frames is not None:
            valid = (torch.arange(features.size(1)) < frames[:, None]).unsqueeze(-1)
        (features * objective * valid).sum().backward()
        grads = {name: p.grad.clone() for name, p in module.named_parameters()}
        results.append((features.detach() * valid, frames, grads))
    return results


@pytest.mark.parametrize("spec, mode", [(WIDE, "default"), (TINY, "default"), (STUDY, "default"),
                                        (STUDY, "layer_norm"), (OTHER, "default")])
@pytest.mark.parametrize("lengths", [None, [9001, 6403, 7777]], ids=["full", "padded"])
def test_gemm_extractor_equals_conv1d(spec, mode, lengths):
    module = extractor(spec, mode)
    assert all(block.gemm_friendly for block in module.conv_layers)
    torch.manual_seed(1)
    if lengths is None:
        waves, lengths_tensor = torch.randn(2, 8003) * 0.1 + 0.02, None  # odd, with an offset
    else:
        waves = torch.randn(len(lengths), max(lengths)) * 0.1
        for i, n in enumerate(lengths):
            waves[i, n:] = 0
        lengths_tensor = torch.tensor(lengths)
    (gemm, gemm_frames, gemm_grads), (conv, conv_frames, conv_grads) = both_paths(
        module, waves, lengths_tensor)
    assert gemm.shape == conv.shape
    if lengths is not None:
        assert gemm_frames.tolist() == conv_frames.tolist()
    assert (gemm - conv).abs().max() <= 1e-5 * max(1.0, float(conv.abs().max()))
    for name, expected in conv_grads.items():
        error = (gemm_grads[name] - expected).abs().max()
        assert error <= 1e-5 * float(expected.abs().max()), name


def test_uncovered_layer_strings_fall_back_to_conv1d():
    module = extractor("[(16,10,5)] + [(16,5,2)]")  # kernel over two strides
    waves = torch.randn(2, 4000)
    assert not module.uses_gemm(waves)
    features, _ = module(waves)
    torch.testing.assert_close(features, module.conv1d_forward(waves)[0])
    assert not extractor(STUDY).uses_gemm(waves.requires_grad_())  # input gradients: conv1d


def test_gemm_extractor_gives_each_utterance_its_own_features():
    module = extractor(WIDE)
    torch.manual_seed(2)
    waves = [torch.randn(n) * 0.1 for n in (12000, 5001, 9600)]
    batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    with torch.no_grad():
        together, frames = module(batch, torch.tensor([len(w) for w in waves]))
        for i, wave in enumerate(waves):
            alone, _ = module(wave.unsqueeze(0))
            assert int(frames[i]) == alone.size(1)
            torch.testing.assert_close(together[i, : alone.size(1)], alone[0], atol=2e-5,
                                       rtol=1e-4)


def test_gemm_extractor_under_bf16_autocast_is_close_to_fp32():
    """Forward and gradients (the first block's come from its closed form) within 2 %."""
    module = extractor(WIDE)
    waves = torch.randn(2, 16000) * 0.1
    results = []
    for autocast in (False, True):
        module.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            features, _ = module(waves)
        features.float().pow(2).sum().backward()
        results.append((features, {n: p.grad.clone() for n, p in module.named_parameters()}))
    (full, full_grads), (half, half_grads) = results
    assert half.dtype == torch.bfloat16
    assert (half.float() - full).abs().mean() < 0.02 * full.abs().mean()
    for name, expected in full_grads.items():
        assert (half_grads[name] - expected).norm() < 0.02 * expected.norm(), name


def test_dropout_drops_at_rate_p_scales_the_rest_and_follows_the_seed():
    x = torch.ones(400_000, requires_grad=True)
    torch.manual_seed(3)
    y = dropout(x, 0.1)
    dropped = float((y == 0).float().mean())
    assert abs(dropped - 0.1) < 5 * (0.1 * 0.9 / x.numel()) ** 0.5  # five binomial sigmas
    assert torch.allclose(y[y != 0], torch.tensor(1 / 0.9))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # gradient: the same mask and scale
    torch.manual_seed(3)
    assert torch.equal(dropout(x.detach(), 0.1), y.detach())
    assert dropout(x, 0.1, training=False) is x and dropout(x, 0.0) is x


def test_bf16_inference_of_slim_is_within_two_percent_of_fp32():
    from tera.audio import load_audio

    wave = load_audio(FLAC)[:64000]
    model = random_tera("slim", seed=0)
    with torch.no_grad():
        full = TeraUpstream(model, precision="fp32")([wave])["hidden_states"]
        half = TeraUpstream(model, precision="bf16")([wave])["hidden_states"]
    for layer, (a, b) in enumerate(zip(half, full)):
        assert a.dtype == torch.float32
        assert (a - b).abs().mean() / b.abs().mean() < 0.02, layer


def test_precision_option_names_and_cache_identity():
    upstream = load_upstream("tera2", preset="tiny", precision="bf16")
    assert upstream.compute_dtype() == torch.bfloat16
    assert upstream.identity() != load_upstream("tera2", preset="tiny").identity()
    from tera.errors import UserError

    with pytest.raises(UserError, match="precision"):
        load_upstream("tera2", preset="tiny", precision="fp16")


def test_unpacked_bidirectional_lstm_equals_packed_sequences():
    from torch import nn

    from tera.downstream.asr import bidirectional_lstm

    torch.manual_seed(4)
    lstm = nn.LSTM(24, 16, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(3, 40, 24, requires_grad=True)
    lengths = torch.tensor([40, 23, 31])
    valid = (torch.arange(40) < lengths[:, None]).unsqueeze(-1)
    objective = torch.randn(3, 40, 32)
    results = []
    for packed in (True, False):
        x.grad = None
        lstm.zero_grad()
        if packed:
            sequence = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                         enforce_sorted=False)
            out, _ = nn.utils.rnn.pad_packed_sequence(lstm(sequence)[0], batch_first=True,
                                                      total_length=40)
        else:
            out = bidirectional_lstm(lstm, x, lengths)
        (out * objective * valid).sum().backward()
        results.append((out * valid, x.grad.clone(),
                        [p.grad.clone() for p in lstm.parameters()]))
    (out_p, gx_p, gw_p), (out_u, gx_u, gw_u) = results
    torch.testing.assert_close(out_u, out_p, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gx_u, gx_p, atol=1e-5, rtol=1e-4)
    for a, b in zip(gw_u, gw_p):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bf16_long_recording_path_is_close_to_fp32():
    """The chunked path of a long recording (robust's windows and chunks) under bf16 too."""
    from tera.audio import load_audio

    from .paths import COMPAT

    wave = load_audio(FLAC)
    upstreams = [load_upstream("tera2", COMPAT / "tera2_s3prl_converted.pt", chunk_seconds=5.0,
                               context_seconds=5.0, precision=precision)
                 for precision in ("fp32", "bf16")]
    with torch.no_grad():
        full, half = (upstream([wave])["hidden_states"] for upstream in upstreams)
    for layer, (a, b) in enumerate(zip(half, full)):
        assert a.dtype == torch.float32 and a.shape == b.shape
        assert (a - b).abs().mean() / b.abs().mean() < 0.02, layer


def test_inference_reuses_derived_weights_until_a_parameter_changes():
    """Inference keeps bf16 weights, fused q/k/v and conv taps between calls; they must follow
    every way a weight can change: an optimizer step, load_state_dict, a dtype round trip."""
    torch.manual_seed(0)
    model = random_tera("tiny", seed=0)
    upstream = TeraUpstream(model, precision="bf16")
    wave = [torch.randn(8000) * 0.1]

    def states() -> torch.Tensor:
        with torch.no_grad():
            return upstream(wave)["last_hidden_state"]

    def fresh() -> torch.Tensor:  # the same weights in a model that has cached nothing
        other = random_tera("tiny", seed=1)
        other.load_state_dict(model.state_dict())
        with torch.no_grad():
            return TeraUpstream(other, precision="bf16")(wave)["last_hidden_state"]

    first = states()
    assert torch.equal(states(), first)  # reused: the same numbers
    assert torch.equal(first, fresh())

    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.extract_features(torch.stack(wave))
    out.last_hidden_state.float().pow(2).mean().backward()
    optimizer.step()
    model.eval()
    stepped = states()
    assert not torch.equal(stepped, first)
    assert torch.equal(stepped, fresh())

    model.load_state_dict(random_tera("tiny", seed=2).state_dict())
    loaded = states()
    assert not torch.equal(loaded, stepped)
    assert torch.equal(loaded, fresh())

    model.double()
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(0.9)
    model.float()  # new storage, version 0 again: possibly at the old address
    assert torch.equal(states(), fresh())

    with torch.inference_mode():  # parameters without a version counter: nothing kept
        made_there = TeraUpstream(random_tera("tiny", seed=2), precision="bf16")
        assert torch.equal(made_there(wave)["last_hidden_state"], loaded)
