"""ASR (SUPERB): projection + 2-layer BiLSTM + CTC over characters, greedy decoding, WER on
LibriSpeech (train-clean-100 / dev-clean / test-clean, or the embedded train/dev/test)."""

from __future__ import annotations

import torch
from torch import nn

from tera.corpora import librispeech
from tera.downstream.base import Task, ctc_loss, greedy_ctc
from tera.downstream.metrics import word_error_rate


class BiLstmCtcHead(nn.Module):
    def __init__(self, dim: int, vocab: int, project: int, hidden: int, layers: int,
                 dropout: float) -> None:
        super().__init__()
        self.project = nn.Linear(dim, project)
        self.lstm = nn.LSTM(project, hidden, num_layers=layers, bidirectional=True,
                            batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.output = nn.Linear(2 * hidden, vocab)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(self.project(x), lengths.cpu(),
                                                   batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
        return self.output(out).log_softmax(-1)


class AsrTask(Task):
    name, metric, best_name = "asr", "wer", "dev-clean-best.ckpt"

    def examples(self, split: str):
        return librispeech.load_split(self.root, split)

    def prepare(self, train) -> None:
        self.labels = ["<blank>"] + librispeech.characters(train)

    def build_head(self, dim: int) -> nn.Module:
        m = self.cfg["modelrc"]
        return BiLstmCtcHead(dim, len(self.labels), m["project_dim"], m["hidden_size"],
                             m["num_layers"], m["dropout"])

    def loss(self, head, x, lengths, utts):
        index = {c: i for i, c in enumerate(self.labels)}
        targets = [[index[c] for c in u.text if c in index] for u in utts]
        return ctc_loss(head(x, lengths), lengths, targets)

    def predict(self, head, x, lengths):
        decoded = greedy_ctc(head(x, lengths), lengths)
        return [" ".join("".join(self.labels[t] for t in seq).split()) for seq in decoded]

    def score(self, utts, predictions, split):  # noqa: ARG002
        references = [u.text for u in utts]
        lines = [f"{u.id}\tREF: {u.text}\tHYP: {h}" for u, h in zip(utts, predictions)]
        return word_error_rate(references, predictions), lines
