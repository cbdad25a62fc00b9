"""How much the embedded corpus says about its labels: a logistic regression on each
utterance's mean + std MFCC identifies keywords (Speech Commands) and speakers (VoxCeleb1
layout), the speakers on sessions it was trained on and on sessions it never heard. Used by
tests/test_corpora.py and printed by benchmarks/corpus_signal.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tera.audio import mfcc
from tera.corpora import Utterance, read_segment, speech_commands, voxceleb1

SESSIONS = 3  # per speaker in the session protocols: the first three (sorted by name)


def utterance_vectors(utterances) -> np.ndarray:
    """Each utterance's MFCC mean and standard deviation over its frames."""
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


def session_protocols(root: Path) -> dict[str, tuple[list, list]]:
    """The same speakers and sessions both ways: every speaker of the identification split,
    its first SESSIONS sessions. `same sessions`: one utterance of every session for test,
    the others for training; `new sessions`: the last session for test, the others for
    training."""
    speakers = sorted({u.speaker for u in voxceleb1.load_identification(root, "train")})
    same, new = ([], []), ([], [])
    for speaker in speakers:
        sessions = sorted(p for p in (root / "wav" / speaker).iterdir() if p.is_dir())
        sessions = sessions[:SESSIONS]
        for number, session in enumerate(sessions):
            utts = [Utterance(id=p.name, path=p, speaker=speaker, label=speaker)
                    for p in sorted(session.glob("*.wav"))]
            same[0].extend(utts[1:])
            same[1].append(utts[0])
            new[1 if number == len(sessions) - 1 else 0].extend(utts)
    return {"same sessions": same, "new sessions": new}


def measure(root: Path) -> dict:
    """Accuracy and chance level of speaker (SID split, same and new sessions) and keyword
    classifiers on the corpus at `root`."""
    vox = root / "voxceleb1"
    sid = accuracy(voxceleb1.load_identification(vox, "train")
                   + voxceleb1.load_identification(vox, "dev"),
                   voxceleb1.load_identification(vox, "test"))
    ks = accuracy(speech_commands.load_split(root / "speech_commands", "train"),
                  speech_commands.load_split(root / "speech_commands", "test"))
    figures = {"sid_accuracy": sid[0], "sid_chance": sid[1], "ks_accuracy": ks[0],
               "ks_chance": ks[1]}
    for name, (train, test) in session_protocols(vox).items():
        figures[f"speaker_accuracy_{name.replace(' ', '_')}"] = accuracy(train, test)[0]
    figures["speaker_chance_sessions"] = 1 / len({u.speaker for u in test})
    return figures
