"""What a checkpoint is, in words: its preset, the facts of a model card, and the card of a
safetensors export."""

from __future__ import annotations

from tera.checkpoint.common import LoadedCheckpoint
from tera.presets import load_preset, model_config, model_cost, preset_names

# The fields that make two models the same architecture (for naming a checkpoint's preset).
ARCHITECTURE_FIELDS = ("encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim",
                       "encoder_attention_heads", "conv_feature_layers", "conv_bias",
                       "extractor_mode", "conv_pos", "conv_pos_groups", "layer_norm_first",
                       "final_dim")


def preset_name(ckpt: LoadedCheckpoint) -> str:
    """The preset a checkpoint was trained as (its metadata), else the first preset with the
    same architecture ("slim (same architecture)"), else "unknown"."""
    if ckpt.metadata.get("preset"):
        return str(ckpt.metadata["preset"])
    for name in preset_names():
        preset = model_config(load_preset(name))
        if all(getattr(ckpt.model_cfg, f) == getattr(preset, f) for f in ARCHITECTURE_FIELDS):
            return f"{name} (same architecture)"
    return "unknown"


def model_card(ckpt: LoadedCheckpoint) -> str:
    """The README of a safetensors checkpoint: preset, size, cost and training summary."""
    lines = ["# TERA2 checkpoint", "", *card_facts(ckpt)]
    lines += ["", "Files: `model.safetensors` (the weights, fairseq / s3prl names), "
              "`config.json` (`model_cfg`, `task_cfg`, `dictionaries_symbols`, `metadata`).",
              "", "Load with `tera.checkpoint.load_checkpoint(DIR)` or "
              "`tera.upstream.load_upstream(\"tera2\", DIR)`; convert with "
              "`tera convert DIR OUT.pt --to s3prl|fairseq`."]
    return "\n".join(lines) + "\n"


def card_facts(ckpt: LoadedCheckpoint) -> list[str]:
    """A model card's facts, one bullet each: preset, architecture, size, cost, and the
    training summary of a `tera pretrain` checkpoint."""
    cfg, meta = ckpt.model_cfg, ckpt.metadata
    cost = model_cost(cfg)
    lines = [
        f"- preset: {preset_name(ckpt)}",
        f"- architecture: {cfg.encoder_layers} layers x {cfg.encoder_embed_dim}, FFN "
        f"{cfg.encoder_ffn_embed_dim}, {cfg.encoder_attention_heads} heads, "
        f"{'pre' if cfg.layer_norm_first else 'post'}-LN",
        f"- parameters: {cost.parameters:,}",
        f"- forward FLOPs per second of audio: {cost.flops_per_second:.3g}",
        f"- converted from: {ckpt.path.name} ({ckpt.source_format})",
    ]
    summary = [("update", "pre-training updates", "{:,}"),
               ("wall_time_s", "pre-training wall time (s)", "{:,.0f}"),
               ("audio_seconds", "audio seen (s)", "{:,.0f}"),
               ("train_flops", "training FLOPs", "{:.3g}"),
               ("best_valid_loss", "best valid loss", "{:.4f}")]
    for key, label, form in summary:
        if isinstance(meta.get(key), (int, float)):
            lines.append(f"- {label}: {form.format(meta[key])}")
    return lines
