"""The `tera` command: one sub-command per job, each defined next to the code it drives.

Every area of the package owns a small `add_*_commands(subparsers)` function that declares
its sub-commands and binds them to a handler; this file only assembles them, so adding a
command never means editing another area's code.
"""

from __future__ import annotations

import argparse
import sys

from tera.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tera",
        description="Pre-train TERA and evaluate it on SUPERB-style tasks.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Imported here so that `tera --help` stays fast and an area's heavy imports load only
    # when its command runs.
    from tera.commands import add_commands

    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserError as err:
        print(f"tera {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tera {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
