"""fairseq manifests (`train.tsv` / `valid.tsv`: the audio root, then one
`relative/path<TAB>num_samples` line per file), written and read in memory that grows by a
few tens of bytes per file.

A manifest in memory is three numpy arrays (the paths' bytes back to back, where each path
starts, each file's length), not a Python object per file: LibriSpeech 960 holds 281k files
and a Libri-Light-sized manifest 17.6 M, and DataLoader workers forked from the training
process share numpy buffers, where touching a Python string (its reference count) would copy
its memory page into every worker.
"""

from __future__ import annotations

import fnmatch
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np

from tera.audio import audio_info
from tera.errors import UserError
from tera.runs.files import atomic_open, ensure_folder

READ_BLOCK = 1 << 22  # bytes of a manifest parsed at once
TAB, NEWLINE = 9, 10
SPACES = np.array([32, 9, 10, 11, 12, 13], dtype=np.uint8)  # what str.strip() removes


class PathList(Sequence[str]):
    """Relative paths as one UTF-8 buffer and the offsets where each starts (two arrays,
    whatever the count); `paths[i]` is a `str`, `paths[i:j]` a list of them."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray) -> None:
        self.blob, self.offsets = blob, offsets

    @classmethod
    def from_strings(cls, paths: Iterable[str]) -> PathList:
        """A PathList of `paths` (UTF-8 encoded, in order)."""
        encoded = [p.encode() for p in paths]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(p) for p in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            if stop <= start:
                return []
            cuts = self.offsets[start : stop + 1].tolist()  # one decode step per path
            text = self.blob[cuts[0] : cuts[-1]].tobytes()
            return [text[a - cuts[0] : b - cuts[0]].decode() for a, b in zip(cuts, cuts[1:])]
        count = len(self.offsets) - 1
        if not -count <= index < count:
            raise IndexError(f"path {index} of {count}")
        index %= count
        return self.blob[self.offsets[index] : self.offsets[index + 1]].tobytes().decode()

    def select(self, keep: np.ndarray) -> PathList:
        """The paths where the boolean array `keep` is true."""
        lengths = np.diff(self.offsets)
        offsets = np.zeros(int(keep.sum()) + 1, dtype=np.int64)
        np.cumsum(lengths[keep], out=offsets[1:])
        return PathList(self.blob[np.repeat(keep, lengths)], offsets)


@dataclass(frozen=True)
class Manifest:
    """A manifest's audio root, its files (relative to the root) and their lengths in
    samples at 16 kHz (`sizes`, int64)."""

    root: Path
    files: PathList
    sizes: np.ndarray

    def __len__(self) -> int:
        return len(self.sizes)

    def select(self, keep: np.ndarray) -> Manifest:
        """The entries where the boolean array `keep` is true."""
        return Manifest(self.root, self.files.select(keep), self.sizes[keep])

    def items(self) -> Iterator[tuple[str, int]]:
        """(relative path, num_samples) per line, for the few callers that want them."""
        return zip(self.files, self.sizes.tolist())


# --- reading -------------------------------------------------------------------------------


def read_manifest(path: str | Path) -> Manifest:
    """A fairseq `.tsv`, parsed a block of lines at a time with numpy, with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: manifest not found (make one with `tera manifest ROOT -o DIR`)")
    blobs, lengths, sizes = [], [], []
    with open(path, "rb") as f:
        root = _decoded(path, f.readline()).strip()
        if not root:
            raise UserError(f"{path}: empty manifest: the first line must be the audio root "
                            "folder")
        number, rest = 2, b""
        while True:
            data = f.read(READ_BLOCK)
            block = rest + data
            cut = len(block) if not data else block.rfind(b"\n") + 1
            block, rest = block[:cut], block[cut:]
            if block:
                blob, length, size, lines = _parse_lines(path, block, number)
                blobs.append(blob)
                lengths.append(length)
                sizes.append(size)
                number += lines
            if not data:
                break
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    blob = np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8)
    sizes = np.concatenate(sizes) if sizes else np.zeros(0, dtype=np.int64)
    return Manifest(Path(root), PathList(blob, offsets), sizes)


def _decoded(path: Path, data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a manifest: binary data, not the text `tera manifest` "
                        "writes") from None


