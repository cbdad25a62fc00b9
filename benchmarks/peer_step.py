"""tera-speech's slim TERA2 against the peer a user would otherwise pick, side by side.

    pip install -e ".[bench]"             # transformers, for this benchmark only
    python benchmarks/peer_step.py        # a table and the ratios
    python benchmarks/peer_step.py --json

The peer is `transformers`' `HubertModel` with the slim shape (12 layers x 384, FFN 768, 8
heads, the same conv extractor and positional conv), random weights, float32 as shipped,
with TERA's dropout settings. Its training step is its forward with the same time masks +
a Linear(384, 78) head + the same MFCC targets and L1 loss on the masked frames + backward;
tera-speech's is `tera_loss` (bf16 autocast, the CPU default) + backward. Inference is a
no-grad forward of the batch in eval mode: tera-speech's through `TeraUpstream` in bf16, as
`tera extract` and the downstream feature cache run it; the peer's as shipped.

Each side runs in a process of its own, as each would run for a user: tera-speech's with
the allocator setting its commands make (`keep_freed_memory`), the peer's with the C
library's defaults (`--peer-keeps-memory` gives it tera's setting too). The processes take
turns, one measurement at a time, for `--repeats` rounds, and the medians are compared, so
that the machine's load falls on both alike. Wall-clock seconds are the figures; CPU seconds
(`*_cpu_s`) are printed too, as they vary less on a loaded machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

MEASUREMENTS = ("step", "inference")


def peer_model(cfg):  # noqa: ANN001, ANN201
    """The transformers HubertModel of the TERA config's shape, with its dropouts."""
    try:
        from transformers import HubertConfig, HubertModel
    except ImportError as err:
        raise SystemExit('this benchmark needs transformers: pip install -e ".[bench]"') from err
    layers = cfg.conv_layers
    return HubertModel(HubertConfig(
        hidden_size=cfg.encoder_embed_dim, num_hidden_layers=cfg.encoder_layers,
        num_attention_heads=cfg.encoder_attention_heads,
        intermediate_size=cfg.encoder_ffn_embed_dim,
        conv_dim=[c for c, _, _ in layers], conv_kernel=[k for _, k, _ in layers],
        conv_stride=[s for _, _, s in layers], conv_bias=cfg.conv_bias,
        num_conv_pos_embeddings=cfg.conv_pos, num_conv_pos_embedding_groups=cfg.conv_pos_groups,
        hidden_dropout=cfg.dropout, attention_dropout=cfg.attention_dropout,
        activation_dropout=cfg.activation_dropout, feat_proj_dropout=cfg.dropout_input,
        layerdrop=cfg.encoder_layerdrop,
    ))


def tera_side(cfg, waves: torch.Tensor) -> dict[str, Callable[[], object]]:  # noqa: ANN001
    from tera.model.tera import TeraModel
    from tera.pretrain.loss import tera_loss
    from tera.upstream import TeraUpstream

    model = TeraModel(cfg)
    upstream = TeraUpstream(model, precision="bf16")
    utterances = list(waves)

    def step() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = tera_loss(model, waves)
        out.loss.backward()

    def inference() -> None:
        model.eval()  # the step above left it in training mode (dropout on)
        with torch.no_grad():
            upstream(utterances)

    return {"step": step, "inference": inference}


def peer_side(cfg, waves: torch.Tensor) -> dict[str, Callable[[], object]]:  # noqa: ANN001
    from tera.audio import tera_targets
    from tera.model.conv_geometry import ConvGeometry
    from tera.model.masking import compute_span_mask

    peer = peer_model(cfg)
    head = torch.nn.Linear(cfg.encoder_embed_dim, 78)

    def step() -> None:
        peer.train()
        peer.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        targets, _ = tera_targets(waves)
        frames = min(targets.size(1), ConvGeometry.of(cfg.conv_layers).num_frames(waves.size(1)))
        mask = compute_span_mask(torch.full((waves.size(0),), frames), frames, cfg.mask_prob,
                                 cfg.mask_length)
        hidden = peer(waves, mask_time_indices=mask).last_hidden_state[:, :frames]
        loss = F.l1_loss(head(hidden)[mask], targets[:, :frames][mask])
        loss.backward()

    def inference() -> None:
        peer.eval()
        with torch.no_grad():
            peer(waves)

    return {"step": step, "inference": inference}


