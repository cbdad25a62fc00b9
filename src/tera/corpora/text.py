"""Sentences for the embedded corpus: a small template grammar over a hand-written English
vocabulary (written for this project, public domain). Varied enough for ASR and phoneme
recognition to be learnable from an hour of speech, and generated offline from a seed."""

from __future__ import annotations

import random

ADJECTIVES = (
    "small large quiet bright dark cold warm early late happy sad green red blue old young "
    "strong gentle heavy light quick slow busy empty simple strange clever careful").split()
NOUNS = (
    "river garden window teacher doctor farmer letter morning evening village market "
    "mountain forest kitchen table bottle basket candle ladder pencil blanket horse rabbit "
    "captain sister brother neighbor engine bridge harbor island station picture story "
    "answer question problem corner meadow winter summer").split()
PLACES = "school harbor market station village church library bakery office museum".split()
NAMES = "anna peter maria thomas julia robert helen oliver sarah daniel".split()
VERBS = "open carry follow paint clean visit finish answer measure gather".split()
PAST = ("opened carried followed painted cleaned visited finished answered measured gathered "
        "found lost brought bought sold watched heard saw remembered forgot").split()
ADVERBS = "slowly quickly quietly carefully gladly again today tonight soon together".split()
PREPOSITIONS = "near behind under beside across through into over".split()
NUMBERS = "two three four five six seven eight nine ten twelve twenty".split()
PRONOUNS = "she he they we i you".split()
TIMES = ("tomorrow", "tonight", "next week", "after dinner", "before noon", "on monday")

TEMPLATES = (
    "the {adj} {noun} {past} {prep} the {noun2}",
    "{name} {past} {number} {adj} {noun}s {adverb}",
    "can you {verb} the {noun} {adverb}",
    "we will {verb} the {noun} at the {place} {time}",
    "{pronoun} said that the {noun} was {adj} and {adj2}",
    "the {noun} near the {place} is {adj}",
    "{name} and {name2} {past} the {adj} {noun} {prep} the {noun2}",
    "please {verb} the {noun} before the {adj} {noun2}",
    "there were {number} {noun}s in the {place}",
    "why did the {adj} {noun} {verb} the {noun2}",
)


def sentence(rng: random.Random) -> str:
    """One lower-case sentence."""
    template = rng.choice(TEMPLATES)
    fields = {
        "adj": rng.choice(ADJECTIVES), "adj2": rng.choice(ADJECTIVES),
        "noun": rng.choice(NOUNS), "noun2": rng.choice(NOUNS), "place": rng.choice(PLACES),
        "name": rng.choice(NAMES), "name2": rng.choice(NAMES), "verb": rng.choice(VERBS),
        "past": rng.choice(PAST), "adverb": rng.choice(ADVERBS),
        "prep": rng.choice(PREPOSITIONS), "number": rng.choice(NUMBERS),
        "pronoun": rng.choice(PRONOUNS), "time": rng.choice(TIMES),
    }
    return " ".join(template.format(**fields).split())
