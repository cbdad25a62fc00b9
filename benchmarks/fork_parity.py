"""tera-speech's pre-training against the fairseq fork's recipe, side by side.

    python benchmarks/fork_parity.py                     # 20 updates of slim + the batching table
    python benchmarks/fork_parity.py --updates 5 --json

1. The update. From the same initial weights, the same batches (read by tera-speech's
   loader) and the same masks and LayerDrop draws (the same torch seed before each forward),
   with dropout off and float32, it runs N updates of slim on the fork's schedule (warmup
   32000, lr 5e-4) three ways and prints each update's loss:
   - fork: the forward and loss of `tera_loss`, then fairseq's trainer around it, ported
     into this file (not into the package): fairseq's `polynomial_decay` schedule with the
     trainer's numbering (`step_update(0)` before the first update, `step_update(n)` after
     the n-th), its gradient clipping, its Adam (eps on √v before the bias correction), and
     the missing gradients of LayerDrop's skipped layers zero-filled, as the fork's fp16
     optimiser's flat gradient buffer holds them;
   - tera: `Trainer._update`, what `tera pretrain` runs;
   - before: tera-speech before it followed the fork (`torch.optim.AdamW`, the learning rate
     one update ahead in warm-up).
2. The batches. A LibriSpeech-like manifest (960 h: 281241 utterances over 2338 speakers,
   listed in path order, i.e. by speaker; lengths drawn around LibriSpeech's) is cut into
   batches by a port of fairseq's `ordered_indices` + `batch_by_size` (HuBERT dataset
   sizes, `required_batch_size_multiple` 8), by tera-speech now, and by tera-speech before
   (padded, cut by count x longest in manifest order among equal lengths); it prints audio
   per update and speakers per batch. tera-speech's batches must equal the port's.

fairseq's sources were read for the facts (fairseq/optim/adam.py,
optim/lr_scheduler/polynomial_decay_schedule.py, trainer.py, data/data_utils.py,
data/data_utils_fast.pyx, data/audio/hubert_dataset.py); the code here is our own.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

# --- fairseq's rules, ported for comparison ----------------------------------------------


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


# --- 1. the update --------------------------------------------------------------------------


def write_audio(folder: Path, count: int, seed: int) -> None:
    import soundfile as sf

    from tera.audio import load_audio

    wave = load_audio(Path(__file__).resolve().parents[1] / "tests" / "data"
                      / "librispeech-6313-76958-0021.flac").numpy()
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
    from tera.pretrain.config import load_config
    from tera.pretrain.data import SamplerState
    from tera.pretrain.loss import tera_loss
    from tera.pretrain.manifest import write_manifest
    from tera.pretrain.optim import polynomial_lr
    from tera.pretrain.trainer import Trainer, _mix

    folder = Path(tempfile.mkdtemp(prefix="fork_parity_"))
    write_audio(folder / "audio", 96, seed=0)
    write_manifest(folder / "audio", folder / "manifest", valid_percent=0.05, seed=0)
    dropout_off = [f"model.{k}=0.0" for k in ("dropout", "attention_dropout",
                                                 "activation_dropout", "dropout_input",
                                                 "dropout_features")]
    cfg = load_config("slim", overrides=[
        f"task.data={folder / 'manifest'}", f"checkpoint.save_dir={folder / 'run'}",
        "common.amp=fp32", "common.device=cpu", "dataset.num_workers=0",
        f"dataset.max_tokens={max_tokens}", "task.min_sample_size=16000", *dropout_off,
        *overrides])
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


# --- 2. the batches -------------------------------------------------------------------------


def librispeech_like(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(sizes, speaker of each) in manifest (path) order: 281241 utterances over 2338
    speakers, 960 h as LibriSpeech's (mean 12.3 s, longest 35.2 s): most of 12-16 s, a
    quarter shorter, a few percent up to 35 s."""
    rng = np.random.default_rng(seed)
    count, speakers = 281241, 2338
    kind = rng.random(count)
    seconds = np.where(kind < 0.72, rng.normal(13.1, 1.6, count),
                       np.where(kind < 0.97, rng.uniform(1.3, 16.0, count),
                                rng.uniform(16.0, 35.2, count)))
    seconds = np.clip(seconds, 1.3, 35.2)
    speaker = np.sort(rng.integers(0, speakers, count))
    return (seconds * 16000).astype(np.int64), speaker


