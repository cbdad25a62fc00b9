"""The checkpoints a run saves along the way, ordered by step, and how many are kept.

Two kinds, one rule: pre-training's interval checkpoints `checkpoint_<epoch>_<update>.pt`
and a downstream run's `states-<step>.ckpt` are listed oldest step first, by the number
(never by the text: `checkpoint_1_500.pt` is older than `checkpoint_1_1000.pt`), and only
the newest `keep` are kept.
"""

from __future__ import annotations

import re
from pathlib import Path

INTERVAL_CHECKPOINT = re.compile(r"checkpoint_(\d+)_(?P<step>\d+)\.pt")
DOWNSTREAM_STATES = re.compile(r"states-(?P<step>\d+)\.ckpt")


def interval_checkpoint_name(epoch: int, update: int) -> str:
    """The file name of pre-training's checkpoint at `update`, in (1-based) `epoch`."""
    return f"checkpoint_{epoch}_{update}.pt"


def downstream_states_name(step: int) -> str:
    """The file name of a downstream run's states at `step`."""
    return f"states-{step}.ckpt"


def downstream_step(path: Path) -> int:
    """The step of a `states-<step>.ckpt`."""
    return int(DOWNSTREAM_STATES.fullmatch(Path(path).name)["step"])


def saved_by_step(folder: str | Path, pattern: re.Pattern) -> list[Path]:
    """Files of `folder` whose name matches `pattern` (its `step` group a number), oldest
    step first."""
    found = []
    for path in Path(folder).glob("*"):
        match = pattern.fullmatch(path.name)
        if match and path.is_file():
            found.append((int(match["step"]), path.name, path))
    return [path for _, _, path in sorted(found)]


def interval_checkpoints(save_dir: str | Path) -> list[Path]:
    """A pre-training's `checkpoint_<epoch>_<update>.pt`, oldest update first."""
    return saved_by_step(save_dir, INTERVAL_CHECKPOINT)


def downstream_states(expdir: str | Path) -> list[Path]:
    """A downstream run's `states-<step>.ckpt`, oldest step first."""
    return saved_by_step(expdir, DOWNSTREAM_STATES)


def keep_newest(saved: list[Path], keep: int) -> list[Path]:
    """Delete all but the newest `keep` of `saved` (oldest first; `keep` <= 0 keeps all);
    returns the deleted paths."""
    old = saved[:-keep] if 0 < keep < len(saved) else []
    for path in old:
        path.unlink(missing_ok=True)
    return old
