"""Shared fixtures: the small embedded corpus, generated once per test session, a
temporary tera-speech home, a few LibriSpeech cuts with their manifest, and a checkpoint of
a one-update pre-training."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import soundfile as sf

from tera.audio import load_audio
from tera.corpora.synthetic import synthesize
from tera.pretrain.config import load_config
from tera.pretrain.manifest import write_manifest
from tera.pretrain.trainer import Trainer

from .paths import FLAC


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "small"
    synthesize(root, "small", seed=0, progress=False)
    return root


@pytest.fixture(scope="session", autouse=True)
def tera_home_in_a_temporary_folder(tmp_path_factory):
    """What tera-speech keeps under its home (the utterance lengths of each corpus) goes to
    a temporary folder during the tests, not to the user's ~/.cache."""
    previous = os.environ.get("TERA_SPEECH_HOME")
    os.environ["TERA_SPEECH_HOME"] = str(tmp_path_factory.mktemp("tera-home"))
    yield
    if previous is None:
        os.environ.pop("TERA_SPEECH_HOME", None)
    else:
        os.environ["TERA_SPEECH_HOME"] = previous


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    """The folder of `train.tsv` / `valid.tsv` over ten cuts of 0.75-2.2 s of the LibriSpeech
    file and one at 8 kHz (`narrow.wav`)."""
    folder = tmp_path_factory.mktemp("audio")
    wave = load_audio(FLAC).numpy()
    for i in range(10):
        sf.write(folder / f"u{i}.wav", wave[i * 9000 : i * 9000 + 12000 + 2500 * i], 16000)
    sf.write(folder / "narrow.wav", wave[:24000:2], 8000)
    out = tmp_path_factory.mktemp("manifest")
    write_manifest(folder, out, valid_percent=0.2, seed=1)
    return str(out)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """`checkpoint_last.pt` of a one-update `tera pretrain` run (tiny, one layer)."""
    audio = tmp_path_factory.mktemp("audio")
    samples = load_audio(FLAC).numpy()
    for i in range(4):
        sf.write(audio / f"u{i}.wav", samples[i * 16000 : i * 16000 + 20000], 16000)
    manifest = tmp_path_factory.mktemp("manifest")
    write_manifest(audio, manifest, valid_percent=0.25, seed=0)
    save_dir = tmp_path_factory.mktemp("run")
    overrides = [f"task.data={manifest}", f"checkpoint.save_dir={save_dir}",
                 "model.encoder_layers=1", "task.max_sample_size=16000",
                 "task.min_sample_size=4000", "dataset.max_tokens=40000",
                 "dataset.num_workers=0", "common.amp=fp32", "optimization.max_update=1"]
    Trainer(load_config("tiny", overrides=overrides)).train()
    return save_dir / "checkpoint_last.pt"
