"""PR (SUPERB): a linear head (optionally after a linear projection) + CTC over phones, PER by
edit distance over phone tokens, on LibriSpeech with phone transcripts."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from tera.corpora import librispeech
from tera.corpora.phones import PHONEMES
from tera.downstream.ctc import CtcTask

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


class PrTask(CtcTask):
    """`datarc.vocabulary`: `phoneme.txt` (s3prl's stressed phone set after pad, eos and unk)
    or `learned` (the phones of the training transcripts after a blank)."""

    name, metric, header = "pr", "per", "PR PER %"
    aliases = ("ctc", "libriphone")
    corpus_part = "librispeech"
    seconds_per_step = 0.015
    s3prl_vocabulary, s3prl_labels = "phoneme.txt", (PAD, EOS, UNKNOWN, *PHONEMES)
    unknown, end = UNKNOWN, EOS

    def examples(self, split):
        # `datarc.lexicon`: lexicon files (s3prl's `corpus.lexicon`), else the one beside
        # the corpus
        lexicons = self.cfg.get("datarc", {}).get("lexicon")
        return librispeech.load_split(self.root, split, with_phones=True, lexicons=None
                                      if lexicons is None else [Path(p) for p in lexicons])

    def learned_inventory(self, train):
        return librispeech.phone_inventory(train)

    def transcript(self, utt):
        return utt.phones

    def build_head(self, dim):
        return LinearCtcHead(dim, len(self.labels), self.cfg.get("modelrc", {}).get(
            "project_dim"))
