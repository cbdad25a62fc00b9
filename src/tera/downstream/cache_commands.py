"""`tera cache ls` and `tera cache prune`: the downstream feature cache shared by runs."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tera.downstream import CACHE_BUDGET_GB
from tera.downstream.features import cache_entries, default_cache_dir, prune
from tera.errors import UserError


def add_cache_commands(sub: argparse._SubParsersAction) -> None:
    """Add `tera cache ls` and `tera cache prune` to the sub-command parsers `sub`."""
    cache = sub.add_parser("cache", help="list or prune the downstream feature cache")
    actions = cache.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = actions.add_parser("ls", help="entries, size and last use per upstream")
    prune = actions.add_parser("prune", help="delete the least recently used features")
    prune.add_argument("--max-gb", type=float, default=CACHE_BUDGET_GB,
                       help=f"keep at most this many GB (default {CACHE_BUDGET_GB:g})")
    prune.add_argument("--all", action="store_true", help="empty the cache")
    for action in (ls, prune):
        action.add_argument("--cache-dir", help="the cache folder (default: "
                            "~/.cache/tera-speech/features, $TERA_SPEECH_HOME)")
    ls.set_defaults(handler=run_ls)
    prune.set_defaults(handler=run_prune)


def _folder(args: argparse.Namespace) -> Path:
    return Path(args.cache_dir) if args.cache_dir else default_cache_dir()


def run_ls(args: argparse.Namespace) -> int:
    """Print the cache's entries and size, in all and per upstream; exit status 0."""
    folder = _folder(args)
    entries = cache_entries(folder)
    print(f"feature cache {folder}: {len(entries)} entries, "
          f"{_gb(sum(e.size for e in entries))}")
    by_upstream: dict[str, list] = {}
    for entry in entries:
        by_upstream.setdefault(entry.upstream, []).append(entry)
    for upstream, group in sorted(by_upstream.items()):
        last_use = time.strftime("%Y-%m-%d %H:%M:%S",
                                 time.localtime(max(e.last_use for e in group)))
        print(f"  {upstream}: {len(group)} entries, {_gb(sum(e.size for e in group))}, "
              f"last used {last_use}")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    """Delete least recently used entries down to `--max-gb` (all with `--all`) and print
    what is left; a negative or infinite `--max-gb` raises `UserError`."""
    if not args.all and not 0 <= args.max_gb < float("inf"):
        raise UserError(f"--max-gb {args.max_gb}: expected a finite number of GB >= 0")
    folder = _folder(args)
    deleted, left = prune(folder, 0 if args.all else args.max_gb * 1e9)
    print(f"feature cache {folder}: {deleted} entries deleted, {_gb(left)} left")
    return 0


def _gb(size: int) -> str:
    return f"{size / 1e9:.3f} GB"
