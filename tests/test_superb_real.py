"""The real-data recipes of KS, SID and ASV (s3prl's, setting by setting) on tiny corpora in
the layouts users have on disk, made here from the test utterance (no summary.json: these
are "real" corpora to the runner)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tera.audio import load_audio
from tera.cli import main
from tera.corpora import lengths, read_segment, speech_commands, voxceleb1
from tera.downstream.asv import AsvTask
from tera.downstream.base import count_parameters
from tera.downstream.ks import KsTask
from tera.downstream.recipe import load_recipe
from tera.downstream.runner import run
from tera.downstream.sid import SidTask
from tera.upstream import load_upstream

from .paths import FLAC

SOURCE = load_audio(FLAC).numpy()


def clip(index: int, seconds: float) -> np.ndarray:
    """A piece of the test utterance (speech), `index` picks where it starts."""
    length = int(seconds * 16000)
    start = (index * 7919) % (len(SOURCE) - length)
    return SOURCE[start : start + length]


def write(path: Path, wave: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, 16000)


def speakers_in(low: float, high: float, count: int) -> list[str]:
    """Speaker hashes whose share of s3prl's split rule falls in [low, high)."""
    found = []
    for number in range(100000):
        name = f"{number:08x}"
        if low <= speech_commands.hash_percentage(f"{name}_nohash_0.wav") < high:
            found.append(name)
            if len(found) == count:
                return found
    raise AssertionError("no such speakers")


@pytest.fixture(scope="module")
def commands_root(tmp_path_factory) -> Path:
    """Speech Commands v0.01 with its test release beside it."""
    top = tmp_path_factory.mktemp("speech_commands")
    root = top / "speech_commands_v0.01"
    groups = {"train": speakers_in(20, 100, 3), "dev": speakers_in(0, 10, 1),
              "dropped": speakers_in(10, 20, 1)}
    n = 0
    for word in ("yes", "no", "bed"):
        for speakers in groups.values():
            for speaker in speakers:
                write(root / word / f"{speaker}_nohash_0.wav", clip(n, 1.0))
                n += 1
    write(root / speech_commands.NOISE / "white_noise.wav",
          np.random.default_rng(0).normal(0, 0.05, 48000).astype(np.float32))
    for label in ("yes", "no", "_unknown_", "_silence_"):
        for k in range(2):
            write(top / "speech_commands_test_set_v0.01" / label / f"t{k}_nohash_0.wav",
                  clip(n, 1.0))
            n += 1
    return root


VOX_TRAIN = ["id10001", "id10002", "id10003", "id10004"]
VOX_TEST = ["id10270", "id10271"]


@pytest.fixture(scope="module")
def voxceleb_root(tmp_path_factory) -> Path:
    """VoxCeleb1: wav/<speaker>/<video>/<n>.wav, iden_split.txt, both verification lists."""
    root = tmp_path_factory.mktemp("voxceleb1")
    n, iden = 0, []
    for speaker in VOX_TRAIN + VOX_TEST:
        for video in ("vidA", "vidB"):
            for k in (1, 2):
                rel = f"{speaker}/{video}/{k:05d}.wav"
                write(root / "wav" / rel, clip(n, 4.0))
                n += 1
                if speaker in VOX_TRAIN:
                    iden.append(f"{1 if video == 'vidA' else (2 if k == 1 else 3)} {rel}")
    (root / "iden_split.txt").write_text("\n".join(iden) + "\n")
    a, b = VOX_TEST
    original = [f"1 {a}/vidA/00001.wav {a}/vidB/00001.wav",
                f"0 {a}/vidA/00001.wav {b}/vidA/00001.wav",
                f"1 {b}/vidA/00002.wav {b}/vidB/00002.wav",
                f"0 {b}/vidB/00001.wav {a}/vidA/00002.wav",
                f"1 {a}/vidA/00002.wav {a}/vidB/00002.wav",
                f"0 {a}/vidB/00001.wav {b}/vidB/00002.wav"]
    (root / "veri_test.txt").write_text("\n".join(original) + "\n")
    (root / "veri_test2.txt").write_text("\n".join(original[:4]) + "\n")
    return root


