"""The `tera extract`, `tera info` and `tera convert` commands, through `tera.cli.main`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from tera.checkpoint import load_checkpoint
from tera.cli import main

from .paths import COMPAT, FLAC

S3PRL = COMPAT / "tera2_s3prl_converted.pt"
FAIRSEQ = COMPAT / "tera2_fairseq.pt"


@pytest.fixture(scope="module")
def expected() -> dict[str, np.ndarray]:
    return dict(np.load(COMPAT / "tera2_expected_hidden.npz"))


@pytest.fixture()
def clip(tmp_path):
    """The first 4 s of the LibriSpeech file, as a wav."""
    wave, rate = sf.read(FLAC, dtype="float32")
    path = tmp_path / "clip.wav"
    sf.write(path, wave[:64000], rate, subtype="FLOAT")
    return path


def test_extract_all_layers_reproduces_the_reference(tmp_path, expected):
    out = tmp_path / "h.npz"
    assert main(["extract", "-u", "tera2", "-k", str(FAIRSEQ), "--precision", "fp32", str(FLAC),
                 "-o", str(out)]) == 0
    arrays = np.load(out)
    assert list(arrays) == [FLAC.stem] and arrays[FLAC.stem].dtype == np.float32
    assert np.abs(arrays[FLAC.stem] - expected["hidden"]).max() < 1e-4


def test_extract_one_layer_from_several_files(tmp_path, clip, expected, capsys):
    out = tmp_path / "features"  # no .npz suffix: written as given
    assert main(["extract", "-k", str(S3PRL), "--layer", "2", "--precision", "fp32", str(FLAC),
                 str(clip), "-o", str(out)]) == 0
    arrays = np.load(out)
    assert arrays[FLAC.stem].shape == (596, 48)
    assert np.abs(arrays["clip"] - expected["hidden_4s"][2]).max() < 1e-4
    assert "2 arrays" in capsys.readouterr().out


def test_extract_from_a_converted_safetensors_dir(tmp_path, clip, expected):
    assert main(["convert", str(FAIRSEQ), str(tmp_path / "st"), "--to", "safetensors"]) == 0
    assert main(["extract", "-k", str(tmp_path / "st"), "--precision", "fp32", str(clip), "-o",
                 str(tmp_path / "o.npz")]) == 0
    assert np.abs(np.load(tmp_path / "o.npz")["clip"] - expected["hidden_4s"]).max() < 1e-4


def test_extract_by_default_takes_the_fast_path_within_two_percent(tmp_path, clip, expected):
    """auto: bf16 on a CPU with bf16 matmuls (fp32 elsewhere), close to the reference."""
    assert main(["extract", "-k", str(S3PRL), str(clip), "-o", str(tmp_path / "o.npz")]) == 0
    hidden, reference = np.load(tmp_path / "o.npz")["clip"], expected["hidden_4s"]
    for layer in range(len(reference)):
        error = np.abs(hidden[layer] - reference[layer]).mean()
        assert error < 0.02 * np.abs(reference[layer]).mean(), layer


def test_extract_baselines(tmp_path, clip, expected):
    out = tmp_path / "f.npz"
    assert main(["extract", "-u", "mfcc", str(FLAC), "-o", str(out)]) == 0
    mfcc = np.load(out)[FLAC.stem]
    assert mfcc.shape == (1, 1191, 39)
    assert np.abs(mfcc[0] - expected["mfcc39"]).max() < 1e-3
    assert main(["extract", "-u", "fbank", "--layer", "0", str(clip), "-o", str(out)]) == 0
    assert np.load(out)["clip"].shape == (398, 80)
    assert main(["extract", "-u", "fbank", "--deltas", str(clip), "-o", str(out)]) == 0
    assert np.load(out)["clip"].shape == (1, 398, 240)


def test_extract_without_checkpoint_is_a_seeded_random_slim(tmp_path, clip, caplog):
    outputs = [tmp_path / "a.npz", tmp_path / "b.npz"]
    for out in outputs:
        assert main(["extract", "--layer", "12", str(clip), "-o", str(out)]) == 0
    assert "without a checkpoint (-k): a randomly initialised slim" in caplog.text
    a, b = (np.load(out)["clip"] for out in outputs)
    assert a.shape == (199, 384) and np.array_equal(a, b)


def test_extract_converts_stereo_and_8k(tmp_path):
    rng = np.random.default_rng(0)
    stereo = rng.standard_normal((16000, 2)) * 0.1
    sf.write(tmp_path / "stereo.wav", stereo, 16000, subtype="FLOAT")
    sf.write(tmp_path / "mono.wav", stereo.mean(1), 16000, subtype="FLOAT")
    sf.write(tmp_path / "narrow.wav", rng.standard_normal(8000) * 0.1, 8000)
    out = tmp_path / "f.npz"
    files = [str(tmp_path / f"{n}.wav") for n in ("stereo", "mono", "narrow")]
    assert main(["extract", "-u", "fbank", "--layer", "0", *files, "-o", str(out)]) == 0
    arrays = np.load(out)
    assert arrays["narrow"].shape == (98, 80)  # 1 s at 8 kHz -> 16000 samples
    np.testing.assert_allclose(arrays["stereo"], arrays["mono"], atol=1e-4)


@pytest.mark.parametrize("case", ["missing", "text", "empty", "nan", "short"])
def test_extract_bad_input_is_one_line_naming_the_file(tmp_path, capsys, case):
    path = tmp_path / f"{case}.wav"
    if case == "text":
        path.write_text("not audio")
    elif case == "empty":
        sf.write(path, np.zeros(0), 16000)
    elif case == "nan":
        sf.write(path, np.full(800, np.nan), 16000, subtype="FLOAT")
    elif case == "short":
        sf.write(path, np.zeros(100), 16000)
    out = tmp_path / "o.npz"
    assert main(["extract", "-u", "mfcc", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{case}.wav" in err[0] and err[0].startswith("tera extract: ")
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--layer", "9", "-u", "mfcc"], "--layer 9 is out of range: this upstream has layers 0..0"),
    (["--layer", "top"], "--layer must be 'all' or a number"),
    (["-u", "mfcc", "--deltas"], "--deltas applies to -u fbank"),
    (["-u", "fbank", "-k", "x.pt"], "fbank upstream takes no checkpoint"),
    (["-k", "nowhere.pt"], "nowhere.pt: no such checkpoint"),
])
def test_extract_bad_options(tmp_path, capsys, argv, message):
    assert main(["extract", *argv, str(FLAC), "-o", str(tmp_path / "o.npz")]) == 2
    assert message in capsys.readouterr().err


def test_extract_refuses_colliding_stems(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    wave = np.zeros(1600, dtype=np.float32)
    for folder in ("a", "b"):
        sf.write(tmp_path / folder / "x.wav", wave, 16000)
    argv = ["extract", "-u", "mfcc", str(tmp_path / "a" / "x.wav"), str(tmp_path / "b" / "x.wav")]
    assert main([*argv, "-o", str(tmp_path / "o.npz")]) == 2
    assert "share the stem 'x'" in capsys.readouterr().err


# --- info and convert -------------------------------------------------------------------------


def test_info_of_a_preset(capsys):
    assert main(["info", "slim", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["preset"] == "slim" and facts["encoder_layers"] == 12
    assert facts["parameters"] > 19_000_000 and facts["flops_per_second"] > 1e9
    assert main(["info", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "3 layers x 128" in out and "parameters: " in out


def test_info_of_checkpoints(tmp_path, capsys):
    assert main(["convert", str(FAIRSEQ), str(tmp_path / "st"), "--to", "safetensors"]) == 0
    assert "(fairseq) ->" in capsys.readouterr().out
    card = (tmp_path / "st" / "README.md").read_text()
    assert card.count("parameters") == 1
    for target in (FAIRSEQ, tmp_path / "st"):
        assert main(["info", str(target), "--json"]) == 0
        facts = json.loads(capsys.readouterr().out)
        assert facts["parameters"] == 97_870 and facts["encoder_embed_dim"] == 48
        assert facts["preset"] == "unknown"
    assert main(["info", str(FAIRSEQ)]) == 0
    assert "parameters: 97,870" in capsys.readouterr().out


def test_info_names_the_preset_of_a_converted_checkpoint(tmp_path, capsys):
    from tera.checkpoint import LoadedCheckpoint, save_checkpoint
    from tera.upstream import random_tera

    model = random_tera("tiny")
    ckpt = LoadedCheckpoint(model, model.cfg, {}, None, "tera", tmp_path / "x")
    save_checkpoint(ckpt, tmp_path / "tiny.pt", "s3prl")
    assert main(["info", str(tmp_path / "tiny.pt"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["preset"] == "tiny (same architecture)"


def test_info_of_neither_is_a_user_error(capsys):
    assert main(["info", "no_such_thing"]) == 2
    assert "no_such_thing: neither a checkpoint nor a known preset" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["s3prl", "fairseq"])
def test_convert_command_round_trip(tmp_path, fmt):
    there, back = tmp_path / f"{fmt}.pt", tmp_path / "back.pt"
    assert main(["convert", str(FAIRSEQ), str(there), "--to", fmt]) == 0
    assert main(["convert", str(there), str(back), "--to", "fairseq"]) == 0
    original, final = load_checkpoint(FAIRSEQ), load_checkpoint(back)
    assert final.model_cfg == original.model_cfg and final.metadata == original.metadata


def test_convert_bad_source_exits_2(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["convert", str(tmp_path / "notes.txt"), str(tmp_path / "o.pt"),
                 "--to", "s3prl"]) == 2
    err = capsys.readouterr().err
    assert "notes.txt" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.pt").exists()


@pytest.mark.parametrize("command", ["extract", "convert"])
def test_unwritable_outputs_are_one_line_and_leave_no_temporary_file(tmp_path, capsys,
                                                                     command):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    cases = {tmp_path / "folder": "is a folder",
             tmp_path / "file" / "x.npz": "file is a file, not a folder"}
    for output, reason in cases.items():
        argv = (["extract", "-u", "mfcc", str(FLAC), "-o", str(output)] if command == "extract"
                else ["convert", str(S3PRL), str(output), "--to", "s3prl"])
        assert main(argv) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert reason in line and str(output) in line
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["file", "folder"]
