"""Our training checkpoint (`tera pretrain`'s `checkpoint_*.pt`): the fairseq fork's layout
written with plain containers only (read with `weights_only=True`), the training state in
`extra_state["tera"]`."""

from __future__ import annotations

from pathlib import Path

from tera.checkpoint.common import LoadedCheckpoint, from_parts
from tera.checkpoint.fairseq import dictionary_states, fairseq_configs
from tera.checkpoint.unpickler import to_plain


def is_training_checkpoint(raw: dict) -> bool:
    extra_state = to_plain(raw.get("extra_state"))
    return isinstance(extra_state, dict) and "tera" in extra_state


def load(path: Path, raw: dict) -> LoadedCheckpoint:
    model_cfg, task_cfg, _ = fairseq_configs(raw, path)
    metadata = dict(to_plain(raw["extra_state"])["tera"])
    dictionaries = dictionary_states(raw.get("task_state"))
    symbols = None if dictionaries is None else [d["symbols"] for d in dictionaries]
    return from_parts(path, "tera", model_cfg, task_cfg, raw["model"], symbols, metadata)
