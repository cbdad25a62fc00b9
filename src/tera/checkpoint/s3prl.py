"""s3prl's tera2 converted file: `{"task_cfg", "model_cfg", "model_weight",
"dictionaries_symbols"}`, plain containers, read with `weights_only=True`.

The export carries exactly the reference `TeraConfig` / `TeraPretrainingConfig` fields, so
s3prl's `load_converted_model` builds the model and loads the weights strictly; everything
else goes in a top-level `tera_extra` entry that s3prl does not read.
"""

from __future__ import annotations

from pathlib import Path

from tera.checkpoint.common import (
    LoadedCheckpoint,
    beyond_reference,
    from_parts,
    labelled_weights,
    reference_configs,
    section,
    weights_for_export,
)
from tera.runs.files import save_torch


def is_s3prl(raw: dict) -> bool:
    """Whether an unpickled file has s3prl's converted layout (`model_cfg`, `model_weight`)."""
    return "model_weight" in raw and "model_cfg" in raw


def load(path: Path, raw: dict) -> LoadedCheckpoint:
    """The checkpoint in s3prl's layout `raw` (read from `path`), its `tera_extra` entry
    laid over the reference fields; a config or weights that do not fit raise `UserError`."""
    extra = raw.get("tera_extra") or {}
    model_cfg = {**section(raw["model_cfg"], path, "model_cfg"), **extra.get("model_cfg", {})}
    task_cfg = {**section(raw.get("task_cfg"), path, "task_cfg"), **extra.get("task_cfg", {})}
    return from_parts(path, "s3prl", model_cfg, task_cfg, raw["model_weight"],
                      raw.get("dictionaries_symbols"), extra.get("metadata") or {})


def save(ckpt: LoadedCheckpoint, dst: Path) -> None:
    """Write `ckpt` to the file `dst` in s3prl's layout (reference fields only, the rest in
    `tera_extra`), atomically."""
    model_cfg, task_cfg = reference_configs(ckpt)
    state, symbols = labelled_weights(ckpt, weights_for_export(ckpt))
    save_torch({"task_cfg": task_cfg, "model_cfg": model_cfg, "model_weight": state,
                "dictionaries_symbols": symbols, "tera_extra": beyond_reference(ckpt)}, dst)
