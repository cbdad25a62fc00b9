"""Utterance classification (KS, SID): the label of each utterance from its mean-pooled
features, cross-entropy, accuracy.

SUPERB's head is a linear probe on purpose (s3prl `downstream/model.py`, `UtteranceLevel`):
`Linear(D, 256)` per frame, the mean over the valid frames, `Linear(256, classes)`; no
non-linearity, so the score measures what the features hold rather than what a deeper head
could learn. The embedded profile keeps its own heads (see each task).
"""

from __future__ import annotations

import torch
from torch import nn

from tera.downstream.base import Scored, Task, masked_mean
from tera.downstream.bootstrap import Items


class LinearProbe(nn.Module):
    """`[batch, frame, dim]` -> `Linear(dim, projector)` -> mean over valid frames ->
    `Linear(projector, classes)` -> logits `[batch, classes]`."""

    def __init__(self, dim: int, projector: int, classes: int) -> None:
        super().__init__()
        self.projector = nn.Linear(dim, projector)
        self.output = nn.Linear(projector, classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.output(masked_mean(self.projector(x), lengths))


class ClassificationTask(Task):
    """A task whose utterances carry a class in `Utterance.label`, one of `self.labels`; its
    head maps features to logits `[batch, len(labels)]`. Loss: cross-entropy; prediction:
    the top class; metric: accuracy."""

    metric, higher_is_better = "accuracy", True

    def loss(self, head, x, lengths, utts):
        index = {label: i for i, label in enumerate(self.labels)}
        labels = torch.tensor([index[u.label] for u in utts], device=x.device)
        return nn.functional.cross_entropy(head(x, lengths), labels)

    def predict(self, head, x, lengths):
        return [self.labels[i] for i in head(x, lengths).argmax(-1).tolist()]

    def score(self, utts, predictions, split):  # noqa: ARG002
        lines = [f"{u.id}\t{u.label}\t{p}" for u, p in zip(utts, predictions)]
        items = Items("accuracy", {"id": [u.id for u in utts],
                                   "correct": [int(u.label == p) for u, p in
                                               zip(utts, predictions, strict=True)]})
        return Scored(items.value(), lines, items)
