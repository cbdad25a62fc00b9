"""Checkpoints: atomic writes; loading and converting between formats.

Layouts (SPEC §2):
- training checkpoint (ours, written by `tera pretrain`): the fairseq layout with plain
  containers only, so `torch.load(weights_only=True)` reads it:
  `{"cfg": {"model": {...}, "task": {...}, <other sections>}, "model": state_dict,
    "task_state": {"dictionaries_symbols": [...]}, "extra_state": {...training state...},
    "last_optimizer_state": {...}, "optimizer_history": [...]}`
- fairseq (the fork's raw checkpoints), s3prl tera2 converted, safetensors directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def save_atomic(obj: Any, path: str | Path) -> None:
    """`torch.save` to a temporary file beside `path`, fsync, then rename over it: a run killed
    at any moment leaves either the old file or the new one, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
