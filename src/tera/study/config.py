"""The study file: read, checked key by key against `STUDY_SCHEMA` before anything runs, and
its seeds.

    spec = study_config(None, quick=True)     # the shipped quick study
    seeds, pretraining = study_seeds(spec)    # ([0], False)
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tera.downstream import DEFAULT_SEED
from tera.downstream.tasks import task_names
from tera.errors import UserError
from tera.pretrain.config import load_config
from tera.yaml_files import read_yaml_mapping

# Seed k of a study runs its downstream jobs with `--seed 1337 + k` (1337: the runner's
# default) and, with `seeds.pretraining`, pre-trains with `common.seed=1337 + k` and draws
# its random TERA with torch seed k; seed 0 is what a study without seeds runs.
FIRST_SEED = DEFAULT_SEED


def study_config(path: str | Path | None, quick: bool) -> DictConfig:
    """The study file at `path` (None: the shipped quick or default study), checked."""
    if path is None:
        name = "quick.yaml" if quick else "default.yaml"
        path = Path(str(resources.files("tera") / "configs" / "study" / name))
    path = Path(path)
    spec = read_yaml_mapping(path, "study file", "corpus, pretrain, downstream, ...")
    check_study(spec, path)
    return spec


# --- the study file's schema: each key's type and range, checked before anything runs ----------


def _is_count(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_share(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def _is_list_of(check) -> object:  # noqa: ANN001
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


_TASK_NAMES = tuple(task_names())

# key -> (allowed, what is allowed, required)
STUDY_SCHEMA = {
    "title": (lambda v: isinstance(v, str), "a string", False),
    "corpus.preset": (lambda v: v in ("small", "default"), "small or default", True),
    "corpus.seed": (lambda v: _is_count(v, 0), "an integer of at least 0", True),
    "corpus.root": (lambda v: v is None or isinstance(v, str), "a folder or null", False),
    "pretrain.preset": (lambda v: isinstance(v, str) and v != "", "a preset name", True),
    "pretrain.overrides": (_is_list_of(lambda x: isinstance(x, str)),
                           "a list of KEY=VALUE strings", False),
    "pretrain.budget_updates": (lambda v: _is_count(v, 1), "an integer of at least 1", True),
    "pretrain.budgets": (lambda v: _is_list_of(_is_share)(v) and len(v) > 0,
                         "a non-empty list of numbers above 0", True),
    "pretrain.sizes": (lambda v: isinstance(v, dict) and len(v) > 0 and all(
        _is_share(size) and isinstance(extra, dict) for size, extra in v.items()),
        "a mapping of sizes (numbers above 0) to override mappings", True),
    "downstream.tasks": (_is_list_of(lambda x: x in _TASK_NAMES),
                         f"a list of tasks among {', '.join(_TASK_NAMES)}", True),
    "downstream.baselines": (_is_list_of(lambda x: x in ("fbank", "random")),
                             "a list among fbank, random", False),
    "downstream.overrides": (lambda v: isinstance(v, dict) and all(
        k in _TASK_NAMES and _is_list_of(lambda x: isinstance(x, str))(o)
        for k, o in v.items()), "a mapping of task to a list of KEY=VALUE strings", False),
    "seeds.count": (lambda v: _is_count(v, 1), "an integer of at least 1", False),
    "seeds.pretraining": (lambda v: isinstance(v, bool), "true or false", False),
}

_ABSENT = object()


def check_study(spec: DictConfig, path: Path) -> None:
    """Every key of a study file against `STUDY_SCHEMA`, then each pre-training's config
    (the preset, its overrides and every size's), so that a mistake is one line naming the
    file and the key before the first job starts."""
    for key, (allowed, meaning, required) in STUDY_SCHEMA.items():
        value = OmegaConf.select(spec, key, default=_ABSENT, throw_on_missing=False)
        if value is _ABSENT or value is None:
            if required:
                raise UserError(f"{path}: {key} is missing: expected {meaning}")
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value)
        if not allowed(value):
            raise UserError(f"{path}: {key}={value!r}: expected {meaning}")
    for size, extra in spec.pretrain.sizes.items():
        overrides = [*spec.pretrain.get("overrides", []), *[f"{k}={v}" for k, v in extra.items()],
                     "task.data=."]
        try:
            load_config(spec.pretrain.preset, overrides=overrides)
        except UserError as err:
            raise UserError(f"{path}: pretrain (size {size}): {err}") from None


def study_seeds(spec: DictConfig, count: int | None = None) -> tuple[list[int], bool]:
    """(the study seeds 0 .. N-1, whether each seed pre-trains its own models); `count`
    (`--seeds`) overrides the file's `seeds.count`."""
    seeds = spec.get("seeds") or {}
    count = int(seeds.get("count", 1)) if count is None else count
    if count < 1:
        raise UserError(f"seeds: {count}; a study needs at least one seed")
    return list(range(count)), bool(seeds.get("pretraining", False))
