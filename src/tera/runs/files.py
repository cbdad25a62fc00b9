"""The one way tera writes a file: atomically, durably, with one-line errors.

    with atomic_output(path) as tmp:   # a temporary path beside `path`
        produce(tmp)                   # np.savez, safetensors' save_file, ...
    write_text(path, text); write_json(path, obj); save_torch(obj, path)
    save_safetensors(tensors, path)

The content goes to a temporary file in the same folder, is fsynced, renamed over `path`
(atomic on POSIX) and the folder is fsynced, so a run killed at any moment leaves either the
old file or the new one, never a truncated one, even after a power cut. The temporary file is
created with the umask's permissions, as an ordinary file would be (not `mkstemp`'s 0600),
and is removed on every error. An `OSError` (full disk, permission denied, a folder where the
file should be, a parent that is a file) becomes a `UserError` naming the path.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch
from safetensors.torch import save

from tera.errors import UserError

TEMPORARY_SUFFIX = ".tmp"


def describe_os_error(err: OSError) -> str:
    """`err` as a short phrase: 'no space left on device', 'permission denied', ..."""
    reasons = {
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EROFS: "read-only file system",
        errno.EISDIR: "is a directory",
        errno.ENOTDIR: "a parent of it is a file, not a folder",
        errno.ENAMETOOLONG: "file name too long",
    }
    return reasons.get(err.errno, err.strerror or type(err).__name__).strip()


def _user_error(path: Path, action: str, err: OSError) -> UserError:
    return UserError(f"{path}: cannot {action}: {describe_os_error(err)}")


def ensure_folder(folder: str | Path) -> Path:
    """Create `folder` (and its parents) if needed; one-line errors when it or a parent is a
    file, or the place is not writable."""
    folder = Path(folder)
    blocking = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        where = "it" if blocking == folder else str(blocking)
        raise UserError(f"{folder}: cannot make this folder: {where} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _user_error(folder, "create the folder", err) from err
    return folder


def _ensure_parent(path: Path) -> Path:
    """The folder of a file to write, created if needed (errors name the file)."""
    if path.is_dir():
        raise UserError(f"{path}: is a folder; a file is written here")
    try:
        return ensure_folder(path.parent)
    except UserError:
        blocking = next(p for p in path.parents if p.exists())
        if not blocking.is_dir():
            raise UserError(f"{path}: cannot write: {blocking} is a file, not a folder"
                            ) from None
        raise


def check_writable(path: str | Path) -> Path:
    """Fail now, with one line, if a file could not be written at `path` later: its parent
    is a file or not writable, or `path` is a folder. Creates the parent folders."""
    path = Path(path)
    folder = _ensure_parent(path)
    probe = folder / f".{path.name}.{secrets.token_hex(4)}.probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise _user_error(path, "write", err) from err
    return path


def check_not_an_input(output: str | Path, inputs: list[str | Path | None], flag: str
                       ) -> None:
    """Refuse to write `output` over (or into) one of the command's own `inputs`: the
    result would replace what it was computed from."""
    target = Path(output).expanduser().resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).expanduser().resolve()
        same_file = target.exists() and source.exists() and os.path.samefile(target, source)
        if same_file or target == source or source in target.parents:
            raise UserError(f"{output}: {flag} names the input {given}; writing there would "
                            "replace it; give another output path")


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` for the caller to write; on success the file is
    fsynced and renamed over `path`, on any error (or Ctrl-C) it is removed."""
    path = Path(path)
    folder = _ensure_parent(path)
    tmp = folder / f".{path.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"
    try:
        try:
            # mode 0666 & ~umask: readable like any file the user writes (mkstemp's is 0600)
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            mode = stat.S_IMODE(os.stat(tmp).st_mode)
            yield tmp
            os.chmod(tmp, mode)  # a writer may have made the file anew (safetensors: 0600)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as err:
            raise _user_error(path, "write", err) from err
        fsync_folder(folder)
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """`open(path, mode)` that only replaces `path` once the block has finished.

    A writer that fails because the file system refused a write (a full disk) often says
    something else: torch's zip writer "unexpected pos", numpy a zipfile error. The file's
    own writes record the `OSError`, and that is what the block raises (so the caller's
    message names the path and "no space left on device")."""
    with atomic_output(path) as tmp, open(tmp, mode) as raw:
        f = RecordedWrites(raw)
        try:
            yield f
        except Exception as err:
            if f.error is not None and f.error is not err:
                raise f.error from err
            raise


class RecordedWrites:
    """A file object that remembers the first `OSError` its writes raised."""

    def __init__(self, file: IO) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        """The file's `write`, its `OSError` recorded and raised."""
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        """The file's `flush`, its `OSError` recorded and raised."""
        try:
            self.file.flush()
        except OSError as err:
            self.error = self.error or err
            raise

    def __getattr__(self, name: str) -> Any:  # tell, seek, fileno, ...: the file's own
        return getattr(self.file, name)


def write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` atomically; an `OSError` becomes a `UserError` naming it."""
    with atomic_open(path, "w") as f:
        f.write(text)


def read_json(path: str | Path, missing: str = "no such file") -> Any:
    """A JSON file's content. A file that is absent (`missing` says what that means),
    unreadable or not valid JSON (a torn write, an edit gone wrong) is a `UserError` naming
    it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: {missing}") from None
    except OSError as err:
        raise _user_error(path, "read", err) from err
    except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
        raise UserError(f"{path}: not valid JSON ({err})") from err


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Write `obj` as JSON (and a newline) atomically; what JSON cannot hold is written as its
    `str`."""
    write_text(path, json.dumps(obj, indent=indent, default=str) + "\n")


def save_torch(obj: Any, path: str | Path, pickle_module: Any = None) -> None:
    """`torch.save(obj, path)`, atomically (with `pickle_module` when given)."""
    with atomic_open(path, "wb") as f:
        if pickle_module is None:
            torch.save(obj, f)
        else:
            torch.save(obj, f, pickle_module=pickle_module)


def save_safetensors(tensors: dict, path: str | Path, metadata: dict | None = None) -> None:
    """`safetensors.torch.save_file`, atomically and through this module's writes (so a full
    disk is the same one line as for every other format)."""
    data = save(tensors, metadata=metadata)
    with atomic_open(path, "wb") as f:
        f.write(data)


def temporary_files(folder: str | Path) -> list[Path]:
    """Temporary files an interrupted writer could have left in `folder` (for tests and
    clean-up): there should be none."""
    return sorted(Path(folder).glob(f".*{TEMPORARY_SUFFIX}"))
