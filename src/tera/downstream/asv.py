"""ASV (SUPERB): an x-vector TDNN with statistics pooling, trained with AM-softmax over the
training speakers; trials scored by the cosine of L2-normalised embeddings (each utterance
embedded once); EER.

Checkpoints are chosen on held-out dev trials (`veri_dev.txt`, or trials made from 10 % of
the training speakers, held out), never on the test list. The runner also reports s3prl's
protocol, the best test EER over all saved checkpoints, labelled as such.
"""

from __future__ import annotations

import torch
from torch import nn

from tera.corpora import Utterance, voxceleb1
from tera.downstream.base import Scored, Task
from tera.downstream.bootstrap import Items


class XVector(nn.Module):
    """TDNN (context 5/3/3/1/1 frames, dilations 1/2/3/1/1) -> mean+std pooling over valid
    frames -> embedding; `classifier` holds the AM-softmax class vectors."""

    def __init__(self, dim: int, channels: int, embedding: int, classes: int,
                 margin: float, scale: float) -> None:
        super().__init__()
        layers = []
        shapes = [(dim, channels, 5, 1), (channels, channels, 3, 2), (channels, channels, 3, 3),
                  (channels, channels, 1, 1), (channels, 3 * channels, 1, 1)]
        for c_in, c_out, kernel, dilation in shapes:
            layers += [nn.Conv1d(c_in, c_out, kernel, dilation=dilation,
                                 padding=dilation * (kernel - 1) // 2),
                       nn.ReLU(), nn.BatchNorm1d(c_out)]
        self.tdnn = nn.Sequential(*layers)
        self.embed = nn.Linear(6 * channels, embedding)
        self.classifier = nn.Parameter(torch.randn(classes, embedding) * 0.01)
        self.margin, self.scale = margin, scale

    def embedding(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        h = self.tdnn(x.transpose(1, 2))  # [B, C, T]
        valid = (torch.arange(h.size(2), device=h.device) < lengths.unsqueeze(1)).unsqueeze(1)
        count = lengths.clamp(min=1).view(-1, 1).to(h.dtype)
        mean = (h * valid).sum(2) / count
        var = (((h - mean.unsqueeze(2)) * valid) ** 2).sum(2) / count
        return self.embed(torch.cat([mean, var.clamp(min=1e-6).sqrt()], dim=1))

    def am_softmax_loss(self, embedding: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = nn.functional.normalize(embedding) @ nn.functional.normalize(self.classifier).T
        margin = nn.functional.one_hot(labels, cosine.size(1)) * self.margin
        return nn.functional.cross_entropy(self.scale * (cosine - margin), labels)


class AsvTask(Task):
    name, metric = "asv", "eer"
    dev_fraction = 0.1

    def __init__(self, root, cfg) -> None:
        super().__init__(root, cfg)
        self.trials: dict[str, list[tuple[int, Utterance, Utterance]]] = {}

    def _held_out_split(self) -> tuple[list[Utterance], list[Utterance]]:
        """(training utterances, dev utterances) when the corpus has no dev trial list."""
        utts = voxceleb1.load_verification_train(self.root)
        speakers = sorted({u.speaker for u in utts})
        dev = set(speakers[: max(2, int(len(speakers) * self.dev_fraction))])
        return ([u for u in utts if u.speaker not in dev], [u for u in utts if u.speaker in dev])

    def examples(self, split: str) -> list[Utterance]:
        has_dev_list = (self.root / "veri_dev.txt").is_file()
        if split == "train":
            return (voxceleb1.load_verification_train(self.root) if has_dev_list
                    else self._held_out_split()[0])
        if split == "dev":
            trials = (voxceleb1.load_trials(self.root, "veri_dev.txt") if has_dev_list
                      else voxceleb1.make_trials(self._held_out_split()[1], 2000, seed=0))
        else:
            trials = voxceleb1.load_trials(self.root, self.cfg["datarc"]["trial_list"])
        self.trials[split] = trials
        unique = {u.id: u for _, a, b in trials for u in (a, b)}
        return [unique[k] for k in sorted(unique)]

    def prepare(self, train) -> None:
        self.labels = sorted({u.speaker for u in train})

    def build_head(self, dim):
        m = self.cfg["modelrc"]
        return XVector(dim, m["channels"], m["embedding_size"], len(self.labels),
                       m["margin"], m["scale"])

    def loss(self, head, x, lengths, utts):
        labels = torch.tensor([self.labels.index(u.speaker) for u in utts], device=x.device)
        return head.am_softmax_loss(head.embedding(x, lengths), labels)

    def predict(self, head, x, lengths):
        return list(nn.functional.normalize(head.embedding(x, lengths)).cpu())

    def score(self, utts, predictions, split):
        embedding = {u.id: e for u, e in zip(utts, predictions)}
        trials = self.trials[split]
        scores = [float(embedding[enrol.id] @ embedding[test.id]) for _, enrol, test in trials]
        lines = [f"{score:.6f}\t{label}\t{enrol.id}\t{test.id}"
                 for score, (label, enrol, test) in zip(scores, trials)]
        items = Items("eer", {
            "enrol": [e.id for _, e, _ in trials], "test": [t.id for _, _, t in trials],
            "label": [label for label, _, _ in trials], "score": scores,
            "enrol_speaker": [e.speaker for _, e, _ in trials],
            "test_speaker": [t.speaker for _, _, t in trials]})
        return Scored(items.value(), lines, items)
