"""Does the embedded corpus carry the right signal? A logistic regression on each utterance's
mean + std MFCC identifies keywords (Speech Commands) and speakers (VoxCeleb1 layout).

For speakers it is measured twice: on sessions it was trained on, and on sessions it never
saw. A corpus whose speakers each have one fixed filter (generator 1) lets the channel give
the speaker away in both; with channels drawn per session (generator 2) only what the
speaker keeps (voice, pitch, vocal-tract length, rate) carries over to a new session.

    python benchmarks/corpus_signal.py [CORPUS_ROOT]           # default: the default corpus
    python benchmarks/corpus_signal.py --before e33ed24        # also the generator of a git
                                                               # revision, same preset/seed
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tera.audio import mfcc
from tera.corpora import Utterance, default_corpus_dir, read_segment, speech_commands, voxceleb1

SESSIONS = 3  # per speaker in the session protocols: the first three (sorted by name)


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


def generator_of_revision(revision: str):
    """The corpus generator module as it was at a git revision of this repository."""
    repo = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "-C", str(repo), "show",
                             f"{revision}:src/tera/corpora/synthetic.py"],
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / f"synthetic_{revision}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=str(default_corpus_dir("default")))
    parser.add_argument("--before", metavar="REVISION",
                        help="also measure the corpus that the generator of this git revision "
                        "makes (same preset and seed), in --before-root")
    parser.add_argument("--before-root", help="where to make it (default: a temporary folder)")
    args = parser.parse_args()
    root = Path(args.root)
    if not (root / "summary.json").is_file():
        sys.exit(f"{root}: no corpus (make one with `tera corpus synth {root}`)")
    summary = json.loads((root / "summary.json").read_text())
    corpora = {f"generator {summary.get('generator', 1)}": root}
    if args.before:
        old = generator_of_revision(args.before)
        before = Path(args.before_root or tempfile.mkdtemp()) / f"corpus-{args.before}"
        old.synthesize(before, summary["preset"], summary["seed"], progress=False)
        corpora = {f"{args.before} (before)": before, **corpora}
    rows = {name: measure(path) for name, path in corpora.items()}
    print(json.dumps(rows, indent=2))
    print("\n| corpus | speakers, same sessions | speakers, new sessions | chance | SID split "
          "(chance) | KS (chance) |\n|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['speaker_accuracy_same_sessions']:.1%} | "
              f"{r['speaker_accuracy_new_sessions']:.1%} | {r['speaker_chance_sessions']:.1%} | "
              f"{r['sid_accuracy']:.1%} ({r['sid_chance']:.1%}) | {r['ks_accuracy']:.1%} "
              f"({r['ks_chance']:.1%}) |")


if __name__ == "__main__":
    main()
