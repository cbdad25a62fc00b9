"""Transcription tasks (ASR, PR): a frame-level head trained with CTC over an output
inventory, greedy decoding, and the error rate over reference tokens (words, phones).

The inventory (`datarc.vocabulary`) is s3prl's or learned. s3prl's fixed list starts with
its specials: index 0 is the CTC blank, a symbol outside the list is its unknown, and every
target ends with its end symbol, which decoding drops. A learned inventory is the training
transcripts' symbols after a blank; symbols outside it are left out of the targets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tera.corpora import Utterance
from tera.downstream.base import Scored, Task
from tera.downstream.bootstrap import Items
from tera.downstream.buckets import utterance_batches
from tera.downstream.metrics import token_errors

BLANK = "<blank>"  # the learned inventory's CTC blank


class CtcTask(Task):
    """A task whose utterances carry a transcript; its head gives log-probabilities
    `[batch, frame, len(labels)]`. A subclass names s3prl's inventory and fills in
    `transcript` and `learned_inventory`; by default a transcript's symbols are its tokens
    (phones), and a task whose symbols are not (ASR: characters, tokens words) overrides
    `symbols`, `tokens` and `hypothesis`."""

    s3prl_vocabulary = ""  # the `datarc.vocabulary` value that selects s3prl's inventory
    s3prl_labels: tuple[str, ...] = ()  # s3prl's inventory, its specials first
    unknown, end = "", ""  # s3prl's unknown and end symbols

    @property
    def uses_s3prl_vocabulary(self) -> bool:
        """Whether `datarc.vocabulary` asks for s3prl's inventory (else a learned one)."""
        return self.cfg.get("datarc", {}).get("vocabulary", "learned") == self.s3prl_vocabulary

    def learned_inventory(self, train: list[Utterance]) -> list[str]:
        """The symbols of the training transcripts, sorted."""
        raise NotImplementedError

    def transcript(self, utt: Utterance) -> Sequence[str]:
        """`utt`'s transcript (`Utterance.text`, `Utterance.phones`)."""
        raise NotImplementedError

    def symbols(self, transcript: Sequence[str]) -> list[str]:
        """A transcript as output symbols, before they are looked up."""
        return list(transcript)

    def tokens(self, transcript: Sequence[str]) -> list[str]:
        """The tokens of a reference transcript that the error rate counts (words, phones)."""
        return list(transcript)

    def hypothesis(self, symbols: list[str]) -> list[str]:
        """The decoded output symbols (end symbols dropped) as tokens like `tokens`'."""
        return symbols

    def prepare(self, train):
        self.labels = list(self.s3prl_labels) if self.uses_s3prl_vocabulary else [
            BLANK, *self.learned_inventory(train)]

    def batches(self, sizes, shuffle, seed):
        # evaluation keeps the runner's batches: the head's output does not depend on them
        return utterance_batches(sizes, self.cfg.get("datarc", {}), shuffle, seed) \
            if shuffle else None

    def targets(self, transcript: Sequence[str]) -> list[int]:
        """The CTC target of a transcript."""
        index = {symbol: i for i, symbol in enumerate(self.labels)}
        symbols = self.symbols(transcript)
        if not self.uses_s3prl_vocabulary:
            return [index[s] for s in symbols if s in index]
        return [index.get(s, index[self.unknown]) for s in symbols] + [index[self.end]]

    def loss(self, head, x, lengths, utts):
        return ctc_loss(head(x, lengths), lengths,
                        [self.targets(self.transcript(u)) for u in utts])

    def predict(self, head, x, lengths):
        return [self.hypothesis([self.labels[t] for t in seq if self.labels[t] != self.end])
                for seq in greedy_ctc(head(x, lengths), lengths)]

    def score(self, utts, predictions, split):  # noqa: ARG002
        references = [self.tokens(self.transcript(u)) for u in utts]
        lines = [f"{u.id}\tREF: {' '.join(r)}\tHYP: {' '.join(h)}"
                 for u, r, h in zip(utts, references, predictions)]
        items = Items("error_rate", {
            "id": [u.id for u in utts],
            "errors": [token_errors(r, h) for r, h in zip(references, predictions,
                                                          strict=True)],
            "length": [len(r) for r in references]})
        return Scored(items.value(), lines, items)


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


def ctc_loss(log_probs: torch.Tensor, lengths: torch.Tensor, targets: Sequence[list[int]]
             ) -> torch.Tensor:
    """CTC loss (blank 0, mean over the batch of each loss / its target length) of
    log-probabilities `[batch, frame, vocab]` with `lengths` valid frames; an impossible
    alignment counts zero."""
    flat = torch.tensor([t for seq in targets for t in seq], dtype=torch.long)
    target_lengths = torch.tensor([len(seq) for seq in targets], dtype=torch.long)
    return nn.functional.ctc_loss(log_probs.transpose(0, 1).float(), flat, lengths.cpu(),
                                  target_lengths, blank=0, zero_infinity=True)
