"""Confidence intervals and paired significance tests by bootstrap over the test items.

Every scored split leaves its per-item statistics (`Items`, written as
`<split>_items.tsv` beside `<split>_predictions.txt`): errors and reference length per
utterance (ASR, PR), correct or not per utterance (KS, SID), label, score and the two
speakers per trial (ASV). A metric is a function of those rows under weights (how many times
each row is counted), so a bootstrap resample is a weighting:

- ASR, PR, KS, SID resample **utterances**: n draws with replacement from the n test
  utterances; WER / PER = sum(weighted errors) / sum(weighted reference lengths), accuracy
  = weighted mean.
- ASV resamples **speakers**: S draws with replacement from the S speakers of the trial
  list; a target trial of a speaker drawn k times counts k times, a non-target trial
  between speakers drawn k and l times counts k * l times (the trials among the copies).
  Trials are far from independent: every utterance and every speaker appears in many of
  them, and a voice the model confuses raises the errors of all its trials. Drawing trials
  one by one would treat thousands of correlated trials as independent and give intervals
  that are too narrow; the speaker is the unit a verification system generalises over.

The interval is the percentile interval of 1000 resamples (level 95 %, fixed seed, so a
report is reproducible). Comparisons are paired: both upstreams are scored on the same
items under the same resamples, and a difference is significant when its interval excludes
zero. With several seeds of one upstream, its statistic is the mean over the seeds of the
metric, and a resample draws the seeds too: the same item weights for every seed, then N
seeds with replacement from the N (a two-level bootstrap), so that the interval holds the
spread between training runs as well as that between test sets. With two or three seeds
that part is rough (it can only see the seeds there are), but without it two seeds that
disagree by ten points would get the interval of a single test set. The two upstreams of a
comparison draw their seeds independently (seed k of one is not paired with seed k of the
other: their runs share nothing but the number).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from tera.downstream.metrics import (
    RankedTrials,
    accuracy,
    equal_error_rate,
    error_rate,
    rank_trials,
)
from tera.errors import UserError
from tera.runs.files import write_text

LEVEL = 0.95
RESAMPLES = 1000
SEED = 0
# Resamples are weighted a chunk at a time: at most _CHUNK rows, fewer when the items are
# many, so that a chunk's arrays (about _BYTES_PER_WEIGHT per row and item: the draws, the
# weights and the EER's running sums) stay within MEMORY_BUDGET. Every resample is computed
# on its own, so the chunking never changes a result.
_CHUNK = 200
_BYTES_PER_WEIGHT = 48
MEMORY_BUDGET = 64 * 2**20

# the columns of each kind of items file, in order; the first ones identify a row
COLUMNS = {
    "error_rate": ("id", "errors", "length"),
    "accuracy": ("id", "correct"),
    "eer": ("enrol", "test", "label", "score", "enrol_speaker", "test_speaker"),
}
KEYS = {"error_rate": ("id",), "accuracy": ("id",), "eer": ("enrol", "test")}
UNITS = {"error_rate": "utterance", "accuracy": "utterance", "eer": "speaker"}
NUMERIC = {"errors": int, "length": int, "correct": int, "label": int, "score": float}


@dataclass
class Items:
    """The per-item statistics of one scored split, one row per test item (sorted by its
    identifying columns, so that two runs on the same test set line up row by row)."""

    kind: str  # "error_rate" | "accuracy" | "eer"
    columns: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        if self.kind not in COLUMNS:
            raise ValueError(f"unknown kind of items {self.kind!r}")
        missing = set(COLUMNS[self.kind]) - set(self.columns)
        if missing:
            raise ValueError(f"{self.kind} items need the columns {', '.join(sorted(missing))}")
        self.columns = {name: np.asarray(self.columns[name]) for name in COLUMNS[self.kind]}
        lengths = {len(column) for column in self.columns.values()}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError("items need equally long, non-empty columns")
        order = np.lexsort([self.columns[k] for k in reversed(KEYS[self.kind])])
        self.columns = {name: column[order] for name, column in self.columns.items()}

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    @property
    def unit(self) -> str:
        """What a resample draws: "utterance" (ASR, PR, KS, SID) or "speaker" (ASV)."""
        return UNITS[self.kind]

    def keys(self) -> list[tuple]:
        """Each row's identifying values (utterance id; enrolment and test for ASV), in row
        order."""
        return list(zip(*(self.columns[k].tolist() for k in KEYS[self.kind])))

    def value(self) -> float:
        """The metric over all items (each counted once)."""
        value = float(self.metric(np.ones((1, len(self))))[0])
        if np.isnan(value):
            raise ValueError("EER needs both target and non-target trials"
                             if self.kind == "eer" else "the references are empty")
        return value

    def metric(self, weights: np.ndarray) -> np.ndarray:
        """The metric under each row of weights: `[rows, items]` -> `[rows]`."""
        if self.kind == "eer":
            return equal_error_rate(self._ranking, weights[:, self._ranking.order])
        return self._rate(weights)

    def resampled(self, draws: np.ndarray) -> np.ndarray:
        """The metric under each row of unit draws (`[rows, units]`, see `weights`):
        `[rows]`, with the weights built directly in the order the metric reads them."""
        if self.kind == "eer":
            return equal_error_rate(self._ranking, self._weights(draws, ranked=True))
        return self._rate(self._weights(draws, ranked=False))

    def _rate(self, weights: np.ndarray) -> np.ndarray:
        c = self.columns
        if self.kind == "error_rate":
            return error_rate(c["errors"], c["length"], weights)
        return accuracy(c["correct"], weights)

    def units(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(number of resampling units, unit of each item, second unit of each item or -1).
        A trial belongs to the speakers on its two sides."""
        return self._units

    @cached_property
    def _units(self) -> tuple[int, np.ndarray, np.ndarray]:
        # speakers are encoded once: every chunk of every resampling reuses the codes
        if self.kind != "eer":
            return len(self), np.arange(len(self)), np.full(len(self), -1)
        speakers, index = np.unique(np.concatenate([self.columns["enrol_speaker"],
                                                    self.columns["test_speaker"]]),
                                    return_inverse=True)
        first, second = index[: len(self)], index[len(self):]
        return len(speakers), first, np.where(first == second, -1, second)

    @cached_property
    def _ranking(self) -> RankedTrials:
        return rank_trials(self.columns["label"], self.columns["score"])

    @cached_property
    def _ranked_units(self) -> tuple[np.ndarray, np.ndarray]:
        _, first, second = self._units
        return first[self._ranking.order], second[self._ranking.order]

    def weights(self, draws: np.ndarray) -> np.ndarray:
        """Item weights from unit draws (`[rows, units]`, how many times each unit was
        drawn): an item counts as often as its unit, a trial between two speakers as
        often as the pairs of their copies."""
        return self._weights(draws, ranked=False)

    def _weights(self, draws: np.ndarray, ranked: bool) -> np.ndarray:
        if self.kind != "eer":
            return draws.astype(float)
        first, second = self._ranked_units if ranked else self._units[1:]
        # one extra unit drawn once stands for "no second speaker": multiplying by it is exact
        counts = np.hstack([draws.astype(float), np.ones((len(draws), 1))])
        weights = np.take(counts, first, axis=1)
        weights *= np.take(counts, second, axis=1)
        return weights

    def rows_per_chunk(self) -> int:
        """How many resamples to weight at once within MEMORY_BUDGET."""
        return int(np.clip(MEMORY_BUDGET // (len(self) * _BYTES_PER_WEIGHT), 1, _CHUNK))


def items_path(folder: str | Path, split: str) -> Path:
    """Where a run keeps the per-item statistics of a scored split: `<split>_items.tsv`."""
    return Path(folder) / f"{split}_items.tsv"


def write_items(path: Path, items: Items) -> None:
    """Write `items` as tab-separated text with a header (floats exactly, as `repr`),
    atomically; `read_items` reads it back."""
    rows = ["\t".join(COLUMNS[items.kind])]
    values = [items.columns[name].tolist() for name in COLUMNS[items.kind]]
    rows += ["\t".join(_cell(v) for v in row) for row in zip(*values)]
    write_text(path, "\n".join(rows) + "\n")


def _cell(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def read_items(path: Path) -> Items:
    """An items file (`<split>_items.tsv`) back; its kind is told by its header. A missing
    or malformed file raises `UserError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no per-item statistics (a run of an older version? evaluate "
                        "its checkpoint again with `tera downstream -m evaluate -e CKPT`)")
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
    except (UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"{path}: not an items file (not tab-separated text: {err})") from err
    header = tuple(rows[0]) if rows else ()
    kind = next((k for k, columns in COLUMNS.items() if columns == header), None)
    if kind is None or len(rows) < 2:
        raise UserError(f"{path}: not an items file (header {header!r}, {len(rows)} lines)")
    columns = {}
    for number, name in enumerate(header):
        cast = NUMERIC.get(name, str)
        try:
            columns[name] = np.array([cast(row[number]) for row in rows[1:]])
        except (ValueError, IndexError) as err:
            raise UserError(f"{path}: column {name}: {err}") from err
    return Items(kind, columns)


# --- the bootstrap ----------------------------------------------------------------------------


def draw_units(items: Items, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """`[resamples, units]`: how many times each resampling unit is drawn, each row S draws
    with replacement from the S units."""
    return np.concatenate(list(_draw_chunks(items, resamples, seed, resamples)))


def _draw_chunks(items: Items, resamples: int, seed: int, rows: int) -> Iterator[np.ndarray]:
    """`draw_units` a chunk of rows at a time (the same draws: the generator fills the rows
    one after another, however many are asked at once)."""
    count = items.units()[0]
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, rows):
        yield rng.multinomial(count, np.full(count, 1.0 / count),
                              size=min(rows, resamples - start))


def replicates(runs: list[Items], resamples: int = RESAMPLES, seed: int = SEED,
               pick_seed: int | None = None) -> np.ndarray:
    """`[resamples]`: the metric of each resample (the units drawn by `seed`), averaged over
    the runs (seeds) of one upstream: every run weighted by the same item draw, the runs
    themselves drawn with replacement (`pick_seed`, `seed` unless told, seeds that draw;
    one run: no draw). Memory stays within MEMORY_BUDGET, however many the items."""
    _check_same_items(runs)
    per_run = np.empty((len(runs), resamples))
    rows = runs[0].rows_per_chunk()
    for start, draws in zip(range(0, resamples, rows),
                            _draw_chunks(runs[0], resamples, seed, rows)):
        per_run[:, start:start + len(draws)] = [run.resampled(draws) for run in runs]
    if len(runs) == 1:
        return per_run[0]
    pick_seed = seed if pick_seed is None else pick_seed
    picked = np.random.default_rng([pick_seed, len(runs)]).integers(0, len(runs),
                                                                    (resamples, len(runs)))
    return per_run[picked, np.arange(resamples)[:, None]].mean(axis=1)


def interval(runs: list[Items], level: float = LEVEL, resamples: int = RESAMPLES,
             seed: int = SEED) -> dict:
    """The bootstrap interval of an upstream's metric (the mean over its runs): a record for
    results.json and the report."""
    values = replicates(runs, resamples, seed)
    low, high = _percentiles(values, level)
    return {"low": low, "high": high, "level": level, "method": "percentile bootstrap",
            "unit": runs[0].unit, "units": int(runs[0].units()[0]), "items": len(runs[0]),
            "resamples": int(np.isfinite(values).sum()), "seed": seed}


def paired_difference(a: list[Items], b: list[Items], level: float = LEVEL,
                      resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """Metric of `a` minus metric of `b` on the same items, with its paired bootstrap
    interval and two-sided p-value; significant when the interval excludes zero."""
    _check_same_items([*a, *b])
    # both sides see the same unit draws (`seed`); their seeds are picked independently
    differences = replicates(a, resamples, seed) - replicates(b, resamples, seed, seed + 1)
    finite = differences[np.isfinite(differences)]
    low, high = _percentiles(differences, level)
    value = float(np.mean([r.value() for r in a]) - np.mean([r.value() for r in b]))
    p_value = min(1.0, 2 * min(np.mean(finite <= 0), np.mean(finite >= 0))) if len(finite) \
        else float("nan")
    return {"difference": value, "low": low, "high": high, "level": level,
            "p_value": float(p_value), "significant": bool(low > 0 or high < 0),
            "unit": a[0].unit, "resamples": int(len(finite)), "seed": seed}


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if len(finite) < 0.9 * len(values):  # too many resamples without a defined metric
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def _check_same_items(runs: list[Items]) -> None:
    first = runs[0]
    for run in runs[1:]:
        if run.kind != first.kind or len(run) != len(first) or not all(
                np.array_equal(run.columns[key], first.columns[key]) for key in KEYS[run.kind]):
            raise ValueError("paired runs must be scored on the same test items")
