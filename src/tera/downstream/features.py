"""Frozen-upstream features for downstream training: computed once per utterance, cached
on disk for every run that needs them again, and batched by total length.

The cache is shared by runs: a folder (`tera_home()/features/` unless told) holds one
subfolder per upstream (`<name>-<identity>`, the identity a hash of its weights and
options), and in it one file per utterance, named by a hash of the audio (path, size and
mtime of the file, segment, effects) and the stored precision. States are float16 whether
cached or not, so a run's numbers do not depend on the cache. Random training crops are
new audio at every draw and never cached.

Every state computed is written through at once (atomically: a reader sees a whole file or
none), so a resume, an evaluation, the next seed or another task on the same split reads
it instead of running the upstream; the process also keeps up to `max_memory_bytes` of
them in memory, least recently used dropped first. The folder keeps to a size budget: its
entries' bytes are counted in `.usage` (which is also the lock that writers and `tera cache
prune` take), and a write that would pass the budget first deletes the least recently used
entries (a read touches its file's mtime). Two runs at once share the folder safely: writes
and evictions hold the lock, a file evicted by the other run is a miss, and a file that
cannot be read is recomputed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tera.corpora import Utterance, read_segment, tera_home
from tera.downstream import CACHE_BUDGET_GB
from tera.errors import UserError
from tera.pretrain.data import length_batches
from tera.runs.files import atomic_open, ensure_folder
from tera.runs.lock import waiting_lock
from tera.upstream import Upstream

STORED_DTYPE = torch.float16
USAGE_NAME = ".usage"
# An eviction frees this share of the budget beyond what the new entry needs, so that a
# filling cache scans its folder once per tenth of the budget rather than at every write.
EVICTION_SLACK = 0.1
TOUCH_EVERY_S = 60.0  # a hot entry's last use is recorded at most this often


def default_cache_dir() -> Path:
    """Where the feature cache lives unless `--cache-dir` says otherwise."""
    return tera_home() / "features"


class FeatureCache:
    """Hidden states of utterances under one upstream, from memory, from `folder` (shared
    with other runs, None: memory only) or computed; see the module's docstring."""

    def __init__(self, upstream: Upstream, folder: Path | None, enabled: bool = True,
                 max_memory_bytes: int = 4 << 30,
                 budget_bytes: float = CACHE_BUDGET_GB * 1e9) -> None:
        self.upstream, self.enabled = upstream, enabled
        self.max_memory_bytes, self.budget_bytes = max_memory_bytes, budget_bytes
        self.identity = upstream.identity() if enabled else ""
        self.root = folder
        self.folder = folder / f"{upstream.name}-{self.identity}" if folder and enabled else None
        self.memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.memory_bytes = 0
        self.hits = self.misses = 0
        self._file_stats: dict[str, tuple[int, int]] = {}
        self._touched: dict[str, float] = {}
        self._disk_failed = False

    def _key(self, utt: Utterance) -> str | None:
        """The entry's name: a hash of the audio and the stored precision (None: the file
        cannot be read, and reading it says why)."""
        stat = self._file_stat(str(utt.path))
        if stat is None:
            return None
        effects = (utt.gain_db, utt.trim_silence) if utt.gain_db or utt.trim_silence else ()
        key = (self.identity, str(STORED_DTYPE), os.path.abspath(utt.path), *stat, utt.offset,
               utt.num_samples, *effects)
        return hashlib.sha256(repr(key).encode()).hexdigest()[:32]

    def _file_stat(self, path: str) -> tuple[int, int] | None:
        """Size and mtime, once per process (the files do not change under a running job)."""
        if path not in self._file_stats:
            try:
                found = os.stat(path)
            except OSError:
                return None
            self._file_stats[path] = (found.st_size, found.st_mtime_ns)
        return self._file_stats[path]

    def _cacheable(self, utt: Utterance) -> bool:
        """Random crops are new audio at every draw: never cached."""
        return self.enabled and utt.crop is None

    def _disk_path(self, key: str) -> Path | None:
        if self.folder is None:
            return None
        return self.folder / key[:2] / f"{key}.pt"

    def _lookup(self, key: str) -> torch.Tensor | None:
        path = self._disk_path(key)
        if key in self.memory:
            self.memory.move_to_end(key)
            self._touch(key, path)
            return self.memory[key]
        if path is None:
            return None
        try:
            states = torch.load(path, weights_only=True)
        except OSError:  # never computed, evicted (by this run or another), unreadable
            return None
        except Exception:  # a torn or corrupt file (a disk error, a copy cut short): recompute
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            return None
        self._touch(key, path, force=True)
        self._remember(key, states)
        return states

    def _touch(self, key: str, path: Path | None, force: bool = False) -> None:
        """Record a use in the file's mtime, which eviction orders by."""
        now = time.time()
        if path is None or (not force and now - self._touched.get(key, 0.0) < TOUCH_EVERY_S):
            return
        self._touched[key] = now
        try:
            os.utime(path, ns=(time.time_ns(), time.time_ns()))
        except OSError:
            pass  # evicted meanwhile: the copy in memory still serves this run

    def _remember(self, key: str, states: torch.Tensor) -> None:
        """Keep `states` in memory, dropping the least recently used over the bound."""
        size = states.numel() * states.element_size()
        if size > self.max_memory_bytes:
            return
        while self.memory and self.memory_bytes + size > self.max_memory_bytes:
            _, dropped = self.memory.popitem(last=False)
            self.memory_bytes -= dropped.numel() * dropped.element_size()
        self.memory[key] = states
        self.memory_bytes += size

    def _store(self, key: str, states: torch.Tensor) -> None:
        self._remember(key, states)
        path = self._disk_path(key)
        if path is None or self._disk_failed:
            return
        try:
            if write_entry(self.root, path, states, self.budget_bytes):
                self._touch(key, path, force=True)
        except (UserError, OSError) as err:  # a full or read-only disk: the run goes on
            self._disk_failed = True
            print(f"features: not cached on disk ({err})", file=sys.stderr, flush=True)

    @torch.no_grad()
    def states(self, utterances: list[Utterance], device: torch.device) -> list[torch.Tensor]:
        """Hidden states of each utterance, `[layers, frames, dim]`, float16."""
        found: list[torch.Tensor | None] = [None] * len(utterances)
        keys = [self._key(u) if self._cacheable(u) else None for u in utterances]
        missing = []
        for i, key in enumerate(keys):
            cached = self._lookup(key) if key is not None else None
            if cached is None:
                missing.append(i)
            else:
                found[i] = cached
        self.hits += len(utterances) - len(missing)
        self.misses += len(missing)
        if missing:
            waves = [read_segment(utterances[i]).to(device) for i in missing]
            out = self.upstream(waves)
            stacked = torch.stack(out["hidden_states"], dim=1)  # [B, L, T, D]
            for row, i in enumerate(missing):
                # float16 whether cached or not: a run's numbers do not depend on the cache
                states = stacked[row, :, : int(out["lengths"][row])].float().cpu().to(
                    STORED_DTYPE)
                if keys[i] is not None:
                    self._store(keys[i], states)
                found[i] = states
        return found  # type: ignore[return-value]


