"""Downstream metrics, from well-kept libraries: WER (jiwer), PER (editdistance over phone
tokens), accuracy, and EER (scikit-learn's ROC). All returned as fractions."""

from __future__ import annotations

import editdistance
import jiwer
import numpy as np


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """(substitutions + deletions + insertions) / reference words, over the whole set."""
    if not references:
        raise ValueError("no references")
    words = sum(len(r.split()) for r in references)
    if words == 0:
        raise ValueError("the references hold no words")
    errors = sum(_edit_errors(r, h) for r, h in zip(references, hypotheses, strict=True))
    return errors / words


def _edit_errors(reference: str, hypothesis: str) -> int:
    """Word edits of one pair (jiwer refuses empty strings: those are counted here)."""
    if not reference.split() or not hypothesis.split():
        return max(len(reference.split()), len(hypothesis.split()))
    output = jiwer.process_words(reference, hypothesis)
    return output.substitutions + output.deletions + output.insertions


def phone_error_rate(references: list[list[str]], hypotheses: list[list[str]]) -> float:
    """Edit distance over phone tokens / reference tokens, over the whole set."""
    tokens = sum(len(r) for r in references)
    if tokens == 0:
        raise ValueError("the references hold no phones")
    return sum(editdistance.eval(r, h) for r, h in zip(references, hypotheses)) / tokens


def accuracy(labels: list, predictions: list) -> float:
    if not labels:
        raise ValueError("no labels")
    return float(np.mean([a == b for a, b in zip(labels, predictions)]))


def equal_error_rate(labels: list[int], scores: list[float]) -> float:
    """The rate where false acceptances equal false rejections (interpolated on the ROC)."""
    from sklearn.metrics import roc_curve  # imported here: 2 s of every downstream job's start

    labels_array = np.asarray(labels)
    if labels_array.min() == labels_array.max():
        raise ValueError("EER needs both target and non-target trials")
    false_accept, true_accept, _ = roc_curve(labels_array, np.asarray(scores), pos_label=1)
    false_reject = 1 - true_accept
    i = int(np.nanargmin(np.abs(false_reject - false_accept)))
    if i == 0:
        return float((false_accept[0] + false_reject[0]) / 2)
    # interpolate between the two ROC points around the crossing
    d0 = false_reject[i - 1] - false_accept[i - 1]
    d1 = false_reject[i] - false_accept[i]
    if d0 == d1:
        return float((false_accept[i] + false_reject[i]) / 2)
    t = d0 / (d0 - d1)
    return float(false_accept[i - 1] + t * (false_accept[i] - false_accept[i - 1]))
