"""ASV (SUPERB): speaker embeddings trained with AM-softmax over the training speakers;
trials scored by the cosine of L2-normalised embeddings (each utterance embedded once); EER.

Real data, as s3prl's `sv_voxceleb1` recipe (`configs/amsoftmax.yaml`): every utterance of
the 1,211 speakers outside the test list, after sox `gain -3` and silence removal, those
under 2 s dropped; random 8 s training crops, batches of 10 x accumulation 5, AdamW 1e-4;
`Linear(D, 512)`, five TDNNs without batch norm or padding, statistics pooling, an
utterance extractor whose first layer gives the test embedding; no dev set: the number
reported is s3prl's, the best test EER of the checkpoints saved at 20k-step multiples
(`test_expdir.sh`), with the last checkpoint's (no selection) beside it.

The embedded profile keeps a compact x-vector (padded convolutions, batch norm) and
chooses its checkpoint on held-out dev trials (`veri_dev.txt`).
"""

from __future__ import annotations

import torch
from torch import nn

from tera.corpora import Utterance, voxceleb1
from tera.corpora.lengths import processed_samples
from tera.downstream.base import Scored, Task, am_softmax, max_timestep_crops
from tera.downstream.bootstrap import Items
from tera.downstream.embedded_heads import XVector


class TdnnLayer(nn.Module):
    """A frame-context affine layer: `Linear(in x context, out)` over the frames
    t, t + dilation, ..., t + (context - 1) x dilation (no padding: the output is
    (context - 1) x dilation frames shorter), then ReLU. s3prl unfolds the frames; the same
    weight, read as a convolution kernel `[out, in, context]`, does it in one call."""

    def __init__(self, dim_in: int, dim_out: int, context: int, dilation: int) -> None:
        super().__init__()
        self.context, self.dilation, self.dim_in = context, dilation, dim_in
        self.kernel = nn.Linear(dim_in * context, dim_out)

    @property
    def shrink(self) -> int:
        """How many frames shorter the output is than the input."""
        return (self.context - 1) * self.dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[batch, frame, in]` -> `[batch, frame - shrink, out]`."""
        weight = self.kernel.weight.view(-1, self.context, self.dim_in).transpose(1, 2)
        y = nn.functional.conv1d(x.transpose(1, 2), weight, self.kernel.bias,
                                 dilation=self.dilation)
        return torch.relu(y.transpose(1, 2))


class SuperbXVector(nn.Module):
    """s3prl's ASV model: connector `Linear(D, 512)` -> TDNNs (512 x 5, 512 x 3 dilation 2,
    512 x 3 dilation 3, 512, 1500) -> mean and unbiased std over the valid frames ->
    `Linear(3000, 512)` -> ReLU -> `Linear(512, 512)` -> ReLU; AM-softmax over the speakers
    (`classifier`, `[512, speakers]`). The test embedding is the first extractor layer's."""

    def __init__(self, dim: int, speakers: int, width: int = 512, pooled: int = 1500,
                 margin: float = 0.4, scale: float = 30.0) -> None:
        super().__init__()
        self.connector = nn.Linear(dim, width)
        shapes = [(width, 5, 1), (width, 3, 2), (width, 3, 3), (width, 1, 1), (pooled, 1, 1)]
        layers, dim_in = [], width
        for dim_out, context, dilation in shapes:
            layers.append(TdnnLayer(dim_in, dim_out, context, dilation))
            dim_in = dim_out
        self.tdnn = nn.Sequential(*layers)
        self.extractor1 = nn.Linear(2 * pooled, width)
        self.extractor2 = nn.Linear(width, width)
        self.classifier = nn.Parameter(nn.init.xavier_normal_(torch.empty(width, speakers)))
        self.margin, self.scale = margin, scale

    def _pooled(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        shrink = sum(layer.shrink for layer in self.tdnn)
        if x.size(1) <= shrink:  # too short for the frame context: repeat the last frame
            x = torch.cat([x, x[:, -1:].expand(-1, shrink + 1 - x.size(1), -1)], dim=1)
        h = self.tdnn(self.connector(x))
        valid_frames = (lengths - shrink).clamp(min=1)
        valid = (torch.arange(h.size(1), device=h.device) < valid_frames.unsqueeze(1))
        valid = valid.unsqueeze(-1)
        count = valid_frames.view(-1, 1).to(h.dtype)
        mean = (h * valid).sum(1) / count
        var = (((h - mean.unsqueeze(1)) * valid) ** 2).sum(1) / (count - 1).clamp(min=1)
        return torch.cat([mean, var.sqrt()], dim=1)

    def embedding(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The test embedding `[batch, 512]`."""
        return torch.relu(self.extractor1(self._pooled(x, lengths)))

    def am_softmax_loss(self, x: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor
                        ) -> torch.Tensor:
        """AM-softmax over the training speakers (`labels`: their indices `[batch]`) of the
        extractor's second layer."""
        trained = torch.relu(self.extractor2(self.embedding(x, lengths)))
        cosine = nn.functional.normalize(trained) @ nn.functional.normalize(self.classifier,
                                                                            dim=0)
        return am_softmax(cosine, labels, self.margin, self.scale)


class AsvTask(Task):
    """Speaker verification: an embedding per utterance, the cosine score of each trial of
    two utterances, the EER over the trial list."""

    name, metric, header = "asv", "eer", "ASV EER %"
    aliases = ("sv_voxceleb1",)
    corpus_part = "voxceleb1"
    seconds_per_step = 0.051
    dev_fraction = 0.1

    def __init__(self, root, cfg) -> None:
        super().__init__(root, cfg)
        self.trials: dict[str, list[tuple[int, Utterance, Utterance]]] = {}
        datarc = cfg.get("datarc", {})
        # "veri_dev.txt" (a trial list), "held_out" (10 % of the training speakers) or None
        self.dev_trials = datarc.get("dev_trials", "veri_dev.txt")
        if self.dev_trials is None:
            self.dev_split = None

    def _effects(self, utts: list[Utterance]) -> list[Utterance]:
        datarc = self.cfg["datarc"]
        gain, trim = float(datarc.get("gain_db", 0.0)), bool(datarc.get("trim_silence"))
        if not gain and not trim:
            return utts
        return [voxceleb1.with_effects(u, gain, trim) for u in utts]

    def _training_utterances(self) -> list[Utterance]:
        utts = self._effects(voxceleb1.load_verification_train(self.root))
        min_samples = int(self.cfg["datarc"].get("min_samples", 0))
        if min_samples:  # s3prl's vad_config.min_sec: lengths after the effects
            lengths = processed_samples(utts).tolist()
            utts = [u for u, n in zip(utts, lengths) if n > min_samples]
        return utts

    def _held_out_split(self) -> tuple[list[Utterance], list[Utterance]]:
        """(training utterances, dev utterances): `held_out` dev speakers."""
        utts = self._training_utterances()
        speakers = sorted({u.speaker for u in utts})
        dev = set(speakers[: max(2, int(len(speakers) * self.dev_fraction))])
        return ([u for u in utts if u.speaker not in dev], [u for u in utts if u.speaker in dev])

    def examples(self, split: str) -> list[Utterance]:
        held_out = self.dev_trials == "held_out"
        if split == "train":
            return self._held_out_split()[0] if held_out else self._training_utterances()
        if split == "dev":
            if self.dev_trials is None:
                raise ValueError("this ASV recipe has no dev trials (dev_trials: null)")
            trials = (voxceleb1.make_trials(self._held_out_split()[1], 2000, seed=0)
                      if held_out else voxceleb1.load_trials(self.root, self.dev_trials))
        else:
            trials = voxceleb1.load_trials(self.root, self.cfg["datarc"]["trial_list"])
        self.trials[split] = trials
        unique = {u.id: u for _, a, b in trials for u in (a, b)}
        return self._effects([unique[k] for k in sorted(unique)])

    def epoch(self, train, seed):
        return max_timestep_crops(train, self.cfg["datarc"], seed)

    def prepare(self, train) -> None:
        self.labels = sorted({u.speaker for u in train})

    def build_head(self, dim):
        m = self.cfg["modelrc"]
        if m.get("architecture", "superb") == "compact":
            return XVector(dim, m["channels"], m["embedding_size"], len(self.labels),
                           m["margin"], m["scale"])
        return SuperbXVector(dim, len(self.labels), m["channels"], m["pooled_channels"],
                             m["margin"], m["scale"])

    def loss(self, head, x, lengths, utts):
        index = {s: i for i, s in enumerate(self.labels)}
        labels = torch.tensor([index[u.speaker] for u in utts], device=x.device)
        return head.am_softmax_loss(x, lengths, labels)

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
