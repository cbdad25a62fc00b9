"""Downstream metrics: WER (jiwer), PER (editdistance over phone tokens), accuracy and EER.
All returned as fractions.

The error counts per utterance (`word_errors`, `phone_errors`) are what the bootstrap
resamples (`tera.downstream.bootstrap`); the set-level rates are their sums over the
reference lengths. The EER builds its ROC itself (vectorised over bootstrap weightings), so
no downstream job imports scikit-learn (2 s of every job's start).
"""

from __future__ import annotations

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
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or weights.shape[-1] != len(scores) or not len(scores):
        raise ValueError(f"{len(labels)} labels, {len(scores)} scores and weights of shape "
                         f"{weights.shape} do not match")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("trial labels must be 0 (non-target) or 1 (target)")
    if not np.isfinite(scores).all():
        raise ValueError("trial scores must be finite")
    order = np.argsort(-scores, kind="stable")  # the threshold falls from the top score
    target = labels[order].astype(bool)
    # the ROC point after each run of equal scores (ties enter together)
    ends = np.r_[np.flatnonzero(np.diff(scores[order])), len(scores) - 1]
    w = weights[:, order]
    accepted_targets = np.cumsum(w * target, axis=1)[:, ends]
    accepted_others = np.cumsum(w * ~target, axis=1)[:, ends]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = accepted_targets / accepted_targets[:, -1:]
        fpr = accepted_others / accepted_others[:, -1:]
    rows = np.arange(len(w))
    zero = np.zeros((len(w), 1))
    tpr, fpr = np.hstack([zero, tpr]), np.hstack([zero, fpr])
    # fpr + tpr rises from 0 to 2 along the ROC: the first point at or past 1 ends the
    # segment that crosses, and the crossing is interpolated on that segment
    gap = 1.0 - fpr - tpr
    after = np.argmax(gap <= 0, axis=1)
    before = np.maximum(after - 1, 0)
    g0, g1 = gap[rows, before], gap[rows, after]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(g0 > g1, g0 / (g0 - g1), 0.0)
    f0, f1 = fpr[rows, before], fpr[rows, after]
    eer = f0 + share * (f1 - f0)
    valid = (accepted_targets[:, -1] > 0) & (accepted_others[:, -1] > 0)
    return np.where(valid, eer, np.nan)
