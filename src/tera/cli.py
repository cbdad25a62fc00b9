"""The `tera` command: one sub-command per job, each defined next to the code it drives.

Every area of the package owns a small `add_*_commands(subparsers)` function that declares
its sub-commands and binds them to a handler; this file only assembles them, so adding a
command never means editing another area's code.

Whatever goes wrong that is the user's to fix ends as one line on stderr: a `UserError` or
a file-system error (exit 2), Ctrl-C (exit 130) and SIGTERM (exit 143), at any moment,
start-up included.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tera.errors import Terminated, UserError, raise_terminated


def build_parser() -> argparse.ArgumentParser:
    """The `tera` parser with every area's sub-commands; each sets `args.handler`."""
    parser = argparse.ArgumentParser(
        prog="tera",
        description="Pre-train TERA and evaluate it on SUPERB-style tasks.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # deferred: the areas import torch, which must load while `main` holds the signals
    from tera.commands import add_commands

    add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one `tera` command (`argv`: the arguments, default `sys.argv[1:]`); returns the
    exit status. What the user can fix is one line on stderr, not a traceback."""
    argv = sys.argv[1:] if argv is None else argv
    # What the messages call the command, until the parser knows it.
    command = f"tera {argv[0]}" if argv and not argv[0].startswith("-") else "tera"
    previous = _handle(signal.SIGTERM, raise_terminated)
    try:
        with _signals_held():  # a half-imported numpy or torch fails later in odd ways
            parser = build_parser()
        args = parser.parse_args(argv)
        command = f"tera {args.command}"
        return int(args.handler(args) or 0)
    except UserError as err:
        print(f"{command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the file system said no where no check foresaw it
        # deferred: it imports torch, which must not load before `main` holds the signals
        from tera.runs.files import describe_os_error

        where = f"{err.filename}: " if err.filename else ""
        print(f"{command}: error: {where}{describe_os_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{command}: stopped by SIGTERM", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if previous is not None:
            _handle(signal.SIGTERM, previous)


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then act on them.

    The parser imports torch, numpy and soundfile; an exception raised inside one of those
    imports can be swallowed by the library's own `try` blocks or leave a module half-made
    that fails later (seen: a run that ignored Ctrl-C, "not a readable file" for a good
    file). Held, the signal takes effect right after the imports, as one line.
    """
    arrived: list[int] = []
    held = [signal.SIGINT, signal.SIGTERM]
    previous = {}
    for signum in held:
        # A signal ignored (a background job's Ctrl-C) stays ignored.
        if signal.getsignal(signum) not in (signal.SIG_IGN, None):
            previous[signum] = _handle(signum, lambda signum, frame: arrived.append(signum))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler is not None:
                _handle(signum, handler)
    if signal.SIGTERM in arrived:
        raise_terminated(signal.SIGTERM, None)
    if signal.SIGINT in arrived:
        raise KeyboardInterrupt


def _handle(signum: int, handler):  # noqa: ANN001, ANN202
    """Install a signal handler; returns the previous one (None off the main thread)."""
    try:
        return signal.signal(signum, handler)
    except ValueError:  # signals are for the main thread only
        return None


if __name__ == "__main__":
    sys.exit(main())
