"""Typed records of what runs write and read back, each converted in one place.

- `TrainingState`: a pre-training's own state, `extra_state["tera"]` of its checkpoints
  (written by the trainer, read by resume, `tera study`, `tera info` and exports).
- `DownstreamResult`: a downstream run's `results.json` (written by the runner, read by
  `tera study`). Keys this record does not name are kept as they are, in `extra`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tera.errors import UserError
from tera.runs.files import read_json, write_json


@dataclass
class TrainingState:
    """Where a pre-training stands: enough to resume it exactly, and its summary."""

    update: int = 0
    epoch: int = 0  # 0-based epoch of the sampler
    position: int = 0  # batches of this epoch already consumed (per rank)
    best_valid_loss: float = math.inf
    wall_time_s: float = 0.0
    audio_seconds: float = 0.0
    train_flops: float = 0.0
    world_size: int = 1
    preset: str | None = None
    scaler: dict = field(default_factory=dict)  # the GradScaler's state
    target_stats: dict | None = None  # criterion.target_norm "dataset": {"mean", "std"}
    extra: dict = field(default_factory=dict)  # keys written by other versions, kept

    def to_dict(self) -> dict:
        """The state as `extra_state["tera"]` holds it (with the `extra` keys)."""
        state = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if f.name != "extra"}
        return {**self.extra, **state}

    @classmethod
    def from_dict(cls, state: Any, source: str | Path = "checkpoint") -> TrainingState:
        """Read `extra_state["tera"]` back: keys it does not name go to `extra`; a state
        without `update`, `epoch` or `position`, or of the wrong types, raises `UserError`
        naming `source`."""
        if not isinstance(state, dict):
            raise UserError(f"{source}: extra_state['tera'] should be a mapping, found "
                            f"{type(state).__name__}")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = sorted({"update", "epoch", "position"} - set(state))
        if missing:
            raise UserError(f"{source}: the training state lacks {', '.join(missing)}")
        try:
            return cls(
                update=int(state["update"]), epoch=int(state["epoch"]),
                position=int(state["position"]),
                best_valid_loss=float(state.get("best_valid_loss", math.inf)),
                wall_time_s=float(state.get("wall_time_s", 0.0)),
                audio_seconds=float(state.get("audio_seconds", 0.0)),
                train_flops=float(state.get("train_flops", 0.0)),
                world_size=int(state.get("world_size", 1)),
                preset=state.get("preset"), scaler=dict(state.get("scaler") or {}),
                target_stats=state.get("target_stats"),
                extra={k: v for k, v in state.items() if k not in names})
        except (TypeError, ValueError) as err:
            raise UserError(f"{source}: malformed training state ({err})") from err


RESULTS = "results.json"


@dataclass
class DownstreamResult:
    """`results.json` of a downstream run (README lists the keys). `value` is a fraction."""

    task: str
    metric: str  # wer / per / accuracy / eer
    value: float
    split: str
    checkpoint: str
    upstream: str
    upstream_ckpt: str | None
    layer_weights: list[float]
    step: int
    wall_time_s: float
    dev_best: float | None = None
    cache: dict | None = None
    dev_eer: float | None = None  # ASV
    best_test_eer_over_checkpoints: dict | None = None  # ASV, s3prl's protocol
    extra: dict = field(default_factory=dict)  # other keys (intervals, ...), kept as they are

    _OPTIONAL = ("dev_eer", "best_test_eer_over_checkpoints")

    def to_dict(self) -> dict:
        """The record as `results.json` holds it: ASV's keys only when set, `extra` merged."""
        result = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or (f.name in self._OPTIONAL and value is None):
                continue
            result[f.name] = value
        return {**result, **self.extra}

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = RESULTS) -> DownstreamResult:
        """Read `results.json`'s content back: unknown keys go to `extra`; a missing key or
        a value of the wrong type raises `UserError` naming `source`."""
        if not isinstance(data, dict):
            raise UserError(f"{source}: expected a JSON object")
        fields = [f for f in dataclasses.fields(cls) if f.name != "extra"]
        required = [f.name for f in fields if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise UserError(f"{source}: a downstream result lacks {', '.join(missing)}")
        for f in fields:
            if f.name in data and not _has_type(data[f.name], str(f.type)):
                raise UserError(f"{source}: {f.name} should be {_TYPE_NAMES[str(f.type)]}, "
                                f"got {data[f.name]!r}")
        names = {f.name for f in fields}
        return cls(**{k: v for k, v in data.items() if k in names},
                   extra={k: v for k, v in data.items() if k not in names})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# A record field's declared type -> the check of a value read from JSON, and its name.
_TYPE_CHECKS = {
    "str": lambda v: isinstance(v, str), "int": lambda v: _is_number(v) and isinstance(v, int),
    "float": _is_number, "dict": lambda v: isinstance(v, dict),
    "list[float]": lambda v: isinstance(v, list) and all(_is_number(x) for x in v),
}
_TYPE_NAMES = {"str": "a string", "int": "an integer", "float": "a number",
               "dict": "a mapping", "list[float]": "a list of numbers"}
_TYPE_NAMES.update({f"{name} | None": f"{text} or null" for name, text in _TYPE_NAMES.items()})


def _has_type(value: Any, declared: str) -> bool:
    base = declared.removesuffix(" | None")
    if value is None:
        return declared.endswith(" | None")
    check = _TYPE_CHECKS.get(base)
    return check is None or check(value)


def write_result(expdir: str | Path, result: DownstreamResult) -> Path:
    """Write `results.json` into `expdir` atomically; returns its path."""
    path = Path(expdir) / RESULTS
    write_json(path, result.to_dict())
    return path


def read_result(expdir: str | Path) -> DownstreamResult:
    """The `results.json` of a finished downstream run (`UserError` when absent or
    malformed)."""
    path = Path(expdir) / RESULTS
    return DownstreamResult.from_dict(read_json(path, "no such file (has the run finished?)"),
                                      path)
