"""Downstream metrics, one function each, all returned as fractions: the error rate (WER over
words, PER over phones), the accuracy and the EER.

A metric is a function of per-item statistics under weights (how many times each item is
counted): errors and reference length per utterance, correct or not per utterance, label
and score per trial. Weights `[rows, items]` give one value per row, so the set's metric
(one row of ones) and a thousand bootstrap resamples (`tera.downstream.bootstrap`) run
through the same code. The EER builds its ROC itself, vectorised over the rows, so no
downstream job pays for importing scikit-learn at its start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import editdistance
import numpy as np


def token_errors(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Substitutions + deletions + insertions that turn the reference tokens into the
    hypothesis (their edit distance): words for WER (`text.split()`), phones for PER (a
    multi-character phone is one token)."""
    return editdistance.eval(list(reference), list(hypothesis))


def _each_once(weights: np.ndarray | None, items: int) -> np.ndarray:
    return np.ones((1, items)) if weights is None else weights


def error_rate(errors, lengths, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted errors / weighted reference lengths under each row of `weights` (`[rows,
    items]`; None: each item once) -> `[rows]` (NaN where the weighted references are
    empty)."""
    errors, lengths = np.asarray(errors), np.asarray(lengths)
    weights = _each_once(weights, len(errors))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ errors.astype(float)) / (weights @ lengths.astype(float))


def accuracy(correct, weights: np.ndarray | None = None) -> np.ndarray:
    """The weighted share of items right (`correct`: 1 or 0 per item) under each row of
    `weights` (`[rows, items]`; None: each item once) -> `[rows]`."""
    correct = np.asarray(correct)
    weights = _each_once(weights, len(correct))
    return (weights @ correct.astype(float)) / weights.sum(1)


@dataclass(frozen=True)
class RankedTrials:
    """A trial list sorted once for many EERs: the trials by falling score (`order`), which
    of them are targets in that order, and where each run of equal scores ends."""

    order: np.ndarray
    target: np.ndarray
    ends: np.ndarray


def rank_trials(labels, scores) -> RankedTrials:
    """Check a trial list (labels 1 target / 0 non-target, finite scores) and sort it for
    `equal_error_rate`."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or not len(scores):
        raise ValueError(f"{len(labels)} labels and {len(scores)} scores do not match")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("trial labels must be 0 (non-target) or 1 (target)")
    if not np.isfinite(scores).all():
        raise ValueError("trial scores must be finite")
    order = np.argsort(-scores, kind="stable")  # the threshold falls from the top score
    # the ROC point after each run of equal scores (ties enter together)
    ends = np.r_[np.flatnonzero(np.diff(scores[order])), len(scores) - 1]
    return RankedTrials(order, labels[order].astype(bool), ends)


def equal_error_rate(ranked: RankedTrials, weights: np.ndarray | None = None) -> np.ndarray:
    """The rate at which false acceptances equal false rejections, under each row of
    `weights` given in ranked order (`weights[:, k]` weighs trial `ranked.order[k]`; None:
    each trial once): `[rows, trials]` -> `[rows]`, NaN for a row without both target and
    non-target weight.

    s3prl's definition (`sv_voxceleb1/utils.py`: scikit-learn's ROC, then
    `brentq(lambda x: 1 - x - interp1d(fpr, tpr)(x), 0, 1)`): the point where the ROC,
    joined by straight lines between its points, crosses fpr + tpr = 1. Trials with equal
    scores form one ROC step (a diagonal segment when it mixes targets and non-targets).
    Works in place where it can: besides the weights it holds about three arrays of their
    size.
    """
    weights = _each_once(weights, len(ranked.order))
    if weights.shape[-1] != len(ranked.order):
        raise ValueError(f"{len(ranked.order)} trials and weights of shape {weights.shape} "
                         "do not match")
    accepted = np.empty_like(weights, dtype=np.float64)
    np.multiply(weights, ranked.target, out=accepted)
    np.cumsum(accepted, axis=1, out=accepted)
    tpr = accepted[:, ranked.ends]  # accepted target weight at each ROC point
    np.multiply(weights, ~ranked.target, out=accepted)
    np.cumsum(accepted, axis=1, out=accepted)
    fpr = accepted[:, ranked.ends]  # accepted non-target weight
    del accepted
    valid = (tpr[:, -1] > 0) & (fpr[:, -1] > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        np.divide(tpr, tpr[:, -1:], out=tpr)
        np.divide(fpr, fpr[:, -1:], out=fpr)
    # fpr + tpr rises from 0 (the ROC's origin, before the first point) to 2 along the ROC:
    # the first point at or past 1 ends the segment that crosses, and the crossing is
    # interpolated on that segment
    gap = np.subtract(1.0, fpr)
    np.subtract(gap, tpr, out=gap)
    del tpr
    after = np.argmax(gap <= 0, axis=1)
    rows = np.arange(len(gap))
    from_origin = after == 0
    before = np.maximum(after - 1, 0)
    g0 = np.where(from_origin, 1.0, gap[rows, before])
    f0 = np.where(from_origin, 0.0, fpr[rows, before])
    g1, f1 = gap[rows, after], fpr[rows, after]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(g0 > g1, g0 / (g0 - g1), 0.0)
    eer = f0 + share * (f1 - f0)
    return np.where(valid, eer, np.nan)
