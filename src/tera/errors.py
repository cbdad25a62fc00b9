"""The exceptions a `tera` command answers with one line instead of a traceback."""

from __future__ import annotations

import signal


class UserError(ValueError):
    """Bad input (file, flag, config, checkpoint, tensor shape): the CLI prints it as one
    line and exits 2.

    The message names the file, key or shape at fault and what was expected. A `ValueError`,
    so that code using tera-speech as a library catches it as it catches any bad value
    (`except ValueError`), whether it came from a command or from inside a module.
    """


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C does (`finally` blocks run, atomic writes leave no
    partial file); the CLI exits 143 (128 + SIGTERM). Not an `Exception`, so that no
    `except Exception` swallows it."""


def raise_terminated(signum: int, frame: object) -> None:  # noqa: ARG001
    """A SIGTERM handler: raise `Terminated`."""
    raise Terminated(signal.Signals(signum).name)
