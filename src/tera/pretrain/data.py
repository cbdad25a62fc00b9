"""Pre-training data: random crops of a manifest's utterances, and batches bounded by
`max_tokens`, cut and ordered as the fairseq fork cuts and orders them.

Everything random here is a pure function of (seed, epoch, index), so a resumed run sees
exactly the batches and crops it would have seen, whatever the number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from tera.audio import load_audio, load_crop
from tera.errors import UserError
from tera.pretrain.file_check import check_audio_files
from tera.pretrain.manifest import read_manifest

# --- dataset -----------------------------------------------------------------------------


class CroppedAudio(Dataset):
    """Utterances of a manifest at least `min_sample_size` long, cut to a common length per
    batch as fairseq's HuBERT-style dataset does (the fork's `tera_pretraining` task).

    `collate` crops every utterance of a batch to the batch's shortest (`pad_audio` false,
    the fork's setting) or its longest, padding the shorter ones (`pad_audio` true), and to
    at most `max_sample_size` samples either way; with `random_crop` the offset of each crop
    is random, a function of (seed, epoch, index) only, else the crop starts at 0.
    """

    def __init__(self, manifest: str | Path, max_sample_size: int, min_sample_size: int,
                 random_crop: bool = True, seed: int = 0, pad_audio: bool = False) -> None:
        self.manifest = Path(manifest)
        listed = read_manifest(manifest)
        long_enough = listed.sizes >= min_sample_size
        kept = listed if long_enough.all() else listed.select(long_enough)
        if not len(kept):
            raise UserError(f"{manifest}: no utterance is at least {min_sample_size} samples "
                            f"long ({len(listed)} listed)")
        # numpy arrays, no object per file: forked DataLoader workers share their pages
        self.root, self.files, self.sizes = kept.root, kept.files, kept.sizes
        self.dropped = len(listed) - len(kept)
        self.max_sample_size, self.random_crop, self.seed = max_sample_size, random_crop, seed
        self.pad_audio = pad_audio
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.files)

    def check_files(self, threads: int = 8) -> None:
        """Every listed file's header readable and not empty (`file_check`: read once per
        manifest content): one `UserError` naming the manifest and the unusable files."""
        check_audio_files(self.manifest, self.root, self.files, threads)

    def num_tokens(self) -> np.ndarray:
        """What an utterance counts against `max_tokens`, as fairseq counts it: its crop
        size when batches are cut to their shortest, its full length when they are padded."""
        return self.sizes if self.pad_audio else np.minimum(self.sizes, self.max_sample_size)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        """(index, the whole utterance); `collate` cuts it."""
        return index, load_audio(self.root / self.files[index])

    def __getitems__(self, indices: list[int]) -> list[tuple[int, torch.Tensor]]:
        """A batch (what the DataLoader asks for): each utterance decoded only as far as its
        crop, the batch's length taken from the manifest's sizes (a file whose length
        differs from its line is cut again by `collate`), so a crop costs the same from a
        10 s and a 20-minute file."""
        sizes = self.sizes[indices]
        size = min(int(sizes.max() if self.pad_audio else sizes.min()), self.max_sample_size)
        return [(index, self._load_crop(index, size)) for index in indices]

    def _load_crop(self, index: int, size: int) -> torch.Tensor:
        return load_crop(self.root / self.files[index], size,
                         lambda excess: self._crop_start(index, excess))

    def _crop_start(self, index: int, excess: int) -> int:
        """Where the crop of utterance `index` starts when it is `excess` samples too long:
        random (a function of seed, epoch and index) with `random_crop`, else 0."""
        if not self.random_crop:
            return 0
        return int(np.random.default_rng((self.seed, self.epoch, index)).integers(excess + 1))

    def crop(self, index: int, wave: torch.Tensor, size: int) -> torch.Tensor:
        """At most `size` samples of utterance `index` (see `_crop_start`)."""
        excess = len(wave) - size
        if excess <= 0:
            return wave
        start = self._crop_start(index, excess)
        return wave[start : start + size]

    def utterance(self, index: int) -> torch.Tensor:
        """Utterance `index` alone, cut to at most `max_sample_size`."""
        return self._load_crop(index, self.max_sample_size)

    def collate(self, items: list[tuple[int, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of (index, wave) -> (waves `[batch, sample]`, lengths `[batch]`), every
        wave cut to the batch's length (see the class docstring)."""
        lengths = [len(wave) for _, wave in items]
        size = min(max(lengths) if self.pad_audio else min(lengths), self.max_sample_size)
        return collate([self.crop(index, wave, size) for index, wave in items])


