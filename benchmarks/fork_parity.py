"""tera-speech's pre-training against the fairseq fork's recipe, side by side.

    python -m benchmarks.fork_parity                     # 20 updates of slim + the batching table
    python -m benchmarks.fork_parity --updates 5 --json

1. The update. N updates of slim on the fork's schedule (warmup 32000, lr 5e-4) from the
   same weights, batches, masks and LayerDrop draws, three ways (tests/fork_reference.py:
   fairseq's trainer ported, tera-speech's `Trainer._update`, and tera-speech before it
   followed the fork); it prints each update's loss.
2. The batches. A LibriSpeech-like manifest (960 h: 281241 utterances over 2338 speakers,
   listed in path order, i.e. by speaker; lengths drawn around LibriSpeech's) is cut into
   batches by a port of fairseq's `ordered_indices` + `batch_by_size` (HuBERT dataset
   sizes, `required_batch_size_multiple` 8), by tera-speech now, and by tera-speech before
   (padded, cut by count x longest in manifest order among equal lengths); it prints audio
   per update and speakers per batch. tera-speech's batches must equal the port's.

"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
from tests.fork_reference import fairseq_batch_by_size, fairseq_ordered_indices, update_losses

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