def real_task(kind, name: str, root: Path, labels: int | None = None):
    task = kind(root, dict(load_recipe(name, None, None, [])["downstream_expert"]))
    if labels is not None:
        task.labels = [f"id{10001 + i}" for i in range(labels)]
    return task


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


# --- the heads: s3prl's architectures, counted from their layer sizes -----------------------


def test_head_parameters_are_superbs_for_a_384_dim_upstream(tmp_path):
    ks = real_task(KsTask, "ks", tmp_path)
    assert count_parameters(ks.build_head(384)) == linear(384, 256) + linear(256, 12) == 101644
    sid = real_task(SidTask, "sid", tmp_path, labels=1251)
    assert count_parameters(sid.build_head(384)) == linear(384, 256) + linear(256, 1251)
    asv = real_task(AsvTask, "asv", tmp_path, labels=1211)
    tdnn = (linear(512 * 5, 512) + 2 * linear(512 * 3, 512) + linear(512, 512)
            + linear(512, 1500))
    expected = linear(384, 512) + tdnn + linear(3000, 512) + linear(512, 512) + 512 * 1211
    assert count_parameters(asv.build_head(384)) == expected


def test_ks_head_is_a_linear_probe():
    """No non-linearity: the logits of a sum of two inputs are the sum of their logits
    (less one bias), which a ReLU between the layers would break."""
    head = real_task(KsTask, "ks", Path(".")).build_head(8)
    x, y = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    lengths = torch.tensor([5, 3])
    bias = head(torch.zeros(2, 5, 8), lengths)
    torch.testing.assert_close(head(x + y, lengths), head(x, lengths) + head(y, lengths) - bias)


def test_asv_embeddings_see_only_valid_frames():
    torch.manual_seed(0)
    head = real_task(AsvTask, "asv", Path("."), labels=3).build_head(16).eval()
    x = torch.randn(1, 40, 16)
    padded = torch.cat([x, torch.randn(1, 25, 16)], dim=1)
    torch.testing.assert_close(head.embedding(padded, torch.tensor([40])),
                               head.embedding(x, torch.tensor([40])))


# --- KS ---------------------------------------------------------------------------------------


def test_ks_splits_by_the_speaker_hash_and_reads_the_test_release(commands_root):
    task = real_task(KsTask, "ks", commands_root)
    train, dev, test = (task.examples(s) for s in ("train", "valid", "test"))
    words = [u for u in train if u.label != speech_commands.SILENCE]
    assert len(words) == 9 and {u.label for u in words} == {"yes", "no", "_unknown_"}
    assert len([u for u in dev if u.label != speech_commands.SILENCE]) == 3
    dropped = speakers_in(10, 20, 1)[0]
    assert not [u for u in train + dev if u.speaker == dropped]
    assert len(test) == 8 and {u.label for u in test} == {"yes", "no", "_unknown_", "_silence_"}
    # sox `gain -3.0` on every clip
    utt = test[0]
    np.testing.assert_allclose(read_segment(utt).numpy(),
                               load_audio(utt.path).numpy() * 10 ** (-3 / 20), rtol=1e-6,
                               atol=1e-9)


def test_ks_silence_is_a_fresh_crop_at_every_draw(commands_root):
    task = real_task(KsTask, "ks", commands_root)
    train = task.examples("train")
    offsets = set()
    for seed in range(6):
        for utt in task.epoch(train, seed):
            if utt.label == speech_commands.SILENCE:
                wave = read_segment(utt)
                assert len(wave) == speech_commands.SEGMENT
                offsets.add(round(float(wave[:50].abs().sum()), 4))
    assert len(offsets) > 3


