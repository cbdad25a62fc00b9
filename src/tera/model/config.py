"""The TERA2 model configuration: fairseq's field names, so checkpoints map one to one."""

from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tera.errors import UserError

DEFAULT_CONV_LAYERS = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"
TARGET_DIM = 78  # 39-dim MFCC+Δ+ΔΔ stacked in pairs (see tera.audio.tera_targets)


@dataclass
class TeraConfig:
    """Architecture and regularisation of a TERA2 model.

    Field names and defaults are those of the reference `TeraConfig` (the fairseq fork's
    `tera` model: key `model.NAME` in its Hydra configs and checkpoints), so a checkpoint's
    model config loads directly. Each field, its type, and where it differs, the fork's key:

    encoder_layers (int): transformer layers L (12 in every published preset but large's 24).
    encoder_embed_dim (int): width D of the encoder and of every hidden state.
    encoder_ffn_embed_dim (int): inner width of each layer's feed-forward block.
    encoder_attention_heads (int): attention heads per layer; D must divide by it.
    activation_fn (str): the feed-forward activation; only "gelu".
    extractor_mode (str): the conv extractor's norms: "default", a per-channel instance
        norm on the first block only (fairseq's `GroupNorm(C, C)`, here over the valid
        frames); "layer_norm", a LayerNorm over the channels after every block.
    conv_feature_layers (str): the conv extractor, a list literal of (channels, kernel,
        stride) per block combined with `+` and `*` (`parse_conv_layers`; never `eval`-ed).
        The strides' product is the hop (320 samples: 50 frames per second).
    conv_bias (bool): whether the conv blocks have a bias.
    conv_pos (int): kernel, in frames, of the convolutional positional embedding.
    conv_pos_groups (int): groups of that conv; D must divide by it.
    layer_norm_first (bool): pre-LN (LayerNorm before attention and feed-forward, one more
        after the last layer; the large preset) instead of post-LN (TERA2 slim and base).
    normalize (bool): standardise each waveform over its valid samples (zero mean, unit
        variance) before the extractor. fairseq: `task.normalize`, a task setting there,
        carried by the model here so that every use of the model applies it.
    final_dim (int): width of HuBERT's label embeddings `label_embs_concat` (0: D), a
        parameter TERA2 never uses, built only so that checkpoints carrying it load and
        export unchanged.
    dropout (float): dropout probability on the encoder input and on each layer's attention
        and feed-forward outputs.
    attention_dropout (float): dropout probability on the attention weights.
    activation_dropout (float): dropout probability after the feed-forward activation.
    encoder_layerdrop (float): LayerDrop, the probability that training skips a layer.
    dropout_input (float): dropout probability on the projected conv features.
    feature_grad_mult (float): factor on the gradient that flows into the conv extractor
        (0.1 in the presets). At 0 or below the extractor is frozen: it runs without
        recording gradients and its weights get none (the fairseq Adam variant still
        applies weight decay to weights without a gradient).
    mask_prob (float): time masking; spans of `mask_length` frames are started so that
        about `mask_prob * frames / mask_length` begin per utterance (`model.masking`).
    mask_length (int): length of a time-masked span, in frames.
    mask_selection (str): how span lengths are drawn; only "static" (all `mask_length`).
    mask_channel_prob (float): channel masking, the same for spans of feature channels
        (set to zero).
    mask_channel_length (int): length of a masked channel span.
    mask_noise_prob (float): magnitude alteration (TERA paper; no fairseq key): the
        probability per utterance of adding Gaussian noise to every frame of the encoder
        input.
    mask_noise_std (float): the standard deviation of that noise (no fairseq key).
    extra (dict): the reference's fields TERA2 does not read (`label_rate`,
        `dropout_features`, the NCE temperature, conformer options, ...), kept as loaded
        and written back on export. A training config that sets them has them named as
        ignored (`tera.presets.fork_layout`).
    """

    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    extractor_mode: str = "default"
    conv_feature_layers: str = DEFAULT_CONV_LAYERS
    conv_bias: bool = False
    conv_pos: int = 128
    conv_pos_groups: int = 16
    layer_norm_first: bool = False
    normalize: bool = False
    final_dim: int = 0

    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.0
    dropout_input: float = 0.0
    feature_grad_mult: float = 1.0

    mask_prob: float = 0.65
    mask_length: int = 10
    mask_selection: str = "static"
    mask_channel_prob: float = 0.0
    mask_channel_length: int = 10
    mask_noise_prob: float = 0.0
    mask_noise_std: float = 0.2

    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim",
                     "encoder_attention_heads", "conv_pos", "conv_pos_groups", "mask_length",
                     "mask_channel_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(f"{name} must be an integer of at least 1, got {value!r}")
        for name in ("mask_prob", "mask_channel_prob", "mask_noise_prob", "dropout",
                     "attention_dropout", "activation_dropout", "encoder_layerdrop",
                     "dropout_input"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) \
                    or not 0 <= value <= 1:
                raise UserError(f"{name} is a probability, between 0 and 1; got {value!r}")
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise UserError(
                f"encoder_embed_dim {self.encoder_embed_dim} is not divisible by "
                f"encoder_attention_heads {self.encoder_attention_heads}"
            )
        if self.encoder_embed_dim % self.conv_pos_groups:
            raise UserError(
                f"encoder_embed_dim {self.encoder_embed_dim} is not divisible by "
                f"conv_pos_groups {self.conv_pos_groups}"
            )
        if self.extractor_mode not in ("default", "layer_norm"):
            raise UserError(
                f"extractor_mode {self.extractor_mode!r}: expected 'default' or 'layer_norm'"
            )
        if self.mask_selection != "static":
            raise UserError(f"mask_selection {self.mask_selection!r}: only 'static' is supported")
        if self.activation_fn != "gelu":
            raise UserError(f"activation_fn {self.activation_fn!r}: only 'gelu' is supported")
        parse_conv_layers(self.conv_feature_layers)

    @property
    def conv_layers(self) -> list[tuple[int, int, int]]:
        """`conv_feature_layers` parsed: (channels, kernel, stride) per block."""
        return parse_conv_layers(self.conv_feature_layers)

    @property
    def feature_dim(self) -> int:
        """Channels out of the conv extractor (512 in the published presets)."""
        return self.conv_layers[-1][0]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TeraConfig:
        """Build from a (possibly older or newer) reference config: known keys are merged onto
        the defaults, unknown ones kept in `extra`."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in values.items() if k in known}
        extra = {k: v for k, v in values.items() if k not in known and k != "extra"}
        extra.update(values.get("extra") or {})
        return cls(**kwargs, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """Flat dict in the reference layout (our fields plus the preserved extras)."""
        values = dataclasses.asdict(self)
        extra = values.pop("extra")
        return {**extra, **values}


MAX_CONV_LAYERS = 64


def parse_conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """Parse fairseq's `conv_feature_layers` string, e.g. "[(512,10,5)] + [(512,3,2)] * 4".

    Only list/tuple literals of integers combined with `+` and `*` are accepted: the string
    comes from checkpoints and configs, so it is never passed to `eval`.
    """

    def evaluate(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return evaluate(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [evaluate(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = evaluate(node.left), evaluate(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            sequence, count = (left, right) if isinstance(right, int) else (right, left)
            if isinstance(sequence, (list, tuple)) and isinstance(count, int) \
                    and len(sequence) * count > MAX_CONV_LAYERS:  # a checkpoint's string must
                raise ValueError(f"more than {MAX_CONV_LAYERS} layers")  # not exhaust memory
            return left * right
        raise ValueError(f"unsupported element {ast.dump(node)}")

    try:
        layers = evaluate(ast.parse(spec, mode="eval"))
        layers = [tuple(int(v) for v in layer) for layer in layers]
        if not layers or len(layers) > MAX_CONV_LAYERS \
                or any(len(layer) != 3 or min(layer) < 1 for layer in layers):
            raise ValueError("expected a non-empty list of (channels, kernel, stride)")
    except (SyntaxError, ValueError, TypeError) as err:
        raise UserError(f"conv_feature_layers {spec!r} is not a valid layer list: {err}") from err
    return layers


# The reference `TeraConfig` / `TeraPretrainingConfig` fields and defaults (s3prl tera2,
# fairseq fork): s3prl builds both dataclasses from the converted file's dicts, so an
# export must carry exactly these keys.
REFERENCE_MODEL_DEFAULTS: dict[str, Any] = {
    "label_rate": 100, "extractor_mode": "default", "encoder_layers": 12,
    "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12,
    "activation_fn": "gelu", "layer_type": "transformer", "dropout": 0.1,
    "attention_dropout": 0.1, "activation_dropout": 0.0, "encoder_layerdrop": 0.0,
    "dropout_input": 0.0, "dropout_features": 0.0, "final_dim": 0, "untie_final_proj": False,
    "layer_norm_first": False,
    "conv_feature_layers": "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
    "conv_bias": False, "logit_temp": 0.1, "target_glu": False, "feature_grad_mult": 1.0,
    "mask_length": 10, "mask_prob": 0.65, "mask_selection": "static", "mask_other": 0,
    "no_mask_overlap": False, "mask_min_space": 1, "mask_channel_length": 10,
    "mask_channel_prob": 0.0, "mask_channel_selection": "static", "mask_channel_other": 0,
    "no_mask_channel_overlap": False, "mask_channel_min_space": 1, "conv_pos": 128,
    "conv_pos_groups": 16, "latent_temp": [2, 0.5, 0.999995], "skip_masked": False,
    "skip_nomask": False, "checkpoint_activations": False, "required_seq_len_multiple": 2,
    "depthwise_conv_kernel_size": 31, "attn_type": "", "pos_enc_type": "abs", "fp16": False,
}
REFERENCE_TASK_DEFAULTS: dict[str, Any] = {
    "label_rate": 100, "sample_rate": 16000, "normalize": False, "enable_padding": False,
    "max_keep_size": None, "max_sample_size": None, "min_sample_size": None,
    "random_crop": True, "pad_audio": False,
}
