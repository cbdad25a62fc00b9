"""Do the bootstrap intervals hold the truth 95 % of the time? Simulated test sets whose true
metric is known, each given its interval; prints how often the interval held the truth.

- accuracy: test sets of 300 utterances of a system right 70 % of the time;
- EER: trial lists over 40 speakers whose scores share a per-speaker offset (a voice the
  model confuses raises all of its trials), the truth from 2000 speakers; intervals from
  resampling speakers (what `tera.downstream.bootstrap` does) and, for contrast, trials.

    python -m benchmarks.bootstrap_coverage [--sets 100]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from tests.trials import speaker_trials, trial_interval

from tera.downstream.bootstrap import Items, interval


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