@contextmanager
def unwrap_worker_error() -> Iterator[None]:
    """Around a DataLoader loop: a `UserError` raised in a worker process arrives wrapped in
    its traceback ("Caught UserError in DataLoader worker process 0. Original Traceback...");
    give the user its own one-line message, as in the main process."""
    try:
        yield
    except UserError as err:
        text = str(err)
        if not text.startswith("Caught UserError in DataLoader worker"):
            raise
        last = text.rstrip().splitlines()[-1]
        raise UserError(last.split("UserError: ", 1)[-1]) from None


def collate(waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest: (waves `[batch, sample]`, lengths `[batch]`)."""
    lengths = torch.tensor([len(w) for w in waves])
    return torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), lengths


# --- batching ----------------------------------------------------------------------------


def length_batches(sizes: np.ndarray, max_tokens: int) -> list[list[int]]:
    """Sort by length and cut into batches whose padded size (count x longest) stays within
    `max_tokens`; an utterance longer than `max_tokens` is an error."""
    if sizes.size and sizes.max() > max_tokens:
        raise UserError(f"an utterance of {int(sizes.max())} samples exceeds dataset.max_tokens "
                        f"= {max_tokens}; raise max_tokens or lower task.max_sample_size")
    order = np.argsort(-sizes, kind="stable")
    batches, current, longest = [], [], 0
    for index in order.tolist():
        longest_if_added = max(longest, int(sizes[index]))
        if current and longest_if_added * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest_if_added = [], int(sizes[index])
        current.append(index)
        longest = longest_if_added
    if current:
        batches.append(current)
    return batches


def size_ordered(sizes: np.ndarray, seed: int) -> np.ndarray:
    """Indices longest first, equal sizes in a random order, drawn as fairseq draws it for a
    run's batches (`ordered_indices` under numpy's legacy generator seeded with seed + 1)."""
    tie_break = np.random.RandomState(seed + 1).permutation(len(sizes))
    return np.lexsort([tie_break, sizes])[::-1]


class Batches(Sequence[list[int]]):
    """Batches of utterance indices as two arrays, whatever their number: the indices back
    to back and where each batch starts (`bounds`, one more than the batches);
    `batches[i]` is a list of ints."""

    def __init__(self, indices: np.ndarray, bounds: np.ndarray) -> None:
        self.indices, self.bounds = indices, bounds

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, number):
        if isinstance(number, slice):
            return [self[i] for i in range(*number.indices(len(self)))]
        number = range(len(self))[number]
        return self.indices[self.bounds[number] : self.bounds[number + 1]].tolist()

    def lengths(self) -> np.ndarray:
        """The number of utterances in each batch."""
        return np.diff(self.bounds)


def token_batches(order: np.ndarray, num_tokens: np.ndarray, max_tokens: int,
                  multiple: int = 1) -> Batches:
    """Cut `order` (longest first) into consecutive batches as fairseq's `batch_by_size`
    does: a batch takes as many utterances as keep (count x its longest) within `max_tokens`,
    rounded down to a multiple of `multiple` once it holds that many; the last batch is
    dropped when its size is not a multiple of `multiple`.

    Longest first, a batch's longest is its first, so its size follows from where it
    starts; batches that start on equal lengths are equal, and are cut together (a step per
    distinct length, not per utterance)."""
    tokens = num_tokens[order]
    if len(tokens) and tokens.max() > max_tokens:
        raise UserError(f"an utterance of {int(tokens.max())} samples exceeds "
                        f"dataset.max_tokens = {max_tokens}; raise max_tokens, or lower "
                        "task.max_sample_size with task.pad_audio false")
    if (tokens[1:] > tokens[:-1]).any():
        raise ValueError("token_batches: `order` must list the utterances longest first")
    count = len(tokens)
    run_ends = np.append(np.flatnonzero(tokens[1:] != tokens[:-1]) + 1, count)
    starts, start = [], 0
    while start < count:
        longest = int(tokens[start])
        fit = max_tokens // longest if longest else count
        size = _rounded(min(fit, count - start), multiple)
        repeat = 1
        if fit <= count - start:  # every batch starting on this length up to count - fit
            run_end = int(run_ends[np.searchsorted(run_ends, start, side="right")])
            repeat = (min(run_end - 1, count - fit) - start) // size + 1
        starts.append(start + size * np.arange(repeat))
        start += size * repeat
    bounds = np.append(np.concatenate(starts), count) if starts else np.zeros(1, np.int64)
    if multiple > 1 and len(bounds) > 1 and (bounds[-1] - bounds[-2]) % multiple:
        bounds = bounds[:-1]
    return Batches(np.asarray(order[: bounds[-1]], dtype=np.int64), bounds.astype(np.int64))


def _rounded(size: int, multiple: int) -> int:
    """`size` rounded down to a multiple of `multiple` once it holds that many."""
    return size - size % multiple if size >= multiple else size


@dataclass
class SamplerState:
    """Where a rank's sampler stands: the epoch and how many of its batches that epoch has handed
    out (saved in checkpoints for an exact resume)."""
    epoch: int = 0
    position: int = 0  # batches of this rank already consumed in this epoch


class LengthBatchSampler(Sampler[list[int]]):
    """fairseq's batches (`size_ordered`, `token_batches`), made once per run, in a new
    random order every epoch, sharded by rank.

    `sizes` orders the utterances, `num_tokens` is what each counts against `max_tokens`
    (both `CroppedAudio`'s). The epoch order is drawn as fairseq draws it (numpy's legacy
    generator seeded with seed + epoch, epochs counted from 1). Every rank gets the same
    number of batches per epoch (the tail that does not divide by the world size is
    dropped), so data-parallel steps stay in lockstep. Batches and orders are numpy arrays;
    a batch becomes a list only when it is handed out.
    """

    def __init__(self, sizes: np.ndarray, num_tokens: np.ndarray, max_tokens: int, seed: int,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 multiple: int = 1) -> None:
        self.batches = token_batches(size_ordered(sizes, seed), num_tokens, max_tokens,
                                     multiple)
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.state = SamplerState()
        if len(self.batches) < world_size:
            dropped = (f" (a last batch whose size is no multiple of {multiple} is dropped, "
                       "see dataset.required_batch_size_multiple)" if multiple > 1 else "")
            raise UserError(f"only {len(self.batches)} batches for {world_size} processes: "
                            f"the data set is too small for this many workers{dropped}")

    def epoch_order(self, epoch: int) -> np.ndarray:
        """The numbers of this rank's batches in `epoch` (0-based), in the order it reads
        them."""
        order = np.arange(len(self.batches))
        if self.shuffle:
            np.random.RandomState(self.seed + epoch + 1).shuffle(order)
        per_rank = len(order) // self.world_size
        return order[self.rank :: self.world_size][:per_rank]

    def __len__(self) -> int:
        return len(self.batches) // self.world_size

    def __iter__(self):
        for number in self.epoch_order(self.state.epoch)[self.state.position :]:
            yield self.batches[int(number)]
