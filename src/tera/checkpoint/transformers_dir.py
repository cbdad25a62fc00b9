"""A TERA2 checkpoint as a Hugging Face `transformers` HubertModel folder.

TERA2's network is HuBERT's: conv feature extractor, LayerNorm + projection, a weight-normed
convolutional positional embedding, a post-LN (or pre-LN) transformer encoder; only the
pre-training head differs. So the encoder is written as `transformers.HubertModel` reads it,
with json and safetensors only (transformers is not needed to write or read it):

    config.json               a HubertConfig derived from the TERA2 config
    model.safetensors         the encoder, under HubertModel's names
    preprocessor_config.json  Wav2Vec2FeatureExtractor: 16 kHz, do_normalize = `normalize`
    README.md                 a model card
    tera_extra.safetensors    what HubertModel has no place for (final_proj, label_embs_concat,
                              mask_emb when HubertModel has no mask vector) and, as JSON in its
                              metadata, the TERA2 config, task config, label dictionaries and
                              training metadata: `tera convert DIR back.pt --to fairseq`
                              restores the original exactly.

Hidden states line up with tera's (s3prl's) h_0 ... h_L: transformers records the input of
the first layer (after the positional conv and, post-LN, the encoder LayerNorm) and each
layer's output; `tie_last_hidden_states` in config.json makes the last entry the encoder
output after its final LayerNorm for pre-LN models too, as s3prl reports it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tera.checkpoint.card import card_facts
from tera.checkpoint.common import LoadedCheckpoint, from_parts, weights_for_export
from tera.checkpoint.unpickler import first_line
from tera.errors import UserError
from tera.model.config import TeraConfig
from tera.model.tera import TeraModel
from tera.runs.files import ensure_folder, save_safetensors, write_json, write_text

EXTRA_FILE = "tera_extra.safetensors"
FORMAT_VERSION = 1
# Our state-dict names (fairseq's) -> HubertModel's, applied in order to each name.
RENAMES = [
    (r"^feature_extractor\.conv_layers\.(\d+)\.0\.", r"feature_extractor.conv_layers.\1.conv."),
    (r"^feature_extractor\.conv_layers\.(\d+)\.2\.(1\.)?",
     r"feature_extractor.conv_layers.\1.layer_norm."),
    (r"^layer_norm\.", "feature_projection.layer_norm."),
    (r"^post_extract_proj\.", "feature_projection.projection."),
    (r"^mask_emb$", "masked_spec_embed"),
    (r"^encoder\.pos_conv\.0\.", "encoder.pos_conv_embed.conv."),
    (r"\.self_attn\.", ".attention."),
    (r"\.self_attn_layer_norm\.", ".layer_norm."),
    (r"\.fc1\.", ".feed_forward.intermediate_dense."),
    (r"\.fc2\.", ".feed_forward.output_dense."),
]
# What the extractor modes are called in HubertConfig (`feat_extract_norm`).
EXTRACTOR_NORMS = {"default": "group", "layer_norm": "layer"}
# Reference-config options HubertModel has one value of.
FIXED_OPTIONS = {"layer_type": "transformer", "pos_enc_type": "abs"}


def is_transformers_dir(path: Path) -> bool:
    """A folder written by `save`, or any HubertModel folder (which `load` then explains)."""
    if (path / EXTRA_FILE).is_file():
        return True
    try:
        return json.loads((path / "config.json").read_text()).get("model_type") == "hubert"
    except (OSError, ValueError, AttributeError):
        return False


# --- the config --------------------------------------------------------------------------------


def hubert_config(cfg: TeraConfig) -> dict[str, Any]:
    """The HubertConfig fields of a TERA2 config; a config HubertModel cannot express raises
    `UserError` naming what does not fit."""
    if cfg.extractor_mode not in EXTRACTOR_NORMS:
        raise UserError(f"extractor_mode {cfg.extractor_mode!r} has no HubertModel equivalent "
                        f"(it has {', '.join(EXTRACTOR_NORMS)})")
    for key, only in FIXED_OPTIONS.items():
        if cfg.extra.get(key, only) != only:
            raise UserError(f"{key} {cfg.extra[key]!r} has no HubertModel equivalent (it has "
                            f"{only!r} only)")
    layers = cfg.conv_layers
    masking = cfg.mask_prob > 0 or cfg.mask_channel_prob > 0
    return {
        "architectures": ["HubertModel"],
        "model_type": "hubert",
        "conv_dim": [c for c, _, _ in layers],
        "conv_kernel": [k for _, k, _ in layers],
        "conv_stride": [s for _, _, s in layers],
        "conv_bias": cfg.conv_bias,
        "feat_extract_norm": EXTRACTOR_NORMS[cfg.extractor_mode],
        "feat_extract_activation": cfg.activation_fn,
        "feat_proj_layer_norm": True,
        "feat_proj_dropout": cfg.dropout_input,
        "hidden_size": cfg.encoder_embed_dim,
        "num_hidden_layers": cfg.encoder_layers,
        "num_attention_heads": cfg.encoder_attention_heads,
        "intermediate_size": cfg.encoder_ffn_embed_dim,
        "hidden_act": cfg.activation_fn,
        "num_conv_pos_embeddings": cfg.conv_pos,
        "num_conv_pos_embedding_groups": cfg.conv_pos_groups,
        "conv_pos_batch_norm": False,
        "do_stable_layer_norm": cfg.layer_norm_first,
        "layer_norm_eps": 1e-5,
        "hidden_dropout": cfg.dropout,
        "attention_dropout": cfg.attention_dropout,
        "activation_dropout": cfg.activation_dropout,
        "final_dropout": cfg.dropout,
        "layerdrop": cfg.encoder_layerdrop,
        "apply_spec_augment": masking,
        "mask_time_prob": cfg.mask_prob,
        "mask_time_length": cfg.mask_length,
        "mask_time_min_masks": 2,
        "mask_feature_prob": cfg.mask_channel_prob,
        "mask_feature_length": cfg.mask_channel_length,
        "mask_feature_min_masks": 0,
        # hidden_states[-1] = the encoder output after its final LayerNorm (pre-LN), as s3prl
        "tie_last_hidden_states": True,
    }


def preprocessor_config(cfg: TeraConfig) -> dict[str, Any]:
    """Wav2Vec2FeatureExtractor's settings: 16 kHz mono, standardised when the model is."""
    return {
        "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1,
        "sampling_rate": 16000,
        "padding_value": 0.0,
        "padding_side": "right",
        "do_normalize": cfg.normalize,
        "return_attention_mask": True,
    }


