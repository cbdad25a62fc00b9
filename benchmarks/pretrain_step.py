"""Pre-training step throughput and inference real-time factor of TERA2 on this machine.

    python benchmarks/pretrain_step.py                      # tiny and slim, fp32 and bf16, table
    python benchmarks/pretrain_step.py --preset slim --dtype bf16 --json   # one JSON line

A step is forward + MFCC targets + loss + backward on a random batch (default 4 x 4 s) in
training mode (masking, dropout). Inference is a no-grad forward in eval mode. The shares
say where a training step's time goes: MFCC targets, the conv extractor (forward and
backward, timed on its own) and the rest (projection, masking, transformer, head, loss).
The four measurements take turns, `--repeats` rounds (medians), with the allocator setting
of tera's commands (`keep_freed_memory`). Against the peer a user would otherwise pick:
benchmarks/peer_step.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from tera.audio import tera_targets
from tera.model.tera import TeraModel
from tera.presets import load_preset, model_config
from tera.pretrain.loss import tera_loss
from tera.runtime import keep_freed_memory


def timed(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median seconds per call of each function, the functions taking turns."""
    for fn in fns:  # warm-up
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]


def measure(preset: str, dtype: str, batch: int, seconds: float, repeats: int) -> dict:
    torch.manual_seed(0)
    cfg = model_config(load_preset(preset))
    model = TeraModel(cfg)
    waves = torch.randn(batch, int(seconds * 16000)) * 0.1
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")

    def train_step() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        with autocast:
            out = tera_loss(model, waves)
        out.loss.backward()

    def targets_only() -> None:
        tera_targets(waves)

    def extractor_step() -> None:
        model.zero_grad(set_to_none=True)
        with autocast:
            features, _ = model.feature_extractor(waves)
        features.float().pow(2).mean().backward()

    def inference() -> None:
        model.eval()
        with torch.no_grad(), autocast:
            model.extract_features(waves)

    step, targets, extractor, infer = timed(
        [train_step, targets_only, extractor_step, inference], repeats)
    audio = batch * seconds
    return {
        "preset": preset,
        "dtype": dtype,
        "threads": torch.get_num_threads(),
        "batch": f"{batch}x{seconds:g}s",
        "step_s": round(step, 4),
        "audio_seconds_per_second": round(audio / step, 2),
        "rtf": round(infer / audio, 5),
        "share_targets": round(targets / step, 3),
        "share_conv_extractor": round(extractor / step, 3),
        "share_transformer_and_rest": round(max(step - targets - extractor, 0.0) / step, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append", help="default: tiny and slim")
    parser.add_argument("--dtype", action="append", choices=["fp32", "bf16"],
                        help="default: fp32 and bf16")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON line per measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()

    rows = [
        measure(preset, dtype, args.batch, args.seconds, args.repeats)
        for preset in args.preset or ["tiny", "slim"]
        for dtype in args.dtype or ["fp32", "bf16"]
    ]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print(f"{'preset':8} {'dtype':5} {'step s':>7} {'audio-s/s':>10} {'RTF':>8} "
          f"{'targets':>8} {'conv':>6} {'rest':>6}")
    for r in rows:
        print(f"{r['preset']:8} {r['dtype']:5} {r['step_s']:7.3f} "
              f"{r['audio_seconds_per_second']:10.1f} {r['rtf']:8.4f} "
              f"{r['share_targets']:8.1%} {r['share_conv_extractor']:6.1%} "
              f"{r['share_transformer_and_rest']:6.1%}")
    by_key = {(r["preset"], r["dtype"]): r for r in rows}
    for preset in args.preset or ["tiny", "slim"]:
        if (preset, "fp32") in by_key and (preset, "bf16") in by_key:
            ratio = (by_key[(preset, "bf16")]["audio_seconds_per_second"]
                     / by_key[(preset, "fp32")]["audio_seconds_per_second"])
            print(f"{preset}: bf16 / fp32 training throughput = {ratio:.2f}x")
    print("against transformers' HubertModel (fp32), side by side: benchmarks/peer_step.py")


if __name__ == "__main__":
    main()
