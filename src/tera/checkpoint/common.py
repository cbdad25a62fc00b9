"""What every format shares: the loaded checkpoint, the reference config fields, building
the model from a file's parts, and the split between reference fields and our own."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tera.audio import SAMPLE_RATE
from tera.checkpoint.unpickler import to_plain
from tera.errors import UserError
from tera.model.config import (
    REFERENCE_MODEL_DEFAULTS,
    REFERENCE_TASK_DEFAULTS,
    TeraConfig,
)
from tera.model.tera import TeraModel


@dataclass
class LoadedCheckpoint:
    """A model with the configuration it came with, whatever the file format.

    task_cfg: the task section (the reference task fields, filled with their defaults, plus
    any other key the file had, e.g. the fork's `data` / `labels`).
    dictionaries_symbols: the HuBERT label dictionaries' symbols (one list per dictionary),
    None when the checkpoint has none (then the model has no `label_embs_concat`).
    metadata: what else is known: `preset`, `update`, the training summary of our own runs
    (`wall_time_s`, `audio_seconds`, `train_flops`), and for the fork's files a `fairseq`
    entry with the other config sections, `optimizer_history`, `extra_state` and the label
    dictionaries' full state, so that an export back to the fork loses nothing.
    """

    model: TeraModel
    model_cfg: TeraConfig
    task_cfg: dict[str, Any]
    dictionaries_symbols: list[list[str]] | None
    source_format: str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)


def section(value: Any, path: Path, name: str) -> dict:
    """A config section as a plain dict ({} when absent); anything but a mapping raises
    `UserError` naming the file and the section."""
    value = to_plain(value)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{path}: {name} should be a mapping, found a {type(value).__name__}")
    return dict(value)


def from_parts(path: Path, fmt: str, model_cfg: dict, task_cfg: dict, state: Any,
               dictionaries: list | None, metadata: dict) -> LoadedCheckpoint:
    """Build the model of a checkpoint from its config sections and weights, in eval mode;
    a config TERA2 cannot build or weights that do not fit raise `UserError` naming `path`."""
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{path}: the model weights are not a state dict of tensors")
    if dictionaries is not None and not (
        isinstance(dictionaries, list)
        and all(d is None or isinstance(d, list) for d in dictionaries)
    ):
        raise UserError(f"{path}: dictionaries_symbols should be a list of symbol lists")
    # The reference defaults (TeraConfig's, plus the fields TERA2 does not use), so that a
    # config reads the same whichever format dropped or added the unused fields.
    model_cfg = {**copy.deepcopy(REFERENCE_MODEL_DEFAULTS), **model_cfg}
    # Waveform standardisation is a task setting in the reference, a model one here.
    model_cfg["normalize"] = bool(model_cfg.get("normalize") or task_cfg.get("normalize"))
    try:
        cfg = TeraConfig.from_dict(model_cfg)
    except (UserError, TypeError) as err:
        raise UserError(f"{path}: model config does not fit TERA2: {err}") from err
    task_cfg = {**REFERENCE_TASK_DEFAULTS, **task_cfg, "normalize": cfg.normalize}
    if task_cfg["sample_rate"] != SAMPLE_RATE:  # an upstream is fed 16 kHz audio
        raise UserError(f"{path}: the model was trained on {task_cfg['sample_rate']} Hz audio "
                        f"(task sample_rate); TERA2 reads {SAMPLE_RATE} Hz audio only")
    state, dictionaries = _without_empty_labels(state, dictionaries)
    labels = state.get("label_embs_concat")
    try:
        with torch.device("meta"):  # shapes only: the weights come from the checkpoint
            model = TeraModel(cfg, num_label_classes=0 if labels is None else labels.shape[0])
    except (TypeError, ValueError) as err:
        raise UserError(f"{path}: model config does not fit TERA2: {err}") from err
    load_weights(model, state, path)
    model.eval()
    return LoadedCheckpoint(model, cfg, task_cfg, dictionaries, fmt, path, metadata)


def _without_empty_labels(state: dict, dictionaries: list | None) -> tuple[dict, list | None]:
    """Exports of a model without label dictionaries carry an empty `label_embs_concat`
    [0, D] and one empty dictionary (what s3prl's and the fork's builders make of that):
    read back, that is no dictionary at all."""
    if dictionaries is not None and any(d is None for d in dictionaries):
        dictionaries = None  # s3prl's marker of a fine-tuned model without labels
    labels = state.get("label_embs_concat")
    if labels is not None and labels.shape[0] == 0:
        state = {k: v for k, v in state.items() if k != "label_embs_concat"}
        if dictionaries is not None and not any(dictionaries):
            dictionaries = None
    return state, dictionaries


def checked_weights(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                    path: Path | str) -> dict[str, torch.Tensor]:
    """`state` with exactly the names of `expected` (the positional conv's
    `parametrizations.weight.original0/1` renamed to `weight_g/v`), each of the expected
    shape and finite; else a `UserError` naming the file and the first key at fault."""
    state = dict(state)
    for old, new in (("original0", "weight_g"), ("original1", "weight_v")):
        key = f"encoder.pos_conv.0.parametrizations.weight.{old}"
        if key in state:
            state[f"encoder.pos_conv.0.{new}"] = state.pop(key)
    for name, tensor in expected.items():
        if name not in state:
            raise UserError(f"{path}: checkpoint lacks weight {name!r} {tuple(tensor.shape)}")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise UserError(
                f"{path}: weight {name!r} has shape {tuple(state[name].shape)}, the config "
                f"expects {tuple(tensor.shape)}"
            )
    unexpected = [name for name in state if name not in expected]
    if unexpected:
        raise UserError(f"{path}: unexpected weight {unexpected[0]!r} for a TERA2 model")
    for name in expected:
        weight = state[name]
        if weight.is_floating_point() and not bool(torch.isfinite(weight).all()):
            bad = int((~torch.isfinite(weight)).sum())
            raise UserError(f"{path}: weight {name!r} has {bad} NaN or infinite values: the "
                            "run that wrote it diverged; use an earlier checkpoint")
    return state


def load_weights(model: TeraModel, state: dict[str, torch.Tensor], path: Path) -> None:
    """Strict load with an error that names the file and the first key that does not fit
    (or is not finite).

    The model's own tensors are replaced by the checkpoint's (cast to the model's dtypes), so
    it may be built on the meta device."""
    expected = model.state_dict()
    state = checked_weights(state, expected, path)
    state = {name: state[name].to(tensor.dtype) for name, tensor in expected.items()}
    model.load_state_dict(state, strict=True, assign=True)


# --- what the reference fields hold, and what they cannot -------------------------------------


def reference_configs(ckpt: LoadedCheckpoint) -> tuple[dict, dict]:
    """(model_cfg, task_cfg) with exactly the reference fields, our values on top."""
    ours = ckpt.model_cfg.to_dict()
    model_cfg = {k: ours.get(k, default) for k, default in REFERENCE_MODEL_DEFAULTS.items()}
    task_cfg = {k: ckpt.task_cfg.get(k, default) for k, default in REFERENCE_TASK_DEFAULTS.items()}
    task_cfg["normalize"] = bool(ckpt.model_cfg.normalize)
    return model_cfg, task_cfg


def beyond_reference(ckpt: LoadedCheckpoint) -> dict:
    """What the reference fields cannot hold (the `tera_extra` entry of s3prl and fairseq
    exports): our model options (`normalize` travels as the task's), extra task keys and the
    metadata."""
    ours = ckpt.model_cfg.to_dict()
    return {
        "model_cfg": {k: v for k, v in ours.items()
                      if k not in REFERENCE_MODEL_DEFAULTS and k != "normalize"},
        "task_cfg": {k: v for k, v in ckpt.task_cfg.items() if k not in REFERENCE_TASK_DEFAULTS},
        "metadata": ckpt.metadata,
    }


def labelled_weights(ckpt: LoadedCheckpoint, state: dict) -> tuple[dict, list[list[str]]]:
    """State and dictionaries as s3prl's and the fork's builders expect them: one
    `label_embs_concat` row per dictionary symbol, an empty one when there are none."""
    labels = state.get("label_embs_concat")
    symbols = ckpt.dictionaries_symbols
    if labels is None:
        cfg = ckpt.model_cfg
        final_dim = cfg.final_dim if cfg.final_dim > 0 else cfg.encoder_embed_dim
        return {**state, "label_embs_concat": torch.zeros(0, final_dim)}, [[]]
    if symbols is None:  # a checkpoint without its dictionaries: name the rows by number
        return state, [[str(i) for i in range(labels.shape[0])]]
    rows = sum(len(s) for s in symbols)
    if rows != labels.shape[0]:
        raise UserError(
            f"{ckpt.path}: the label dictionaries have {rows} symbols but label_embs_concat "
            f"has {labels.shape[0]} rows; s3prl and fairseq could not load the export"
        )
    return state, symbols


def weights_for_export(ckpt: LoadedCheckpoint) -> dict[str, torch.Tensor]:
    """The model's state dict on the CPU, contiguous (what every writer stores)."""
    return {k: v.detach().cpu().contiguous() for k, v in ckpt.model.state_dict().items()}
