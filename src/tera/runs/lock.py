"""One process per run folder.

    with folder_lock(save_dir, "tera pretrain"):
        ...

takes an exclusive `fcntl.flock` on `<folder>/.tera.lock` and writes the holder (pid, host,
command, start time) into it. A second process on the same folder stops at once with one
line naming the first. The kernel releases the lock when its process dies, however it dies,
so the lock of a killed run is taken over by the next one (which says so).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tera.errors import UserError
from tera.runs.files import describe_os_error, ensure_folder

LOCK_NAME = ".tera.lock"


def open_lock_file(path: Path, action: str) -> int:
    """The descriptor of a lock file (created if needed), or one line saying it cannot
    `action`."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise UserError(f"{path}: cannot {action}: {describe_os_error(err)}") from err


@contextmanager
def waiting_lock(path: Path, action: str) -> Iterator[int]:
    """Hold an exclusive lock on the file `path`, waiting while another process holds it
    (for short critical sections shared by concurrent runs); yields its descriptor."""
    fd = open_lock_file(path, action)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def folder_lock(folder: str | Path, command: str) -> Iterator[Path]:
    """Hold the lock of `folder` (created if needed) for the duration of the block."""
    folder = ensure_folder(folder)
    path = folder / LOCK_NAME
    fd = open_lock_file(path, "create the run lock")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{folder} is in use by {_describe(_read_holder(fd))}; wait for "
                            "it to finish, stop it, or use another folder") from None
        previous = _read_holder(fd)
        if previous.get("pid") and not previous.get("released"):
            print(f"{command}: {folder}: taking over the lock of {_describe(previous)}, "
                  "which is no longer running", file=sys.stderr)
        _write_holder(fd, {"pid": os.getpid(), "host": socket.gethostname(),
                           "command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        try:
            yield path
        finally:
            _write_holder(fd, {**_read_holder(fd), "released": True})
    finally:
        os.close(fd)  # releases the flock


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        holder = json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _write_holder(fd: int, holder: dict) -> None:
    try:
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(holder) + "\n").encode())
    except OSError:
        pass  # the flock is what excludes; the text only names the holder


def _describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "another process"
    where = "" if holder.get("host") == socket.gethostname() else f" on {holder.get('host')}"
    return (f"process {holder['pid']}{where} ({holder.get('command', 'tera')}, started "
            f"{holder.get('started', '?')})")