def hubert_name(name: str) -> str:
    """HubertModel's name for one of our (fairseq) state-dict names (`RENAMES`)."""
    for pattern, replacement in RENAMES:
        name = re.sub(pattern, replacement, name)
    return name


def _has_mask_vector(cfg: TeraConfig) -> bool:
    """HubertModel has `masked_spec_embed` only when it masks."""
    return cfg.mask_prob > 0 or cfg.mask_channel_prob > 0


def _is_extra(name: str, cfg: TeraConfig) -> bool:
    """Weights HubertModel has no place for."""
    return (name.startswith("final_proj.") or name == "label_embs_concat"
            or (name == "mask_emb" and not _has_mask_vector(cfg)))


# --- writing -----------------------------------------------------------------------------------


def save(ckpt: LoadedCheckpoint, dst: Path) -> None:
    """Write `ckpt` as a HubertModel folder, each file atomically."""
    cfg = ckpt.model_cfg
    config = hubert_config(cfg)  # refuses what does not fit, before anything is written
    if dst.exists() and not dst.is_dir():
        raise UserError(f"{dst}: a transformers checkpoint is a directory, and this is a file")
    state = weights_for_export(ckpt)
    encoder = {hubert_name(k): v for k, v in state.items() if not _is_extra(k, cfg)}
    extra = {k: v for k, v in state.items() if _is_extra(k, cfg)}
    identity_projection = "post_extract_proj.weight" not in state
    dtype = state["layer_norm.weight"].dtype  # the checkpoint's, e.g. float16 from fairseq
    if identity_projection:  # HubertModel always projects: D -> D, exactly the identity
        dim = cfg.encoder_embed_dim
        encoder["feature_projection.projection.weight"] = torch.eye(dim, dtype=dtype)
        encoder["feature_projection.projection.bias"] = torch.zeros(dim, dtype=dtype)
    config["dtype"] = str(dtype).removeprefix("torch.")
    side = {"format_version": FORMAT_VERSION, "model_cfg": cfg.to_dict(),
            "task_cfg": ckpt.task_cfg, "dictionaries_symbols": ckpt.dictionaries_symbols,
            "metadata": ckpt.metadata, "identity_projection": identity_projection}
    ensure_folder(dst)
    # transformers checks "format"
    save_safetensors(encoder, dst / "model.safetensors", metadata={"format": "pt"})
    save_safetensors(extra, dst / EXTRA_FILE,
                     metadata={"format": "pt", "tera": json.dumps(side, default=str)})
    write_json(dst / "config.json", config)
    write_json(dst / "preprocessor_config.json", preprocessor_config(cfg))
    hubert_parameters = sum(v.numel() for v in encoder.values())
    write_text(dst / "README.md", model_card(ckpt, hubert_parameters, dst.name))


