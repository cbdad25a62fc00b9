"""Checkpoints: atomic writes; loading and converting between formats.

Formats, detected from content (SPEC §2):
- "s3prl": s3prl's tera2 converted file, `{"task_cfg", "model_cfg", "model_weight",
  "dictionaries_symbols"}` (plain containers).
- "fairseq": the fork's raw checkpoint, `{"cfg": {"model", "task", ...}, "model",
  "task_state", ...}` or an older one with `args` (an argparse Namespace) instead of `cfg`.
  Written by fairseq, it pickles `omegaconf` and `fairseq.data.dictionary.Dictionary`
  objects: it is read by a restricted unpickler that turns those into plain data and refuses
  every other class, so no pickled code runs and neither fairseq nor omegaconf is needed.
- "tera": our training checkpoint (`tera pretrain`): the fairseq layout with plain containers
  only, `extra_state` holding the training state; read with `weights_only=True`.
- "safetensors": a directory with `model.safetensors`, `config.json` and a README card.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tera.errors import UserError
from tera.model.config import TeraConfig
from tera.model.tera import TeraModel

FORMATS = ("s3prl", "fairseq", "safetensors")

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


# --- writing ----------------------------------------------------------------------------------


def save_atomic(obj: Any, path: str | Path) -> None:
    """`torch.save` to a temporary file beside `path`, fsync, then rename over it: a run killed
    at any moment leaves either the old file or the new one, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- the loaded checkpoint -----------------------------------------------------------------


