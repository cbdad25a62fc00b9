"""How the work grows with the data: trees of growing size, one cost per stage, the fitted
exponent and the cost extrapolated to the real sizes.

    python benchmarks/scale.py [--sizes 1000,5000,20000] [--full]
"""

from __future__ import annotations

import numpy as np

from tera.downstream.bootstrap import Items


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
