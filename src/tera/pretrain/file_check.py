"""The up-front check of a manifest's audio files, done once per manifest content.

A missing or unreadable file met at update 40,000 would waste the run, so every listed
file's header is read before the first update. That costs about 0.3 ms a file: 1.5 minutes
for LibriSpeech 960 (281k files), hours for a Libri-Light-sized manifest (17.6 M files), at
every start and every resume. So the outcome is remembered beside the manifest, in
`.<manifest name>.checked.npz`: a hash of the listing (the root and the files, in order) and
each file's size and modification time when it passed. The next check only stats the files
and reads again the headers of those that are new, changed or failed before.

The files go to the threads a block at a time, so the work in flight stays bounded however
long the manifest is.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np

from tera import audio
from tera.errors import UserError
from tera.runs.files import atomic_open

T = TypeVar("T")
R = TypeVar("R")

BLOCK = 4096  # files handed to the threads at once
TASK = 64  # files per task of a thread
NOT_PASSED = -1  # the size recorded for a file that is missing or failed its check


def record_path(manifest: str | Path) -> Path:
    """Where the outcome of a manifest's check is kept: beside it, hidden."""
    manifest = Path(manifest)
    return manifest.with_name(f".{manifest.name}.checked.npz")


def check_audio_files(manifest: str | Path, root: Path, files: Sequence[str],
                      threads: int = 8) -> None:
    """Read the header of every file of `files` (relative to `root`, listed by `manifest`)
    that has not passed since it last changed: one `UserError` naming the manifest and the
    unusable files. A few threads, as on a network file system the time is in the round
    trips."""
    manifest = Path(manifest)
    key = listing_key(root, files)
    stats = _stat_files(root, files, threads)
    known = _read_record(record_path(manifest), key, len(files))
    changed = np.arange(len(files)) if known is None else \
        np.flatnonzero((stats != known).any(axis=1) | (known[:, 0] == NOT_PASSED))
    failed = _check_headers(root, files, changed, threads)
    passed = stats  # the record: what passed, as it was when it passed
    passed[[index for index, _ in failed], 0] = NOT_PASSED
    if known is None or len(changed):  # a resume with nothing new writes nothing
        _write_record(record_path(manifest), key, passed)
    if failed:
        shown = "; ".join(problem for _, problem in failed[:3])
        more = f" (and {len(failed) - 3} more)" if len(failed) > 3 else ""
        raise UserError(f"{manifest}: {len(failed)} of the {len(files)} audio files it lists "
                        f"cannot be used: {shown}{more}")


def listing_key(root: Path, files: Sequence[str]) -> str:
    """A hash of what a manifest lists: its root and its files, in order."""
    digest = hashlib.sha256(f"{root}\n".encode())
    for start in range(0, len(files), BLOCK):
        digest.update(("\n".join(files[start:start + BLOCK]) + "\n").encode())
    return digest.hexdigest()


def _threaded(function: Callable[[T], R], items: Sequence[T], threads: int) -> Iterator[R]:
    """`function` over `items`, in order, on a few threads: each task takes TASK items (a
    task per item would cost more than a local stat), and at most BLOCK items are in flight,
    so memory stays bounded however many the items."""
    def task(part: Sequence[T]) -> list[R]:
        return [function(item) for item in part]

    with ThreadPoolExecutor(threads) as pool:
        for start in range(0, len(items), BLOCK):
            block = items[start:start + BLOCK]
            for results in pool.map(task, [block[i:i + TASK] for i in range(0, len(block), TASK)]):
                yield from results


def _stat_files(root: Path, files: Sequence[str], threads: int) -> np.ndarray:
    """`[files, 2]` int64: each file's size and modification time (ns); NOT_PASSED for a
    file that cannot be stat'ed (its header check will say why)."""
    folder = str(root)

    def stat(rel: str) -> tuple[int, int]:
        try:
            found = os.stat(os.path.join(folder, rel))
        except OSError:
            return NOT_PASSED, NOT_PASSED
        return found.st_size, found.st_mtime_ns

    stats = np.empty((len(files), 2), dtype=np.int64)
    for index, found in enumerate(_threaded(stat, files, threads)):
        stats[index] = found
    return stats


def _check_headers(root: Path, files: Sequence[str], indices: np.ndarray, threads: int
                   ) -> list[tuple[int, str]]:
    """(index, problem) of each file of `indices` whose header is unreadable or empty."""
    def problem(index: int) -> str | None:
        path = root / files[index]
        try:
            frames, _, _ = audio.audio_info(path)
        except UserError as err:
            return str(err)
        return f"{path}: the audio is empty (0 samples)" if frames == 0 else None

    chosen = indices.tolist()
    return [(index, found) for index, found in zip(chosen, _threaded(problem, chosen, threads))
            if found is not None]


def _read_record(path: Path, key: str, count: int) -> np.ndarray | None:
    """The sizes and times of a previous check of the same listing, or None (no record, a
    record of another listing, or one that cannot be read: everything is checked again)."""
    try:
        with np.load(path) as record:
            if str(record["key"]) != key or record["stats"].shape != (count, 2):
                return None
            return record["stats"]
    except (OSError, ValueError, KeyError):
        return None


def _write_record(path: Path, key: str, stats: np.ndarray) -> None:
    try:
        with atomic_open(path, "wb") as f:
            np.savez(f, key=np.array(key), stats=stats)
    except UserError:
        pass  # a read-only data folder: the check still ran, it is just not remembered
