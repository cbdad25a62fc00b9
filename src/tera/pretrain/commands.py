"""`tera manifest`, `tera pretrain` and `tera plan`.

The handlers import what they run when they run, so that `tera --help` loads only the parsers.
"""

from __future__ import annotations

import argparse
import json


def add_pretrain_commands(sub: argparse._SubParsersAction) -> None:
    """Declare `tera manifest`, `tera pretrain` and `tera plan`."""
    manifest = sub.add_parser("manifest", help="write fairseq train.tsv / valid.tsv for a folder")
    manifest.add_argument("root", help="folder searched recursively for audio files")
    manifest.add_argument("-o", "--output", required=True, help="folder for the .tsv files")
    manifest.add_argument("--valid-percent", type=float, default=0.01)
    manifest.add_argument("--ext", default="flac,wav", help="comma-separated extensions")
    manifest.add_argument("--seed", type=int, default=42)
    manifest.set_defaults(handler=run_manifest)

    pretrain = sub.add_parser(
        "pretrain", help="pre-train TERA2 from a preset (resumes a run found in save_dir)",
        description="Example: tera pretrain --config-name tiny task.data=MANIFEST_DIR "
        "checkpoint.save_dir=runs/tiny optimization.max_update=1000",
    )
    pretrain.add_argument("--config-name", required=True,
                          help="preset name (slim, slim_200per_50flops, tiny, ...) or the "
                          "seed's file name (tera_slim_librispeech)")
    pretrain.add_argument("--config-dir", help="folder with your own preset YAML files")
    pretrain.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                          help="dotted overrides, e.g. optimization.max_update=1000")
    pretrain.set_defaults(handler=run_pretrain)

    plan = sub.add_parser("plan", help="updates that match a compute budget")
    plan.add_argument("--config-name", required=True)
    plan.add_argument("--budget-of", help="preset whose training FLOPs set the budget")
    plan.add_argument("--fraction", type=float, default=1.0, help="share of that budget")
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(handler=run_plan)


def run_manifest(args: argparse.Namespace) -> int:
    """`tera manifest`: train.tsv / valid.tsv for an audio folder; returns the exit code."""
    from tera.pretrain.manifest import write_manifest

    counts = write_manifest(args.root, args.output, args.valid_percent,
                            tuple(e.strip() for e in args.ext.split(",") if e.strip()), args.seed)
    print(f"wrote {args.output}/train.tsv ({counts['train']} files) and valid.tsv "
          f"({counts['valid']} files)")
    return 0


def run_pretrain(args: argparse.Namespace) -> int:
    """`tera pretrain`: sets the process up for compute, then trains (or resumes) one run; returns
    the exit code."""
    from tera.pretrain.config import load_config
    from tera.pretrain.trainer import pretrain
    from tera.runtime import prepare_process

    prepare_process()
    cfg = load_config(args.config_name, args.config_dir, args.overrides)
    summary = pretrain(cfg)
    print(json.dumps(summary))
    # stopped by SIGINT / SIGTERM (state saved): 128 + the signal, as the shell reports it
    return 128 + summary["stop_signal"] if summary["stopped"] else 0


def run_plan(args: argparse.Namespace) -> int:
    """`tera plan`: the updates that give a preset another preset's compute budget; returns the
    exit code."""
    from tera.pretrain.planner import plan_presets

    result = plan_presets(args.config_name, args.budget_of, args.fraction)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['preset']} at {result['fraction']:g} x the budget of {result['budget_of']}:")
    print(f"  training FLOPs per update: {result['flops_per_update']:.4e}")
    print(f"  max_update: {result['max_update']}  (preset file: {result['preset_max_update']})")
    print(f"  total training FLOPs: {result['total_flops']:.4e} per GPU")
    return 0
