"""PR (SUPERB): a linear head + CTC over phones, PER by edit distance over phone tokens."""

from __future__ import annotations

from torch import nn

from tera.corpora import librispeech
from tera.downstream.base import Scored, Task, ctc_loss, greedy_ctc
from tera.downstream.bootstrap import Items
from tera.downstream.metrics import phone_errors


class LinearCtcHead(nn.Module):
    def __init__(self, dim: int, vocab: int) -> None:
        super().__init__()
        self.output = nn.Linear(dim, vocab)

    def forward(self, x, lengths):  # noqa: ARG002 - same signature as the other CTC head
        return self.output(x).log_softmax(-1)


class PrTask(Task):
    name, metric = "pr", "per"

    def examples(self, split):
        return librispeech.load_split(self.root, split, with_phones=True)

    def prepare(self, train) -> None:
        self.labels = ["<blank>"] + librispeech.phone_inventory(train)

    def build_head(self, dim):
        return LinearCtcHead(dim, len(self.labels))

    def loss(self, head, x, lengths, utts):
        index = {p: i for i, p in enumerate(self.labels)}
        targets = [[index[p] for p in u.phones if p in index] for u in utts]
        return ctc_loss(head(x, lengths), lengths, targets)

    def predict(self, head, x, lengths):
        return [[self.labels[t] for t in seq] for seq in greedy_ctc(head(x, lengths), lengths)]

    def score(self, utts, predictions, split):  # noqa: ARG002
        lines = [f"{u.id}\tREF: {' '.join(u.phones)}\tHYP: {' '.join(h)}"
                 for u, h in zip(utts, predictions)]
        items = Items("error_rate", {
            "id": [u.id for u in utts],
            "errors": [phone_errors(list(u.phones), h)
                       for u, h in zip(utts, predictions, strict=True)],
            "length": [len(u.phones) for u in utts]})
        return Scored(items.value(), lines, items)
