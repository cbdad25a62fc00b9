"""The pre-training loop. Read top to bottom: setup, resume, then update after update.

One process per device; with `torchrun` the processes form a data-parallel group (DDP), the
sampler shards batches by rank and only rank 0 logs and writes checkpoints.

Exact resume: the random state of each micro-batch (masks, dropout, LayerDrop) is seeded
from (seed, global batch number) and crops from (seed, epoch, index), so a run restarted
from `checkpoint_last.pt` repeats, bit for bit, what the uninterrupted run would have done.
The same seeding makes a 2-process run match a 1-process run with `update_freq` 2.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from tqdm import tqdm

from tera.errors import UserError
from tera.model.tera import TeraModel
from tera.presets import model_config, training_flops
from tera.pretrain.data import CroppedAudio, LengthBatchSampler, SamplerState, unwrap_worker_error
from tera.pretrain.devices import distributed_env, start_process_group, training_device
from tera.pretrain.loss import LossOutput, TargetStats, target_statistics, tera_loss
from tera.pretrain.optim import build_optimizer, polynomial_lr
from tera.pretrain.precision import choose_precision
from tera.pretrain.progress import LN2, Window
from tera.pretrain.saving import BEST, LAST, Checkpoints
from tera.runs.files import ensure_folder, save_torch, write_text
from tera.runs.lock import folder_lock
from tera.runs.log import RunLog


class NonFiniteUpdate(UserError):
    """An update met a non-finite loss or gradient norm and the run stops (the weights and
    the last checkpoint are as the last good update left them)."""


class Trainer(Checkpoints):
    """One pre-training run of a configuration: model, data, optimizer, schedule and checkpoints,
    on one device or as one rank of DDP; `train()` runs it to max_update, resuming from
    checkpoint_last.pt when there is one."""
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        placement = distributed_env()  # checked before any model or data
        self.rank, self.world_size, self.local_rank = (placement.rank, placement.world_size,
                                                       placement.local_rank)
        self.device = training_device(cfg.common.device, self.local_rank)
        if self.world_size > 1 and not dist.is_initialized():
            start_process_group(cfg.distributed_training.distributed_backend, self.device,
                                placement, float(cfg.distributed_training.init_timeout))
        self.is_main = self.rank == 0
        self.save_dir = Path(cfg.checkpoint.save_dir)
        self.seed = int(cfg.common.seed)

        torch.manual_seed(self.seed)
        self.model_cfg = model_config(cfg)
        self.model = TeraModel(self.model_cfg).to(self.device)
        self.ddp = self.model
        if self.world_size > 1:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=bool(cfg.distributed_training.find_unused_parameters),
            )
        self.optimizer = build_optimizer(
            self.model.parameters(), str(cfg.optimizer.adam_variant),
            lr=float(cfg.optimization.lr), betas=tuple(cfg.optimizer.adam_betas),
            eps=float(cfg.optimizer.adam_eps), weight_decay=float(cfg.optimizer.weight_decay),
        )
        self.amp_dtype, needs_scaler = choose_precision(cfg.common.amp, self.device)
        if not cfg.common.fp16 and self.device.type == "cuda" and cfg.common.amp == "auto":
            self.amp_dtype, needs_scaler = None, False
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=needs_scaler)

        task = cfg.task
        data = Path(task.data)
        self.train_set = CroppedAudio(data / "train.tsv", task.max_sample_size,
                                      task.min_sample_size, task.random_crop, self.seed,
                                      task.pad_audio)
        self.valid_set = (CroppedAudio(data / "valid.tsv", task.max_sample_size,
                                       task.min_sample_size, False, self.seed, task.pad_audio)
                          if _has_entries(data / "valid.tsv") else None)
        self.sampler = LengthBatchSampler(
            self.train_set.sizes, self.train_set.num_tokens(), cfg.dataset.max_tokens,
            self.seed, self.rank, self.world_size,
            multiple=int(cfg.dataset.required_batch_size_multiple))
        for dataset in (self.train_set, self.valid_set):  # before the first update
            if dataset is not None:
                dataset.check_files()

        self.update = 0
        self.best_valid = math.inf
        self.wall_time = 0.0
        self.audio_seconds = 0.0
        self.flops_per_sample = (training_flops(self.model_cfg, task.max_sample_size)
                                 / task.max_sample_size)
        self.train_flops = 0.0
        self.target_stats: TargetStats | None = None  # criterion.target_norm "dataset"
        self.stop_signal: int | None = None  # SIGINT / SIGTERM received: stop after the update
        self.skipped_in_a_row = 0  # mixed precision: updates skipped for a non-finite value
        self.saved_update: int | None = None  # the update checkpoint_last.pt holds
        self.log: RunLog | None = None

    # --- the loop ------------------------------------------------------------------------

    def train(self) -> dict:
        """Train (resuming what `save_dir` holds) to `max_update` or until SIGINT / SIGTERM;
        returns the summary. One process at a time may train in a save dir."""
        ensure_folder(self.save_dir)
        lock = folder_lock(self.save_dir, "tera pretrain") if self.is_main else nullcontext()
        with lock:
            self.resume()
            if self.cfg.criterion.target_norm == "dataset" and self.target_stats is None:
                self.target_stats = self._target_statistics()
            if self.is_main:
                write_text(self.save_dir / "config.yaml", OmegaConf.to_yaml(self.cfg))
            self.log = RunLog(self.save_dir, tensorboard=self.cfg.common.tensorboard_logdir,
                              step_key="update", enabled=self.is_main)
            previous_handlers = self._install_signal_handlers()
            try:
                return self._train_loop()
            finally:  # a caller that goes on (tera study) gets Ctrl-C back
                self.log.close()
                for sig, handler in previous_handlers.items():
                    signal.signal(sig, handler)

    @property
    def stop_requested(self) -> bool:
        """Whether Ctrl-C or SIGTERM arrived: the loop then saves and stops at the next update."""
        return self.stop_signal is not None

    def _train_loop(self) -> dict:
        cfg = self.cfg
        max_update = int(cfg.optimization.max_update)
        update_freq = int(cfg.optimization.update_freq)
        # A live bar on a terminal; on a log file (CI, cluster jobs) one JSON line per
        # log_interval instead.
        bar = tqdm(total=max_update, initial=self.update, desc="pretrain", unit="upd",
                   disable=not (self.is_main and sys.stderr.isatty()), dynamic_ncols=True)
        window = Window()
        self.model.train()

        while self.update < max_update and not self.stop_requested:
            batches = self._batches()
            while self.update < max_update and not self.stop_requested:
                micro = []
                for _ in range(update_freq):
                    batch = next(batches, None)
                    if batch is None:
                        break
                    micro.append(batch)
                if len(micro) < update_freq:  # epoch done: start the next one
                    self.sampler.state = SamplerState(self.sampler.state.epoch + 1, 0)
                    break
                started = time.perf_counter()
                stats = self._update(micro)
                self.wall_time += time.perf_counter() - started
                if stats is None:  # skipped (mixed precision, non-finite): not an update
                    window.skipped += 1
                    continue
                window.add(stats, time.perf_counter() - started)
                self.update += 1
                bar.update(1)
                if self.update % cfg.common.log_interval == 0 or self.update == max_update:
                    self._log_train(window, bar)
                    window = Window()
                if self._due(cfg.dataset.validate_interval_updates) or self.update == max_update:
                    self.validate()
                if self._due(cfg.checkpoint.save_interval_updates) and self.update < max_update:
                    self.save(interval=True)
        bar.close()
        self.save(interval=False)
        if self.stop_requested and self.is_main:
            print(f"stopped at update {self.update}: {self.save_dir / LAST} holds the state; "
                  "run the same command again to resume", file=sys.stderr)
        return {"update": self.update, "best_valid_loss": self.best_valid,
                "wall_time_s": self.wall_time, "train_flops": self.train_flops,
                "stopped": self.stop_requested, "stop_signal": self.stop_signal}

    def _loss(self, model: torch.nn.Module, waves: torch.Tensor, lengths: torch.Tensor
              ) -> LossOutput:
        """The configured criterion on one batch (training and validation alike)."""
        criterion = self.cfg.criterion
        return tera_loss(model, waves, lengths,
                         feature_pen_weight=float(criterion.feature_pen_weight),
                         target_norm=str(criterion.target_norm), target_stats=self.target_stats)

    def _target_statistics(self, max_utterances: int = 256) -> TargetStats:
        """Target mean and std from up to `max_utterances` training crops spread evenly over
        the manifest: the same on every rank, kept in the checkpoint for resumed runs."""
        count = len(self.train_set)
        picks = sorted({i * count // max_utterances for i in range(min(count, max_utterances))})
        return target_statistics(self.train_set.utterance(i) for i in picks)

    def _batches(self):
        """Iterate the rest of the current epoch, counting consumed batches in the state."""
        self.train_set.epoch = self.sampler.state.epoch
        workers = int(self.cfg.dataset.num_workers)
        loader = DataLoader(self.train_set, batch_sampler=self.sampler,
                            collate_fn=self.train_set.collate,
                            num_workers=workers, pin_memory=self.device.type == "cuda")
        with unwrap_worker_error():
            for batch in loader:
                self.sampler.state.position += 1
                yield batch

    def _update(self, micro: list[tuple[torch.Tensor, torch.Tensor]]) -> dict | None:
        """One optimizer update over the micro-batches; None when it was skipped (see
        `_non_finite`)."""
        cfg = self.cfg
        lr = polynomial_lr(self.update, float(cfg.optimization.lr),
                           int(cfg.lr_scheduler.warmup_updates), int(cfg.optimization.max_update),
                           float(cfg.lr_scheduler.end_learning_rate),
                           float(cfg.lr_scheduler.power))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        totals = {"loss": 0.0, "reconstruction": 0.0, "features_pen": 0.0, "samples": 0}
        for i, (waves, lengths) in enumerate(micro):
            waves, lengths = waves.to(self.device), lengths.to(self.device)
            # Masks, dropout and LayerDrop of a micro-batch depend only on its place in the
            # epoch's global batch order (rank r's k-th batch is batch k * world + r).
            position = self.sampler.state.position - len(micro) + i  # 0-based, this rank
            number = position * self.world_size + self.rank
            torch.manual_seed(_mix(self.seed, self.sampler.state.epoch, number))
            last = i == len(micro) - 1
            sync = nullcontext() if last or self.world_size == 1 else self.ddp.no_sync()
            with sync, self._autocast():
                out = self._loss(self.ddp, waves, lengths)
                loss = out.loss / len(micro)
            self.scaler.scale(loss).backward()
            totals["loss"] += out.loss.item() / len(micro)
            totals["reconstruction"] += out.reconstruction.item() / len(micro)
            totals["features_pen"] += out.features_pen.item() / len(micro)
            totals["samples"] += int(lengths.sum())
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                   float(cfg.optimization.clip_norm))
        problem = self._non_finite(totals["loss"], float(grad_norm))
        if problem:
            self._skip_or_stop(problem, len(micro))
            return None
        self.skipped_in_a_row = 0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        audio = totals["samples"] * self.world_size / 16000
        self.audio_seconds += audio
        self.train_flops += totals["samples"] * self.world_size * self.flops_per_sample
        return {**totals, "lr": lr, "grad_norm": float(grad_norm), "audio_seconds": audio}

    def _non_finite(self, loss: float, grad_norm: float) -> str:
        """What was not finite in this update ("" when all was), as every rank sees it."""
        bad_loss, bad_norm = not math.isfinite(loss), not math.isfinite(grad_norm)
        if self.world_size > 1:  # a NaN loss on one rank: every rank must skip or stop
            flags = torch.tensor([bad_loss, bad_norm], dtype=torch.float32, device=self.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            bad_loss, bad_norm = bool(flags[0]), bool(flags[1])
        problems = []
        if bad_loss:
            local = loss if not math.isfinite(loss) else "non-finite on another process"
            problems.append(f"the loss is {local}")
        if bad_norm:
            problems.append(f"the gradient norm is {grad_norm}")
        return " and ".join(problems)

    def _skip_or_stop(self, problem: str, batches: int) -> None:
        """fairseq's answer to a non-finite update: in float32 stop at once; in mixed
        precision skip it (the loss scaler, if any, lowers its scale), do not count it, and
        stop after `common.max_consecutive_skips` in a row."""
        self.optimizer.zero_grad(set_to_none=True)
        number = self.update + 1
        where = f"update {number} ({self._batch_files(batches)}): {problem}"
        kept = (f"{self.save_dir / LAST} holds update {self.saved_update}"
                if self.saved_update is not None else f"no {LAST} was written yet")
        if self.amp_dtype is None:
            raise NonFiniteUpdate(f"{where}; stopped without applying it: {kept}")
        self.scaler.update()
        self.skipped_in_a_row += 1
        limit = int(self.cfg.common.max_consecutive_skips)
        if self.skipped_in_a_row >= limit:
            scale = (f", loss scale now {self.scaler.get_scale():g}"
                     if self.scaler.is_enabled() else "")
            raise NonFiniteUpdate(f"{where}; {self.skipped_in_a_row} updates in a row skipped "
                                  f"(common.max_consecutive_skips = {limit}{scale}), "
                                  f"stopped: {kept}")

    def _batch_files(self, batches: int) -> str:
        """The first files of the last `batches` batches this rank read, for messages."""
        state = self.sampler.state
        numbers = self.sampler.epoch_order(state.epoch)[state.position - batches : state.position]
        indices = [i for number in numbers for i in self.sampler.batches[int(number)]]
        names = [self.train_set.files[i] for i in indices[:3]]
        more = f" and {len(indices) - 3} more" if len(indices) > 3 else ""
        return f"epoch {state.epoch + 1}, files {', '.join(names)}{more}"

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    @torch.no_grad()
    def validate(self) -> float | None:
        """The mean validation loss (bits) over valid.tsv, or None without a validation set."""
        if self.valid_set is None:
            return None
        self.model.eval()
        # Every validation utterance, every time: no batch is dropped for its size.
        sampler = LengthBatchSampler(self.valid_set.sizes, self.valid_set.num_tokens(),
                                     self.cfg.dataset.max_tokens, self.seed, shuffle=False)
        loader = DataLoader(self.valid_set, batch_sampler=sampler,
                            collate_fn=self.valid_set.collate)
        total, count = 0.0, 0
        with unwrap_worker_error():
            for number, (waves, lengths) in enumerate(loader):
                torch.manual_seed(_mix(self.seed, -1, number, 0))  # the same masks every time
                with self._autocast():
                    out = self._loss(self.model, waves.to(self.device), lengths.to(self.device))
                total += out.loss.item() * len(lengths)
                count += len(lengths)
        self.model.train()
        valid_loss = total / max(count, 1)
        if valid_loss < self.best_valid:
            self.best_valid = valid_loss
            if self.is_main:
                save_torch(self._checkpoint(), self.save_dir / BEST)
        if self.is_main:  # logged in base 2 as fairseq logs it; the checkpoint keeps nats
            self.log.write({"update": self.update, "valid_loss": valid_loss / LN2,
                            "best_valid_loss": self.best_valid / LN2,
                            "valid_loss_nats": valid_loss}, prefix="valid/", echo=False)
            tqdm.write(f"update {self.update}: valid_loss {valid_loss / LN2:.4f} "
                       f"(best {self.best_valid / LN2:.4f})", file=sys.stderr)
        return valid_loss

    # --- logging ----------------------------------------------------------------------------

    def _log_train(self, window: Window, bar: tqdm) -> None:
        if not self.is_main or not window.count:
            return
        record = window.summary(self.update)
        self.log.write(record, prefix="train/")
        bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                        ups=f"{record['updates_per_s']:.2f}",
                        audio_s_per_s=f"{record['audio_seconds_per_s']:.0f}")

    def _due(self, interval: int) -> bool:
        return interval > 0 and self.update % interval == 0

    def _install_signal_handlers(self) -> dict:
        """SIGINT / SIGTERM finish the current update, save and stop (a second Ctrl-C stops at
        once; the last checkpoint is intact); returns the handlers they replace."""
        def request_stop(signum, frame):  # noqa: ARG001
            if self.stop_signal == signal.SIGINT == signum:  # Ctrl-C twice: stop now
                raise KeyboardInterrupt
            self.stop_signal = signum

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, request_stop)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass
        return previous


def _mix(*numbers: int) -> int:
    """A 63-bit seed from several integers (stable across runs and processes)."""
    value = 0x9E3779B97F4A7C15
    for n in numbers:
        value = (value ^ (n + 0x632BE59BD9B4E019 + (value << 6) + (value >> 2))) & (2**63 - 1)
    return value


def _has_entries(manifest: Path) -> bool:
    return manifest.is_file() and len(manifest.read_text().strip().splitlines()) > 1


def pretrain(cfg: DictConfig) -> dict:
    """Run (or resume) a pre-training described by a resolved config."""
    trainer = Trainer(cfg)
    try:
        return trainer.train()
    finally:
        if trainer.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
