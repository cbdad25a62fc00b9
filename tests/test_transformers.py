"""The transformers export: a TERA2 checkpoint as a folder `transformers.HubertModel` loads
(offline, from the folder only), with tera-speech's hidden states, and back exactly."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoFeatureExtractor, HubertModel

from tera.audio import load_audio
from tera.checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint
from tera.cli import main
from tera.errors import UserError
from tera.model.tera import TeraModel
from tera.presets import load_preset, model_config
from tera.upstream import load_upstream

from .helpers import same_checkpoint
from .paths import COMPAT, FLAC

S3PRL = COMPAT / "tera2_s3prl_converted.pt"
FAIRSEQ = COMPAT / "tera2_fairseq.pt"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def wave() -> torch.Tensor:
    return load_audio(FLAC)  # 11.9 s, one utterance, no padding


def source_path(name: str, request) -> Path:
    return {"s3prl": S3PRL, "fairseq": FAIRSEQ}.get(name) or request.getfixturevalue("trained")


def hubert(folder: Path) -> HubertModel:
    """The model, after checking that every weight it has came from the folder and every
    weight of the folder went into it."""
    model, info = HubertModel.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), info  # missing, unexpected, mismatched, error messages
    return model.eval()


@pytest.mark.parametrize("name", ["s3prl", "fairseq", "trained"])
def test_hubert_model_gives_tera_hidden_states(name, request, wave, tmp_path):
    source = source_path(name, request)
    folder = tmp_path / "hf"
    save_checkpoint(load_checkpoint(source), folder, "transformers")
    model = hubert(folder)
    with torch.no_grad():
        theirs = model(wave[None], output_hidden_states=True).hidden_states
    ours = load_upstream("tera2", source)([wave])["hidden_states"]
    assert len(theirs) == len(ours) == model.config.num_hidden_layers + 1
    for layer, (a, b) in enumerate(zip(theirs, ours)):
        assert a.shape == b.shape, layer
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0, msg=f"h_{layer}")
    if name != "trained":  # the reference code's own states (s3prl's tera2 upstream)
        import numpy as np

        reference = torch.from_numpy(np.load(COMPAT / "tera2_expected_hidden.npz")["hidden"])
        frames = reference.shape[1]
        for layer, a in enumerate(theirs):
            torch.testing.assert_close(a[0, :frames], reference[layer], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["s3prl", "fairseq", "trained"])
def test_round_trip_through_transformers_is_exact(name, request, tmp_path):
    original = load_checkpoint(source_path(name, request))
    save_checkpoint(original, tmp_path / "hf", "transformers")
    middle = load_checkpoint(tmp_path / "hf")
    assert middle.source_format == "transformers"
    same_checkpoint(original, middle)
    for fmt in ("fairseq", "s3prl"):
        save_checkpoint(middle, tmp_path / f"back_{fmt}.pt", fmt)
        same_checkpoint(original, load_checkpoint(tmp_path / f"back_{fmt}.pt"))


def test_convert_command_both_ways(tmp_path, capsys):
    assert main(["convert", str(FAIRSEQ), str(tmp_path / "tera2_hf"), "--to", "transformers"]) == 0
    assert main(["convert", str(tmp_path / "tera2_hf"), str(tmp_path / "back.pt"),
                 "--to", "fairseq"]) == 0
    same_checkpoint(load_checkpoint(FAIRSEQ), load_checkpoint(tmp_path / "back.pt"))
    assert sorted(p.name for p in (tmp_path / "tera2_hf").iterdir()) == [
        "README.md", "config.json", "model.safetensors", "preprocessor_config.json",
        "tera_extra.safetensors"]


def test_feature_extractor_and_model_card(tmp_path, wave):
    folder = tmp_path / "tera2_hf"
    save_checkpoint(load_checkpoint(S3PRL), folder, "transformers")
    extractor = AutoFeatureExtractor.from_pretrained(folder)
    assert type(extractor).__name__ == "Wav2Vec2FeatureExtractor"
    assert extractor.sampling_rate == 16000 and extractor.do_normalize is False
    card = (folder / "README.md").read_text()
    model = hubert(folder)
    parameters = sum(p.numel() for p in model.parameters())
    assert f"HubertModel parameters: {parameters:,}" in card
    assert 'HubertModel.from_pretrained("tera2_hf")' in card and "FLOPs" in card
    # the card's three lines, as a user types them
    inputs = extractor(wave.numpy(), sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        states = model(**inputs, output_hidden_states=True).hidden_states
    assert len(states) == 4 and states[0].shape == (1, 596, 48)
    config = json.loads((folder / "config.json").read_text())
    assert config["conv_kernel"] == [10, 3, 3, 3, 3, 2, 2] and config["hidden_size"] == 48
    assert config["feat_extract_norm"] == "group" and config["do_stable_layer_norm"] is False


def test_pre_ln_layer_norm_extractor_without_projection(tmp_path, wave):
    """The other architecture options: pre-LN (`do_stable_layer_norm`), LayerNorm in every
    conv block, conv bias, no post_extract_proj (conv channels = D: an identity projection
    in HubertModel), no masking (mask_emb kept aside) and a standardised waveform."""
    cfg = dataclasses.replace(model_config(load_preset("tiny")), layer_norm_first=True,
                              extractor_mode="layer_norm", conv_bias=True, mask_prob=0.0,
                              normalize=True, encoder_layers=2)
    torch.manual_seed(0)
    model = TeraModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ckpt = LoadedCheckpoint(model, cfg, {"normalize": True}, None, "tera", Path("x.pt"), {})
    save_checkpoint(ckpt, tmp_path / "hf", "transformers")
    theirs_model = hubert(tmp_path / "hf")
    assert AutoFeatureExtractor.from_pretrained(tmp_path / "hf").do_normalize is True
    short = wave[:64000]
    standardised = torch.nn.functional.layer_norm(short[None], short[None].shape[-1:])
    with torch.no_grad():
        out = theirs_model(standardised, output_hidden_states=True)
        ours = model.extract_features(short[None]).hidden_states
    for layer, (a, b) in enumerate(zip(out.hidden_states, ours)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0, msg=f"h_{layer}")
    assert torch.equal(out.hidden_states[-1], out.last_hidden_state)  # after the final LN
    back = load_checkpoint(tmp_path / "hf")
    for name, tensor in model.state_dict().items():
        assert torch.equal(back.model.state_dict()[name], tensor), name
    assert dataclasses.replace(back.model_cfg, extra={}) == cfg


def test_what_hubert_cannot_express_is_refused(tmp_path):
    ckpt = load_checkpoint(S3PRL)
    ckpt.model_cfg.extra["layer_type"] = "conformer"
    with pytest.raises(UserError, match="layer_type 'conformer' has no HubertModel") as err:
        save_checkpoint(ckpt, tmp_path / "hf", "transformers")
    assert "\n" not in str(err.value) and not (tmp_path / "hf").exists()


def test_hubert_folder_without_the_tera_part_is_explained(tmp_path):
    save_checkpoint(load_checkpoint(S3PRL), tmp_path / "hf", "transformers")
    (tmp_path / "hf" / "tera_extra.safetensors").unlink()
    with pytest.raises(UserError, match="not a TERA2 export"):
        load_checkpoint(tmp_path / "hf")
