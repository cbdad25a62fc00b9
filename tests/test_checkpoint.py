"""Checkpoint formats, conversion, the upstream API and `tera extract` / `tera info`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from tera.audio import load_audio
from tera.checkpoint import (
    REFERENCE_MODEL_DEFAULTS,
    REFERENCE_TASK_DEFAULTS,
    load_checkpoint,
    save_checkpoint,
)
from tera.cli import main
from tera.errors import UserError
from tera.model.tera import build_model
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


def hidden(upstream, wave: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.stack(upstream([wave])["hidden_states"])[:, 0].numpy()


@pytest.mark.parametrize("path", [S3PRL, FAIRSEQ], ids=["s3prl", "fairseq"])
def test_reference_files_reproduce_reference_hidden_states(path, expected, flac):
    upstream = load_upstream("tera2", path)
    assert upstream.get_downsample_rate() == 320
    assert np.abs(hidden(upstream, flac) - expected["hidden"]).max() < 1e-4
    assert np.abs(hidden(upstream, flac[:64000]) - expected["hidden_4s"]).max() < 1e-4


def test_fairseq_file_loads_without_fairseq_and_keeps_its_dictionary():
    import importlib.util

    assert importlib.util.find_spec("fairseq") is None
    ckpt = load_checkpoint(FAIRSEQ)
    assert ckpt.source_format == "fairseq"
    assert len(ckpt.dictionaries_symbols[0]) == 12
    assert ckpt.model_cfg.encoder_layers == 3 and ckpt.task_cfg["sample_rate"] == 16000


@pytest.mark.parametrize("chain", [("s3prl", "fairseq", "s3prl"),
                                   ("fairseq", "safetensors", "fairseq"),
                                   ("safetensors", "s3prl", "safetensors")])
def test_round_trips_are_exact(tmp_path, chain, flac):
    source = load_checkpoint(S3PRL)
    current = source
    paths = []
    for i, fmt in enumerate(chain):
        path = tmp_path / f"step{i}_{fmt}{'' if fmt == 'safetensors' else '.pt'}"
        save_checkpoint(current, path, fmt)
        current = load_checkpoint(path)
        assert current.source_format == fmt
        paths.append(path)
    for name, tensor in source.model.state_dict().items():
        assert torch.equal(current.model.state_dict()[name], tensor), name
    first, last = load_checkpoint(paths[0]), load_checkpoint(paths[-1])
    assert first.model_cfg == last.model_cfg and first.task_cfg == last.task_cfg
    assert first.dictionaries_symbols == last.dictionaries_symbols
    with torch.no_grad():
        a = source.model(flac[None, :32000]).last_hidden_state
        b = current.model(flac[None, :32000]).last_hidden_state
    assert torch.equal(a, b)


def test_s3prl_export_is_strictly_loadable_with_reference_fields_only(tmp_path):
    save_checkpoint(load_checkpoint(FAIRSEQ), tmp_path / "out.pt", "s3prl")
    raw = torch.load(tmp_path / "out.pt", weights_only=True)
    assert set(raw) == {"task_cfg", "model_cfg", "model_weight", "dictionaries_symbols"}
    assert set(raw["model_cfg"]) == set(REFERENCE_MODEL_DEFAULTS)
    assert set(raw["task_cfg"]) == set(REFERENCE_TASK_DEFAULTS)
    reference = torch.load(S3PRL, weights_only=True)
    assert raw["model_cfg"] == reference["model_cfg"]
    model = build_model(raw["model_cfg"], num_label_classes=12)
    model.load_state_dict(raw["model_weight"], strict=True)


def test_plain_fairseq_layout_with_cfg_or_args_loads(tmp_path):
    reference = torch.load(S3PRL, weights_only=True)
    for key, config in [("cfg", {"model": reference["model_cfg"], "task": {}}),
                        ("args", {**reference["model_cfg"], "sample_rate": 16000})]:
        path = tmp_path / f"{key}.pt"
        torch.save({key: config, "model": reference["model_weight"], "task_state": {}}, path)
        ckpt = load_checkpoint(path)
        assert ckpt.source_format == "fairseq" and ckpt.model_cfg.encoder_embed_dim == 48


def test_missing_newer_keys_take_defaults_and_unknown_keys_are_kept(tmp_path):
    reference = torch.load(S3PRL, weights_only=True)
    cfg = {k: v for k, v in reference["model_cfg"].items() if k not in ("conv_pos", "fp16")}
    cfg["a_future_option"] = 3
    torch.save({**reference, "model_cfg": cfg}, tmp_path / "old.pt")
    ckpt = load_checkpoint(tmp_path / "old.pt")
    assert ckpt.model_cfg.conv_pos == 128 and ckpt.model_cfg.extra["a_future_option"] == 3


def test_shape_mismatch_names_file_and_key(tmp_path):
    reference = torch.load(S3PRL, weights_only=True)
    cfg = dict(reference["model_cfg"], encoder_ffn_embed_dim=64)
    torch.save({**reference, "model_cfg": cfg}, tmp_path / "bad.pt")
    with pytest.raises(UserError, match=r"bad\.pt.*encoder\.layers\.0\.fc1\.weight"):
        load_checkpoint(tmp_path / "bad.pt")


@pytest.mark.parametrize("content", [b"hello, not a checkpoint", b""])
def test_non_checkpoint_files_are_rejected(tmp_path, content):
    path = tmp_path / "notes.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match="notes.pt"):
        load_checkpoint(path)


def test_truncated_checkpoint_is_reported(tmp_path):
    data = S3PRL.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cut.pt.*(corrupt|truncated|not a checkpoint)"):
        load_checkpoint(tmp_path / "cut.pt")


def test_pickled_code_outside_the_allow_list_is_refused(tmp_path):
    import pickle

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"cfg": {"model": {}}, "model": {}, "x": print}, f, protocol=2)
    with pytest.raises(UserError, match="evil.pt.*(refusing|builtins.print)"):
        load_checkpoint(path)


# --- upstreams ------------------------------------------------------------------------------


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


def test_baseline_upstreams_shapes_and_rates(flac):
    for name, dim in [("fbank", 80), ("mfcc", 39)]:
        upstream = load_upstream(name)
        out = upstream([flac, flac[:16000]])
        assert upstream.get_downsample_rate() == 160 and upstream.num_layers == 1
        assert out["last_hidden_state"].shape == (2, 1191, dim)
        assert out["lengths"].tolist() == [1191, 98]
    assert load_upstream("fbank", deltas=True)([flac])["last_hidden_state"].shape[-1] == 240


def test_identity_changes_with_weights():
    a, b = load_upstream("tera2", S3PRL), load_upstream("tera2", FAIRSEQ)
    assert a.identity() == b.identity()  # same weights, two formats
    with torch.no_grad():
        b.model.mask_emb.add_(1.0)
    assert a.identity() != b.identity()
    assert load_upstream("fbank").identity() != load_upstream("fbank", deltas=True).identity()


def test_featurizer_is_a_softmax_weighted_sum():
    featurizer = Featurizer(3, 4)
    with torch.no_grad():
        featurizer.weights.copy_(torch.tensor([0.0, 1.0, 2.0]))
    layers = [torch.full((1, 2, 4), float(i)) for i in range(3)]
    weights = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
    torch.testing.assert_close(featurizer.layer_weights, weights)
    torch.testing.assert_close(featurizer(layers), torch.full((1, 2, 4), float(weights @
                                                                           torch.arange(3.0))))
    assert Featurizer(1, 4)(layers[:1]) is layers[0]


# --- command line ---------------------------------------------------------------------------


def test_extract_all_layers_and_one_layer(tmp_path, expected):
    out = tmp_path / "h.npz"
    assert main(["extract", "-u", "tera2", "-k", str(FAIRSEQ), str(FLAC), "-o", str(out)]) == 0
    arrays = np.load(out)
    key = FLAC.stem
    assert np.abs(arrays[key] - expected["hidden"]).max() < 1e-4
    assert main(["extract", "-u", "tera2", "-k", str(S3PRL), "--layer", "2", str(FLAC),
                 "-o", str(out)]) == 0
    assert np.load(out)[key].shape == (596, 48)
    assert main(["extract", "-u", "mfcc", str(FLAC), "-o", str(out)]) == 0
    assert np.load(out)[key].shape == (1, 1191, 39)


def test_extract_converts_stereo_and_8k(tmp_path):
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "stereo.wav", rng.standard_normal((16000, 2)) * 0.1, 16000)
    sf.write(tmp_path / "narrow.wav", rng.standard_normal(8000) * 0.1, 8000)
    out = tmp_path / "f.npz"
    assert main(["extract", "-u", "fbank", "--layer", "0", str(tmp_path / "stereo.wav"),
                 str(tmp_path / "narrow.wav"), "-o", str(out)]) == 0
    arrays = np.load(out)
    assert arrays["stereo"].shape == (98, 80) and arrays["narrow"].shape == (98, 80)


@pytest.mark.parametrize("case", ["missing", "text", "empty", "nan"])
def test_extract_bad_input_is_one_line_naming_the_file(tmp_path, capsys, case):
    path = tmp_path / f"{case}.wav"
    if case == "text":
        path.write_text("not audio")
    elif case == "empty":
        sf.write(path, np.zeros(0), 16000)
    elif case == "nan":
        sf.write(path, np.full(800, np.nan), 16000, subtype="FLOAT")
    assert main(["extract", "-u", "mfcc", str(path), "-o", str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{case}.wav" in err[0]


def test_info_and_convert_commands(tmp_path, capsys):
    assert main(["info", "slim", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["parameters"] > 19_000_000 and facts["flops_per_second"] > 1e9
    assert main(["convert", str(FAIRSEQ), str(tmp_path / "st"), "--to", "safetensors"]) == 0
    assert (tmp_path / "st" / "README.md").read_text().count("parameters") == 1
    assert main(["info", str(tmp_path / "st")]) == 0
    assert "97,870" in capsys.readouterr().out