def batch_statistics(batches: list, sizes: np.ndarray, speaker: np.ndarray, cap: int,
                     padded: bool) -> dict:
    """Audio per batch (what the model hears, padding excluded) and speakers per batch."""
    audio, voices, long_voices = [], [], []
    for batch in batches:
        batch = np.asarray(batch)
        kept = np.minimum(sizes[batch], cap)
        audio.append(kept.sum() if padded else len(batch) * kept.min())
        voices.append(len(set(speaker[batch].tolist())))
        if sizes[batch].min() >= cap:
            long_voices.append(voices[-1] / len(batch))
    return {"batches": len(batches),
            "utterances_per_batch": float(np.mean([len(b) for b in batches])),
            "audio_s_per_update": float(np.mean(audio)) / 16000,
            "speakers_per_batch": float(np.mean(voices)),
            "speakers_per_utterance_long_batches": float(np.mean(long_voices))
            if long_voices else None}


def batching(seed: int = 1337, max_tokens: int = 1400000, cap: int = 250000,
             min_size: int = 32000) -> dict:
    from tera.pretrain.data import length_batches, size_ordered, token_batches

    sizes, speaker = librispeech_like()
    keep = sizes >= min_size
    sizes, speaker = sizes[keep], speaker[keep]
    tokens = np.minimum(sizes, cap)
    fork = fairseq_batch_by_size(fairseq_ordered_indices(sizes, seed), tokens, max_tokens, 8)
    ours = token_batches(size_ordered(sizes, seed), tokens, max_tokens, multiple=8)
    if [b.tolist() for b in fork] != list(ours):
        raise SystemExit("tera-speech's batches differ from the port of batch_by_size")
    before = length_batches(tokens, max_tokens)
    six = np.full(64, 96000)
    return {
        "hours": float(sizes.sum()) / 16000 / 3600, "mean_s": float(sizes.mean()) / 16000,
        "fork": batch_statistics(fork, sizes, speaker, cap, padded=False),
        "tera": batch_statistics(ours, sizes, speaker, cap, padded=False),
        "before": batch_statistics(before, sizes, speaker, cap, padded=True),
        "identical_batches": True,
        "six_second_batch": {
            "fork": len(fairseq_batch_by_size(fairseq_ordered_indices(six, seed), six,
                                              max_tokens, 8)[0]),
            "tera": len(token_batches(size_ordered(six, seed), six, max_tokens, 8)[0]),
            "before": len(length_batches(six, max_tokens)[0])},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=250000,
                        help="samples per batch for the update comparison (CPU-sized)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    result = {"update": update_losses(args.updates, args.max_tokens), "batching": batching()}
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        print()
        return
    update = result["update"]
    print(f"{'update':>6} {'lr fork':>10} {'lr tera':>10} {'loss fork':>11} {'loss tera':>11} "
          f"{'rel gap':>9} {'loss before':>11} {'rel gap':>9}")
    for r in update["rows"]:
        print(f"{r['update']:>6} {r['lr_fork']:>10.3e} {r['lr_tera']:>10.3e} "
              f"{r['loss_fork']:>11.7f} {r['loss_tera']:>11.7f} {r['gap_tera']:>9.1e} "
              f"{r['loss_before']:>11.7f} {r['gap_before']:>9.1e}")
    print(f"largest relative gap: tera {update['max_gap_tera']:.1e}, "
          f"before {update['max_gap_before']:.1e}; utterances per batch "
          f"{update['utterances_per_batch']}")
    print(f"\nLibriSpeech-like ({result['batching']['hours']:.0f} h kept, utterances of "
          f"{result['batching']['mean_s']:.1f} s on average), slim settings (max_tokens "
          "1400000, crops of at most 250000):")
    print(f"{'':>8} {'batches':>8} {'utts/batch':>10} {'audio s/update':>14} "
          f"{'speakers/batch':>14} {'speakers/utt (long batches)':>27}")
    for name in ("fork", "tera", "before"):
        s = result["batching"][name]
        long = s["speakers_per_utterance_long_batches"]
        print(f"{name:>8} {s['batches']:>8} {s['utterances_per_batch']:>10.2f} "
              f"{s['audio_s_per_update']:>14.1f} {s['speakers_per_batch']:>14.2f} "
              f"{'-' if long is None else f'{long:.2f}':>27}")
    six = result["batching"]["six_second_batch"]
    print(f"equal 6 s utterances, utterances (seconds) per batch: fork {six['fork']} "
          f"({6 * six['fork']} s), tera {six['tera']} ({6 * six['tera']} s), before "
          f"{six['before']} ({6 * six['before']} s); tera's batches equal the port's: "
          f"{result['batching']['identical_batches']}")


if __name__ == "__main__":
    main()