# --- the shared folder: entries, budget, eviction ------------------------------------------


@dataclass
class Entry:
    """One cached utterance's file."""

    path: Path
    upstream: str  # the subfolder: `<upstream name>-<identity>`
    size: int
    last_use: float  # mtime, touched at every read


def cache_entries(root: Path) -> list[Entry]:
    """Every entry under the cache folder `root` (none when it does not exist); files
    being written (`.name.tmp`) are not entries yet."""
    entries = []
    for upstream in _subfolders(root):
        for shard in _subfolders(upstream):
            for item in _scan(shard):
                if item.name.startswith(".") or not item.name.endswith(".pt"):
                    continue
                try:
                    found = item.stat()
                except FileNotFoundError:  # evicted while we looked
                    continue
                entries.append(Entry(Path(item.path), upstream.name, found.st_size,
                                     found.st_mtime))
    return entries


def _subfolders(folder: Path | os.DirEntry) -> list[os.DirEntry]:
    return [item for item in _scan(folder) if item.is_dir() and not item.name.startswith(".")]


def _scan(folder: Path | os.DirEntry) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as items:
            return list(items)
    except (FileNotFoundError, NotADirectoryError):
        return []


class Usage:
    """The bytes a cache folder's entries hold, as counted in its `.usage` file (the file
    that is also the folder's lock): every write adds its size before it writes, so a
    writer cut short can only over-count; an eviction counts again from the files."""

    def __init__(self, root: Path, fd: int) -> None:
        self.root, self.fd = root, fd
        self._bytes: int | None = None

    @property
    def bytes(self) -> int:
        """The bytes counted, read from `.usage` once (counted from the files when it holds
        no number)."""
        if self._bytes is None:
            self._bytes = self._read()
            if self._bytes is None:  # a new folder, or a counter cut short
                self.bytes = sum(entry.size for entry in cache_entries(self.root))
        return self._bytes  # type: ignore[return-value]

    @bytes.setter
    def bytes(self, value: int) -> None:
        """Record `value` in `.usage`; the caller holds the lock."""
        self._bytes = value
        # In place and under the lock: no other process reads it half written.
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{value}\n".encode(), 0)

    def _read(self) -> int | None:
        try:
            return int(os.pread(self.fd, 64, 0).decode())
        except (OSError, ValueError):
            return None


