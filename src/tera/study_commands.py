"""`tera study`.

The handlers import what they run when they run, so that `tera --help` loads only the parsers.
"""

from __future__ import annotations

import argparse


def add_study_commands(sub: argparse._SubParsersAction) -> None:
    """Declare `tera study`."""
    p = sub.add_parser("study", help="the compute-matched scaling study end to end, with a "
                       "report (resumable)")
    p.add_argument("--config", help="study YAML (default: the shipped default / quick study)")
    p.add_argument("--quick", action="store_true", help="small corpus, few steps (minutes)")
    p.add_argument("--out", help="study folder (default: ./study or ./study-quick)")
    p.add_argument("--jobs", type=int, help="jobs run at once, the CPU's cores shared among "
                   "them (default: 2 on a CPU, 1 with a GPU)")
    p.add_argument("--seeds", type=int, help="repeat every downstream run with this many seeds "
                   "(default: the study file's seeds.count; seeds.pretraining: true in the "
                   "file repeats the pre-trainings too)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """`tera study`: run (or resume) a study and write its report; returns the exit code."""
    from tera.study import run_study

    report = run_study(args.config, args.quick, args.out, args.jobs, args.seeds)
    print(report.read_text())
    print(f"report: {report} (figures beside it)")
    return 0
