"""KS (SUPERB): Speech Commands v0.01, 12 classes (10 words, `_unknown_`, `_silence_`),
accuracy on the separate test release.

Real data, as s3prl's `speech_commands` recipe: train / dev split by the hash of the speaker
(10 % dev, 10 % dropped), `_silence_` as a fresh random 1 s crop of a background-noise file
at every draw, sox `gain -3` on every clip, class-balanced sampling, batches of 32, the
linear probe. The embedded profile keeps its lists, fixed silence cuts and an MLP head.
"""

from __future__ import annotations

import random

from torch import nn

from tera.corpora import speech_commands
from tera.downstream.base import with_crops
from tera.downstream.classification import ClassificationTask, LinearProbe
from tera.downstream.embedded_heads import PooledMlpHead


class KsTask(ClassificationTask):
    """Keyword spotting: the class of each 1 s clip, a fixed inventory (`CLASSES`)."""

    name, header = "ks", "KS Acc %"
    aliases = ("speech_commands",)
    corpus_part = "speech_commands"
    seconds_per_step = 0.0015
    train_split, dev_split, test_split = "train", "valid", "test"

    def __init__(self, root, cfg) -> None:
        super().__init__(root, cfg)
        self.labels = list(speech_commands.CLASSES)

    def examples(self, split):
        datarc = self.cfg["datarc"]
        return speech_commands.load_split(
            self.root, split, split_rule=datarc.get("split", "lists"),
            test_release=datarc.get("test_release", "required"),
            gain_db=float(datarc.get("gain_db", 0.0)))

    def epoch(self, train, seed):
        drawn = class_balanced(train, seed)
        noise = [i for i, u in enumerate(drawn) if u.num_samples is None
                 and u.label == speech_commands.SILENCE]
        if noise:  # whole noise recordings: a fresh 1 s crop at every draw
            cropped = with_crops([drawn[i] for i in noise], speech_commands.SEGMENT, seed)
            for i, utt in zip(noise, cropped):
                drawn[i] = utt
        return drawn

    def build_head(self, dim) -> nn.Module:
        m = self.cfg["modelrc"]
        if m.get("probe", "linear") == "mlp":
            # the recipes of saved MLP checkpoints name the width hidden_size
            return PooledMlpHead(dim, m.get("projector_dim", m.get("hidden_size")),
                                 len(self.labels))
        return LinearProbe(dim, m["projector_dim"], len(self.labels))

    def load_state(self, state: dict) -> None:
        self.labels = list(state.get("labels") or speech_commands.CLASSES)


def class_balanced(utts: list, seed: int) -> list:
    """Resample with replacement so that every class is drawn equally often (s3prl's
    WeightedRandomSampler with weights 1 / class count), as many items as there are."""
    rng = random.Random(seed)
    by_label: dict[str, list] = {}
    for utt in utts:
        by_label.setdefault(utt.label or "", []).append(utt)
    labels = sorted(by_label)
    return [rng.choice(by_label[rng.choice(labels)]) for _ in range(len(utts))]