@dataclass
class LoadedCheckpoint:
    """A model with the configuration it came with, whatever the file format."""

    model: TeraModel
    model_cfg: TeraConfig
    task_cfg: dict[str, Any]
    dictionaries_symbols: list[list[str]] | None
    source_format: str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                    ) -> LoadedCheckpoint:
    """Load a TERA2 checkpoint in any supported format (detected from its content)."""
    path = Path(path)
    if path.is_dir():
        return _load_safetensors_dir(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file or directory")
    raw = _read_torch_file(path, map_location)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: not a TERA checkpoint (found a {type(raw).__name__})")
    if "model_weight" in raw and "model_cfg" in raw:
        return _from_parts(path, "s3prl", raw["model_cfg"], raw.get("task_cfg") or {},
                           raw["model_weight"], raw.get("dictionaries_symbols"), {})
    if "model" in raw and ("cfg" in raw or "args" in raw):
        model_cfg, task_cfg = _fairseq_configs(raw, path)
        extra = raw.get("extra_state") or {}
        fmt = "tera" if isinstance(extra, dict) and "tera" in extra else "fairseq"
        metadata = dict(extra.get("tera", {})) if fmt == "tera" else {}
        return _from_parts(path, fmt, model_cfg, task_cfg, raw["model"],
                           _dictionaries(raw.get("task_state")), metadata)
    raise UserError(
        f"{path}: not a TERA checkpoint: expected s3prl keys (model_cfg, model_weight) or "
        f"fairseq keys (cfg/args, model); found {', '.join(map(str, list(raw)[:8]))}"
    )


def _read_torch_file(path: Path, map_location: str | torch.device) -> Any:
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] != b"\x80":  # neither a torch zip archive nor a legacy pickle
            raise UserError(f"{path}: not a checkpoint (not a PyTorch file)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" not in str(err) and "Unsupported global" not in str(err):
            raise UserError(f"{path}: corrupt or truncated checkpoint ({err})") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise UserError(f"{path}: corrupt or truncated checkpoint ({_first_line(err)})") from err
    # A fairseq-written file pickles omegaconf/fairseq objects: read it with our allow-list.
    try:
        return torch.load(path, map_location=map_location, weights_only=False,
                          pickle_module=_RestrictedPickle)
    except _RefusedClass as err:
        raise UserError(f"{path}: refusing to unpickle {err} (not on the allow-list)") from err
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        raise UserError(f"{path}: corrupt or truncated checkpoint ({_first_line(err)})") from err


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _from_parts(path: Path, fmt: str, model_cfg: dict, task_cfg: dict,
                state: dict[str, torch.Tensor], dictionaries: list | None,
                metadata: dict) -> LoadedCheckpoint:
    model_cfg = dict(model_cfg)
    if task_cfg.get("normalize"):
        model_cfg.setdefault("normalize", True)
    try:
        cfg = TeraConfig.from_dict(model_cfg)
    except TypeError as err:
        raise UserError(f"{path}: model config does not fit TERA2: {err}") from err
    labels = state.get("label_embs_concat")
    model = TeraModel(cfg, num_label_classes=0 if labels is None else labels.shape[0])
    load_weights(model, state, path)
    model.eval()
    return LoadedCheckpoint(model, cfg, dict(task_cfg), dictionaries, fmt, path, metadata)


def load_weights(model: TeraModel, state: dict[str, torch.Tensor], path: Path) -> None:
    """Strict load with an error that names the file and the first key that does not fit."""
    state = dict(state)
    for old, new in (("original0", "weight_g"), ("original1", "weight_v")):
        key = f"encoder.pos_conv.0.parametrizations.weight.{old}"
        if key in state:
            state[f"encoder.pos_conv.0.{new}"] = state.pop(key)
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            raise UserError(f"{path}: checkpoint lacks weight {name!r} {tuple(tensor.shape)}")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise UserError(
                f"{path}: weight {name!r} has shape {tuple(state[name].shape)}, the config "
                f"expects {tuple(tensor.shape)}"
            )
    unexpected = [name for name in state if name not in expected]
    if unexpected:
        raise UserError(f"{path}: unexpected weight {unexpected[0]!r} for a TERA2 model")
    model.load_state_dict(state, strict=True)


def _fairseq_configs(raw: dict, path: Path) -> tuple[dict, dict]:
    cfg = raw.get("cfg")
    if cfg is not None:
        cfg = _plain(cfg)
        if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
            raise UserError(f"{path}: fairseq checkpoint without a cfg.model section")
        return cfg["model"], cfg.get("task") or {}
    args = _plain(raw.get("args"))
    if not isinstance(args, dict):
        raise UserError(f"{path}: fairseq checkpoint with neither cfg nor args")
    # Old checkpoints keep one flat namespace: model and task keys side by side.
    return args, {k: args[k] for k in REFERENCE_TASK_DEFAULTS if k in args}


def _dictionaries(task_state: Any) -> list[list[str]] | None:
    task_state = _plain(task_state)
    if not isinstance(task_state, dict):
        return None
    if "dictionaries_symbols" in task_state:
        return task_state["dictionaries_symbols"]
    dictionaries = task_state.get("dictionaries")
    if isinstance(dictionaries, list):
        return [d.get("symbols", []) for d in dictionaries if isinstance(d, dict)]
    return None


# --- the restricted unpickler for fairseq-written files ---------------------------------------


class _RefusedClass(Exception):
    pass


class _StandIn:
    """What a pickled omegaconf / fairseq / argparse object becomes: its state, as data."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # dict subclasses (DictConfig)
        if not isinstance(self.state, dict):
            self.state = {}
        self.state.setdefault("_items", {})[key] = value


def _stand_in_type(qualified: str) -> type:
    return type(qualified.rsplit(".", 1)[-1], (_StandIn,), {"qualified": qualified})


_ALLOWED = {
    ("collections", "OrderedDict"): "builtin",
    ("collections", "defaultdict"): "builtin",
    ("builtins", "dict"): "builtin", ("__builtin__", "dict"): "builtin",
    ("builtins", "list"): "builtin", ("__builtin__", "list"): "builtin",
    ("builtins", "set"): "builtin", ("builtins", "tuple"): "builtin",
    ("__builtin__", "long"): "int", ("builtins", "int"): "builtin",
    ("builtins", "float"): "builtin", ("builtins", "slice"): "builtin",
    ("torch._utils", "_rebuild_tensor_v2"): "builtin",
    ("torch._utils", "_rebuild_parameter"): "builtin",
    ("torch", "Size"): "builtin",
}
_STAND_IN_MODULES = ("omegaconf", "fairseq.data.dictionary", "argparse", "typing", "enum")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        kind = _ALLOWED.get((module, name))
        if kind == "int":
            return int
        if kind == "builtin":
            module = "builtins" if module == "__builtin__" else module
            return super().find_class(module, name)
        if module == "torch" and name.endswith("Storage"):
            return super().find_class(module, name)
        if module.startswith(_STAND_IN_MODULES):
            return _stand_in_type(f"{module}.{name}")
        raise _RefusedClass(f"{module}.{name}")


class _RestrictedPickle:
    """The `pickle_module` torch.load uses: only `Unpickler` and `load` are needed."""

    Unpickler = _RestrictedUnpickler

    @staticmethod
    def load(file: io.BufferedIOBase, **kwargs: Any) -> Any:
        return _RestrictedUnpickler(file, **kwargs).load()


def _plain(obj: Any) -> Any:
    """Turn stand-ins (DictConfig, ListConfig, AnyNode, Dictionary, Namespace) into plain
    dicts, lists and values."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if not isinstance(obj, _StandIn):
        return obj
    state = obj.state if isinstance(obj.state, dict) else {}
    name = getattr(obj, "qualified", "")
    if name.endswith(("DictConfig", "ListConfig")):
        content = state.get("_content")
        return _plain(content) if content is not None else None
    if name.endswith("Node"):  # AnyNode, StringNode, ...: the value is in `_val`
        return _plain(state.get("_val"))
    if name.endswith("Dictionary"):
        return {"symbols": list(state.get("symbols", [])),
                "count": list(state.get("count", []))}
    if name.endswith("Namespace"):
        return _plain({k: v for k, v in state.items() if not k.startswith("_")})
    return _plain(state)


# --- safetensors directory ----------------------------------------------------------------------


def _load_safetensors_dir(path: Path) -> LoadedCheckpoint:
    from safetensors.torch import load_file

    weights, config = path / "model.safetensors", path / "config.json"
    if not weights.is_file() or not config.is_file():
        raise UserError(f"{path}: a safetensors checkpoint directory needs model.safetensors "
                        "and config.json")
    try:
        meta = json.loads(config.read_text())
        state = load_file(str(weights))
    except Exception as err:  # json or safetensors header errors
        raise UserError(f"{path}: unreadable safetensors checkpoint ({_first_line(err)})") from err
    return _from_parts(path, "safetensors", meta["model_cfg"], meta.get("task_cfg") or {},
                       state, meta.get("dictionaries_symbols"), meta.get("metadata") or {})


# --- export ---------------------------------------------------------------------------------


def reference_configs(ckpt: LoadedCheckpoint) -> tuple[dict, dict]:
    """(model_cfg, task_cfg) with exactly the reference fields, our values on top."""
    ours = ckpt.model_cfg.to_dict()
    model_cfg = {k: ours.get(k, default) for k, default in REFERENCE_MODEL_DEFAULTS.items()}
    task_cfg = {k: ckpt.task_cfg.get(k, default) for k, default in REFERENCE_TASK_DEFAULTS.items()}
    task_cfg["normalize"] = bool(ckpt.model_cfg.normalize)
    return model_cfg, task_cfg


def save_checkpoint(ckpt: LoadedCheckpoint, dst: str | Path, fmt: str) -> None:
    """Write `ckpt` as "s3prl", "fairseq" or "safetensors" (atomically)."""
    dst = Path(dst)
    state = {k: v.detach().cpu().contiguous() for k, v in ckpt.model.state_dict().items()}
    model_cfg, task_cfg = reference_configs(ckpt)
    # Our extra model keys (e.g. alteration settings) would break the reference dataclasses:
    # they travel in the safetensors config only.
    dictionaries = ckpt.dictionaries_symbols
    if fmt == "s3prl":
        save_atomic({"task_cfg": task_cfg, "model_cfg": model_cfg, "model_weight": state,
                     "dictionaries_symbols": dictionaries or [[]]}, dst)
    elif fmt == "fairseq":
        save_atomic({
            "args": None,
            "cfg": {"model": {"_name": "tera", **model_cfg},
                    "task": {"_name": "tera_pretraining", **task_cfg}},
            "model": state,
            "task_state": {"dictionaries_symbols": dictionaries},
            "optimizer_history": [], "extra_state": {}, "last_optimizer_state": None,
        }, dst)
    elif fmt == "safetensors":
        _save_safetensors_dir(ckpt, dst, state, task_cfg)
    else:
        raise UserError(f"unknown checkpoint format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _save_safetensors_dir(ckpt: LoadedCheckpoint, dst: Path, state: dict, task_cfg: dict
                          ) -> None:
    from safetensors.torch import save_file

    from tera.presets import model_cost

    dst.mkdir(parents=True, exist_ok=True)
    tmp = dst / ".model.safetensors.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, dst / "model.safetensors")
    meta = {"format_version": 1, "model_cfg": ckpt.model_cfg.to_dict(), "task_cfg": task_cfg,
            "dictionaries_symbols": ckpt.dictionaries_symbols, "metadata": ckpt.metadata}
    _write_text_atomic(dst / "config.json", json.dumps(meta, indent=2, default=str))
    cost = model_cost(ckpt.model_cfg)
    cfg = ckpt.model_cfg
    card = [
        "# TERA2 checkpoint", "",
        f"- preset: {ckpt.metadata.get('preset', 'unknown')}",
        f"- architecture: {cfg.encoder_layers} layers x {cfg.encoder_embed_dim}, FFN "
        f"{cfg.encoder_ffn_embed_dim}, {cfg.encoder_attention_heads} heads",
        f"- parameters: {cost.parameters:,}",
        f"- forward FLOPs per second of audio: {cost.flops_per_second:.3g}",
        f"- converted from: {ckpt.path.name} ({ckpt.source_format})",
    ]
    for key in ("update", "wall_time_s", "audio_seconds", "train_flops"):
        if key in ckpt.metadata:
            card.append(f"- {key.replace('_', ' ')}: {ckpt.metadata[key]}")
    card += ["", "Load with `tera.checkpoint.load_checkpoint(DIR)` or "
             "`tera.upstream.load_upstream('tera2', DIR)`."]
    _write_text_atomic(dst / "README.md", "\n".join(card) + "\n")


def convert_checkpoint(src: str | Path, dst: str | Path, fmt: str) -> LoadedCheckpoint:
    ckpt = load_checkpoint(src)
    save_checkpoint(ckpt, dst, fmt)
    return ckpt
