"""ASR (SUPERB): [SpecAugment] + projection + 2-layer BiLSTM + CTC over characters, greedy
decoding, WER on LibriSpeech (train-clean-100 / dev-clean / test-clean, or the embedded
train/dev/test)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tera.corpora import librispeech
from tera.downstream.ctc import CtcTask
from tera.downstream.specaugment import SpecAugment, build_specaugment


class BiLstmCtcHead(nn.Module):
    """[SpecAugment ->] projection -> BiLSTM layers -> linear, log-softmax.

    `dropout_after_each_layer` places dropout as s3prl's RNNs module does (after every layer,
    the last included, after the optional layer norm and before the optional tanh
    projection); otherwise it sits between layers, as in `nn.LSTM`."""

    def __init__(self, dim: int, vocab: int, project: int, hidden: int, layers: int,
                 dropout: float, *, dropout_after_each_layer: bool = False,
                 layer_norm: bool = False, proj: bool = False,
                 specaugment: SpecAugment | None = None) -> None:
        super().__init__()
        self.specaugment = specaugment
        self.project = nn.Linear(dim, project)
        self.lstm = nn.LSTM(project, hidden, num_layers=layers, bidirectional=True,
                            batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.dropout_after_each_layer, self.dropout = dropout_after_each_layer, dropout
        if layer_norm:
            self.layer_norms = nn.ModuleList(nn.LayerNorm(2 * hidden) for _ in range(layers))
        if proj:
            self.projections = nn.ModuleList(nn.Linear(2 * hidden, 2 * hidden)
                                             for _ in range(layers))
        self.output = nn.Linear(2 * hidden, vocab)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x `[batch, frame, dim]`, lengths `[batch]` -> log-probabilities `[batch, frame,
        vocab]` (padding frames: don't care)."""
        if self.specaugment is not None:
            x = self.specaugment(x, lengths)
        flip = Reversal(lengths.to(x.device), x.size(1))
        x = self.project(x)
        for layer in range(self.lstm.num_layers):
            if layer > 0 and not self.dropout_after_each_layer:
                x = F.dropout(x, self.lstm.dropout, self.lstm.training)
            x = lstm_layer(self.lstm, layer, x, flip)
            if self.dropout_after_each_layer:
                x = self._after_layer(layer, x)
        return self.output(x).log_softmax(-1)

    def _after_layer(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "layer_norms"):
            x = self.layer_norms[layer](x)
        x = F.dropout(x, self.dropout, self.training)
        if hasattr(self, "projections"):
            x = torch.tanh(self.projections[layer](x))
        return x


class Reversal:
    """Reverses each utterance's valid frames of `[batch, frame, ...]` in place (padding
    stays at the end): what the backward direction of a packed BiLSTM sees."""

    def __init__(self, lengths: torch.Tensor, frames: int) -> None:
        steps = torch.arange(frames, device=lengths.device)
        inside = steps < lengths[:, None]
        self.index = torch.where(inside, lengths[:, None] - 1 - steps, steps).unsqueeze(-1)

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        return y.gather(1, self.index.expand_as(y))


def bidirectional_lstm(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """`lstm` (bidirectional, batch first) over padded `x` `[batch, frame, dim]`, each
    utterance as if alone: what a packed sequence gives, without packing. The backward
    direction runs forward in time over each utterance's frames reversed in place (padding
    stays at the end), so padding never reaches a valid frame. Packed sequences take
    PyTorch's generic CPU path, whose backward re-fills a full-size gradient buffer at every
    time step; unpacked runs take oneDNN's kernels, several times faster."""
    flip = Reversal(lengths.to(x.device), x.size(1))
    for layer in range(lstm.num_layers):
        if layer > 0:
            x = F.dropout(x, lstm.dropout, lstm.training)
        x = lstm_layer(lstm, layer, x, flip)
    return x


def lstm_layer(lstm: nn.LSTM, layer: int, x: torch.Tensor, flip: Reversal) -> torch.Tensor:
    """Layer `layer` of bidirectional `lstm` over `x` `[batch, frame, dim]` (see
    `bidirectional_lstm`) -> `[batch, frame, 2 * hidden]`."""
    zeros = x.new_zeros(1, x.size(0), lstm.hidden_size)
    directions = []
    for suffix, inputs in (("", x), ("_reverse", flip(x))):
        weights = [getattr(lstm, f"{name}_l{layer}{suffix}")
                   for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        out, _, _ = torch.lstm(inputs, (zeros, zeros), weights, True, 1, 0.0,
                               lstm.training, False, True)
        directions.append(out if suffix == "" else flip(out))
    return torch.cat(directions, -1)


# s3prl's `asr/char.dict` (a fairseq dictionary): its 28 symbols in the file's order (most
# frequent first; `|` ends every word), after fairseq's four specials: 32 outputs. The CTC
# blank is `<s>` (index 0); targets end with `</s>`.
FAIRSEQ_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
CHAR_DICT = tuple("| E T A O N I H S R D L U M C W F G Y P B V K ' X J Q Z".split())
WORD_END, END, UNKNOWN = "|", "</s>", "<unk>"


class AsrTask(CtcTask):
    """`datarc.vocabulary`: `char.dict` (s3prl's dictionary and target form) or `learned`
    (the characters of the training transcripts, space included, after a blank)."""

    name, metric, header, best_name = "asr", "wer", "ASR WER %", "dev-clean-best.ckpt"
    corpus_part = "librispeech"
    seconds_per_step = 0.074
    s3prl_vocabulary, s3prl_labels = "char.dict", (*FAIRSEQ_SPECIALS, *CHAR_DICT)
    unknown, end = UNKNOWN, END

    def examples(self, split: str):
        return librispeech.load_split(self.root, split)

    def learned_inventory(self, train):
        return librispeech.characters(train)

    def transcript(self, utt):
        return utt.text

    def symbols(self, transcript):
        if not self.uses_s3prl_vocabulary:
            return list(transcript)
        return [*WORD_END.join(transcript.upper().split()), WORD_END]

    def tokens(self, transcript):
        return transcript.split()

    def hypothesis(self, symbols):
        spaces = WORD_END if self.uses_s3prl_vocabulary else " "
        return "".join(symbols).replace(spaces, " ").split()

    def build_head(self, dim: int) -> nn.Module:
        m = self.cfg["modelrc"]
        return BiLstmCtcHead(dim, len(self.labels), m["project_dim"], m["hidden_size"],
                             m["num_layers"], m["dropout"],
                             dropout_after_each_layer=m.get("dropout_after_each_layer", False),
                             layer_norm=m.get("layer_norm", False), proj=m.get("proj", False),
                             specaugment=build_specaugment(self.cfg.get("specaug")))
