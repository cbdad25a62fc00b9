"""The fairseq fork's Hydra config files, read as they are.

    tera pretrain --config-dir <fairseq>/examples/tera/config/pretrain/exp \\
        --config-name tera_slim_200per_50flops_librispeech task.data=DIR task.label_dir=DIR

is the fork's command with the program's name swapped. Its files are Hydra YAML written for
fairseq: a `# @package _group_` header, `lr: [0.0005]` (fairseq's list of learning rates),
`adam_betas: (0.9,0.98)` (a Python tuple written as a string), `${model.label_rate}`
interpolations, `???` for what the command line must give, registry names (`_name: tera`),
and keys for HuBERT's labels, Hydra and fairseq's launcher that TERA2 has no use for.

`from_fork_layout` maps a merged preset (`_common.yaml` + the preset file, ours or the fork's)
onto tera-speech's keys and returns the keys it ignored; our own preset files are already in
that form and pass through unchanged. `ignored_reason` answers the same question for a
`key=value` override, so `task.label_dir=...` is accepted the same way.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tera.errors import UserError
from tera.model.config import REFERENCE_MODEL_DEFAULTS, TeraConfig

_NO_LABELS = "TERA2 reconstructs MFCC frames, it reads no k-means labels"
_TORCHRUN = "torchrun sets up the processes"
# Keys of the fork's files that tera-speech does not use, with the reason it gives.
IGNORED: dict[str, str] = {
    "task.label_dir": _NO_LABELS,
    "task.labels": _NO_LABELS,
    "task.label_rate": "the MFCC targets' rate is fixed: 100 Hz, stacked in pairs to 50 Hz",
    "hydra": "tera writes to checkpoint.save_dir and launches no jobs",
    "distributed_training.ddp_backend": _TORCHRUN,
    "distributed_training.distributed_world_size": _TORCHRUN,
    "distributed_training.distributed_port": _TORCHRUN,
    "distributed_training.nprocs_per_node": _TORCHRUN,
    "common.log_format": "tera always writes log.jsonl",
    "checkpoint.no_epoch_checkpoints": "tera writes no per-epoch checkpoints",
    "dataset.skip_invalid_size_inputs_valid_test":
        "utterances under task.min_sample_size are always skipped",
    "dataset.validate_interval": "tera validates every dataset.validate_interval_updates",
}
_HUBERT_OPTION = "HuBERT options TERA2 does not use"
# Keys whose value selects what tera-speech implements (registry names, the TERA loss on
# masked frames only): any other value cannot be honoured.
REQUIRED: dict[str, Any] = {
    "model._name": "tera",
    "task._name": "tera_pretraining",
    "criterion._name": "tera",
    "optimizer._name": "adam",
    "lr_scheduler._name": "polynomial_decay",
    "criterion.pred_masked_weight": 1.0,
    "criterion.pred_nomask_weight": 0.0,
}


def _model_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(TeraConfig)} - {"extra"}


def ignored_reason(key: str) -> str | None:
    """Why tera-speech ignores `section.key` (None when it uses it)."""
    key = key.lstrip("+")
    if key in IGNORED:
        return IGNORED[key]
    if key.split(".", 1)[0] == "hydra":
        return IGNORED["hydra"]
    section, _, name = key.partition(".")
    if section == "model" and name not in _model_fields():
        if name in REFERENCE_MODEL_DEFAULTS:
            return _HUBERT_OPTION
    return None


def ignored_line(keys: Iterable[str]) -> str:
    """One line naming the ignored keys, grouped by reason."""
    by_reason: dict[str, list[str]] = {}
    for key in keys:
        shown = "hydra.*" if key.split(".", 1)[0] == "hydra" else key
        group = by_reason.setdefault(ignored_reason(key) or "", [])
        if shown not in group:
            group.append(shown)
    return "; ".join(f"{', '.join(names)} ({reason})" for reason, names in by_reason.items())


def from_fork_layout(preset: DictConfig, common: DictConfig, path: Path
                     ) -> tuple[DictConfig, list[str]]:
    """(the config in tera-speech's keys, the keys ignored) of the preset file at `path`
    (named in errors), merged onto `common` (our `_common.yaml`).

    A file in the fork's layout (its model section names the registry entry, `_name: tera`)
    states its model completely: what it leaves out takes the fork's model defaults
    (`TeraConfig`'s, e.g. 768 wide for `exp/tera_base_473per_librispeech`), not the
    `_common.yaml` model section our own presets start from."""
    base = common.copy()
    if OmegaConf.select(preset, "model._name") is not None:
        base.model = {}
    cfg = OmegaConf.merge(base, preset)
    ignored = ["hydra"] if cfg.pop("hydra", None) is not None else []
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)  # `???` stays `???`
    except OmegaConfBaseException as err:
        raise UserError(f"{path}: cannot resolve an interpolation: {err}".splitlines()[0]
                        ) from err
    out: dict[str, dict] = {}
    for section, values in plain.items():
        if not isinstance(values, dict):
            raise UserError(f"{path}: section {section!r} should be a mapping of keys")
        for name, value in values.items():
            key = f"{section}.{name}"
            if key in REQUIRED:
                if value != REQUIRED[key]:
                    raise UserError(f"{path}: {key}: {value!r} is not supported; tera-speech "
                                    f"implements {REQUIRED[key]!r}")
            elif ignored_reason(key):
                ignored.append(key)
            else:
                for target, mapped in _mapped(key, value, path):
                    target_section, target_name = target.split(".", 1)
                    out.setdefault(target_section, {})[target_name] = mapped
    _check_known(out, common, path)
    return OmegaConf.create(out), ignored


def _mapped(key: str, value: Any, path: Path) -> list[tuple[str, Any]]:
    """(our key, our value) pairs for one of the fork's settings."""
    if key == "optimization.lr" and isinstance(value, list):
        if len(value) != 1:
            raise UserError(f"{path}: optimization.lr {value}: fairseq's per-epoch learning "
                            "rates are not supported, give one value")
        return [(key, value[0])]
    if key == "optimizer.adam_betas" and isinstance(value, str):
        try:
            betas = ast.literal_eval(value)
            betas = [float(b) for b in betas]
            if len(betas) != 2:
                raise ValueError
        except (ValueError, SyntaxError, TypeError):
            raise UserError(f"{path}: optimizer.adam_betas {value!r} is not two numbers") from None
        return [(key, betas)]
    if key == "criterion.loss_weights":  # the weights of HuBERT's extra losses: features_pen
        if not isinstance(value, list) or len(value) != 1:
            raise UserError(f"{path}: criterion.loss_weights {value!r}: TERA2 has one extra "
                            "loss (the feature penalty), give one weight")
        return [("criterion.feature_pen_weight", float(value[0]))]
    if key == "task.normalize":  # a task setting in the fork, a model one here (both kept)
        return [(key, value), ("model.normalize", value)]
    return [(key, value)]


def _check_known(cfg: dict, common: DictConfig, path: Path) -> None:
    known = {f"{s}.{k}" for s, values in common.items() for k in values}
    known |= {f"model.{name}" for name in _model_fields()}
    for section, values in cfg.items():
        for name in values:
            key = f"{section}.{name}"
            if key not in known:
                near = difflib.get_close_matches(key, sorted(known), n=6, cutoff=0.5)
                raise UserError(f"{path}: unknown config key {key!r}; valid keys near it: "
                                f"{', '.join(near) or ', '.join(sorted(common.keys()))}")
