"""`tera extract`, `tera info` and `tera convert`: features, model facts, checkpoint formats.

The handlers import what they run when they run, so that `tera --help` loads only the parsers.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from tera.errors import UserError
from tera.upstream import PRECISIONS, TERA2_CHECKPOINT_NAMES, UPSTREAMS, checked_device

DIRECTORY_FORMATS = ("safetensors", "transformers")  # formats written as a folder, not a file


def add_inference_commands(sub: argparse._SubParsersAction) -> None:
    """Declare `tera extract`, `tera info` and `tera convert`."""
    extract = sub.add_parser(
        "extract", help="write hidden states or baseline features of audio files to an .npz",
        description="Per input file, an array keyed by the file's stem: (L+1, T, D) with "
        "--layer all (h_0 = encoder input, h_i = output of layer i; 1 x T x D for mfcc and "
        "fbank), (T, D) with a layer number. Stereo is averaged to mono and other rates are "
        "resampled to 16 kHz.",
    )
    extract.add_argument("-u", "--upstream", default="tera2",
                         choices=[*UPSTREAMS, *TERA2_CHECKPOINT_NAMES],
                         help="tera2 (or s3prl's tera2_local ...), mfcc or fbank")
    extract.add_argument("-k", "--ckpt", help="checkpoint, any format tera reads (tera2 only; "
                         "without it a random slim model, seed 0)")
    extract.add_argument("--layer", default="all", help="'all' or a layer number (0 = input)")
    extract.add_argument("--deltas", action="store_true", help="fbank: add Δ and ΔΔ (240-dim)")
    extract.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    extract.add_argument("--chunk-seconds", type=float, default=60.0,
                         help="tera2: a longer recording runs in windows of this length "
                         "(conv extractor: exact) and encoder chunks with --context-seconds "
                         "on each side (approximate), in bounded memory; 0: whole recordings "
                         "(default 60)")
    extract.add_argument("--context-seconds", type=float, default=10.0,
                         help="tera2: context on each side of an encoder chunk (default 10)")
    extract.add_argument("--precision", choices=PRECISIONS, default="auto",
                         help="tera2: auto (default) computes in bf16 on a CPU with native bf16 "
                         "matmuls (about twice as fast, within 1 %% of fp32), else fp32; "
                         "fp32 gives the reference's numbers")
    extract.add_argument("-o", "--output", required=True, help="output .npz")
    extract.add_argument("files", nargs="+", metavar="FILE")
    extract.set_defaults(handler=run_extract)

    info = sub.add_parser("info", help="preset, parameter count and FLOPs per second of audio")
    info.add_argument("target", metavar="CKPT_OR_PRESET",
                      help="a checkpoint (any format) or a preset name")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(handler=run_info)

    convert = sub.add_parser(
        "convert", help="convert a checkpoint between formats",
        description="Read a checkpoint in any format (fairseq fork, s3prl tera2, tera "
        "pretrain, safetensors or transformers directory) and write it as --to: s3prl (a file "
        "for s3prl's tera2 upstream), fairseq (a file in the fork's layout), safetensors (a "
        "directory with model.safetensors, config.json and README.md) or transformers (a "
        "directory that transformers.HubertModel.from_pretrained loads).",
    )
    convert.add_argument("src")
    convert.add_argument("dst", nargs="?", help="output file or directory (or --output_dir)")
    convert.add_argument("--to", choices=["s3prl", "fairseq", "safetensors", "transformers"],
                         help="output format (default with --output_dir: s3prl)")
    convert.add_argument("--output_dir", "--output-dir", dest="output_dir",
                         help="as s3prl's upstream/tera2/convert.py: write DIR/<src stem>.pt")
    convert.set_defaults(handler=run_convert)


# --- extract ----------------------------------------------------------------------------------


def run_extract(args: argparse.Namespace) -> int:
    """`tera extract`: every input file's hidden states (or baseline features) into one .npz;
    returns the exit code."""
    from tera.audio import load_audio
    from tera.runs.files import check_not_an_input, check_writable

    check_not_an_input(args.output, [*args.files, args.ckpt], "-o")
    for flag in ("--chunk-seconds", "--context-seconds"):
        _check_seconds(flag, getattr(args, flag[2:].replace("-", "_")))
    check_writable(args.output)  # now, not after minutes of features
    device = checked_device(args.device)
    upstream = _extract_upstream(args).to(device)
    layer = _parse_layer(args.layer, upstream.num_layers)
    _check_distinct_stems(args.files)
    arrays = {}
    for path in tqdm(args.files, desc="extract", unit="file", disable=len(args.files) < 2):
        wave = load_audio(path, min_samples=upstream.min_samples).to(device)
        with torch.inference_mode():
            states = upstream([wave])["hidden_states"]  # L+1 x [1, T, D]
        arrays[Path(path).stem] = _as_array(states, layer)
    _save_npz(Path(args.output), arrays)
    shapes = ", ".join(f"{k} {v.shape}" for k, v in list(arrays.items())[:3])
    more = ", ..." if len(arrays) > 3 else ""
    print(f"wrote {args.output}: {len(arrays)} arrays ({shapes}{more})")
    return 0


def _as_array(states: list[torch.Tensor], layer: int | None) -> np.ndarray:
    """(L+1, T, D) or (T, D) float32, filled layer by layer and each layer let go once
    copied, so that a long recording's states are held once, not twice."""
    if layer is not None:
        return states[layer][0].float().cpu().numpy()
    frames, dim = states[0].shape[1:]
    array = np.empty((len(states), frames, dim), dtype=np.float32)
    for i in range(len(states)):
        array[i] = states[i][0].float().cpu().numpy()
        states[i] = None  # type: ignore[call-overload]
    return array


