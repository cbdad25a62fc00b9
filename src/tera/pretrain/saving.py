"""How a pre-training run saves its state and resumes from it: the half of `Trainer` that
deals with `checkpoint_last.pt`, the interval checkpoints and `checkpoint_best.pt`."""

from __future__ import annotations

import sys
from pathlib import Path

from tera.checkpoint.card import ARCHITECTURE_FIELDS
from tera.checkpoint.common import checked_weights
from tera.checkpoint.training import read_training_checkpoint, training_checkpoint
from tera.errors import UserError
from tera.pretrain.config import to_plain
from tera.pretrain.data import SamplerState
from tera.pretrain.loss import TargetStats
from tera.runs.checkpoints import interval_checkpoint_name, interval_checkpoints, keep_newest
from tera.runs.files import save_torch
from tera.runs.records import TrainingState

LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"


class Checkpoints:
    """Saving and resuming, mixed into `Trainer` (whose attributes it reads and sets)."""

    def _checkpoint(self) -> dict:
        cfg = to_plain(self.cfg)
        cfg["model"] = self.model_cfg.to_dict()
        state = TrainingState(
            update=self.update, epoch=self.sampler.state.epoch,
            position=self.sampler.state.position, best_valid_loss=self.best_valid,
            wall_time_s=self.wall_time, audio_seconds=self.audio_seconds,
            train_flops=self.train_flops, world_size=self.world_size,
            preset=self.cfg.common.preset, scaler=self.scaler.state_dict(),
            target_stats=None if self.target_stats is None else self.target_stats.to_dict())
        return training_checkpoint(cfg, self.model.state_dict(), self.optimizer.state_dict(),
                                   state)

    def save(self, interval: bool) -> None:
        """Write checkpoint_last.pt atomically and, for an interval save, the numbered copy
        (the newest `keep_interval_updates` kept); only the main rank writes."""
        if not self.is_main:
            return
        checkpoint = self._checkpoint()
        save_torch(checkpoint, self.save_dir / LAST)
        self.saved_update = self.update
        if interval:
            name = interval_checkpoint_name(self.sampler.state.epoch + 1, self.update)
            save_torch(checkpoint, self.save_dir / name)
            keep_newest(interval_checkpoints(self.save_dir),
                        int(self.cfg.checkpoint.keep_interval_updates))

    def resume(self) -> None:
        """Continue from `checkpoint_last.pt` if the save dir has one, after checking that it
        is whole, was written by as many processes, and holds the same architecture."""
        path = self.save_dir / LAST
        if not path.exists():
            return
        try:
            raw, state = read_training_checkpoint(path, self.device)
        except UserError as err:
            intervals = interval_checkpoints(self.save_dir)
            hint = (f"; the newest interval checkpoint is {intervals[-1].name}: copy it in its "
                    "place to resume from there" if intervals else "")
            raise UserError(f"{err}: cannot resume{hint}, or move it away to start over"
                            ) from None
        if state.world_size != self.world_size:
            raise UserError(f"{path} was written by a run with {state.world_size} "
                            f"processes; resume it with the same number ({self.world_size} now)")
        self._check_same_architecture(path, raw)
        self.model.load_state_dict(checked_weights(raw["model"], self.model.state_dict(), path))
        self.optimizer.load_state_dict(raw["last_optimizer_state"])
        self.scaler.load_state_dict(state.scaler)
        self.update, self.best_valid = state.update, state.best_valid_loss
        self.saved_update = state.update
        self.wall_time, self.audio_seconds = state.wall_time_s, state.audio_seconds
        self.train_flops = state.train_flops
        self.sampler.state = SamplerState(state.epoch, state.position)
        if state.target_stats:
            self.target_stats = TargetStats.from_dict(state.target_stats)
        if self.is_main:
            print(f"resuming from {path} at update {self.update}", file=sys.stderr)

    def _check_same_architecture(self, path: Path, raw: dict) -> None:
        saved = (raw.get("cfg") or {}).get("model") or {}
        ours = self.model_cfg.to_dict()
        for key in ARCHITECTURE_FIELDS:
            if key in saved and saved[key] != ours[key]:
                raise UserError(
                    f"{path}: this run changes the architecture of the run it would resume: "
                    f"model.{key} is {saved[key]!r} there and {ours[key]!r} now; drop that "
                    "override to resume, or give another checkpoint.save_dir to start over")
