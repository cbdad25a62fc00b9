"""Training configuration: a preset plus fairseq-hydra-style `section.key=value` overrides.

Every key a run may set is in the preset files (`configs/pretrain/_common.yaml`) or, for the
`model` section, a `TeraConfig` field; anything else is an error that lists the valid keys
closest to the one given. Values are parsed as YAML and must keep the type of the default.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from tera.errors import UserError
from tera.model.config import TeraConfig
from tera.presets import canonical_name, read_preset
from tera.pretrain.fork_yaml import ignored_line, ignored_reason


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
    """Apply one `section.key=value` override in place."""
    if "=" not in override:
        raise UserError(f"override {override!r} is not of the form section.key=value")
    key, text = override.split("=", 1)
    key = key.lstrip("+")
    known = valid_keys(cfg)
    if key not in known:
        near = difflib.get_close_matches(key, known, n=6, cutoff=0.5)
        section = key.split(".", 1)[0]
        same_section = [k for k in known if k.startswith(section + ".")]
        hint = near or same_section[:12] or sorted({k.split('.')[0] for k in known})
        raise UserError(f"unknown config key {key!r}; valid keys near it: {', '.join(hint)}")
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError as err:
        raise UserError(f"override {override!r}: cannot parse the value: {err}") from err
    default = OmegaConf.select(cfg, key, throw_on_missing=False)
    if default is None and key.startswith("model."):
        field = {f.name: f for f in dataclasses.fields(TeraConfig)}[key.split(".", 1)[1]]
        default = field.default
    OmegaConf.update(cfg, key, _coerce(key, value, default), force_add=True)


def _coerce(key: str, value: Any, default: Any) -> Any:
    if default is None:  # unset (`???`) or optional: any value
        return value
    expected = type(default)
    if expected is bool:
        if isinstance(value, bool):
            return value
    elif expected is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif expected is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif expected is str:
        return str(value)
    elif isinstance(default, (list, tuple)) or OmegaConf.is_list(default):
        if isinstance(value, list):
            return value
    else:
        return value
    raise UserError(f"config key {key!r} expects a {expected.__name__}, got {value!r}")


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


def to_plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)
