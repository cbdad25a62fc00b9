"""Checkpoints: loading and converting between formats, one module per format.

Formats, detected from content (SPEC §2):
- "s3prl" (`s3prl.py`): s3prl's tera2 converted file, `{"task_cfg", "model_cfg",
  "model_weight", "dictionaries_symbols"}` (plain containers).
- "fairseq" (`fairseq.py`): the fork's raw checkpoint, `{"cfg": {"model", "task", ...},
  "model", "task_state", ...}` or an older one with `args` instead of `cfg`. It pickles
  `omegaconf` and fairseq objects: read by the restricted unpickler (`unpickler.py`), so no
  pickled code runs and neither fairseq nor omegaconf is needed.
- "tera" (`training.py`): our training checkpoint (`tera pretrain`), the fairseq layout with
  plain containers only, `extra_state["tera"]` holding the training state.
- "safetensors" (`safetensors_dir.py`): a folder with `model.safetensors`, `config.json` and
  a README card (`card.py`).
- "transformers" (`transformers_dir.py`): a folder `transformers.HubertModel` loads, with
  what it has no place for in `tera_extra.safetensors`.

Every format keeps everything a checkpoint says, so that A -> B -> A is exact: the s3prl and
fairseq exports carry only the reference config fields where s3prl / the fork read them, and
the rest (our own model options, extra task keys, the training summary) in a top-level
`tera_extra` entry that both readers ignore. Files are written atomically
(`tera.runs.files`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tera.checkpoint import fairseq, s3prl, safetensors_dir, training, transformers_dir
from tera.checkpoint.card import ARCHITECTURE_FIELDS, model_card, preset_name
from tera.checkpoint.common import (
    REFERENCE_MODEL_DEFAULTS,
    REFERENCE_TASK_DEFAULTS,
    LoadedCheckpoint,
    load_weights,
    reference_configs,
)
from tera.checkpoint.unpickler import read_torch_file
from tera.errors import UserError

__all__ = ["ARCHITECTURE_FIELDS", "FORMATS", "REFERENCE_MODEL_DEFAULTS",
           "REFERENCE_TASK_DEFAULTS", "LoadedCheckpoint", "convert_checkpoint",
           "load_checkpoint", "load_weights", "model_card", "preset_name", "reference_configs",
           "save_checkpoint"]

# What `save_checkpoint` writes: format name -> writer(ckpt, dst).
WRITERS = {"s3prl": s3prl.save, "fairseq": fairseq.save, "safetensors": safetensors_dir.save,
           "transformers": transformers_dir.save}
FORMATS = tuple(WRITERS)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                    ) -> LoadedCheckpoint:
    """Load a TERA2 checkpoint in any supported format (detected from its content); the model
    is returned in eval mode. Bad files raise `UserError` naming the file."""
    path = Path(path)
    if path.is_dir():
        if transformers_dir.is_transformers_dir(path):
            return transformers_dir.load(path, map_location)
        return safetensors_dir.load(path, map_location)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file or directory")
    raw = read_torch_file(path, map_location)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: not a TERA checkpoint (found a {type(raw).__name__})")
    if s3prl.is_s3prl(raw):
        return s3prl.load(path, raw)
    if fairseq.is_fairseq_layout(raw):
        if training.is_training_checkpoint(raw):
            return training.load(path, raw)
        return fairseq.load(path, raw)
    raise UserError(
        f"{path}: not a TERA checkpoint: expected s3prl keys (model_cfg, model_weight) or "
        f"fairseq keys (cfg/args, model); found {', '.join(map(str, list(raw)[:8]))}"
    )


def save_checkpoint(ckpt: LoadedCheckpoint, dst: str | Path, fmt: str) -> None:
    """Write `ckpt` as "s3prl" (a file), "fairseq" (a file), "safetensors" or "transformers"
    (a directory), atomically."""
    if fmt not in WRITERS:
        raise UserError(f"unknown checkpoint format {fmt!r}; choose one of {', '.join(FORMATS)}")
    WRITERS[fmt](ckpt, Path(dst))


def convert_checkpoint(src: str | Path, dst: str | Path, fmt: str) -> LoadedCheckpoint:
    """Load `src` (any format) and write it to `dst` as `fmt`; returns what was loaded."""
    if fmt not in FORMATS:
        raise UserError(f"unknown checkpoint format {fmt!r}; choose one of {', '.join(FORMATS)}")
    ckpt = load_checkpoint(src)
    save_checkpoint(ckpt, dst, fmt)
    return ckpt
