"""fairseq's rules ported for comparison, and tera-speech's pre-training update run beside
them: the reference that tests/test_pretrain_parity.py checks tera-speech against and that
benchmarks/fork_parity.py prints.

The update (`update_losses`): from the same initial weights, the same batches (read by
tera-speech's loader) and the same masks and LayerDrop draws (the same torch seed before each
forward), with dropout off and float32, N updates three ways:
- fork: the forward and loss of `tera_loss`, then fairseq's trainer around it, ported here
  (not into the package): fairseq's `polynomial_decay` schedule with the trainer's numbering
  (`step_update(0)` before the first update, `step_update(n)` after the n-th), its gradient
  clipping, its Adam (eps on sqrt(v) before the bias correction), and the missing gradients of
  LayerDrop's skipped layers zero-filled, as the fork's fp16 optimiser's flat gradient buffer
  holds them;
- tera: `Trainer._update`, what `tera pretrain` runs;
- before: tera-speech before it followed the fork (`torch.optim.AdamW`, the learning rate
  one update ahead in warm-up).
The batches: `fairseq_ordered_indices` + `fairseq_batch_by_size` port HuBERT dataset's
`ordered_indices` and fairseq's `batch_by_size`.

fairseq's sources were read for the facts (fairseq/optim/adam.py,
optim/lr_scheduler/polynomial_decay_schedule.py, trainer.py, data/data_utils.py,
data/data_utils_fast.pyx, data/audio/hubert_dataset.py); the code here is our own.
"""

from __future__ import annotations

import copy
import math
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from tera.audio import load_audio
from tera.pretrain.config import load_config
from tera.pretrain.data import SamplerState
from tera.pretrain.loss import tera_loss
from tera.pretrain.manifest import write_manifest
from tera.pretrain.optim import polynomial_lr
from tera.pretrain.trainer import Trainer, _mix
from tera.runtime import prepare_process

from .paths import FLAC


def fairseq_ordered_indices(sizes: np.ndarray, seed: int) -> np.ndarray:
    """HuBERT dataset's `ordered_indices` under fairseq's `numpy_seed(seed + epoch)`, epoch 1:
    descending size, ties broken by a random permutation."""
    state = np.random.get_state()
    np.random.seed(seed + 1)
    try:
        permutation = np.random.permutation(len(sizes))
    finally:
        np.random.set_state(state)
    return np.lexsort([permutation, sizes])[::-1]


def fairseq_batch_by_size(indices: np.ndarray, num_tokens: np.ndarray, max_tokens: int,
                          multiple: int) -> list[np.ndarray]:
    """`batch_by_size` with a token vector: the Cython loop of `batch_by_size_vec` step by
    step (committed batch plus a tail, commits at sizes below `multiple` or multiples of it),
    then the last batch dropped when its size is not a multiple."""
    tokens = np.asarray(num_tokens)[indices]
    ends = [0]  # ends[k]: where batch k ends (the last one still open)
    batch_start, batch_max, tail_max = 0, 0, 0
    for pos in range(len(indices)):
        tail_max = max(tail_max, int(tokens[pos]))
        new_end = pos + 1
        new_max = max(batch_max, tail_max)
        count = new_end - batch_start
        overflow = count * new_max > max_tokens
        fits_multiple = count < multiple or count % multiple == 0
        if overflow:
            if tail_max * (new_end - ends[-1]) > max_tokens:  # the tail alone is too big
                ends.append(pos)
                tail_max = int(tokens[pos])
            batch_start = ends[-1]
            ends.append(0)
            new_max = tail_max
        if overflow or fits_multiple:
            ends[-1] = new_end
            batch_max, tail_max = new_max, 0
    cuts = ends if ends[-1] != len(indices) else ends[:-1]
    batches = np.split(indices, cuts)
    if multiple > 1 and len(batches[-1]) % multiple:
        batches = batches[:-1]
    return batches


def fairseq_lr(num_updates: int, peak: float, warmup: int, total: int) -> float:
    """`polynomial_decay.step_update(num_updates)` (end lr 0, power 1)."""
    if warmup > 0 and num_updates <= warmup:
        return num_updates / warmup * peak
    if num_updates >= total:
        return 0.0
    return peak * (1 - (num_updates - warmup) / (total - warmup))