@contextmanager
def locked_usage(root: Path) -> Iterator[Usage]:
    """Hold the cache folder's lock (waiting for another writer) and give its usage."""
    ensure_folder(root)
    with waiting_lock(root / USAGE_NAME, "open the feature cache's lock") as fd:
        yield Usage(root, fd)


def write_entry(root: Path, path: Path, states: torch.Tensor, budget_bytes: float) -> bool:
    """Write one entry under the cache folder `root`, first evicting the least recently
    used entries as the budget requires; False when the entry alone is over the budget."""
    buffer = io.BytesIO()
    torch.save(states, buffer)
    data = buffer.getbuffer()
    with locked_usage(root) as usage:
        if usage.bytes + len(data) > budget_bytes:
            room = budget_bytes * (1 - EVICTION_SLACK) - len(data)
            usage.bytes = evict(root, max(0.0, room))
        if usage.bytes + len(data) > budget_bytes:
            return False
        usage.bytes += len(data)
        with atomic_open(path, "wb") as f:
            f.write(data)
    return True


def evict(root: Path, max_bytes: float) -> int:
    """Delete the least recently used entries until those left hold at most `max_bytes`;
    returns the bytes left. The caller holds the folder's lock."""
    entries = sorted(cache_entries(root), key=lambda entry: entry.last_use)
    left = sum(entry.size for entry in entries)
    for entry in entries:
        if left <= max_bytes:
            break
        entry.path.unlink(missing_ok=True)
        left -= entry.size
    return left


def prune(root: Path, max_bytes: float) -> tuple[int, int]:
    """Shrink the cache folder to `max_bytes` (0: empty it), least recently used first;
    returns (entries deleted, bytes left)."""
    if not root.is_dir():
        return 0, 0
    with locked_usage(root) as usage:
        before = len(cache_entries(root))
        usage.bytes = evict(root, max_bytes)
        deleted = before - len(cache_entries(root))
        if max_bytes <= 0:
            _remove_leftovers(root)
        return deleted, usage.bytes


def _remove_leftovers(root: Path) -> None:
    """After emptying: files of writers killed mid-write, and the empty subfolders."""
    for upstream in _subfolders(root):
        for shard in _subfolders(upstream):
            for item in _scan(shard):
                Path(item.path).unlink(missing_ok=True)
            _rmdir(Path(shard.path))
        _rmdir(Path(upstream.path))


def _rmdir(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # a run wrote into it meanwhile


def pad_states(states: list[torch.Tensor], device: torch.device
               ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per-utterance `[L, T_i, D]` -> (L tensors `[B, T, D]` float32, lengths `[B]`)."""
    lengths = torch.tensor([s.size(1) for s in states])
    longest = int(lengths.max())
    layers, dim = states[0].size(0), states[0].size(2)
    batch = torch.zeros(len(states), layers, longest, dim)
    for i, s in enumerate(states):
        batch[i, :, : s.size(1)] = s.float()
    batch = batch.to(device)
    return [batch[:, layer] for layer in range(layers)], lengths.to(device)


def batches_by_length(sizes: list[int], max_samples: int, shuffle: bool, seed: int
                      ) -> list[list[int]]:
    """Batches whose padded size (count x longest, in samples) stays within `max_samples`;
    an utterance longer than that gets a batch of its own."""
    sizes_array = np.minimum(np.asarray(sizes), max_samples)
    batches = length_batches(sizes_array, max_samples)
    if shuffle:
        random.Random(seed).shuffle(batches)
    return batches
