"""`tera downstream`, with s3prl's `run_downstream.py` flags.

The handlers import what they run when they run, so that `tera --help` loads only the parsers.
"""

from __future__ import annotations

import argparse
import json

from tera.downstream import CACHE_BUDGET_GB, DEFAULT_SEED
from tera.upstream import TERA2_CHECKPOINT_NAMES, UPSTREAMS, checked_device, upstream_name


def add_downstream_commands(sub: argparse._SubParsersAction) -> None:
    """`tera downstream` and its flags."""
    p = sub.add_parser(
        "downstream", help="train / evaluate a SUPERB task (s3prl's run_downstream flags)",
        description="Examples: tera downstream -m train -d ks -u tera2 -k ckpt.pt -n ks_run; "
        "tera downstream -m evaluate -e result/downstream/ks_run/dev-best.ckpt",
    )
    p.add_argument("-m", "--mode", choices=["train", "evaluate"], default="train")
    p.add_argument("-d", "--downstream", help="asr, pr, ks, sid, asv (or s3prl's ctc, "
                   "speech_commands, voxceleb1, sv_voxceleb1)")
    p.add_argument("-u", "--upstream", default="tera2",
                   choices=[*UPSTREAMS, *TERA2_CHECKPOINT_NAMES],
                   help="tera2 (s3prl's tera2_local, tera2_custom and tera2_url are the same: "
                   "a TERA2 checkpoint given with -k), fbank or mfcc")
    p.add_argument("-k", "--upstream-ckpt", help="TERA checkpoint in any format")
    p.add_argument("--upstream-preset", default="slim",
                   help="size of the random TERA used when -u tera2 has no -k")
    p.add_argument("-n", "--expname", help="run name: result/downstream/NAME")
    p.add_argument("-p", "--expdir", help="run folder (instead of -n)")
    p.add_argument("-c", "--config", help="recipe YAML (default: the task's SUPERB recipe; "
                   "s3prl's recipe paths such as downstream/ctc/libriphone.yaml name it too)")
    p.add_argument("-o", "--override", help='"config.optimizer.lr=1e-4,,config.runner.'
                   'total_steps=1000"')
    p.add_argument("-e", "--init-ckpt", help="downstream checkpoint to evaluate or resume")
    p.add_argument("-t", "--evaluate-split", help="split to evaluate (default: test)")
    p.add_argument("--data-root", help="corpus folder (default: the embedded corpus)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-cache", action="store_true", help="recompute upstream features")
    p.add_argument("--cache-budget-gb", type=float, default=CACHE_BUDGET_GB,
                   help="cache the upstream's features when they fit in this many GB "
                   "(estimated before training), else compute them at every step "
                   f"(default {CACHE_BUDGET_GB:g}); also the cache folder's size limit, "
                   "least recently used features evicted first")
    p.add_argument("--cache-dir", help="the feature cache shared by runs (default: "
                   "~/.cache/tera-speech/features, $TERA_SPEECH_HOME)")
    p.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    """Check the flags, run the task and print results.json's headline as one JSON line."""
    from tera.downstream.recipe import parse_overrides
    from tera.downstream.runner import run
    from tera.errors import UserError
    from tera.runtime import prepare_process

    prepare_process()
    if args.init_ckpt is None and args.downstream is None:
        raise UserError("-d TASK is needed to train (or -e CHECKPOINT to evaluate / resume)")
    if not 0 <= args.seed < 2**63:
        raise UserError(f"--seed {args.seed}: expected an integer from 0 to 2**63 - 1")
    if not 0 <= args.cache_budget_gb < float("inf"):
        raise UserError(f"--cache-budget-gb {args.cache_budget_gb}: expected a finite number "
                        "of GB >= 0")
    checked_device(args.device)  # before any data or model
    results = run(
        args.downstream or "", mode=args.mode,
        upstream=upstream_name(args.upstream, args.upstream_ckpt),
        upstream_ckpt=args.upstream_ckpt, name=args.expname, expdir=args.expdir,
        config=args.config, overrides=parse_overrides(args.override), data_root=args.data_root,
        init_ckpt=args.init_ckpt, test_split=args.evaluate_split, seed=args.seed,
        cache=not args.no_cache, device=args.device, upstream_preset=args.upstream_preset,
        cache_budget_gb=args.cache_budget_gb, cache_dir=args.cache_dir,
    )
    print(json.dumps({k: results[k] for k in ("task", "metric", "value", "split",
                                               "checkpoint")}))
    return 0
