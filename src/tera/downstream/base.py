"""What a downstream task provides to the runner: its data, its head, its loss and its
metric. Each task is one small module (asr, pr, ks, sid, asv) with one such class."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from tera.corpora import Utterance
from tera.downstream.bootstrap import Items

# forward(utterances) -> (features [B, T, D] after the featurizer, lengths [B])
Forward = Callable[[list[Utterance]], tuple[torch.Tensor, torch.Tensor]]


class Scored(NamedTuple):
    """A split scored: the metric, the lines of `<split>_predictions.txt` and the per-item
    statistics (`<split>_items.tsv`, what the bootstrap resamples)."""

    value: float
    lines: list[str]
    items: Items


class Task:
    name = ""
    metric = ""
    higher_is_better = False
    best_name = "dev-best.ckpt"
    train_split, dev_split, test_split = "train", "dev", "test"

    def __init__(self, root: Path, cfg: dict) -> None:
        self.root, self.cfg = root, cfg
        # the output inventory (characters, phones, speakers) learned by `prepare`
        self.labels: list[str] = []
        datarc = cfg.get("datarc", {})
        self.train_split = datarc.get("train_split", self.train_split)
        self.dev_split = datarc.get("dev_split", self.dev_split)
        self.test_split = datarc.get("test_split", self.test_split)

    def examples(self, split: str) -> list[Utterance]:
        raise NotImplementedError

    def prepare(self, train: list[Utterance]) -> None:
        """Learn the output inventory from the training set."""

    def state(self) -> dict:
        """What `prepare` learned, saved in checkpoints so evaluation needs no training data."""
        return {"labels": self.labels}

    def load_state(self, state: dict) -> None:
        self.labels = list(state["labels"])

    def batches(self, sizes: list[int], shuffle: bool, seed: int) -> list[list[int]] | None:
        """The training batches (indices) of utterances of `sizes` samples, or None for the
        runner's batches bounded by total length."""
        return None

    def build_head(self, dim: int) -> nn.Module:
        raise NotImplementedError

    def loss(self, head: nn.Module, x: torch.Tensor, lengths: torch.Tensor,
             utts: list[Utterance]) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, head: nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> list:
        raise NotImplementedError

    def score(self, utts: list[Utterance], predictions: list, split: str) -> Scored:
        raise NotImplementedError

    def evaluate(self, head: nn.Module, forward: Forward, batches: Iterator[list[Utterance]],
                 split: str) -> Scored:
        utts, predictions = [], []
        for batch in batches:
            x, lengths = forward(batch)
            predictions += self.predict(head, x, lengths)
            utts += batch
        return self.score(utts, predictions, split)


def masked_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over the valid frames: `[B, T, D]` -> `[B, D]`."""
    valid = (torch.arange(x.size(1), device=x.device) < lengths.unsqueeze(1)).unsqueeze(-1)
    return (x * valid).sum(1) / lengths.clamp(min=1).unsqueeze(1).to(x.dtype)


def greedy_ctc(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int = 0
               ) -> list[list[int]]:
    """Best path: argmax per frame, merge repeats, drop blanks."""
    best = log_probs.argmax(-1).cpu()
    decoded = []
    for row, n in zip(best, lengths.cpu().tolist()):
        previous, tokens = blank, []
        for token in row[:n].tolist():
            if token != previous and token != blank:
                tokens.append(token)
            previous = token
        decoded.append(tokens)
    return decoded


def ctc_loss(log_probs: torch.Tensor, lengths: torch.Tensor, targets: list[list[int]]
             ) -> torch.Tensor:
    flat = torch.tensor([t for seq in targets for t in seq], dtype=torch.long)
    target_lengths = torch.tensor([len(seq) for seq in targets], dtype=torch.long)
    return nn.functional.ctc_loss(log_probs.transpose(0, 1).float(), flat, lengths.cpu(),
                                  target_lengths, blank=0, zero_infinity=True)