def _parse_lines(path: Path, block: bytes, first_number: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(path bytes back to back, path lengths, sizes, lines read) of whole lines of a
    manifest; blank lines are skipped, a malformed one is an error naming its number."""
    _decoded(path, block)
    data = np.frombuffer(block if block.endswith(b"\n") else block + b"\n", dtype=np.uint8)
    ends = np.flatnonzero(data == NEWLINE)
    starts = np.concatenate([[0], ends[:-1] + 1])
    # A line is `path<TAB>number[<TAB>...]`; the number may have spaces around it.
    tabs = np.append(np.flatnonzero(data == TAB), len(data))
    first_tab = tabs[np.searchsorted(tabs, starts)]
    next_tab = np.minimum(np.searchsorted(tabs, first_tab + 1), len(tabs) - 1)
    field_end = np.minimum(tabs[next_tab], ends)
    solid = np.concatenate([[0], np.cumsum(~np.isin(data, SPACES))])
    blank = solid[ends] == solid[starts]
    first, last = np.minimum(first_tab + 1, ends), field_end  # the number, stripped below
    while (grow := (first < last) & ~blank & np.isin(data[first], SPACES)).any():
        first = first + grow
    while (shrink := (first < last) & ~blank & np.isin(data[last - 1], SPACES)).any():
        last = last - shrink
    digits = last - first
    good = blank | ((first_tab < ends) & (digits > 0) & (digits <= 18)
                    & (solid[last] - solid[first] == digits))
    width = int(digits.max(initial=0)) if good.all() else 0
    columns = first[:, None] + np.arange(width)
    inside = columns < last[:, None]
    values = data[np.minimum(columns, len(data) - 1)].astype(np.int64) - ord("0")
    good &= blank | ((values >= 0) & (values <= 9) | ~inside).all(axis=1)
    if not good.all():
        bad = int(np.flatnonzero(~good)[0])
        line = block[starts[bad] : ends[bad]].decode()
        raise UserError(f"{path}:{first_number + bad}: expected "
                        f"'relative/path<TAB>num_samples', got {line!r}")
    powers = 10 ** np.maximum(last[:, None] - 1 - columns, 0)
    sizes = np.where(inside, values * powers, 0).sum(axis=1)
    keep = ~blank
    path_lengths = (first_tab - starts)[keep]
    marks = np.zeros(len(data) + 1, dtype=np.int64)
    np.add.at(marks, starts[keep], 1)
    np.add.at(marks, first_tab[keep], -1)
    return data[np.cumsum(marks[:-1]) > 0], path_lengths, sizes[keep], len(ends)


# --- writing -------------------------------------------------------------------------------


def write_manifest(root: str | Path, out_dir: str | Path, valid_percent: float = 0.01,
                   extensions: tuple[str, ...] = ("flac", "wav"), seed: int = 42
                   ) -> dict[str, int]:
    """Write `train.tsv` / `valid.tsv` for every audio file under `root`."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise UserError(f"{root}: not a folder")
    files = audio_files(root, extensions)
    first = next(files, None)
    if first is None:
        raise UserError(f"{root}: no audio files with extension {', '.join(extensions)}")
    return write_manifest_files(root, _chain(first, files), out_dir, valid_percent, seed)


def audio_files(root: Path, extensions: Sequence[str]) -> Iterator[Path]:
    """The files under `root` with one of `extensions`, in the order of
    `sorted(root.rglob("*.EXT") for each EXT)`, a folder at a time instead of all at once:
    entries sorted by name, each folder's files met where its name sorts; symbolic links to
    folders are not followed."""
    patterns = [f"*.{ext.lstrip('.')}" for ext in extensions]

    def walk(folder: str) -> Iterator[Path]:
        try:
            with os.scandir(folder) as found:
                entries = sorted(found, key=lambda entry: entry.name)
        except PermissionError:
            return
        for entry in entries:
            for pattern in patterns:  # as rglob once per extension: a name may match twice
                if fnmatch.fnmatchcase(entry.name, pattern):
                    yield Path(entry.path)
            if _is_folder(entry):
                yield from walk(entry.path)

    return walk(str(root))


def _is_folder(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir() and not entry.is_symlink()
    except OSError:
        return False


def _chain(first: Path, rest: Iterator[Path]) -> Iterator[Path]:
    yield first
    yield from rest


def write_manifest_files(root: Path, files: Iterable[Path], out_dir: str | Path,
                         valid_percent: float = 0.01, seed: int = 42) -> dict[str, int]:
    """Write `train.tsv` / `valid.tsv` listing `files` (under `root`), a random
    `valid_percent` of them for validation.

    Lengths come from the file headers (no decoding). Files that are not 16 kHz are listed
    with their length at 16 kHz (they are resampled when read). The files are read and
    written one at a time; both files appear whole, or not at all if one file fails.
    Returns counts per split.
    """
    if not 0 < valid_percent < 1:
        raise UserError(f"--valid-percent {valid_percent:g} is out of range: it is the share of "
                        "files for validation, between 0 and 1 (e.g. 0.01 for 1 %)")
    root = Path(root).resolve()
    out_dir = ensure_folder(out_dir)
    rng = random.Random(seed)
    counts = {"train": 0, "valid": 0}
    header = f"{root}\n".encode()
    with atomic_open(out_dir / "train.tsv") as train, atomic_open(out_dir / "valid.tsv") as valid:
        train.write(header)
        valid.write(header)
        for path in files:
            frames, rate, _ = audio_info(path)
            rel = Path(path).resolve().relative_to(root).as_posix()
            split = "valid" if rng.random() < valid_percent else "train"
            (valid if split == "valid" else train).write(f"{rel}\t{frames * 16000 // rate}\n"
                                                         .encode())
            counts[split] += 1
    return counts
