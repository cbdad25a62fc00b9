"""Training configuration: a preset plus fairseq-hydra-style `section.key=value` overrides.

Every key a run may set is in the preset files (`configs/pretrain/_common.yaml`) or, for the
`model` section, a `TeraConfig` field; anything else is an error that lists the valid keys
closest to the one given. Values are parsed as YAML and must keep the type of the default
(the one override parser, `tera.runs.overrides`, shared with `tera downstream -o`).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tera.errors import UserError
from tera.model.config import TeraConfig
from tera.presets import canonical_name, read_preset
from tera.pretrain.fork_yaml import ignored_line, ignored_reason
from tera.pretrain.optim import ADAM_VARIANTS
from tera.runs.overrides import apply_overrides


def load_config(config_name: str, config_dir: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The resolved training config of a preset with overrides applied and validated.

    Keys the fairseq fork's files and commands carry that TERA2 does not use (`task.label_dir`,
    `hydra.*`, ...; see `tera.pretrain.fork_yaml`) are ignored, and named once on stderr."""
    cfg, ignored = read_preset(config_name, config_dir)
    for override in overrides:
        key = override.split("=", 1)[0]
        if "=" in override and ignored_reason(key):
            ignored.append(key.lstrip("+"))
        else:
            apply_override(cfg, override)
    if ignored:
        print(f"tera pretrain: ignoring keys TERA2 does not use: {ignored_line(ignored)}",
              file=sys.stderr)
    cfg.common.preset = canonical_name(config_name)
    validate(cfg)
    return cfg


def valid_keys(cfg: DictConfig) -> list[str]:
    keys = [f"{section}.{key}" for section, values in cfg.items() if section != "model"
            for key in values]
    model_fields = [f.name for f in dataclasses.fields(TeraConfig) if f.name != "extra"]
    return sorted(set(keys) | {f"model.{name}" for name in model_fields})


def apply_override(cfg: DictConfig, override: str) -> None:
    """Apply one `section.key=value` override in place (typed: `tera.runs.overrides`)."""
    apply_overrides(cfg, [override], known=valid_keys(cfg), default_of=_model_default)


def _model_default(key: str) -> Any:
    """The `TeraConfig` default of a `model.*` key the preset does not set."""
    fields = {f.name: f for f in dataclasses.fields(TeraConfig)}
    name = key.split(".", 1)[1] if key.startswith("model.") else ""
    return fields[name].default if name in fields else None


def validate(cfg: DictConfig) -> None:
    """Checks that catch a bad run before it starts."""
    if OmegaConf.is_missing(cfg.task, "data"):
        raise UserError("task.data is not set: give the folder with train.tsv / valid.tsv "
                        "(e.g. task.data=DIR, see `tera manifest`)")
    TeraConfig.from_dict(OmegaConf.to_container(cfg.model, resolve=True))
    positive = ["optimization.max_update", "dataset.max_tokens", "task.max_sample_size",
                "optimization.update_freq", "common.log_interval"]
    for key in positive:
        if OmegaConf.select(cfg, key) <= 0:
            raise UserError(f"{key} must be positive, got {OmegaConf.select(cfg, key)}")
    if cfg.task.min_sample_size > cfg.task.max_sample_size:
        raise UserError("task.min_sample_size is larger than task.max_sample_size")
    if cfg.dataset.max_tokens < cfg.task.min_sample_size:
        raise UserError("dataset.max_tokens is smaller than one utterance of "
                        "task.min_sample_size: no batch could be formed")
    for key in ("dataset.required_batch_size_multiple", "common.max_consecutive_skips"):
        if OmegaConf.select(cfg, key) < 1:
            raise UserError(f"{key} must be at least 1, got {OmegaConf.select(cfg, key)}")
    if cfg.optimizer.adam_variant not in ADAM_VARIANTS:
        raise UserError(f"optimizer.adam_variant must be one of {', '.join(ADAM_VARIANTS)}, "
                        f"got {cfg.optimizer.adam_variant!r}")


def to_plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)
