"""The study's corpus: the guard that keeps one corpus per study folder, and the manifest of
the audio pre-training may see."""

from __future__ import annotations

from pathlib import Path

from tera.corpora import librispeech, speech_commands, voxceleb1
from tera.corpora.base import generator_of, is_embedded_corpus, read_summary
from tera.errors import UserError
from tera.pretrain.manifest import write_manifest_files
from tera.runs.files import read_json, write_json


def check_study_corpus(out: Path, corpus: Path) -> None:
    """A study folder holds the results of one corpus: refuse to mix in another (e.g. the
    embedded corpus made again by a newer generator)."""
    if not is_embedded_corpus(corpus):
        return
    summary = read_summary(corpus)
    made = {key: summary.get(key) for key in ("preset", "seed")}
    made["generator"] = generator_of(summary)
    record = out / "corpus.json"
    if record.is_file():
        before = read_json(record)
        if before != made:
            raise UserError(f"{out} holds a study on the embedded corpus {before}, but the "
                            f"corpus is now {made}: choose another --out folder or delete {out}")
    else:
        write_json(record, made)


def write_training_manifest(corpus: Path, manifest: Path) -> None:
    """Pre-training audio: the training splits of the three parts only, so that no dev or
    test utterance is seen, even without its label."""
    utterances = (librispeech.load_split(corpus / "librispeech", "train")
                  + voxceleb1.load_identification(corpus / "voxceleb1", "train")
                  + [u for u in speech_commands.load_split(corpus / "speech_commands", "train")
                     if u.num_samples is None])
    files = sorted({u.path for u in utterances})
    write_manifest_files(corpus, files, manifest, valid_percent=0.03, seed=0)
