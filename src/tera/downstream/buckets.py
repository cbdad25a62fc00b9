"""Training batches counted in utterances, bucketed by length as s3prl's LibriSpeech recipes
do (the runner's default batches are bounded by total audio instead, see
`tera.downstream.features.batches_by_length`).

A recipe asks for them with `downstream_expert.datarc`:

    batch_size: 32            # utterances per batch
    half_batch_above: 2000    # samples: a batch with a longer utterance keeps half its size
    bucketing: consecutive    # or `sliding`

- `consecutive` (s3prl's `asr/dataset.py`): utterances sorted longest first are cut into
  buckets of `batch_size`; a full bucket whose longest utterance has more than
  `half_batch_above` samples becomes two buckets of half the size; the remainder is a last
  bucket unless it holds a single utterance. An epoch visits every bucket once.
- `sliding` (s3prl's `ctc/corpus/libriphone.py` and `ctc/data.py`): an epoch has one batch
  per utterance: the `batch_size` utterances from its place in the longest-first order (the
  start clamped so that every window is full), cut to the first half when the window's first
  utterance has more than `half_batch_above` samples.
"""

from __future__ import annotations

import random

from tera.errors import UserError

BUCKETINGS = ("consecutive", "sliding")


def utterance_batches(sizes: list[int], datarc: dict, shuffle: bool, seed: int
                      ) -> list[list[int]] | None:
    """Index batches for utterances of `sizes` samples as `datarc` asks, or None when it
    sets no `batch_size` (the runner then batches by total length)."""
    if datarc.get("batch_size") is None:
        return None
    batch_size, half_above = int(datarc["batch_size"]), datarc.get("half_batch_above")
    bucketing = datarc.get("bucketing", "consecutive")
    if batch_size < 1:
        raise UserError(f"downstream_expert.datarc.batch_size: expected at least 1 utterance, "
                        f"got {batch_size}")
    if bucketing not in BUCKETINGS:
        raise UserError(f"downstream_expert.datarc.bucketing: expected one of "
                        f"{', '.join(BUCKETINGS)}, got {bucketing!r}")
    longest_first = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    limit = float("inf") if half_above is None else int(half_above)
    make = consecutive_buckets if bucketing == "consecutive" else sliding_windows
    batches = make(longest_first, sizes, batch_size, limit)
    if shuffle:
        random.Random(seed).shuffle(batches)
    return batches


def consecutive_buckets(order: list[int], sizes: list[int], batch_size: int,
                        half_above: float) -> list[list[int]]:
    """Consecutive buckets of `order`, halved when they hold an utterance over
    `half_above` samples; a remainder of one utterance is dropped."""
    buckets = []
    for start in range(0, len(order) - batch_size + 1, batch_size):
        bucket = order[start : start + batch_size]
        if batch_size >= 2 and max(sizes[i] for i in bucket) > half_above:
            buckets += [bucket[: batch_size // 2], bucket[batch_size // 2 :]]
        else:
            buckets.append(bucket)
    remainder = order[len(order) - len(order) % batch_size :] if len(order) % batch_size else []
    if len(remainder) > 1:
        buckets.append(remainder)
    return buckets


def sliding_windows(order: list[int], sizes: list[int], batch_size: int,
                    half_above: float) -> list[list[int]]:
    """One window of `batch_size` utterances per position of `order`."""
    windows = []
    for position in range(len(order)):
        start = max(0, min(len(order) - batch_size, position))
        window = order[start : start + batch_size]
        if len(window) > 1 and sizes[window[0]] > half_above:
            window = window[: len(window) // 2]
        windows.append(window)
    return windows
