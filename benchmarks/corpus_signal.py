"""Does the embedded corpus carry the right signal? A logistic regression on each utterance's
mean + std MFCC identifies keywords (Speech Commands) and speakers (VoxCeleb1 layout).

For speakers it is measured twice: on sessions it was trained on, and on sessions it never
saw. A corpus whose speakers each have one fixed filter (generator 1) lets the channel give
the speaker away in both; with channels drawn per session (generator 2) only what the
speaker keeps (voice, pitch, vocal-tract length, rate) carries over to a new session.

    python -m benchmarks.corpus_signal [CORPUS_ROOT]           # default: the default corpus
    python -m benchmarks.corpus_signal --before e33ed24        # also the generator of a git
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

from tests.corpus_signal import measure

from tera.corpora import default_corpus_dir


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