def fairseq_clip(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """fairseq's `clip_grad_norm_`: the 2-norm of all gradients, scaled down to max_norm."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.norm(torch.stack([torch.norm(g, 2) for g in grads]), 2)
    coefficient = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coefficient)
    return float(total)


class ForkAdam:
    """fairseq's Adam step over zero-filled gradients (the fork's flat fp32 buffer)."""

    def __init__(self, params: list[torch.nn.Parameter], betas, eps: float, decay: float):
        self.params, self.betas, self.eps, self.decay = params, betas, eps, decay
        self.step_count = 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, lr: float) -> None:
        beta1, beta2 = self.betas
        self.step_count += 1
        correction1 = 1 - beta1**self.step_count
        correction2 = 1 - beta2**self.step_count
        for p, m, v in zip(self.params, self.m, self.v):
            grad = p.grad if p.grad is not None else torch.zeros_like(p)
            m.mul_(beta1).add_(grad, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denominator = v.sqrt().add_(self.eps)
            p.add_(p, alpha=-self.decay * lr)
            p.addcdiv_(m, denominator, value=-lr * math.sqrt(correction2) / correction1)


# --- the update, three ways ---------------------------------------------------------------


def write_audio(folder: Path, count: int, seed: int) -> None:
    """`count` cuts of 2-4 s of the LibriSpeech test file, as `u000.wav`... in `folder`."""
    wave = load_audio(FLAC).numpy()
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        length = int(rng.integers(32000, 64000))
        start = int(rng.integers(0, len(wave) - length))
        sf.write(folder / f"u{i:03d}.wav", wave[start : start + length], 16000)


def update_losses(updates: int, max_tokens: int, preset: str = "slim",
                  overrides: tuple[str, ...] = ()) -> dict:
    """The three sides' losses over `updates` updates of `preset` (see the module
    docstring), with `overrides` on top."""
    folder = Path(tempfile.mkdtemp(prefix="fork_parity_"))
    write_audio(folder / "audio", 96, seed=0)
    write_manifest(folder / "audio", folder / "manifest", valid_percent=0.05, seed=0)
    dropout_off = [f"model.{k}=0.0" for k in ("dropout", "attention_dropout",
                                                 "activation_dropout", "dropout_input",
                                                 "dropout_features")]
    cfg = load_config(preset, overrides=[
        f"task.data={folder / 'manifest'}", f"checkpoint.save_dir={folder / 'run'}",
        "common.amp=fp32", "common.device=cpu", "dataset.num_workers=0",
        f"dataset.max_tokens={max_tokens}", "task.min_sample_size=16000", *dropout_off,
        *overrides])
    prepare_process()  # as `tera pretrain` does
    trainer = Trainer(cfg)
    initial = copy.deepcopy(trainer.model.state_dict())
    peak, warmup = float(cfg.optimization.lr), int(cfg.lr_scheduler.warmup_updates)
    total, clip = int(cfg.optimization.max_update), float(cfg.optimization.clip_norm)

    tera, batches = [], []
    reader = trainer._batches()
    trainer.model.train()
    for _ in range(updates):
        batch = next(reader, None)
        if batch is None:  # the epoch is over: the next one, as the trainer starts it
            trainer.sampler.state = SamplerState(trainer.sampler.state.epoch + 1, 0)
            reader = trainer._batches()
            batch = next(reader)
        state = trainer.sampler.state
        seed = _mix(trainer.seed, state.epoch, state.position - 1)  # as _update seeds it
        batches.append((batch, seed))
        stats = trainer._update([batch])
        trainer.update += 1
        tera.append((stats["loss"], stats["lr"]))

    def run(make_step) -> list[tuple[float, float]]:
        model = copy.deepcopy(trainer.model)
        model.load_state_dict(initial)
        model.train()
        step = make_step(model)
        out = []
        for number, ((waves, lengths), seed) in enumerate(batches):
            model.zero_grad(set_to_none=True)
            torch.manual_seed(seed)
            loss = tera_loss(model, waves, lengths,
                             feature_pen_weight=float(cfg.criterion.feature_pen_weight)).loss
            loss.backward()
            out.append((loss.item(), step(number)))
        return out

    def fork_step(model):
        params = list(model.parameters())
        adam = ForkAdam(params, tuple(cfg.optimizer.adam_betas), float(cfg.optimizer.adam_eps),
                        float(cfg.optimizer.weight_decay))

        def step(number: int) -> float:
            lr = fairseq_lr(number, peak, warmup, total)  # step_update(n) before update n+1
            if not math.isfinite(fairseq_clip(params, clip)):
                raise FloatingPointError("gradients are Nan/Inf")
            adam.step(lr)
            return lr
        return step

    def before_step(model):
        adamw = torch.optim.AdamW(model.parameters(), lr=peak,
                                  betas=tuple(cfg.optimizer.adam_betas),
                                  eps=float(cfg.optimizer.adam_eps),
                                  weight_decay=float(cfg.optimizer.weight_decay))

        def step(number: int) -> float:
            lr = polynomial_lr(number + 1, peak, warmup, total)  # one update ahead
            for group in adamw.param_groups:
                group["lr"] = lr
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            adamw.step()
            return lr
        return step

    fork, before = run(fork_step), run(before_step)
    rows = []
    for number, ((f_loss, f_lr), (t_loss, t_lr), (b_loss, _)) in enumerate(
            zip(fork, tera, before), start=1):
        rows.append({"update": number, "lr_fork": f_lr, "lr_tera": t_lr, "loss_fork": f_loss,
                     "loss_tera": t_loss, "gap_tera": abs(t_loss / f_loss - 1),
                     "loss_before": b_loss, "gap_before": abs(b_loss / f_loss - 1)})
    return {"rows": rows, "utterances_per_batch": [len(b[0][1]) for b in batches],
            "max_gap_tera": max(r["gap_tera"] for r in rows),
            "max_gap_before": max(r["gap_before"] for r in rows)}
