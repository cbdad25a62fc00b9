"""One downstream run's state and its training loop (`Run`): the task, the frozen upstream and
its feature cache, the featurizer, the head and the optimizer; batching, the steps of
training with a dev score every `runner.eval_step`, evaluation of a split, and the
checkpoints that let a run resume exactly where it stopped."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from tera.checkpoint.unpickler import first_line, read_torch_file
from tera.corpora.base import Utterance
from tera.corpora.lengths import utterance_samples
from tera.downstream.base import Scored
from tera.downstream.bootstrap import items_path, write_items
from tera.downstream.features import (
    FeatureCache,
    batches_by_length,
    default_cache_dir,
    pad_states,
)
from tera.downstream.tasks import task_class
from tera.errors import UserError
from tera.model.tensors import frame_mean_std
from tera.runs.checkpoints import downstream_states, downstream_states_name, keep_newest
from tera.runs.files import save_torch
from tera.upstream import Featurizer, load_upstream


class Run:
    """Everything one downstream experiment holds: task, upstream, featurizer, head."""

    def __init__(self, task: str, cfg: DictConfig, root: Path, upstream_name: str,
                 upstream_ckpt: str | None, expdir: Path, device: str, cache: bool,
                 seed: int, upstream_preset: str = "slim", profile: str = "real",
                 cache_dir: Path | None = None) -> None:
        self.cfg, self.expdir, self.seed, self.root = cfg, expdir, seed, root
        self.profile = profile
        self.device = torch.device(device)
        self.task = task_class(task)(root, OmegaConf.to_container(cfg.downstream_expert))
        self.upstream_name, self.upstream_ckpt = upstream_name, upstream_ckpt
        self.upstream_preset = upstream_preset
        # The frozen upstream runs once per utterance (cached) on the fast path: bf16 on a
        # CPU with bf16 matmuls (hidden states within about 1 % of fp32).
        self.upstream = load_upstream(upstream_name, upstream_ckpt, preset=upstream_preset,
                                      seed=seed, precision="auto").to(self.device).eval()
        for p in self.upstream.parameters():
            p.requires_grad_(False)
        # Shared by every run of this upstream (another seed, task, a resume)
        self.cache = FeatureCache(self.upstream, cache_dir or default_cache_dir(),
                                  enabled=cache)
        self.featurizer = Featurizer(self.upstream.num_layers, self.upstream.hidden_size,
                                     bool(cfg.featurizer.layer_norm),
                                     bool(cfg.featurizer.get("standardize", False))
                                     ).to(self.device)
        self.head: torch.nn.Module | None = None
        self.step = 0
        self.best: float | None = None
        # where training stands inside its epochs, saved so that `-e states-N.ckpt` goes on
        # exactly as the uninterrupted run: the epoch, the batches of it done, the batches
        # accumulated towards the next update, the losses not logged yet, the random state
        self.epoch, self.position, self.pending = 0, 0, 0
        self.losses: list[float] = []
        self.random_state: dict | None = None

    def build(self) -> None:
        """The task's head (after `prepare` or `load_state`) and the optimizer of the head
        and the featurizer."""
        self.head = self.task.build_head(self.upstream.hidden_size).to(self.device)
        params = list(self.featurizer.parameters()) + list(self.head.parameters())
        self.optimizer = build_optimizer(self.cfg.optimizer, params)

    def features(self, utts: list[Utterance]) -> tuple[torch.Tensor, torch.Tensor]:
        """The featurizer's output for `utts`: (`[batch, frame, dim]`, valid frames
        `[batch]`), the upstream's states taken from the cache where they are."""
        layers, lengths = pad_states(self.cache.states(utts, self.device), self.device)
        return self.featurizer(layers, lengths), lengths

    def plan_cache(self, utts: list[Utterance], budget_bytes: float) -> str:
        """Cache the features when they fit in `budget_bytes` (estimated from the audio's
        length), else compute the upstream on the fly at every step, as s3prl does; returns
        the line that says which."""
        if not self.cache.enabled:
            return "features: computed on the fly at every step (--no-cache)"
        seconds = int(utterance_samples(list({u.id: u for u in utts}.values())).sum()) / 16000
        frames_per_second = 16000 / self.upstream.get_downsample_rate()
        size = (seconds * frames_per_second * self.upstream.num_layers
                * self.upstream.hidden_size * 2)  # float16
        needed = f"{size / 1e9:.2f} GB for {seconds / 3600:.1f} h of audio"
        if size <= budget_bytes:
            self.cache.budget_bytes = budget_bytes  # the shared folder's too
            return f"features: cached ({needed}, budget {budget_bytes / 1e9:g} GB)"
        self.cache.enabled = False
        return (f"features: computed on the fly at every step (the cache would need {needed},"
                f" over the {budget_bytes / 1e9:g} GB budget: --cache-budget-gb)")

    @torch.no_grad()
    def standardize_features(self, train: list[Utterance], max_utterances: int = 2000) -> None:
        """Per-layer feature mean and std over (up to `max_utterances` of) the training set,
        for the featurizer's `standardize` option. The states land in the cache for
        training."""
        picks = train[:: max(1, len(train) // max_utterances)]
        mean, std = frame_mean_std(states for batch in self.batches(picks, shuffle=False)
                                   for states in self.cache.states(batch, self.device))
        self.featurizer.set_statistics(mean, std)

    def batches(self, utts: list[Utterance], shuffle: bool, epoch: int = 0):
        """Training batches (`shuffle`) of `runner.batch_size` utterances drawn at random
        (s3prl's loaders), or of at most `runner.batch_samples` of padded audio; evaluation
        batches by length. A task may batch its own way (`Task.batches`)."""
        seed = self.seed * 1000 + epoch
        batch_size = self.cfg.runner.get("batch_size")
        if shuffle and batch_size:
            order = list(range(len(utts)))
            random.Random(seed).shuffle(order)
            order = [order[i : i + int(batch_size)] for i in range(0, len(order),
                                                                  int(batch_size))]
        else:
            sizes = utterance_samples(utts).tolist()
            order = self.task.batches(sizes, shuffle, seed)
            if order is None:
                order = batches_by_length(sizes, int(self.cfg.runner.batch_samples), shuffle,
                                          seed)
        return [[utts[i] for i in batch] for batch in order]

    # --- checkpoints ----------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """A checkpoint at `path`: what evaluation needs (recipe, task state, upstream,
        weights) and what resuming needs (optimizer, progress, random state)."""
        save_torch({
            "task": self.task.name, "step": self.step, "best": self.best,
            "config": OmegaConf.to_container(self.cfg), "task_state": self.task.state(),
            "upstream": self.upstream_name, "upstream_ckpt": self.upstream_ckpt,
            "upstream_preset": self.upstream_preset, "data_root": str(self.root),
            "profile": self.profile,
            "head": self.head.state_dict(), "featurizer": self.featurizer.state_dict(),
            "optimizer": self.optimizer.state_dict(), "seed": self.seed,
            "progress": {"epoch": self.epoch, "position": self.position,
                         "pending": self.pending, "losses": list(self.losses),
                         "random": random_state(self.device)},
        }, path)

    def load(self, path: Path) -> None:
        """Take the task state, weights, optimizer and progress of checkpoint `path`."""
        state = read_downstream_ckpt(path)
        self.task.load_state(state["task_state"])
        self.build()
        for part, module in (("featurizer", self.featurizer), ("head", self.head)):
            self._load_weights(path, part, module, state[part])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.best = int(state["step"]), state["best"]
        self._load_progress(path, state.get("progress") or {})

    def _load_progress(self, path: Path, progress: dict) -> None:
        try:
            self.epoch, self.position = int(progress["epoch"]), int(progress["position"])
            self.pending = int(progress["pending"])
            self.losses = [float(loss) for loss in progress["losses"]]
            self.random_state = progress["random"]
            torch.Generator().set_state(self.random_state["torch"])  # checked here, once
            random.Random().setstate(_python_state(self.random_state["python"]))
        except KeyError:  # a checkpoint without progress: training starts a new epoch
            self.epoch = self.position = self.pending = 0
            self.losses, self.random_state = [], None
        except (TypeError, ValueError, AttributeError, RuntimeError) as err:
            raise UserError(f"{path}: its training progress cannot be read ({first_line(err)})"
                            ) from err

    def _load_weights(self, path: Path, part: str, module: torch.nn.Module,
                      weights: dict) -> None:
        """`weights` into `module`, or one line saying which upstream they were made for
        when they do not fit this one (another size, another number of layers)."""
        expected = module.state_dict()
        for name, value in weights.items():
            if name in expected and tuple(value.shape) != tuple(expected[name].shape):
                raise UserError(
                    f"{path}: {part}.{name} is {list(value.shape)} there, this upstream "
                    f"({self.upstream_name}, {self.upstream.num_layers} layers of "
                    f"{self.upstream.hidden_size}) expects {list(expected[name].shape)}: "
                    "the checkpoint was made for another upstream (give its -k)")
        try:
            module.load_state_dict(weights)
        except RuntimeError as err:  # missing or unexpected keys: another head
            raise UserError(f"{path}: the {part} weights do not fit this {self.task.name} "
                            f"head ({first_line(err)})") from err

    # --- training and evaluation ----------------------------------------------------------

    def evaluate(self, split: str) -> Scored:
        """Score `split` with the current head and featurizer (eval mode, no gradients)."""
        self.head.eval()
        self.featurizer.eval()
        utts = self.task.examples(split)
        with torch.no_grad():
            scored = self.task.evaluate(self.head, self.features,
                                        iter(self.batches(utts, shuffle=False)), split)
        self.head.train()
        self.featurizer.train()
        return scored

    def is_better(self, value: float) -> bool:
        """Whether dev score `value` beats the best so far, in the task's direction."""
        if self.best is None:
            return True
        return value > self.best if self.task.higher_is_better else value < self.best

    def train(self, log, train: list[Utterance]) -> None:
        """Train on `train` up to `runner.total_steps` updates (from where a loaded
        checkpoint stopped): gradients accumulated over `runner.gradient_accumulate_steps`
        batches and clipped, the loss logged through `log` every `runner.log_step`, the
        dev score every `runner.eval_step` (the best saved as `Task.best_name`), a
        checkpoint every `runner.save_step`."""
        runner = self.cfg.runner
        if self.head is None:
            self.task.prepare(train)
            if self.featurizer.standardize:
                self.standardize_features(train)
            self.build()
        total, accumulate = int(runner.total_steps), int(runner.gradient_accumulate_steps)
        bar = tqdm(total=total, initial=self.step, desc=f"{self.task.name} train", unit="step",
                   disable=not sys.stderr.isatty(), dynamic_ncols=True)
        self.head.train()
        resumed = self.random_state is not None
        while self.step < total:
            batches, resumed = self._next_epoch(train, resumed), False
            if not batches:
                raise UserError(f"{self.root}: no {self.task.name} training utterances")
            for batch in batches[self.position:]:
                self.position += 1
                x, lengths = self.features(batch)
                loss = self.task.loss(self.head, x, lengths, batch) / accumulate
                loss.backward()
                self.losses.append(loss.item() * accumulate)
                self.pending += 1  # batches accumulated, counted across epochs as s3prl does
                if self.pending < accumulate:
                    continue
                self.pending = 0
                params = list(self.featurizer.parameters()) + list(self.head.parameters())
                norm = torch.nn.utils.clip_grad_norm_(params, float(runner.gradient_clipping))
                if torch.isfinite(norm):  # s3prl skips the update of a NaN gradient norm
                    self.optimizer.step()
                else:
                    log({"step": self.step + 1, "skipped_update": 1})
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                bar.update(1)
                if self.step % int(runner.log_step) == 0:
                    log({"step": self.step, "train_loss": float(np.mean(self.losses))})
                    bar.set_postfix(loss=f"{np.mean(self.losses):.3f}")
                    self.losses = []
                if self.task.dev_split and (self.step % int(runner.eval_step) == 0
                                            or self.step == total):
                    self._validate(log)
                if self.step % int(runner.save_step) == 0 or self.step == total:
                    self.save(self.expdir / downstream_states_name(self.step))
                    keep_newest(downstream_states(self.expdir), int(runner.max_keep))
                if self.step >= total:
                    break
        bar.close()

    def _next_epoch(self, train: list[Utterance], resumed: bool) -> list[list[Utterance]]:
        """The batches to train on next: those of the saved epoch when a resumed run stopped
        inside it (its first `position` done, the random state as it was then), else those
        of a new epoch."""
        if resumed:
            batches = self._epoch(train, self.epoch)
            set_random_state(self.random_state)
            if self.position < len(batches):
                return batches
        self.epoch, self.position = self.epoch + 1, 0
        torch.manual_seed(self.seed * 7919 + self.epoch)
        return self._epoch(train, self.epoch)

    def _epoch(self, train: list[Utterance], epoch: int):
        return self.batches(self.task.epoch(train, self.seed * 31 + epoch), shuffle=True,
                            epoch=epoch)

    def _validate(self, log) -> None:
        value, _, items = self.evaluate(self.task.dev_split)
        improved = self.is_better(value)
        if improved:
            self.best = value
            self.save(self.expdir / self.task.best_name)
            write_items(self.best_items_path(), items)
        log({"step": self.step, f"dev_{self.task.metric}": value, "best": self.best})

    def best_items_path(self) -> Path:
        """The dev items scored by the best dev checkpoint (`dev-best_items.tsv`)."""
        return items_path(self.expdir, Path(self.task.best_name).stem)


def random_state(device: torch.device) -> dict:
    """The generators training draws from (dropout, SpecAugment, Python's `random`)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_random_state(state: dict | None) -> None:
    """Put back the generators `random_state` saved (nothing for None)."""
    if not state:
        return
    torch.set_rng_state(state["torch"])
    random.setstate(_python_state(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _python_state(saved: tuple | list) -> tuple:
    version, internal, gauss = saved  # tuples may come back as lists
    return version, tuple(internal), gauss


def build_optimizer(cfg: DictConfig, params: list[torch.nn.Parameter]
                    ) -> torch.optim.Optimizer:
    """`optimizer.name` (s3prl's `torch_optim_name`: Adam or AdamW, torch's defaults
    otherwise, as s3prl's TorchOptim) at `optimizer.lr`."""
    name = str(cfg.get("name", "Adam"))
    optimizers = {"Adam": torch.optim.Adam, "AdamW": torch.optim.AdamW}
    if name not in optimizers:
        raise UserError(f"optimizer.name={name}: expected one of {', '.join(optimizers)}")
    return optimizers[name](params, lr=float(cfg.lr))


def read_downstream_ckpt(path: Path) -> dict:
    """The content of a downstream checkpoint (`Run.save`), or one line saying why not."""
    if not Path(path).is_file():
        raise UserError(f"{path}: no such downstream checkpoint")
    state = read_torch_file(Path(path))  # bounded like every checkpoint read
    if not isinstance(state, dict) or "head" not in state or "task" not in state:
        raise UserError(f"{path}: not a tera downstream checkpoint (states-*.ckpt, *-best.ckpt)")
    return state
