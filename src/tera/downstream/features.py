"""Frozen-upstream features for downstream training: computed once per utterance, cached,
and batched by total length.

The cache keys an utterance's hidden states by the upstream's identity (a hash of its
weights and options) and the audio segment (path, offset, length, effects); random
training crops are computed at every draw. States are kept in
memory as float16 up to `max_memory_bytes`, then written under the run folder (atomically;
a cache file that cannot be read is recomputed).
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import torch

from tera.corpora import Utterance, read_segment
from tera.pretrain.data import length_batches
from tera.runs.files import save_torch
from tera.upstream import Upstream


class FeatureCache:
    def __init__(self, upstream: Upstream, folder: Path | None, enabled: bool = True,
                 max_memory_bytes: int = 4 << 30) -> None:
        self.upstream, self.folder, self.enabled = upstream, folder, enabled
        self.max_memory_bytes = max_memory_bytes
        self.identity = upstream.identity() if enabled else ""
        self.memory: dict[tuple, torch.Tensor] = {}
        self.memory_bytes = 0
        self.hits = self.misses = 0

    def _key(self, utt: Utterance) -> tuple:
        effects = (utt.gain_db, utt.trim_silence) if utt.gain_db or utt.trim_silence else ()
        return (self.identity, str(utt.path), utt.offset, utt.num_samples, *effects)

    def _cacheable(self, utt: Utterance) -> bool:
        """Random crops are new audio at every draw: never cached."""
        return self.enabled and utt.crop is None

    def _disk_path(self, key: tuple) -> Path | None:
        if self.folder is None:
            return None
        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:24]
        return self.folder / digest[:2] / f"{digest}.pt"

    def _lookup(self, key: tuple) -> torch.Tensor | None:
        if key in self.memory:
            return self.memory[key]
        path = self._disk_path(key)
        if path is None or not path.is_file():
            return None
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # cut short (an older, non-atomic writer; a disk error): recompute
            path.unlink(missing_ok=True)
            return None

    def _store(self, key: tuple, states: torch.Tensor) -> None:
        size = states.numel() * states.element_size()
        if self.memory_bytes + size <= self.max_memory_bytes:
            self.memory[key] = states
            self.memory_bytes += size
            return
        path = self._disk_path(key)
        if path is not None:
            save_torch(states, path)

    @torch.no_grad()
    def states(self, utterances: list[Utterance], device: torch.device) -> list[torch.Tensor]:
        """Hidden states of each utterance, `[layers, frames, dim]`, float16."""
        found: list[torch.Tensor | None] = [None] * len(utterances)
        missing = []
        for i, utt in enumerate(utterances):
            cached = self._lookup(self._key(utt)) if self._cacheable(utt) else None
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
                states = stacked[row, :, : int(out["lengths"][row])].float().cpu().half()
                if self._cacheable(utterances[i]):
                    self._store(self._key(utterances[i]), states)
                found[i] = states
        return found  # type: ignore[return-value]


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
