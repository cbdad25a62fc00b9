"""Training configuration: a preset plus fairseq-hydra-style `section.key=value` overrides.

Every key a run may set is in the preset files (`configs/pretrain/_common.yaml`) or, for the
`model` section, a `TeraConfig` field; anything else is an error that lists the valid keys
closest to the one given. Values are parsed as YAML and must keep the type of the default
(the one override parser, `tera.runs.overrides`, shared with `tera downstream -o`); a
preset file's values are held to the same types. Ranges and choices are declared once, in
`RULES` (the model's in `TeraConfig`), and everything is checked when the config is built,
before any data is read: one line naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tera.errors import UserError
from tera.model.config import TeraConfig
from tera.presets import COMMON, canonical_name, preset_dir, preset_file, read_preset
from tera.presets.fork_layout import ignored_line, ignored_reason
from tera.pretrain.devices import BACKENDS, DEVICES
from tera.pretrain.optim import ADAM_VARIANTS
from tera.runs.overrides import apply_overrides, coerce


def load_config(config_name: str, config_dir: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The resolved training config of a preset with overrides applied and validated.

    Keys the fairseq fork's files and commands carry that TERA2 does not use (`task.label_dir`,
    `hydra.*`, ...; see `tera.presets.fork_layout`) are ignored, and named once on stderr."""
    cfg, ignored = read_preset(config_name, config_dir)
    check_types(cfg, what=str(preset_file(config_name, config_dir)))  # before overrides
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
    """Every `section.key` a configuration accepts (the model's from TeraConfig's fields), for
    error messages."""
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
    """Checks that catch a bad run before it starts: every key's type (that of its default in
    `_common.yaml`) and range (`RULES`), the model's own checks and its size."""
    if OmegaConf.is_missing(cfg.task, "data"):
        raise UserError("task.data is not set: give the folder with train.tsv / valid.tsv "
                        "(e.g. task.data=DIR, see `tera manifest`)")
    check_types(cfg)
    for key, (allowed, meaning) in RULES.items():
        value = OmegaConf.select(cfg, key, default=None)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        if value is not None and not allowed(value):
            raise UserError(f"{key}={value!r}: expected {meaning}")
    model = TeraConfig.from_dict(OmegaConf.to_container(cfg.model, resolve=True))
    check_model_fits(model)
    if cfg.task.min_sample_size > cfg.task.max_sample_size:
        raise UserError("task.min_sample_size is larger than task.max_sample_size")
    if cfg.dataset.max_tokens < cfg.task.min_sample_size:
        raise UserError("dataset.max_tokens is smaller than one utterance of "
                        "task.min_sample_size: no batch could be formed")


# --- the schema: types from `_common.yaml`, ranges here -----------------------------------------


def _count(minimum: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _number(minimum: float, above: bool = False) -> Callable[[Any], bool]:
    def allowed(value: Any) -> bool:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value) and (value > minimum if above else value >= minimum))
    return allowed


def _one_of(*choices: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices), "one of " + ", ".join(choices)


def _betas(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and all(_number(0)(b) and b < 1 for b in value))


# key -> (allowed, what is allowed). Types come from the defaults (`check_types`).
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "common.seed": (lambda v: _count(0)(v) and v < 2**63, "an integer from 0 to 2**63 - 1"),
    "common.device": _one_of(*DEVICES),
    "common.amp": _one_of("auto", "bf16", "fp16", "fp32"),
    "common.log_interval": (_count(1), "an integer of at least 1"),
    "common.max_consecutive_skips": (_count(1), "an integer of at least 1"),
    "checkpoint.save_interval_updates": (_count(0), "an integer of at least 0 (0: never)"),
    "checkpoint.keep_interval_updates": (_count(-1), "an integer (0 or less: keep all)"),
    "distributed_training.distributed_backend": _one_of(*BACKENDS),
    "distributed_training.init_timeout": (_number(0, above=True), "a number of seconds above 0"),
    "task.sample_rate": (lambda v: v == 16000, "16000 (TERA2 reads 16 kHz audio)"),
    "task.max_sample_size": (_count(1), "an integer of at least 1"),
    "task.min_sample_size": (_count(0), "an integer of at least 0"),
    "dataset.max_tokens": (_count(1), "an integer of at least 1"),
    "dataset.required_batch_size_multiple": (_count(1), "an integer of at least 1"),
    "dataset.num_workers": (_count(0), "an integer of at least 0 (0: load in this process)"),
    "dataset.validate_interval_updates": (_count(0), "an integer of at least 0 (0: at the end)"),
    "criterion.feature_pen_weight": (_number(0), "a finite number of at least 0"),
    "criterion.target_norm": _one_of("none", "dataset", "utterance"),
    "optimization.max_update": (_count(1), "an integer of at least 1"),
    "optimization.lr": (_number(0), "a finite learning rate of at least 0"),
    "optimization.clip_norm": (_number(0), "a finite number of at least 0 (0: no clipping)"),
    "optimization.update_freq": (_count(1), "an integer of at least 1"),
    "optimizer.adam_betas": (_betas, "two numbers in [0, 1), e.g. [0.9, 0.98]"),
    "optimizer.adam_variant": _one_of(*ADAM_VARIANTS),
    "optimizer.adam_eps": (_number(0), "a finite number of at least 0"),
    "optimizer.weight_decay": (_number(0), "a finite number of at least 0"),
    "lr_scheduler.warmup_updates": (_count(0), "an integer of at least 0"),
    "lr_scheduler.end_learning_rate": (_number(0), "a finite number of at least 0"),
    "lr_scheduler.power": (_number(0, above=True), "a finite number above 0"),
}


def check_types(cfg: DictConfig, what: str = "config") -> None:
    """Every key outside `model` has the type of its default in the packaged `_common.yaml`
    (a preset file or a fork file saying `max_update: abc` is named here, not mid-run);
    values are converted where the override parser would (`[0.0005]` -> 0.0005)."""
    defaults = OmegaConf.load(preset_dir() / f"{COMMON}.yaml")
    for section, values in cfg.items():
        if section == "model" or not isinstance(values, DictConfig):
            continue
        for key in values:
            name = f"{section}.{key}"
            default = OmegaConf.select(defaults, name, default=None, throw_on_missing=False)
            value = OmegaConf.select(cfg, name, default=None, throw_on_missing=False)
            if OmegaConf.is_config(value):
                value = OmegaConf.to_container(value, resolve=True)
            if default is not None and value is not None:
                OmegaConf.update(cfg, name, coerce(name, value, default, what), merge=False)


def check_model_fits(model: TeraConfig) -> None:
    """Refuse a model whose fp32 weights alone exceed this machine's memory: building it
    would end in an allocator error (the model is built on the CPU first)."""
    from tera.presets import count_parameters

    needed = 4 * count_parameters(model)
    available = _physical_memory()
    if available and needed > available:
        raise UserError(f"the model (model.encoder_layers={model.encoder_layers}, "
                        f"encoder_embed_dim={model.encoder_embed_dim}, encoder_ffn_embed_dim="
                        f"{model.encoder_ffn_embed_dim}) needs {needed / 2**30:,.1f} GiB for "
                        f"its weights alone; this machine has {available / 2**30:,.1f} GiB")


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no check
        return None


def to_plain(cfg: DictConfig) -> dict:
    """The configuration as plain dicts and lists, interpolations resolved (what checkpoints
    store)."""
    return OmegaConf.to_container(cfg, resolve=True)
