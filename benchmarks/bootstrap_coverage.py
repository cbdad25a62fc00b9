"""Do the bootstrap intervals hold the truth 95 % of the time? Simulated test sets whose true
metric is known, each given its interval; prints how often the interval held the truth.

- accuracy: test sets of 300 utterances of a system right 70 % of the time;
- EER: trial lists over 40 speakers whose scores share a per-speaker offset (a voice the
  model confuses raises all of its trials), the truth from 2000 speakers; intervals from
  resampling speakers (what `tera.downstream.bootstrap` does) and, for contrast, trials.

    python benchmarks/bootstrap_coverage.py [--sets 100]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from tera.downstream.bootstrap import Items, interval


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


def coverage(sets: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    held = {"accuracy, utterances": 0, "eer, speakers": 0, "eer, trials": 0}
    for _ in range(sets):
        correct = (rng.random(300) < 0.7).astype(int)
        items = Items("accuracy", {"id": [f"u{i:03d}" for i in range(300)], "correct": correct})
        record = interval([items], resamples=500)
        held["accuracy, utterances"] += record["low"] <= 0.7 <= record["high"]
    truth = speaker_trials(rng, speakers=2000, per_speaker=4).value()
    for _ in range(sets):
        items = speaker_trials(rng)
        record = interval([items], resamples=500)
        held["eer, speakers"] += record["low"] <= truth <= record["high"]
        low, high = trial_interval(items, 500)
        held["eer, trials"] += low <= truth <= high
    return {name: count / sets for name, count in held.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", type=int, default=100)
    print(json.dumps(coverage(parser.parse_args().sets)))


if __name__ == "__main__":
    main()
