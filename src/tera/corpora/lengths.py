"""How long each utterance of a corpus is, read once.

Downstream batching sorts the utterances by length at every epoch and every evaluation;
reading the headers each time would open every file of the split again (28k for LibriSpeech
train-clean-100, 153k for VoxCeleb1). A process reads each header once (the files do not
change under a running job), and the lengths are kept between processes in a record under
the tera-speech home (`lengths/<hash of the file list>.npz`, each file's size and mtime
beside its length), so that a resume, an evaluation or the next seed only stats the files.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from tera import audio
from tera.corpora.base import Utterance, read_segment, tera_home
from tera.errors import UserError
from tera.runs.files import atomic_open

_samples: dict[str, int] = {}  # file -> length in samples at 16 kHz, for this process


def utterance_samples(utterances: Sequence[Utterance]) -> np.ndarray:
    """The length of each utterance in samples at 16 kHz: its segment's, or its file's
    (from the header, read once per file)."""
    files = sorted({str(u.path) for u in utterances if u.num_samples is None})
    lengths = dict(zip(files, file_samples(files).tolist()))
    return np.array([u.num_samples if u.num_samples is not None else lengths[str(u.path)]
                     for u in utterances], dtype=np.int64)


def file_samples(files: Sequence[str]) -> np.ndarray:
    """The length of each file in samples at 16 kHz, from its header: read once per process,
    and taken from the record of an earlier process where the file has not changed."""
    unknown = [f for f in dict.fromkeys(files) if f not in _samples]
    if unknown:
        _samples.update(zip(unknown, _read_lengths(unknown).tolist()))
    return np.array([_samples[f] for f in files], dtype=np.int64)


def processed_samples(utterances: Sequence[Utterance]) -> np.ndarray:
    """The length of each utterance in samples after its effects (s3prl drops ASV training
    utterances under 2 s after silence removal): each file decoded once, the lengths kept
    in a record as the header lengths are (a record per set of effects)."""
    by_file = {str(u.path): replace(u, crop=None) for u in utterances}
    files = sorted(by_file)
    effects = sorted({(u.gain_db, u.trim_silence) for u in utterances})
    lengths = _read_lengths(files, lambda file: len(read_segment(by_file[file])),
                            kind=f"after effects {effects}")
    table = dict(zip(files, lengths.tolist()))
    return np.array([table[str(u.path)] for u in utterances], dtype=np.int64)


def record_path(files: Sequence[str], kind: str = "") -> Path:
    """Where the lengths of a list of files (of one `kind` of length) are kept between
    processes."""
    digest = hashlib.sha256("\n".join([kind, *files]).encode()).hexdigest()[:24]
    return tera_home() / "lengths" / f"{digest}.npz"


def _header_samples(file: str) -> int:
    frames, rate, _ = audio.audio_info(file)
    return frames * 16000 // rate


def _read_lengths(files: list[str], measure: Callable[[str], int] = _header_samples,
                  kind: str = "") -> np.ndarray:
    stats = np.array([_stat(f) for f in files], dtype=np.int64).reshape(-1, 2)
    lengths = np.full(len(files), -1, dtype=np.int64)
    path = record_path(files, kind)
    known = _read_record(path, len(files))
    if known is not None:
        same = (known[:, :2] == stats).all(axis=1)
        lengths[same] = known[same, 2]
    for index in np.flatnonzero(lengths < 0).tolist():
        lengths[index] = measure(files[index])
    if known is None or (lengths != known[:, 2]).any():
        _write_record(path, np.column_stack([stats, lengths]))
    return lengths


def _stat(file: str) -> tuple[int, int]:
    try:
        found = os.stat(file)
    except OSError:
        return -1, -1  # never matches a record: the header read says what is wrong
    return found.st_size, found.st_mtime_ns


def _read_record(path: Path, count: int) -> np.ndarray | None:
    """`[files, 3]`: size, mtime and length of each file, or None (no usable record)."""
    try:
        with np.load(path) as record:
            table = record["lengths"]
    except (OSError, ValueError, KeyError):
        return None
    return table if table.shape == (count, 3) else None


def _write_record(path: Path, table: np.ndarray) -> None:
    try:
        with atomic_open(path, "wb") as f:
            np.savez(f, lengths=table)
    except UserError:
        pass  # an unwritable home: the lengths are read again by the next process
