"""Downstream metrics: WER (jiwer), PER (editdistance over phone tokens), accuracy and EER.
All returned as fractions.

The error counts per utterance (`word_errors`, `phone_errors`) are what the bootstrap
resamples (`tera.downstream.bootstrap`); the set-level rates are their sums over the
reference lengths. The EER builds its ROC itself (vectorised over bootstrap weightings), so
no downstream job imports scikit-learn (2 s of every job's start).
"""

from __future__ import annotations

from dataclasses import dataclass

import editdistance
import jiwer
import numpy as np


def word_errors(reference: str, hypothesis: str) -> int:
    """Substitutions + deletions + insertions of one pair (jiwer refuses empty strings:
    those are counted here)."""
    if not reference.split() or not hypothesis.split():
        return max(len(reference.split()), len(hypothesis.split()))
    output = jiwer.process_words(reference, hypothesis)
    return output.substitutions + output.deletions + output.insertions


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """(substitutions + deletions + insertions) / reference words, over the whole set."""
    if not references:
        raise ValueError("no references")
    words = sum(len(r.split()) for r in references)
    if words == 0:
        raise ValueError("the references hold no words")
    errors = sum(word_errors(r, h) for r, h in zip(references, hypotheses, strict=True))
    return errors / words


def phone_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Edit distance over phone tokens (a multi-character phone is one token)."""
    return editdistance.eval(reference, hypothesis)


def phone_error_rate(references: list[list[str]], hypotheses: list[list[str]]) -> float:
    """Edit distance over phone tokens / reference tokens, over the whole set."""
    tokens = sum(len(r) for r in references)
    if tokens == 0:
        raise ValueError("the references hold no phones")
    return sum(phone_errors(r, h) for r, h in zip(references, hypotheses, strict=True)) / tokens


def accuracy(labels: list, predictions: list) -> float:
    if not labels:
        raise ValueError("no labels")
    return float(np.mean([a == b for a, b in zip(labels, predictions, strict=True)]))


def equal_error_rate(labels, scores, weights=None) -> float:
    """The rate at which false acceptances equal false rejections.

    s3prl's definition (`sv_voxceleb1/utils.py`: scikit-learn's ROC, then
    `brentq(lambda x: 1 - x - interp1d(fpr, tpr)(x), 0, 1)`): the point where the ROC,
    joined by straight lines between its points, crosses fpr + tpr = 1. Trials with equal
    scores form one ROC step (a diagonal segment when it mixes targets and non-targets).
    `weights` (one per trial, >= 0) count a trial that many times.
    """
    labels = np.asarray(labels)
    weights = np.ones(len(labels)) if weights is None else np.asarray(weights, dtype=float)
    value = equal_error_rates(labels, scores, weights[None])[0]
    if np.isnan(value):
        raise ValueError("EER needs both target and non-target trials")
    return float(value)


def equal_error_rates(labels, scores, weights: np.ndarray) -> np.ndarray:
    """`equal_error_rate` of one trial list under many weightings at once (the bootstrap):
    labels, scores `[trials]`, weights `[rows, trials]` -> `[rows]` (NaN for a row without
    both target and non-target weight)."""
    ranked = rank_trials(labels, scores)
    if weights.shape[-1] != len(ranked.order):
        raise ValueError(f"{len(ranked.order)} trials and weights of shape {weights.shape} "
                         "do not match")
    return ranked_equal_error_rates(ranked, weights[:, ranked.order])


@dataclass(frozen=True)
class RankedTrials:
    """A trial list sorted once for many EERs: the trials by falling score (`order`), which
    of them are targets in that order, and where each run of equal scores ends."""

    order: np.ndarray
    target: np.ndarray
    ends: np.ndarray


def rank_trials(labels, scores) -> RankedTrials:
    """Check a trial list and sort it for `ranked_equal_error_rates`."""
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


def ranked_equal_error_rates(ranked: RankedTrials, weights: np.ndarray) -> np.ndarray:
    """The EER under each row of weights given in ranked order (`weights[:, k]` weighs trial
    `ranked.order[k]`): `[rows, trials]` -> `[rows]`. Works in place where it can: besides
    the weights it holds about three arrays of their size."""
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