def test_ks_without_the_test_release_stops_with_one_line(commands_root, tmp_path, capsys):
    lonely = tmp_path / "speech_commands_v0.01"
    lonely.symlink_to(commands_root, target_is_directory=True)
    assert main(["downstream", "-m", "train", "-d", "speech_commands", "-u", "fbank", "-p",
                 str(tmp_path / "run"), "--data-root", str(lonely)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "speech_commands_test_set_v0.01" in line and str(lonely) in line


KS_SHORT = ["runner.total_steps=4", "runner.batch_size=4", "runner.eval_step=2",
            "runner.save_step=2", "runner.log_step=2"]


def test_ks_real_run_records_its_recipe_and_the_cache_does_not_change_it(commands_root,
                                                                          tmp_path):
    cached = run("ks", upstream="fbank", expdir=tmp_path / "cached", data_root=commands_root,
                 overrides=KS_SHORT)
    fly = run("ks", upstream="fbank", expdir=tmp_path / "fly", data_root=commands_root,
              overrides=KS_SHORT, cache_budget_gb=0.0)
    assert cached["cache"]["enabled"] and cached["cache"]["hits"] > 0
    assert not fly["cache"]["enabled"] and fly["cache"]["hits"] == 0
    assert fly["value"] == pytest.approx(cached["value"], abs=1e-9)
    heads = [torch.load(tmp_path / name / "dev-best.ckpt")["head"] for name in ("cached", "fly")]
    for key, value in heads[0].items():
        torch.testing.assert_close(heads[1][key], value)
    written = json.loads((tmp_path / "cached" / "results.json").read_text())
    dim = load_upstream("fbank").hidden_size
    assert written["head_parameters"] == linear(dim, 256) + linear(256, 12)
    assert written["profile"] == "real" and written["data_root"] == str(commands_root)
    assert written["recipe"]["downstream_expert"]["datarc"]["split"] == "hash"
    assert written["recipe"]["runner"]["batch_size"] == 4
    assert written["split"] == "test" and 0 <= written["value"] <= 1


# --- SID and ASV on VoxCeleb1 -----------------------------------------------------------------


def test_sid_trains_on_random_8s_crops(voxceleb_root):
    task = real_task(SidTask, "sid", voxceleb_root)
    train = task.examples("train")
    assert {u.crop for u in train} == {None}  # evaluation and listing: whole utterances
    drawn = task.epoch(train, seed=3)
    assert {u.crop[0] for u in drawn} == {128000}
    assert len({u.crop[1] for u in drawn}) == len(drawn)
    short = [replace(u, crop=(16000, u.crop[1])) for u in drawn[:4]]
    assert {len(read_segment(u)) for u in short} == {16000}


def test_asv_trains_on_every_speaker_outside_the_test_list(voxceleb_root):
    task = real_task(AsvTask, "asv", voxceleb_root)
    assert task.dev_split is None  # s3prl has no dev set
    assert sorted({u.speaker for u in task.examples("train")}) == VOX_TRAIN
    assert len(task.examples("test")) == 8 and len(task.trials["test"]) == 6


def test_asv_scores_the_original_list_by_s3prls_protocol(voxceleb_root, tmp_path):
    overrides = ["runner.total_steps=4", "runner.batch_size=4", "runner.save_step=2",
                 "runner.log_step=2", "runner.test_checkpoints_every=4",
                 "downstream_expert.datarc.max_timestep=32000"]
    result = run("asv", upstream="fbank", expdir=tmp_path, data_root=voxceleb_root,
                 overrides=overrides)
    lines = (tmp_path / "test_predictions.txt").read_text().splitlines()
    assert len(lines) == len((voxceleb_root / "veri_test.txt").read_text().splitlines())
    protocol = result["best_test_eer_over_checkpoints"]
    assert protocol["checkpoint"] == "states-4.ckpt" and list(protocol["all"]) == ["states-4.ckpt"]
    assert result["value"] == protocol["value"]
    assert result["last_checkpoint_eer"]["protocol"] == "last checkpoint (no selection)"
    assert result["profile"] == "real" and "dev_eer" not in result
    assert not (tmp_path / "dev-best.ckpt").exists()


def test_asv_lengths_after_effects_are_measured_once(voxceleb_root, monkeypatch, tmp_path):
    monkeypatch.setenv("TERA_SPEECH_HOME", str(tmp_path))
    utts = real_task(AsvTask, "asv", voxceleb_root)._effects(
        voxceleb1.load_verification_train(voxceleb_root))
    first = lengths.processed_samples(utts).tolist()
    raw = lengths.utterance_samples(utts).tolist()
    assert all(0 < n <= m for n, m in zip(first, raw)) and first != raw
    monkeypatch.setattr(lengths, "read_segment", lambda utt: pytest.fail("decoded again"))
    assert lengths.processed_samples(utts).tolist() == first
