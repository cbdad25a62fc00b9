"""The downstream recipe's schema: every key a recipe may set, its type, range and meaning,
declared once and checked when the configuration is built, before any data is read.

    check_recipe("ks", cfg, what="ks.yaml")   # UserError: one line naming key and value

A recipe is the task's YAML file (`configs/downstream/<task>.yaml`, or a `-c` file in the
same form), its profile, then s3prl's `-o` overrides (`tera.runs.overrides`, the one
parser). Keys outside `RULES` that a recipe file carries are kept (s3prl's files hold
more); an override must name a key the recipe has or one declared here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tera.errors import UserError
from tera.runs.overrides import apply_overrides, leaf_keys, s3prl_overrides
from tera.yaml_files import read_yaml_mapping

Rule = tuple[Callable[[Any], bool], str]

_ABSENT = object()


def _count(minimum: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _number(minimum: float = -math.inf, above: bool = False,
            below: float = math.inf) -> Callable[[Any], bool]:
    def allowed(value: Any) -> bool:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value) and value < below
                and (value > minimum if above else value >= minimum))
    return allowed


def _flag(value: Any) -> bool:
    return isinstance(value, bool)


def _text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _optional(rule: Rule) -> Rule:
    """`rule`, or null (the recipe's "not used" / "the default")."""
    allowed, meaning = rule
    return (lambda v: v is None or allowed(v)), f"{meaning}, or null"


def _lexicons(value: Any) -> bool:
    return value is None or _text(value) or (
        isinstance(value, list) and all(_text(v) for v in value))


def _one_of(*choices: str) -> Rule:
    return (lambda v: v in choices), "one of " + ", ".join(choices)


COUNT = (_count(1), "an integer of at least 1")
SIZE = (_count(0), "an integer of at least 0")
FLAG = (_flag, "true or false")
TEXT = (_text, "a non-empty string")
GAIN = (_number(), "a finite number of decibels")

# key -> (allowed, what is allowed); keys every task's recipe reads.
COMMON: dict[str, Rule] = {
    "featurizer.layer_norm": FLAG,
    "featurizer.standardize": FLAG,
    "optimizer.name": _one_of("Adam", "AdamW"),
    "optimizer.lr": (_number(0), "a finite learning rate of at least 0"),
    "runner.total_steps": COUNT,
    "runner.batch_size": _optional((_count(1), "utterances per training batch, at least 1")),
    "runner.batch_samples": (_count(1), "samples of padded audio per batch, at least 1"),
    "runner.gradient_accumulate_steps": COUNT,
    "runner.gradient_clipping": (_number(0, above=True), "a finite number above 0"),
    "runner.log_step": COUNT,
    "runner.eval_step": COUNT,
    "runner.save_step": COUNT,
    "runner.max_keep": (_count(0), "an integer of at least 0 (0: keep all)"),
    "runner.test_checkpoints_every": _optional(COUNT),
}
# The keys a recipe cannot do without (the others have defaults in the code).
REQUIRED_KEYS = ("optimizer.lr", "runner.total_steps", "runner.batch_samples",
                 "runner.gradient_accumulate_steps", "runner.gradient_clipping",
                 "runner.log_step", "runner.eval_step", "runner.save_step",
                 "runner.max_keep", "featurizer.layer_norm")

_SPLITS = {f"datarc.{name}": TEXT for name in ("train_split", "dev_split", "test_split")}
_BUCKETS = {
    "datarc.batch_size": _optional(COUNT),
    "datarc.half_batch_above": _optional(SIZE),
    "datarc.bucketing": _one_of("consecutive", "sliding"),
}
_CROP = (_count(1), "samples of a random training crop, at least 1")

# task -> its `downstream_expert.*` keys
TASK_RULES: dict[str, dict[str, Rule]] = {
    "ks": {
        "datarc.split": _one_of("hash", "lists"),
        "datarc.test_release": _one_of("required", "optional"),
        "datarc.gain_db": GAIN,
        "modelrc.probe": _one_of("linear", "mlp"),
        "modelrc.projector_dim": _optional(COUNT),
        "modelrc.hidden_size": _optional(COUNT),
    },
    "sid": {
        "datarc.max_timestep": _optional(_CROP),
        "modelrc.projector_dim": _optional(COUNT),
    },
    "asv": {
        "datarc.trial_list": TEXT,
        "datarc.dev_trials": _optional(TEXT),
        "datarc.gain_db": GAIN,
        "datarc.trim_silence": FLAG,
        "datarc.min_samples": SIZE,
        "datarc.max_timestep": _optional(_CROP),
        "modelrc.architecture": _one_of("superb", "compact"),
        "modelrc.channels": COUNT,
        "modelrc.pooled_channels": COUNT,
        "modelrc.embedding_size": COUNT,
        "modelrc.margin": (_number(0), "a finite number of at least 0"),
        "modelrc.scale": (_number(0, above=True), "a finite number above 0"),
    },
    "asr": {
        **_SPLITS, **_BUCKETS,
        "datarc.vocabulary": _one_of("char.dict", "learned"),
        "modelrc.project_dim": COUNT,
        "modelrc.hidden_size": COUNT,
        "modelrc.num_layers": COUNT,
        "modelrc.dropout": (_number(0, below=1), "a number in [0, 1)"),
        "modelrc.dropout_after_each_layer": FLAG,
        "modelrc.layer_norm": FLAG,
        "modelrc.proj": FLAG,
    },
    "pr": {
        **_SPLITS, **_BUCKETS,
        "datarc.vocabulary": _one_of("phoneme.txt", "learned"),
        "datarc.lexicon": (_lexicons, "a lexicon file, a list of them, or null"),
        "modelrc.project_dim": _optional(COUNT),
    },
}


def rules(task: str) -> dict[str, Rule]:
    """Every declared key of `task`'s recipe -> (allowed, what is allowed)."""
    return {**COMMON, **{f"downstream_expert.{key}": rule
                         for key, rule in TASK_RULES[task].items()}}


def declared_keys(task: str) -> list[str]:
    """The keys an override may set even where the recipe does not hold them."""
    return list(rules(task))


def check_recipe(task: str, cfg: DictConfig, what: str = "downstream config") -> None:
    """Refuse a recipe with a section or required key missing, or a value of the wrong type
    or out of range: one line naming `what`, the key, the value and what is allowed."""
    for section in ("downstream_expert", "featurizer", "optimizer", "runner"):
        if not isinstance(cfg.get(section), DictConfig):
            raise UserError(f"{what}: section {section!r} is missing (a recipe holds "
                            "downstream_expert, featurizer, optimizer and runner)")
    for key in REQUIRED_KEYS:
        if OmegaConf.select(cfg, key, default=None, throw_on_missing=False) is None:
            raise UserError(f"{what}: {key} is missing; expected {rules(task)[key][1]}")
    for key, (allowed, meaning) in rules(task).items():
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
        if value is _ABSENT:  # absent: the code's default
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        if not allowed(value):
            raise UserError(f"{what}: {key}={value!r}: expected {meaning}")


# --- loading: the file, its profile, the overrides -----------------------------------------


def recipe_path(task: str) -> Path:
    """The task's built-in recipe, `configs/downstream/<task>.yaml` in the package."""
    return Path(str(resources.files("tera") / "configs" / "downstream" / f"{task}.yaml"))


# s3prl's SUPERB recipe files (`-c` paths inside s3prl/s3prl) and the task each one is.
S3PRL_RECIPES = {
    "downstream/asr/config.yaml": "asr",
    "downstream/ctc/libriphone.yaml": "pr",
    "downstream/speech_commands/config.yaml": "ks",
    "downstream/voxceleb1/config.yaml": "sid",
    "downstream/sv_voxceleb1/config.yaml": "asv",
    "downstream/sv_voxceleb1/configs/amsoftmax.yaml": "asv",
}


def recipe_file(task: str, config: str | Path | None) -> Path:
    """The recipe `-c config` names: none or one of s3prl's recipe paths
    (`downstream/ctc/libriphone.yaml`, from any folder) is the task's built-in recipe, any
    other path a recipe file in tera-speech's format."""
    if config is None:
        return recipe_path(task)
    parts = Path(config).parts
    s3prl = next((S3PRL_RECIPES[tail] for n in (3, 4)
                  if (tail := "/".join(parts[-n:])) in S3PRL_RECIPES), None)
    if s3prl is not None:
        if s3prl != task:
            raise UserError(f"-c {config} is s3prl's {s3prl} recipe, not one for {task}")
        return recipe_path(task)
    if not Path(config).is_file():
        raise UserError(f"{config}: no such recipe file (s3prl's recipe paths "
                        f"{', '.join(S3PRL_RECIPES)} name the built-in recipes)")
    return Path(config)


def load_recipe(task: str, config: str | Path | None, profile: str | None,
                overrides: list[str]) -> DictConfig:
    """The recipe of `task` (`-c config`, else the built-in one) with `profile` applied
    (`embedded` for the embedded corpus, None for real data), then the `-o` overrides;
    checked before and after the overrides."""
    path = recipe_file(task, config)
    cfg = read_yaml_mapping(path, "recipe", "downstream_expert, featurizer, optimizer, runner")
    profiles = cfg.pop("profiles", None) or {}
    if profile:
        if not isinstance(profiles, DictConfig) or profile not in profiles:
            raise UserError(f"{path}: recipe {task} has no profile {profile!r}")
        try:
            for key, value in profiles[profile].items():
                OmegaConf.update(cfg, key, value, merge=True)
        except Exception as err:  # a profile entry that does not fit the recipe's sections
            raise UserError(f"{path}: profile {profile!r} does not apply: "
                            f"{' '.join(str(err).split())}") from err
    check_recipe(task, cfg, what=str(path))  # the file's own mistakes name the file
    apply_recipe_overrides(task, cfg, overrides)
    check_recipe(task, cfg)
    return cfg


def apply_recipe_overrides(task: str, cfg: DictConfig, overrides: list[str]) -> None:
    """s3prl's `-o` overrides: a key the recipe holds or one the schema declares."""
    apply_overrides(cfg, overrides, known=leaf_keys(cfg) + declared_keys(task),
                    what="downstream config")


def parse_overrides(text: str | None) -> list[str]:
    """s3prl's `-o "config.optimizer.lr=1e-4,,config.runner.total_steps=10"`."""
    return s3prl_overrides(text)
