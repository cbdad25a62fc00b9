"""`tera corpus synth` and `tera corpus check`."""

from __future__ import annotations

import argparse
import json

from tera.corpora.base import default_corpus_dir
from tera.corpora.check import check_corpus


def add_corpus_commands(sub: argparse._SubParsersAction) -> None:
    """Add `tera corpus synth` and `tera corpus check` to the sub-command parsers `sub`."""
    corpus = sub.add_parser("corpus", help="generate the embedded corpus or check a corpus")
    actions = corpus.add_subparsers(dest="action", required=True, metavar="ACTION")
    synth = actions.add_parser("synth", help="generate the embedded speech corpus offline")
    synth.add_argument("out_dir", nargs="?", help="default: ~/.cache/tera-speech/corpus-PRESET "
                       "($TERA_SPEECH_HOME)")
    synth.add_argument("--preset", choices=["small", "default"], default="default")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=int, default=2)
    synth.set_defaults(handler=run_synth)
    check = actions.add_parser("check", help="report a corpus folder's contents and problems")
    check.add_argument("root")
    check.set_defaults(handler=run_check)


def run_synth(args: argparse.Namespace) -> int:
    """Generate the embedded corpus and print its summary; exit status 0."""
    # deferred: the generator imports scipy.signal, which would slow `tera --help`
    from tera.corpora.synthetic import synthesize

    out_dir = args.out_dir or default_corpus_dir(args.preset)
    summary = synthesize(out_dir, args.preset, args.seed, workers=args.workers)
    hours = summary["hours"]
    print(f"corpus {summary['preset']} (seed {summary['seed']}) in {out_dir}: "
          f"{hours['total']:.2f} h in {summary['generation_seconds']} s")
    for part in ("librispeech", "speech_commands", "voxceleb1"):
        print(f"  {part}: {hours[part]:.3f} h, {summary['speakers'][part]} speakers, "
              f"utterances {json.dumps(summary['utterances'][part])}")
    print(f"summary written to {out_dir}/summary.json")
    return 0


def run_check(args: argparse.Namespace) -> int:
    """Print what the corpus at `args.root` holds and its problems; exit status 1 when there
    are any."""
    report = check_corpus(args.root)
    print("\n".join(report.lines))
    if report.problems:
        print(f"{len(report.problems)} problem(s):")
        print("\n".join(f"  - {p}" for p in report.problems))
        return 1
    print("no problems found")
    return 0
