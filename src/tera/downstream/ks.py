"""KS (SUPERB): Speech Commands v1, 12 classes, mean pooling + MLP, accuracy. Training
batches are drawn class-balanced; evaluation goes through every utterance in order."""

from __future__ import annotations

import torch
from torch import nn

from tera.corpora import speech_commands
from tera.downstream.base import Scored, Task, masked_mean
from tera.downstream.bootstrap import Items


class PooledMlpHead(nn.Module):
    def __init__(self, dim: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x, lengths):
        return self.mlp(masked_mean(x, lengths))


class KsTask(Task):
    name, metric, higher_is_better = "ks", "accuracy", True
    train_split, dev_split, test_split = "train", "valid", "test"
    balanced_training = True

    def examples(self, split):
        return speech_commands.load_split(self.root, split)

    def build_head(self, dim):
        return PooledMlpHead(dim, self.cfg["modelrc"]["hidden_size"],
                             len(speech_commands.CLASSES))

    def loss(self, head, x, lengths, utts):
        labels = torch.tensor([speech_commands.CLASSES.index(u.label) for u in utts],
                              device=x.device)
        return nn.functional.cross_entropy(head(x, lengths), labels)

    def predict(self, head, x, lengths):
        return [speech_commands.CLASSES[i] for i in head(x, lengths).argmax(-1).tolist()]

    def score(self, utts, predictions, split):  # noqa: ARG002
        lines = [f"{u.id}\t{u.label}\t{p}" for u, p in zip(utts, predictions)]
        items = Items("accuracy", {"id": [u.id for u in utts],
                                   "correct": [int(u.label == p) for u, p in
                                               zip(utts, predictions, strict=True)]})
        return Scored(items.value(), lines, items)
