"""`tera extract`, `tera info` and `tera convert`: features, model facts, checkpoint formats."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tera.audio import load_audio
from tera.errors import UserError


def add_inference_commands(sub: argparse._SubParsersAction) -> None:
    extract = sub.add_parser(
        "extract", help="write hidden states or baseline features of audio files to an .npz",
        description="Per input file, an array keyed by the file's stem: (L+1, T, D) with "
        "--layer all, (T, D) with a layer number. Stereo is averaged to mono and other "
        "rates are resampled to 16 kHz.",
    )
    extract.add_argument("-u", "--upstream", choices=["tera2", "mfcc", "fbank"],
                         default="tera2")
    extract.add_argument("-k", "--ckpt", help="checkpoint (any format tera can load)")
    extract.add_argument("--layer", default="all", help="'all' or a layer number (0 = input)")
    extract.add_argument("--deltas", action="store_true", help="fbank: add Δ and ΔΔ")
    extract.add_argument("--device", default="cpu")
    extract.add_argument("-o", "--output", required=True, help="output .npz")
    extract.add_argument("files", nargs="+", metavar="FILE")
    extract.set_defaults(handler=run_extract)

    info = sub.add_parser("info", help="preset, parameter count and FLOPs per second of audio")
    info.add_argument("target", metavar="CKPT_OR_PRESET")
    info.add_argument("--json", action="store_true")
    info.set_defaults(handler=run_info)

    convert = sub.add_parser("convert", help="convert a checkpoint between formats")
    convert.add_argument("src")
    convert.add_argument("dst")
    convert.add_argument("--to", required=True, choices=["s3prl", "fairseq", "safetensors"])
    convert.set_defaults(handler=run_convert)


def run_extract(args: argparse.Namespace) -> int:
    from tera.upstream import load_upstream

    if args.upstream == "tera2" and args.ckpt is None:
        print("tera extract: no checkpoint given: using a randomly initialised slim model "
              "(seed 0)", file=sys.stderr)
    upstream = load_upstream(args.upstream, args.ckpt, deltas=args.deltas).to(args.device)
    layer = _parse_layer(args.layer, upstream.num_layers)
    stems = [Path(f).stem for f in args.files]
    duplicates = {s for s in stems if stems.count(s) > 1}
    if duplicates:
        raise UserError(f"several input files share the stem {sorted(duplicates)[0]!r}: the "
                        "output keys would collide")
    arrays = {}
    for path in tqdm(args.files, desc="extract", unit="file", disable=len(args.files) < 2):
        wave = load_audio(path, min_samples=400).to(args.device)
        with torch.no_grad():
            out = upstream([wave])
        hidden = torch.stack(out["hidden_states"])[:, 0]  # [L+1, T, D]
        arrays[Path(path).stem] = (hidden if layer is None else hidden[layer]).cpu().numpy()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez(output, **arrays)
    shapes = ", ".join(f"{k} {v.shape}" for k, v in list(arrays.items())[:3])
    print(f"wrote {output}: {len(arrays)} arrays ({shapes}{', ...' if len(arrays) > 3 else ''})")
    return 0


def _parse_layer(value: str, num_layers: int) -> int | None:
    if value == "all":
        return None
    try:
        layer = int(value)
    except ValueError:
        raise UserError(f"--layer must be 'all' or a number, got {value!r}") from None
    if not 0 <= layer < num_layers:
        raise UserError(f"--layer {layer} is out of range: this upstream has layers "
                        f"0..{num_layers - 1}")
    return layer


def run_info(args: argparse.Namespace) -> int:
    from tera.presets import load_preset, model_config, model_cost, preset_names

    target = Path(args.target)
    if target.exists():
        from tera.checkpoint import load_checkpoint

        ckpt = load_checkpoint(target)
        cfg, preset = ckpt.model_cfg, ckpt.metadata.get("preset", "unknown")
        source = f"{target} ({ckpt.source_format})"
    elif args.target in preset_names() or args.target.startswith("tera_"):
        cfg, preset, source = model_config(load_preset(args.target)), args.target, "preset"
    else:
        raise UserError(f"{args.target}: neither a checkpoint file nor a known preset "
                        f"({', '.join(preset_names())})")
    cost = model_cost(cfg)
    facts = {
        "preset": preset, "source": source, "parameters": cost.parameters,
        "flops_per_second": cost.flops_per_second,
        "conv_flops_per_second": cost.conv_flops_per_second,
        "transformer_flops_per_second": cost.transformer_flops_per_second,
        "encoder_layers": cfg.encoder_layers, "encoder_embed_dim": cfg.encoder_embed_dim,
        "encoder_ffn_embed_dim": cfg.encoder_ffn_embed_dim,
        "encoder_attention_heads": cfg.encoder_attention_heads,
    }
    if args.json:
        print(json.dumps(facts))
        return 0
    print(f"preset: {preset}   ({source})")
    print(f"architecture: {cfg.encoder_layers} layers x {cfg.encoder_embed_dim}, FFN "
          f"{cfg.encoder_ffn_embed_dim}, {cfg.encoder_attention_heads} heads")
    print(f"parameters: {cost.parameters:,}")
    print(f"forward FLOPs per second of audio: {cost.flops_per_second:.3e} "
          f"(conv extractor {cost.conv_flops_per_second:.2e}, transformer "
          f"{cost.transformer_flops_per_second:.2e}; 15.6 s utterances)")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from tera.checkpoint import convert_checkpoint

    ckpt = convert_checkpoint(args.src, args.dst, args.to)
    print(f"converted {args.src} ({ckpt.source_format}) -> {args.dst} ({args.to})")
    return 0