def model_card(ckpt: LoadedCheckpoint, hubert_parameters: int, folder: str) -> str:
    """README.md: what the model is, how it was trained, its size and cost, how to use it."""
    cfg = ckpt.model_cfg
    lines = [
        "# TERA2 speech encoder (transformers HubertModel)", "",
        "TERA2 is a self-supervised speech model: from the 16 kHz waveform it is pre-trained "
        "to reconstruct masked frames of the utterance's MFCC (13 cepstra + Δ + ΔΔ, two 10 ms "
        "frames per 20 ms output frame) with an L1 loss. Its encoder is HuBERT's, so this "
        "folder is a `transformers.HubertModel`; the reconstruction head and the TERA2 config "
        "are kept in `tera_extra.safetensors`.", "",
        *card_facts(ckpt),
        f"- HubertModel parameters: {hubert_parameters:,} (the pre-training head is in "
        "tera_extra.safetensors)",
        "", "## Use", "",
        "```python",
        "from transformers import AutoFeatureExtractor, HubertModel",
        f'extractor = AutoFeatureExtractor.from_pretrained("{folder}")',
        f'model = HubertModel.from_pretrained("{folder}")',
        "hidden_states = model(**extractor(wave, sampling_rate=16000, return_tensors=\"pt\"),",
        "                      output_hidden_states=True).hidden_states  # wave: 16 kHz mono",
        "```", "",
        f"`hidden_states` are h_0 ... h_{cfg.encoder_layers}, 50 per second: h_0 the encoder "
        "input after the positional convolution" + ("" if cfg.layer_norm_first else
                                                    " and LayerNorm")
        + ", h_i the output of layer i, as s3prl's and tera-speech's `tera2` upstream report "
        "them.",
    ]
    if cfg.extractor_mode == "default":
        lines += ["", "Batches: the first conv block's GroupNorm normalises over the whole "
                  "padded length, so a padded utterance's features change with its batch "
                  "(see tera-speech's README for the size of the difference). For exact "
                  "features pass one utterance at a time, or batch utterances of equal "
                  "length."]
    if cfg.normalize:
        lines += ["", "The waveform is standardised (`do_normalize`): transformers' extractor "
                  "uses eps 1e-7, the model was trained with eps 1e-5."]
    lines += ["", f"Back to the reference formats: `tera convert {folder} checkpoint.pt --to "
              "fairseq` (or `--to s3prl`) restores the original checkpoint exactly."]
    return "\n".join(lines) + "\n"


# --- reading -----------------------------------------------------------------------------------


def load(path: Path, map_location: str | torch.device = "cpu") -> LoadedCheckpoint:
    """The checkpoint in a folder written by `save` (weights on `map_location`); a
    HubertModel folder without `tera_extra.safetensors`, an unreadable file or another
    `format_version` raises `UserError`."""
    weights, extra_file = path / "model.safetensors", path / EXTRA_FILE
    if not extra_file.is_file():
        raise UserError(f"{path}: a HubertModel folder without {EXTRA_FILE}: not a TERA2 "
                        "export (it lacks the reconstruction head and the TERA2 config)")
    try:
        with safe_open(str(extra_file), framework="pt") as f:
            side = json.loads((f.metadata() or {})["tera"])
        extra = load_file(str(extra_file), device=str(map_location))
        encoder = load_file(str(weights), device=str(map_location))
    except Exception as err:  # safetensors header, json or a missing key
        raise UserError(f"{path}: unreadable transformers checkpoint ({first_line(err)})"
                        ) from err
    if side.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{extra_file}: expected format_version {FORMAT_VERSION}, found "
                        f"{side.get('format_version')!r}")
    cfg = TeraConfig.from_dict(side["model_cfg"])
    theirs_to_ours = {hubert_name(name): name for name in _our_names(cfg, extra)}
    if side.get("identity_projection"):
        for name in ("feature_projection.projection.weight", "feature_projection.projection.bias"):
            encoder.pop(name, None)
    state = dict(extra)
    for name, tensor in encoder.items():
        if name not in theirs_to_ours:
            raise UserError(f"{weights}: unexpected weight {name!r} for this TERA2 model")
        state[theirs_to_ours[name]] = tensor
    return from_parts(path, "transformers", side["model_cfg"], side.get("task_cfg") or {},
                       state, side.get("dictionaries_symbols"), side.get("metadata") or {})


def _our_names(cfg: TeraConfig, extra: dict) -> list[str]:
    """The state-dict names of the TERA2 model `cfg` describes."""
    labels = extra.get("label_embs_concat")
    with torch.device("meta"):
        model = TeraModel(cfg, num_label_classes=0 if labels is None else labels.shape[0])
    return list(model.state_dict())
