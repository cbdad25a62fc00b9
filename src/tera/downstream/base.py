"""What a downstream task provides to the runner (`Task`): its data, its head, its loss and
its metric. Each task is one small module (asr, pr, ks, sid, asv) with one such class; the
classification tasks share `ClassificationTask`, the CTC tasks `CtcTask`."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import replace
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
    """One downstream task: the one extension point of the downstream runner.

    A task is a subclass that sets the class attributes below and fills in the hooks; adding
    it to `tera.downstream.tasks.TASK_CLASSES` makes it a `tera downstream -d` choice and a
    column of the study's report. The runner owns everything else: the frozen upstream, the
    featurizer (the weighted sum of its layers), batching, the optimizer, checkpoints and
    the choice of the best one. An instance lives for one run, built from the corpus folder
    `root` and the recipe's `downstream_expert` section `cfg`.

    The runner calls the hooks in this order: `examples` for the training split; on a fresh
    run `prepare` (else `load_state` from the checkpoint), then `build_head`; per epoch
    `epoch`, then `batches`, and per batch `loss`; to score a split (dev at every
    `runner.eval_step`, test at the end) `examples` and `evaluate`, which calls `predict`
    per batch and `score` once.
    """

    name = ""  # on the command line (`-d`), in results.json and in the report
    aliases: tuple[str, ...] = ()  # s3prl's names for the same task, accepted by `-d`
    metric = ""  # results.json's `metric`: wer, per, accuracy or eer
    header = ""  # the report's column header
    higher_is_better = False  # the metric's direction: which dev value is the best
    corpus_part = ""  # the task's folder inside the embedded corpus
    # Rough seconds per training step on the embedded corpus beside another job on a 2-core
    # CPU (one thread each); only the ratios between tasks matter to the study's ETA.
    seconds_per_step = 0.05
    best_name = "dev-best.ckpt"  # the checkpoint the best dev score is saved as
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
        """The utterances of `split` (one of the split names above), in a fixed order. Called
        for the training split once per run and for an evaluated split each time it is
        scored."""
        raise NotImplementedError

    def epoch(self, train: list[Utterance], seed: int) -> list[Utterance]:
        """The training utterances of one epoch, drawn with `seed`: as they are by default;
        a task may resample them (KS's class balance) or give them random crops (SID, ASV)."""
        return train

    def batches(self, sizes: list[int], shuffle: bool, seed: int) -> list[list[int]] | None:
        """The task's own batching of utterances of `sizes` samples (index lists), or None
        for the runner's (`runner.batch_size` utterances, else `runner.batch_samples`).
        `shuffle` is true for training batches, false for evaluation."""
        return None

    def prepare(self, train: list[Utterance]) -> None:
        """Learn the output inventory (`self.labels`) from the training set, once, before
        the head is built on a fresh run."""

    def state(self) -> dict:
        """What `prepare` learned, saved in checkpoints so evaluation needs no training data."""
        return {"labels": self.labels}

    def load_state(self, state: dict) -> None:
        """Take back what `state` saved, instead of `prepare`, when a checkpoint is loaded."""
        self.labels = list(state["labels"])

    def build_head(self, dim: int) -> nn.Module:
        """The trainable head over the featurizer's `[batch, frame, dim]` output; the
        optimizer trains its parameters with the featurizer's."""
        raise NotImplementedError

    def loss(self, head: nn.Module, x: torch.Tensor, lengths: torch.Tensor,
             utts: list[Utterance]) -> torch.Tensor:
        """The training loss of one batch (a scalar, averaged over the batch): features `x`
        `[batch, frame, dim]`, valid frames `lengths` `[batch]`, the batch's utterances."""
        raise NotImplementedError

    def predict(self, head: nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> list:
        """One prediction per utterance of an evaluation batch (no gradients, eval mode)."""
        raise NotImplementedError

    def score(self, utts: list[Utterance], predictions: list, split: str) -> Scored:
        """The metric of a whole split from every utterance's prediction, with the lines of
        its predictions file and its per-item statistics."""
        raise NotImplementedError

    def evaluate(self, head: nn.Module, forward: Forward, batches: Iterator[list[Utterance]],
                 split: str) -> Scored:
        """Score `split`: `predict` each batch of features (`forward` gives them), then
        `score` them all."""
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


def with_crops(utts: list[Utterance], max_samples: int, seed: int) -> list[Utterance]:
    """Each utterance asking for a random window of at most `max_samples` (s3prl's
    `max_timestep`), its offset drawn from `seed` and its position."""
    base = random.Random(seed).getrandbits(48)
    return [replace(u, crop=(max_samples, base + i)) for i, u in enumerate(utts)]


def max_timestep_crops(utts: list[Utterance], datarc: dict, seed: int) -> list[Utterance]:
    """`with_crops` of at most `datarc.max_timestep` samples where the recipe sets it, else
    the whole utterances."""
    max_samples = datarc.get("max_timestep")
    return with_crops(utts, int(max_samples), seed) if max_samples else utts


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters (what results.json reports as `head_parameters`)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def am_softmax(cosine: torch.Tensor, labels: torch.Tensor, margin: float, scale: float
               ) -> torch.Tensor:
    """Additive-margin softmax: cross-entropy of scale x (cosine - margin on the target)."""
    target_margin = nn.functional.one_hot(labels, cosine.size(1)) * margin
    return nn.functional.cross_entropy(scale * (cosine - target_margin), labels)
