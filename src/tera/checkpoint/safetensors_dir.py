"""A safetensors checkpoint: a folder with `model.safetensors` (the weights, fairseq / s3prl
names), `config.json` (`format_version`, `model_cfg`, `task_cfg`, `dictionaries_symbols`,
`metadata`) and a README model card."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from tera.checkpoint.card import model_card
from tera.checkpoint.common import LoadedCheckpoint, from_parts, weights_for_export
from tera.checkpoint.unpickler import first_line
from tera.errors import UserError
from tera.runs.files import ensure_folder, read_json, save_safetensors, write_json, write_text

FORMAT_VERSION = 1


def load(path: Path, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """The checkpoint in the folder `path` (weights on `map_location`); a missing file, an
    unreadable header or another `format_version` raises `UserError` naming it."""
    weights, config = path / "model.safetensors", path / "config.json"
    if not weights.is_file() or not config.is_file():
        raise UserError(f"{path}: a safetensors checkpoint directory needs model.safetensors "
                        "and config.json")
    meta = read_json(config)
    try:
        state = load_file(str(weights), device=str(map_location))
    except Exception as err:  # safetensors header errors
        raise UserError(f"{path}: unreadable safetensors checkpoint ({first_line(err)})") from err
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION or not isinstance(meta.get("model_cfg"), dict):
        raise UserError(f"{config}: expected format_version {FORMAT_VERSION} and a "
                        f"model_cfg mapping, found format_version {version!r}")
    return from_parts(path, "safetensors", meta["model_cfg"], meta.get("task_cfg") or {},
                      state, meta.get("dictionaries_symbols"), meta.get("metadata") or {})


def save(ckpt: LoadedCheckpoint, dst: Path) -> None:
    """Write `ckpt` into the folder `dst` (created if needed; a file there raises
    `UserError`), each file atomically."""
    if dst.exists() and not dst.is_dir():
        raise UserError(f"{dst}: a safetensors checkpoint is a directory, and this is a file")
    ensure_folder(dst)
    save_safetensors(weights_for_export(ckpt), dst / "model.safetensors")
    write_json(dst / "config.json", {
        "format_version": FORMAT_VERSION, "model_cfg": ckpt.model_cfg.to_dict(),
        "task_cfg": ckpt.task_cfg, "dictionaries_symbols": ckpt.dictionaries_symbols,
        "metadata": ckpt.metadata})
    write_text(dst / "README.md", model_card(ckpt))