def worker(side: str, args: argparse.Namespace, conn) -> None:  # noqa: ANN001
    """Build one side, then run the measurement the parent names, one at a time."""
    from tera.presets import load_preset, model_config
    from tera.runtime import keep_freed_memory

    torch.set_num_threads(args.threads)
    if side == "tera" or args.peer_keeps_memory:
        keep_freed_memory()
    torch.manual_seed(0)
    cfg = model_config(load_preset(args.preset))
    waves = torch.randn(args.batch, int(args.seconds * 16000)) * 0.1
    runs = tera_side(cfg, waves) if side == "tera" else peer_side(cfg, waves)
    for fn in runs.values():  # warm-up
        fn()
    conn.send("ready")
    while (name := conn.recv()) is not None:
        wall, cpu = time.perf_counter(), time.process_time()
        runs[name]()
        conn.send((time.perf_counter() - wall, time.process_time() - cpu))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="slim")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peer-keeps-memory", action="store_true",
                        help="give the peer's process tera's allocator setting too")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    context = mp.get_context("spawn")
    pipes, processes = {}, []
    for side in ("tera", "peer"):
        parent, child = context.Pipe()
        process = context.Process(target=worker, args=(side, args, child), daemon=True)
        process.start()
        pipes[side] = parent
        processes.append(process)
    for pipe in pipes.values():
        if pipe.recv() != "ready":
            raise SystemExit("a benchmark process failed to start")
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(args.repeats):
        for name in MEASUREMENTS:
            for side, pipe in pipes.items():
                pipe.send(name)
                times.setdefault((side, name), []).append(pipe.recv())
    for pipe in pipes.values():
        pipe.send(None)
    for process in processes:
        process.join()

    def median(side: str, name: str, which: int = 0) -> float:
        return statistics.median(t[which] for t in times[(side, name)])

    audio = args.batch * args.seconds
    result = {
        "preset": args.preset, "threads": args.threads, "batch": f"{args.batch}x{args.seconds:g}s",
        "repeats": args.repeats, "peer_keeps_memory": args.peer_keeps_memory,
        "tera_audio_seconds_per_second": round(audio / median("tera", "step"), 2),
        "peer_audio_seconds_per_second": round(audio / median("peer", "step"), 2),
        "step_ratio": round(median("peer", "step") / median("tera", "step"), 2),
        "tera_rtf": round(median("tera", "inference") / audio, 5),
        "peer_rtf": round(median("peer", "inference") / audio, 5),
        "inference_ratio": round(median("peer", "inference") / median("tera", "inference"), 2),
    }
    for side in ("tera", "peer"):
        for name in MEASUREMENTS:
            result[f"{side}_{name}_cpu_s"] = round(median(side, name, 1), 3)
    result["step_ratio_cpu"] = round(result["peer_step_cpu_s"] / result["tera_step_cpu_s"], 2)
    result["inference_ratio_cpu"] = round(result["peer_inference_cpu_s"]
                                          / result["tera_inference_cpu_s"], 2)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.preset}, {result['batch']} batch, {args.threads} threads, median of "
          f"{args.repeats} turns each (wall clock; CPU seconds in brackets)")
    print(f"training step: tera-speech (bf16) {result['tera_audio_seconds_per_second']} "
          f"audio-s/s, peer (HubertModel fp32) {result['peer_audio_seconds_per_second']} "
          f"audio-s/s: {result['step_ratio']}x ({result['step_ratio_cpu']}x)")
    print(f"inference RTF: tera-speech {result['tera_rtf']}, peer {result['peer_rtf']}: "
          f"{result['inference_ratio']}x faster ({result['inference_ratio_cpu']}x)")


if __name__ == "__main__":
    main()
