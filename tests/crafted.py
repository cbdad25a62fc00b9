"""Crafted checkpoints an adversary could hand to tera-speech: each is tiny on disk and asks
the reader for unbounded work or memory, or calls an allowed callable with wrong arguments."""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

import torch


class _Call:
    """Pickles as `function(*args)`: how a crafted file makes the reader call something."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def _fairseq_layout(**extra) -> dict:
    return {"cfg": {"model": {}}, "model": {}, **extra}


def shared_structure(path: Path, levels: int = 40) -> Path:
    """An `args` Namespace whose list shares one list twice at each of 40 levels: 2**40
    items to whatever walks it, a few kB on disk."""
    level: list = ["x"]
    for _ in range(levels):
        level = [level, level]
    torch.save({"args": argparse.Namespace(arch="tera", data=level), "model": {}}, path)
    return path


def huge_buffers(path: Path, count: int = 3, size: int = 2**30) -> Path:
    """`count` calls of the allowed `bytearray(size)`."""
    torch.save(_fairseq_layout(**{f"b{i}": _Call(bytearray, size) for i in range(count)}),
               path)
    return path


def deep_nesting(path: Path, levels: int = 100_000) -> Path:
    """A list nested 100000 deep: too deep for Python to pickle, so the pickle is written by
    hand (open `levels` lists, append each to the one before) into a torch zip file."""
    torch.save({}, path)
    program = b"\x80\x02" + b"]" * levels + b"a" * (levels - 1) + b"."
    with zipfile.ZipFile(path) as original:
        members = {info.filename: original.read(info) for info in original.infolist()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as rewritten:
        for name, data in members.items():
            rewritten.writestr(name, program if name.endswith("/data.pkl") else data)
    return path


def wrong_arguments(path: Path) -> Path:
    """An allowed callable given arguments it cannot take (`torch.Size(5)`)."""
    torch.save(_fairseq_layout(size=_Call(torch.Size, 5)), path)
    return path


def self_containing(path: Path) -> Path:
    loop: list = []
    loop.append(loop)
    torch.save(_fairseq_layout(loop=loop), path)
    return path
