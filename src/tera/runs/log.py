"""The one run log: JSON lines in `log.jsonl` and the same numbers in TensorBoard.

    log = RunLog(save_dir, tensorboard="tblog", step_key="update")
    log.write({"update": 100, "loss": 0.61, "lr": 4e-4}, prefix="train/")
    log.close()

Every record is one line of `log.jsonl` (appended, flushed); its numbers other than the step
become TensorBoard scalars `prefix + key` at that step. On a terminal that is not a tty (a
log file: CI, cluster jobs, `tera study`) each record is echoed to stderr as JSON, which is
what `tera study` reads its jobs' progress from.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from tqdm import tqdm

from tera.errors import UserError
from tera.runs.files import describe_os_error


class RunLog:
    """A run's `log.jsonl` and, when asked, its TensorBoard scalars (see the module's
    docstring)."""

    def __init__(self, folder: str | Path, *, tensorboard: str | None, step_key: str,
                 echo_prefix: str = "", enabled: bool = True) -> None:
        """folder: where `log.jsonl` goes; tensorboard: its sub-folder for TensorBoard
        (None: none); step_key: the record key holding the step; enabled: False writes
        nothing (data-parallel ranks other than 0)."""
        self.path = Path(folder) / "log.jsonl"
        self.step_key, self.echo_prefix, self.enabled = step_key, echo_prefix, enabled
        self.writer = None
        if enabled and tensorboard:
            # deferred: TensorBoard's import is heavy, and only runs that log to it pay it
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(folder) / tensorboard))

    def write(self, record: dict, prefix: str = "", echo: bool = True) -> None:
        """Append `record` to `log.jsonl`, add its numbers to TensorBoard as `prefix + key`
        (at its step: a record without `step_key` raises `KeyError` then), and echo it when
        stderr is not a terminal. An unwritable log raises `UserError` naming it."""
        if not self.enabled:
            return
        line = json.dumps(record)
        try:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        except OSError as err:
            raise UserError(f"{self.path}: cannot write: {describe_os_error(err)}") from err
        if self.writer is not None:
            step = record[self.step_key]
            for key, value in record.items():
                if key != self.step_key and _is_number(value):
                    self.writer.add_scalar(prefix + key, value, step)
        if echo and not sys.stderr.isatty():
            tqdm.write(self.echo_prefix + line, file=sys.stderr)

    def close(self) -> None:
        """Flush and close TensorBoard's writer; `log.jsonl` needs no closing."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def read_log(folder: str | Path) -> list[dict]:
    """The records of a run's `log.jsonl` (a torn last line, from a killed run, skipped)."""
    path = Path(folder) / "log.jsonl"
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records
