"""Run files: the atomic writer (durable rename, ordinary permissions, one-line errors, no
temporary file left behind)."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from tera.errors import UserError
from tera.runs.files import (
    atomic_output,
    check_writable,
    save_torch,
    temporary_files,
    write_json,
    write_text,
)


def test_atomic_write_replaces_the_file_with_ordinary_permissions(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    write_text(path, "one")
    write_text(path, "two")
    assert path.read_text() == "two"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert temporary_files(path.parent) == []


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "results.json"
    write_json(path, {"value": 1})
    with pytest.raises(RuntimeError), atomic_output(path) as tmp:
        tmp.write_text('{"val')
        raise RuntimeError("killed while writing")
    assert path.read_text() == '{\n  "value": 1\n}\n'
    assert temporary_files(tmp_path) == []


@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "no space left on device"),
                                          (errno.EACCES, "permission denied")])
def test_os_errors_while_writing_are_one_line_naming_the_file(tmp_path, code, reason):
    path = tmp_path / "checkpoint_last.pt"
    with pytest.raises(UserError, match=rf"checkpoint_last\.pt: cannot write: {reason}$"):
        with atomic_output(path) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(code, os.strerror(code))
    assert list(tmp_path.iterdir()) == []


def test_a_folder_where_the_file_should_be_is_one_line(tmp_path):
    (tmp_path / "out.npz").mkdir()
    with pytest.raises(UserError, match=r"out\.npz: is a folder"):
        save_torch({"x": 1}, tmp_path / "out.npz")
    with pytest.raises(UserError, match=r"out\.npz: is a folder"):
        check_writable(tmp_path / "out.npz")
    assert temporary_files(tmp_path) == []


def test_a_parent_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    for target in (tmp_path / "file" / "x.npz", tmp_path / "file" / "deeper" / "x.npz"):
        with pytest.raises(UserError, match=r"file is a file, not a folder"):
            write_text(target, "data")
        with pytest.raises(UserError, match=r"file is a file, not a folder"):
            check_writable(target)
