"""Our training checkpoint (`tera pretrain`'s `checkpoint_*.pt`): the fairseq fork's layout
written with plain containers only (read with `weights_only=True`), the training state
(`TrainingState`) in `extra_state["tera"]`. The trainer writes it with
`training_checkpoint`, and everything that reads it back goes through `read_training_checkpoint`
(resume) or `load` (as a model, any tool)."""

from __future__ import annotations

from pathlib import Path

import torch

from tera.checkpoint.common import LoadedCheckpoint, from_parts
from tera.checkpoint.fairseq import dictionary_states, fairseq_configs
from tera.checkpoint.unpickler import read_torch_file, to_plain
from tera.errors import UserError
from tera.runs.records import TrainingState


def training_checkpoint(cfg: dict, model_state: dict, optimizer_state: dict,
                        state: TrainingState) -> dict:
    """The content of a training checkpoint. cfg: the resolved run config, its `model`
    section the full model config."""
    return {
        "cfg": cfg,
        "model": model_state,
        "task_state": {"dictionaries_symbols": None},
        "extra_state": {"tera": state.to_dict()},
        "last_optimizer_state": optimizer_state,
        "optimizer_history": [{"optimizer_name": "AdamW", "num_updates": state.update}],
    }


def read_training_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                             ) -> tuple[dict, TrainingState]:
    """(the checkpoint's content, its training state); `UserError` naming the file when it
    is unreadable, truncated or not a training checkpoint."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such training checkpoint")
    raw = read_torch_file(path, map_location)  # bounded like every checkpoint read
    if not isinstance(raw, dict) or not is_training_checkpoint(raw):
        raise UserError(f"{path}: not a tera pretrain checkpoint (no extra_state['tera'])")
    return raw, TrainingState.from_dict(raw["extra_state"]["tera"], path)


def read_training_state(path: str | Path) -> TrainingState:
    """The training state of a `tera pretrain` checkpoint (errors as
    `read_training_checkpoint`)."""
    return read_training_checkpoint(path)[1]


def is_training_checkpoint(raw: dict) -> bool:
    """Whether an unpickled fairseq-layout file is ours: `extra_state` holds a "tera" entry."""
    extra_state = to_plain(raw.get("extra_state"))
    return isinstance(extra_state, dict) and "tera" in extra_state


def load(path: Path, raw: dict) -> LoadedCheckpoint:
    """A training checkpoint as a model; its training state becomes the metadata."""
    model_cfg, task_cfg, _ = fairseq_configs(raw, path)
    metadata = dict(to_plain(raw["extra_state"])["tera"])
    dictionaries = dictionary_states(raw.get("task_state"))
    symbols = None if dictionaries is None else [d["symbols"] for d in dictionaries]
    return from_parts(path, "tera", model_cfg, task_cfg, raw["model"], symbols, metadata)
