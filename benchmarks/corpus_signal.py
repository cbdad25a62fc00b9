"""Does the embedded corpus carry signal? A logistic regression on each utterance's mean MFCC
(+ standard deviation) identifies speakers (VoxCeleb1 layout) and keywords (Speech Commands)
well above chance, but not perfectly.

    python benchmarks/corpus_signal.py [CORPUS_ROOT]     # default: the default corpus
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tera.audio import mfcc
from tera.corpora import default_corpus_dir, read_segment, speech_commands, voxceleb1


def utterance_vectors(utterances) -> np.ndarray:
    rows = []
    for utt in utterances:
        ceps, _ = mfcc(read_segment(utt))
        rows.append(torch.cat([ceps.mean(0), ceps.std(0)]).numpy())
    return np.stack(rows)


def accuracy(train, test) -> tuple[float, float]:
    """(accuracy, chance level) of a mean-MFCC classifier."""
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
    classifier.fit(utterance_vectors(train), [u.label for u in train])
    predicted = classifier.predict(utterance_vectors(test))
    labels = [u.label for u in test]
    chance = max(labels.count(label) for label in set(labels)) / len(labels)
    return float(np.mean(predicted == np.array(labels))), chance


def measure(root) -> dict:
    sid = accuracy(voxceleb1.load_identification(root / "voxceleb1", "train")
                   + voxceleb1.load_identification(root / "voxceleb1", "dev"),
                   voxceleb1.load_identification(root / "voxceleb1", "test"))
    ks = accuracy(speech_commands.load_split(root / "speech_commands", "train"),
                  speech_commands.load_split(root / "speech_commands", "test"))
    return {"sid_accuracy": sid[0], "sid_chance": sid[1], "ks_accuracy": ks[0],
            "ks_chance": ks[1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=str(default_corpus_dir("default")))
    from pathlib import Path

    root = Path(parser.parse_args().root)
    if not (root / "summary.json").is_file():
        sys.exit(f"{root}: no corpus (make one with `tera corpus synth {root}`)")
    print(json.dumps(measure(root)))


if __name__ == "__main__":
    main()
