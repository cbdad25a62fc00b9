"""PR (SUPERB): a linear head (optionally after a linear projection) + CTC over phones, PER by
edit distance over phone tokens."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from tera.corpora import librispeech
from tera.corpora.phones import PHONEMES
from tera.downstream.base import Scored, Task, ctc_loss, greedy_ctc
from tera.downstream.bootstrap import Items
from tera.downstream.buckets import utterance_batches
from tera.downstream.metrics import phone_errors

# s3prl's text encoder puts these before the phones of `ctc/vocab/phoneme.txt`; `<pad>` is
# the CTC blank and every target ends with `<eos>`.
PAD, EOS, UNKNOWN = "<pad>", "<eos>", "<unk>"


class LinearCtcHead(nn.Module):
    """[`Linear(dim, project)` ->] `Linear(., vocab)`, log-softmax, frame by frame (s3prl's
    projector and `FrameLevel` model without hidden layers)."""

    def __init__(self, dim: int, vocab: int, project: int | None = None) -> None:
        super().__init__()
        if project:
            self.project = nn.Linear(dim, project)
        self.output = nn.Linear(project or dim, vocab)

    def forward(self, x, lengths):  # noqa: ARG002 - same signature as the other CTC head
        if hasattr(self, "project"):
            x = self.project(x)
        return self.output(x).log_softmax(-1)


class PrTask(Task):
    """`datarc.vocabulary`: `phoneme.txt` (s3prl's stressed phone set after pad, eos and unk)
    or `learned` (the phones of the training transcripts after a blank)."""

    name, metric = "pr", "per"

    def examples(self, split):
        # `datarc.lexicon`: lexicon files (s3prl's `corpus.lexicon`), else the one beside
        # the corpus
        lexicons = self.cfg.get("datarc", {}).get("lexicon")
        return librispeech.load_split(self.root, split, with_phones=True, lexicons=None
                                      if lexicons is None else [Path(p) for p in lexicons])

    @property
    def uses_phoneme_txt(self) -> bool:
        return self.cfg.get("datarc", {}).get("vocabulary", "learned") == "phoneme.txt"

    def prepare(self, train) -> None:
        if self.uses_phoneme_txt:
            self.labels = [PAD, EOS, UNKNOWN, *PHONEMES]
        else:
            self.labels = ["<blank>"] + librispeech.phone_inventory(train)

    def batches(self, sizes, shuffle, seed):
        # evaluation keeps the runner's batches: the head works frame by frame
        return utterance_batches(sizes, self.cfg.get("datarc", {}), shuffle, seed) \
            if shuffle else None

    def build_head(self, dim):
        return LinearCtcHead(dim, len(self.labels), self.cfg.get("modelrc", {}).get(
            "project_dim"))

    def targets(self, phones: tuple[str, ...]) -> list[int]:
        """The CTC target of a phone transcript."""
        index = {p: i for i, p in enumerate(self.labels)}
        if not self.uses_phoneme_txt:
            return [index[p] for p in phones if p in index]
        return [index.get(p, index[UNKNOWN]) for p in phones] + [index[EOS]]

    def loss(self, head, x, lengths, utts):
        return ctc_loss(head(x, lengths), lengths, [self.targets(u.phones) for u in utts])

    def predict(self, head, x, lengths):
        return [[self.labels[t] for t in seq if self.labels[t] != EOS]
                for seq in greedy_ctc(head(x, lengths), lengths)]

    def score(self, utts, predictions, split):  # noqa: ARG002
        lines = [f"{u.id}\tREF: {' '.join(u.phones)}\tHYP: {' '.join(h)}"
                 for u, h in zip(utts, predictions)]
        items = Items("error_rate", {
            "id": [u.id for u in utts],
            "errors": [phone_errors(list(u.phones), h)
                       for u, h in zip(utts, predictions, strict=True)],
            "length": [len(u.phones) for u in utts]})
        return Scored(items.value(), lines, items)