def _extract_upstream(args: argparse.Namespace):
    from tera.upstream import load_upstream, upstream_name

    if args.deltas and args.upstream != "fbank":
        raise UserError(f"--deltas applies to -u fbank, not -u {args.upstream}")
    name = upstream_name(args.upstream, args.ckpt)
    if name == "tera2":  # without -k: a random slim model, seed 0 (load_upstream warns)
        return load_upstream(name, args.ckpt, chunk_seconds=args.chunk_seconds,
                             context_seconds=args.context_seconds, precision=args.precision)
    return load_upstream(name, args.ckpt, deltas=args.deltas)


def _check_seconds(flag: str, seconds: float) -> None:
    if not (math.isfinite(seconds) and seconds >= 0):
        raise UserError(f"{flag} {seconds}: expected a finite number of seconds, 0 or more")


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


def _check_distinct_stems(files: list[str]) -> None:
    seen: dict[str, str] = {}
    for path in files:
        stem = Path(path).stem
        if stem in seen:
            raise UserError(f"{path} and {seen[stem]} share the stem {stem!r}: their arrays "
                            "in the .npz would collide")
        seen[stem] = path


def _save_npz(output: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write through a file object (np.savez would append .npz to other names), atomically."""
    from tera.runs.files import atomic_open

    with atomic_open(output, "wb") as f:
        np.savez(f, **arrays)


# --- info -----------------------------------------------------------------------------------


def run_info(args: argparse.Namespace) -> int:
    """`tera info`: a preset's or checkpoint's architecture, parameters and FLOPs; returns the exit
    code."""
    from tera.presets import model_cost

    cfg, preset, source = _info_target(args.target)
    cost = model_cost(cfg)
    facts = {
        "preset": preset, "source": source, "parameters": cost.parameters,
        "flops_per_second": cost.flops_per_second,
        "conv_flops_per_second": cost.conv_flops_per_second,
        "transformer_flops_per_second": cost.transformer_flops_per_second,
        "encoder_layers": cfg.encoder_layers, "encoder_embed_dim": cfg.encoder_embed_dim,
        "encoder_ffn_embed_dim": cfg.encoder_ffn_embed_dim,
        "encoder_attention_heads": cfg.encoder_attention_heads,
        "conv_feature_layers": cfg.conv_feature_layers, "layer_norm_first": cfg.layer_norm_first,
    }
    if args.json:
        print(json.dumps(facts))
        return 0
    print(f"preset: {preset}   ({source})")
    print(f"architecture: {cfg.encoder_layers} layers x {cfg.encoder_embed_dim}, FFN "
          f"{cfg.encoder_ffn_embed_dim}, {cfg.encoder_attention_heads} heads, "
          f"{'pre' if cfg.layer_norm_first else 'post'}-LN")
    print(f"parameters: {cost.parameters:,}")
    print(f"forward FLOPs per second of audio: {cost.flops_per_second:.3e} "
          f"(conv extractor {cost.conv_flops_per_second:.2e}, transformer "
          f"{cost.transformer_flops_per_second:.2e}; 15.6 s utterances)")
    return 0


def _info_target(target: str):
    """(TeraConfig, preset name, where it came from) of a checkpoint path or a preset name."""
    from tera.presets import load_preset, model_config, preset_names

    if Path(target).exists():
        from tera.checkpoint import load_checkpoint, preset_name

        ckpt = load_checkpoint(target)
        return ckpt.model_cfg, preset_name(ckpt), f"{target}, {ckpt.source_format} checkpoint"
    try:
        return model_config(load_preset(target)), target, "preset"
    except UserError:
        raise UserError(f"{target}: neither a checkpoint nor a known preset "
                        f"({', '.join(preset_names())})") from None


# --- convert --------------------------------------------------------------------------------


def run_convert(args: argparse.Namespace) -> int:
    """`tera convert`: a checkpoint written again in another format (see docs/checkpoints.md);
    returns the exit code."""
    from tera.checkpoint import convert_checkpoint
    from tera.runs.files import check_not_an_input, check_writable

    dst, fmt = convert_target(args.src, args.dst, args.output_dir, args.to)
    check_not_an_input(dst, [args.src], "DST")
    # Before reading the source: a folder that can take the file(s), nothing in the way.
    if fmt in DIRECTORY_FORMATS:
        if dst.exists() and not dst.is_dir():
            raise UserError(f"{dst}: a {fmt} checkpoint is a folder, and this is a file")
        check_writable(dst / "config.json" if dst.is_dir() else dst)
    else:
        check_writable(dst)
    ckpt = convert_checkpoint(args.src, dst, fmt)
    print(f"converted {args.src} ({ckpt.source_format}) -> {dst} ({fmt})")
    return 0


def convert_target(src: str, dst: str | None, output_dir: str | None, fmt: str | None
                   ) -> tuple[Path, str]:
    """(destination, format) of `tera convert`: DST with --to, or s3prl's `convert.py CKPT
    --output_dir=DIR` form, which writes DIR/<CKPT's stem>.pt in s3prl's format."""
    if output_dir is not None:
        if dst is not None:
            raise UserError(f"give DST ({dst}) or --output_dir ({output_dir}), not both")
        fmt = fmt or "s3prl"
        name = Path(src).stem + ("" if fmt in DIRECTORY_FORMATS else ".pt")
        return Path(output_dir) / name, fmt
    if dst is None or fmt is None:
        raise UserError("tera convert needs DST and --to FORMAT (or --output_dir DIR, which "
                        "writes DIR/<SRC stem>.pt for s3prl)")
    return Path(dst), fmt
