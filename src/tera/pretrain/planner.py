"""The compute planner: how many updates make a run cost the same as a budget run.

Training FLOPs per update = 3 x forward FLOPs (backward ~ 2 x forward) of one batch of
`max_tokens` samples, counted as `max_tokens / max_sample_size` crops of `max_sample_size`
samples (the published runs crop to 250000 samples, and LibriSpeech utterances are mostly
longer than the 32000-sample floor). The number of GPUs cancels: every run of a study uses
the same world size.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig

from tera.errors import UserError
from tera.presets import load_preset, model_config, training_flops

MAX_UPDATES = 10**15  # far beyond any run; keeps the plan an exact integer


def flops_per_update(cfg: DictConfig) -> float:
    """Training FLOPs of one update of `cfg`: full crops per batch (max_tokens / crop) times
    update_freq, each crop at `training_flops`' cost."""
    crop = int(cfg.task.max_sample_size)
    crops_per_batch = int(cfg.dataset.max_tokens) / crop
    update_freq = int(cfg.optimization.update_freq)
    return training_flops(model_config(cfg), crop, crops_per_batch) * update_freq


def plan(cfg: DictConfig, budget: DictConfig | None = None, fraction: float = 1.0) -> dict:
    """`max_update` for `cfg` so that it spends `fraction` x the budget run's training FLOPs
    (the budget run defaults to `cfg` itself at its own `max_update`)."""
    if not (isinstance(fraction, (int, float)) and math.isfinite(fraction) and fraction > 0):
        raise UserError(f"--fraction {fraction}: the share of the budget must be a number "
                        "above 0 (0.5 for half the budget)")
    budget = budget if budget is not None else cfg
    budget_flops = flops_per_update(budget) * int(budget.optimization.max_update) * fraction
    per_update = flops_per_update(cfg)
    updates = budget_flops / per_update
    if not updates <= MAX_UPDATES:  # inf too
        raise UserError(f"--fraction {fraction}: the plan would need {updates:.3g} updates, "
                        f"more than any run can make ({MAX_UPDATES:.0e}); give a smaller share")
    max_update = max(1, round(updates))
    return {
        "max_update": max_update,
        "flops_per_update": per_update,
        "total_flops": per_update * max_update,
        "budget_flops": budget_flops,
        "preset_max_update": int(cfg.optimization.max_update),
    }


def plan_presets(preset: str, budget_of: str | None = None, fraction: float = 1.0) -> dict:
    """`plan` for preset names: the updates that give `preset` `fraction` of the compute budget of
    `budget_of` (default its own)."""
    cfg = load_preset(preset)
    budget = load_preset(budget_of) if budget_of else None
    result = plan(cfg, budget, fraction)
    result.update(preset=preset, budget_of=budget_of or preset, fraction=fraction)
    return result
