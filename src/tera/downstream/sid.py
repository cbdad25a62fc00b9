"""SID (SUPERB): VoxCeleb1 identification split, mean pooling + linear, accuracy."""

from __future__ import annotations

import torch
from torch import nn

from tera.corpora import voxceleb1
from tera.downstream.base import Scored, Task, masked_mean
from tera.downstream.bootstrap import Items


class PooledLinearHead(nn.Module):
    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.output = nn.Linear(dim, classes)

    def forward(self, x, lengths):
        return self.output(masked_mean(x, lengths))


class SidTask(Task):
    name, metric, higher_is_better = "sid", "accuracy", True

    def examples(self, split):
        return voxceleb1.load_identification(self.root, split)

    def prepare(self, train) -> None:
        self.labels = sorted({u.label for u in train})

    def build_head(self, dim):
        return PooledLinearHead(dim, len(self.labels))

    def loss(self, head, x, lengths, utts):
        labels = torch.tensor([self.labels.index(u.label) for u in utts], device=x.device)
        return nn.functional.cross_entropy(head(x, lengths), labels)

    def predict(self, head, x, lengths):
        return [self.labels[i] for i in head(x, lengths).argmax(-1).tolist()]

    def score(self, utts, predictions, split):  # noqa: ARG002
        lines = [f"{u.id}\t{u.label}\t{p}" for u, p in zip(utts, predictions)]
        items = Items("accuracy", {"id": [u.id for u in utts],
                                   "correct": [int(u.label == p) for u, p in
                                               zip(utts, predictions, strict=True)]})
        return Scored(items.value(), lines, items)
