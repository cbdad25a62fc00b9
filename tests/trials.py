"""Simulated speaker-verification trial lists, whose scores carry a per-speaker offset (a
voice the model confuses raises all of its trials): for the tests of the bootstrap and for
benchmarks/bootstrap_coverage.py and benchmarks/scale.py."""

from __future__ import annotations

import numpy as np

from tera.downstream.bootstrap import Items


def speaker_trials(rng: np.random.Generator, speakers: int = 40, per_speaker: int = 6,
                   spread: float = 1.0) -> Items:
    """Trials among `speakers` speakers: every pair of a speaker's utterances as a target
    trial, six non-target trials per utterance; scores are Gaussian with a per-speaker
    offset of standard deviation `spread` (targets lower, non-targets higher)."""
    offset = rng.normal(0, spread, speakers)
    rows = {k: [] for k in ("enrol", "test", "label", "score", "enrol_speaker", "test_speaker")}

    def add(label, a, i, b, j, score):
        for key, value in zip(rows, (f"s{a}/u{i}", f"s{b}/u{j}", label, score, f"s{a}",
                                     f"s{b}")):
            rows[key].append(value)

    for s in range(speakers):
        for i in range(per_speaker):
            for j in range(i + 1, per_speaker):
                add(1, s, i, s, j, 1.5 + rng.normal() - offset[s])
            for _ in range(6):
                other = int(rng.integers(speakers - 1))
                other += other >= s
                add(0, s, i, other, int(rng.integers(per_speaker)),
                    rng.normal() + offset[s] / 2 + offset[other] / 2)
    return Items("eer", rows)


def trial_interval(items: Items, resamples: int = 1000) -> tuple[float, float]:
    """The interval that resampling trials one by one would give (for contrast)."""
    n = len(items)
    draws = np.random.default_rng(0).multinomial(n, np.full(n, 1 / n), size=resamples)
    return tuple(np.percentile(items.metric(draws.astype(float)), [2.5, 97.5]))


def trial_list(trials: int, speakers: int, seed: int = 0) -> Items:
    """A VoxCeleb1-like trial list: half target trials, VoxCeleb-style ids, scores with a
    per-speaker offset (built with numpy, so that 580k trials take a second)."""
    rng = np.random.default_rng(seed)
    enrol = rng.integers(0, speakers, trials)
    target = rng.random(trials) < 0.5
    test = np.where(target, enrol, (enrol + rng.integers(1, speakers, trials)) % speakers)
    offset = rng.normal(0, 1, speakers)
    score = np.where(target, 1.5 - offset[enrol], (offset[enrol] + offset[test]) / 2)
    names = np.char.add("id1", np.char.zfill(np.arange(speakers).astype(str), 4))
    number = np.char.zfill(np.arange(trials).astype(str), 5)
    return Items("eer", {"enrol": np.char.add(names[enrol], np.char.add("/1zcIwhmdeo4/", number)),
                         "test": np.char.add(names[test], np.char.add("/7gWzIy6yIIk/", number)),
                         "label": target.astype(int), "score": score + rng.normal(size=trials),
                         "enrol_speaker": names[enrol], "test_speaker": names[test]})
