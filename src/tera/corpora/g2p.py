"""Pronunciations of words outside every lexicon: the neural grapheme-to-phoneme model that
the `g2p_en` package ships (`checkpoint20.npz`, a GRU encoder-decoder trained on CMUdict),
run here with torch.

The package's own module is not imported: importing it calls `nltk.download` when NLTK's
tagger data is missing, and nothing may download at run time. Only its weights are read,
found through the package's location, and decoded greedily as the package does: characters
in, stressed ARPAbet out.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import torch

from tera.corpora.phones import PHONEMES
from tera.errors import UserError

# The model's input and output symbols, in the order of its embedding tables.
GRAPHEMES = ("<pad>", "<unk>", "</s>", *"abcdefghijklmnopqrstuvwxyz")
_UW0 = PHONEMES.index("UW0")  # the model also has an unstressed "UW" before it
OUTPUTS = ("<pad>", "<unk>", "<s>", "</s>", *PHONEMES[2:_UW0], "UW", *PHONEMES[_UW0:])
START, END = OUTPUTS.index("<s>"), OUTPUTS.index("</s>")
MAX_PHONES = 20  # the package's decoding limit


class G2p(torch.nn.Module):
    """g2p_en's encoder-decoder: character embeddings -> GRU; from its last state a GRU
    decoder emits phones until `</s>`."""

    def __init__(self, weights: dict[str, np.ndarray]) -> None:
        super().__init__()
        hidden = weights["enc_w_hh"].shape[1]
        self.encoder_embedding = torch.nn.Embedding.from_pretrained(
            torch.from_numpy(weights["enc_emb"]))
        self.decoder_embedding = torch.nn.Embedding.from_pretrained(
            torch.from_numpy(weights["dec_emb"]))
        self.encoder = _gru_cell(weights, "enc", hidden)
        self.decoder = _gru_cell(weights, "dec", hidden)
        self.output = torch.nn.Linear(hidden, len(OUTPUTS))
        self.output.weight.data = torch.from_numpy(weights["fc_w"])
        self.output.bias.data = torch.from_numpy(weights["fc_b"])
        # only phones PR can use (and the end) may be emitted
        allowed = torch.zeros(len(OUTPUTS), dtype=torch.bool)
        allowed[[OUTPUTS.index(p) for p in PHONEMES[2:]] + [END]] = True
        self.register_buffer("forbidden", ~allowed)

    @torch.no_grad()
    def forward(self, word: str) -> list[str]:
        """The stressed ARPAbet phones of `word` (letters outside a-z read as unknown), at
        most `MAX_PHONES`, greedily decoded."""
        characters = [GRAPHEMES.index(c) if c in GRAPHEMES[3:] else GRAPHEMES.index("<unk>")
                      for c in word.lower()] + [GRAPHEMES.index("</s>")]
        state = torch.zeros(1, self.encoder.hidden_size)
        for embedded in self.encoder_embedding(torch.tensor(characters)):
            state = self.encoder(embedded[None], state)
        phones, previous = [], START
        for _ in range(MAX_PHONES):
            state = self.decoder(self.decoder_embedding(torch.tensor([previous])), state)
            previous = int(self.output(state)[0].masked_fill(self.forbidden, -torch.inf)
                           .argmax())
            if previous == END:
                break
            phones.append(OUTPUTS[previous])
        return phones


def _gru_cell(weights: dict[str, np.ndarray], prefix: str, hidden: int) -> torch.nn.GRUCell:
    """A GRU cell with the checkpoint's weights (gates in torch's order: reset, update,
    new)."""
    cell = torch.nn.GRUCell(weights[f"{prefix}_w_ih"].shape[1], hidden)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        key = f"{prefix}_{name.replace('weight', 'w').replace('bias', 'b')}"
        getattr(cell, name).data = torch.from_numpy(weights[key])
    return cell


def checkpoint_path() -> Path:
    """g2p_en's weights file, located without importing the package."""
    spec = importlib.util.find_spec("g2p_en")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the g2p_en package is not installed; it provides the pronunciations "
                        "of words outside the lexicon (pip install g2p_en)")
    path = Path(next(iter(spec.submodule_search_locations))) / "checkpoint20.npz"
    if not path.is_file():
        raise UserError(f"{path}: g2p_en's model weights are missing; reinstall g2p_en")
    return path


@functools.lru_cache(maxsize=1)
def model() -> G2p:
    """g2p_en's model, loaded once per process; `UserError` when g2p_en or its weights are
    missing."""
    with np.load(checkpoint_path()) as weights:
        return G2p({key: weights[key] for key in weights.files}).eval()


@functools.lru_cache(maxsize=65536)
def _predict(word: str) -> tuple[str, ...]:
    return tuple(model()(word))


def predict(word: str) -> list[str]:
    """The stressed ARPAbet phones g2p_en's model predicts for `word`."""
    return list(_predict(word.lower()))
