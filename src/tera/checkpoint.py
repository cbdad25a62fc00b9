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
  only, `extra_state["tera"]` holding the training state; read with `weights_only=True`.
- "safetensors": a directory with `model.safetensors`, `config.json` and a README card.

Every format keeps everything a checkpoint says, so that A -> B -> A is exact: the s3prl and
fairseq exports carry only the reference config fields where s3prl / the fork read them, and
the rest (our own model options, extra task keys, the training summary) in a top-level
`tera_extra` entry that both readers ignore.
"""

from __future__ import annotations

import copy
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
SAFETENSORS_FORMAT_VERSION = 1

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
# The fork's registry names for the model and the task (`cfg.model._name`, `cfg.task._name`).
FAIRSEQ_MODEL_NAME, FAIRSEQ_TASK_NAME = "tera", "tera_pretraining"
# What fairseq's `Dictionary()` starts with, for label dictionaries we have only symbols of.
_DICTIONARY_SPECIALS = {"bos_word": "<s>", "unk_word": "<unk>", "pad_word": "<pad>",
                        "eos_word": "</s>"}


# --- writing ----------------------------------------------------------------------------------


def save_atomic(obj: Any, path: str | Path, pickle_module: Any = None) -> None:
    """`torch.save` to a temporary file beside `path`, fsync, then rename over it: a run killed
    at any moment leaves either the old file or the new one, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if pickle_module is None:
                torch.save(obj, f)
            else:
                torch.save(obj, f, pickle_module=pickle_module)
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
    """A model with the configuration it came with, whatever the file format.

    task_cfg: the task section (the reference task fields, filled with their defaults, plus
    any other key the file had, e.g. the fork's `data` / `labels`).
    dictionaries_symbols: the HuBERT label dictionaries' symbols (one list per dictionary),
    None when the checkpoint has none (then the model has no `label_embs_concat`).
    metadata: what else is known: `preset`, `update`, the training summary of our own runs
    (`wall_time_s`, `audio_seconds`, `train_flops`), and for the fork's files a `fairseq`
    entry with the other config sections, `optimizer_history`, `extra_state` and the label
    dictionaries' full state, so that an export back to the fork loses nothing.
    """

    model: TeraModel
    model_cfg: TeraConfig
    task_cfg: dict[str, Any]
    dictionaries_symbols: list[list[str]] | None
    source_format: str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                    ) -> LoadedCheckpoint:
    """Load a TERA2 checkpoint in any supported format (detected from its content); the model
    is returned in eval mode. Bad files raise `UserError` naming the file."""
    path = Path(path)
    if path.is_dir():
        return _load_safetensors_dir(path, map_location)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file or directory")
    raw = _read_torch_file(path, map_location)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: not a TERA checkpoint (found a {type(raw).__name__})")
    if "model_weight" in raw and "model_cfg" in raw:
        return _load_s3prl(path, raw)
    if "model" in raw and ("cfg" in raw or "args" in raw):
        return _load_fairseq_layout(path, raw)
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


def _load_s3prl(path: Path, raw: dict) -> LoadedCheckpoint:
    extra = raw.get("tera_extra") or {}
    model_cfg = {**_section(raw["model_cfg"], path, "model_cfg"), **extra.get("model_cfg", {})}
    task_cfg = {**_section(raw.get("task_cfg"), path, "task_cfg"), **extra.get("task_cfg", {})}
    return _from_parts(path, "s3prl", model_cfg, task_cfg, raw["model_weight"],
                       raw.get("dictionaries_symbols"), extra.get("metadata") or {})


def _load_fairseq_layout(path: Path, raw: dict) -> LoadedCheckpoint:
    """The fork's files, ours (`extra_state["tera"]`) and plain dicts in the same layout."""
    model_cfg, task_cfg, other_sections = _fairseq_configs(raw, path)
    extra_state = _plain(raw.get("extra_state"))
    extra_state = extra_state if isinstance(extra_state, dict) else {}
    dictionaries = _dictionary_states(raw.get("task_state"))
    symbols = None if dictionaries is None else [d["symbols"] for d in dictionaries]
    if "tera" in extra_state:
        fmt, metadata = "tera", dict(extra_state["tera"])
    else:
        fmt = "fairseq"
        history = _plain(raw.get("optimizer_history")) or []
        metadata = {"fairseq": {"cfg": other_sections, "optimizer_history": history,
                                "extra_state": extra_state, "dictionaries": dictionaries}}
        if history and isinstance(history[-1], dict) and "num_updates" in history[-1]:
            metadata["update"] = history[-1]["num_updates"]
    extra = raw.get("tera_extra") or {}  # what our own fairseq export could not put in cfg
    model_cfg.update(extra.get("model_cfg", {}))
    task_cfg.update(extra.get("task_cfg", {}))
    if "metadata" in extra:
        metadata = extra["metadata"]
    return _from_parts(path, fmt, model_cfg, task_cfg, raw["model"], symbols, metadata)


def _section(value: Any, path: Path, name: str) -> dict:
    value = _plain(value)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{path}: {name} should be a mapping, found a {type(value).__name__}")
    return dict(value)


def _fairseq_configs(raw: dict, path: Path) -> tuple[dict, dict, dict]:
    """(model section, task section, the other sections) of a fairseq-layout checkpoint; the
    registry names (`_name`) are dropped: they belong to the format, not to the model."""
    cfg = raw.get("cfg")
    if cfg is not None:
        cfg = _section(cfg, path, "cfg")
        if not isinstance(cfg.get("model"), dict):
            raise UserError(f"{path}: fairseq checkpoint without a cfg.model section")
        model_cfg = {k: v for k, v in cfg.pop("model").items() if k != "_name"}
        task_cfg = {k: v for k, v in (cfg.pop("task", None) or {}).items() if k != "_name"}
        return model_cfg, task_cfg, cfg
    args = _plain(raw.get("args"))
    if not isinstance(args, dict):
        raise UserError(f"{path}: fairseq checkpoint with neither cfg nor args")
    # Old checkpoints keep one flat namespace: model, task and training keys side by side.
    model_keys = set(REFERENCE_MODEL_DEFAULTS) | set(TeraConfig.from_dict({}).to_dict())
    task_keys = set(REFERENCE_TASK_DEFAULTS) | {"data", "labels", "label_dir"}
    model_cfg = {k: v for k, v in args.items() if k in model_keys}
    task_cfg = {k: v for k, v in args.items() if k in task_keys}
    rest = {k: v for k, v in args.items() if k not in model_keys | task_keys}
    return model_cfg, task_cfg, {"args": rest}


def _dictionary_states(task_state: Any) -> list[dict] | None:
    """The label dictionaries of a fairseq-layout `task_state`, each as fairseq's Dictionary
    state (`symbols`, `count`, `indices`, special words and indices)."""
    task_state = _plain(task_state)
    if not isinstance(task_state, dict):
        return None
    symbols = task_state.get("dictionaries_symbols")  # plain dicts (ours, older)
    if isinstance(symbols, list) and all(isinstance(s, list) for s in symbols):
        return [_dictionary_state(s) for s in symbols]
    found = task_state.get("dictionaries")
    if isinstance(found, dict):  # a fine-tuning task keeps a single dictionary
        found = [found]
    if isinstance(found, list) and all(isinstance(d, dict) for d in found):
        return [{**d, "symbols": list(d.get("symbols", []))} for d in found]
    return None


def _dictionary_state(symbols: list[str]) -> dict:
    """fairseq's Dictionary state for `symbols`, each counted once (special indices: where
    the special words sit, else fairseq's defaults 0-3)."""
    indices = {s: i for i, s in enumerate(symbols)}
    state = {**_DICTIONARY_SPECIALS, "symbols": list(symbols), "count": [1] * len(symbols),
             "indices": indices}
    for i, kind in enumerate(("bos", "pad", "eos", "unk")):
        state[f"{kind}_index"] = indices.get(_DICTIONARY_SPECIALS[f"{kind}_word"], i)
    state["nspecial"] = 4
    return state


def _from_parts(path: Path, fmt: str, model_cfg: dict, task_cfg: dict, state: Any,
                dictionaries: list | None, metadata: dict) -> LoadedCheckpoint:
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{path}: the model weights are not a state dict of tensors")
    if dictionaries is not None and not (
        isinstance(dictionaries, list)
        and all(d is None or isinstance(d, list) for d in dictionaries)
    ):
        raise UserError(f"{path}: dictionaries_symbols should be a list of symbol lists")
    # The reference defaults (TeraConfig's, plus the fields TERA2 does not use), so that a
    # config reads the same whichever format dropped or added the unused fields.
    model_cfg = {**copy.deepcopy(REFERENCE_MODEL_DEFAULTS), **model_cfg}
    # Waveform standardisation is a task setting in the reference, a model one here.
    model_cfg["normalize"] = bool(model_cfg.get("normalize") or task_cfg.get("normalize"))
    try:
        cfg = TeraConfig.from_dict(model_cfg)
    except (UserError, TypeError) as err:
        raise UserError(f"{path}: model config does not fit TERA2: {err}") from err
    task_cfg = {**REFERENCE_TASK_DEFAULTS, **task_cfg, "normalize": cfg.normalize}
    state, dictionaries = _without_empty_labels(state, dictionaries)
    labels = state.get("label_embs_concat")
    try:
        with torch.device("meta"):  # shapes only: the weights come from the checkpoint
            model = TeraModel(cfg, num_label_classes=0 if labels is None else labels.shape[0])
    except (TypeError, ValueError) as err:
        raise UserError(f"{path}: model config does not fit TERA2: {err}") from err
    load_weights(model, state, path)
    model.eval()
    return LoadedCheckpoint(model, cfg, task_cfg, dictionaries, fmt, path, metadata)


def _without_empty_labels(state: dict, dictionaries: list | None) -> tuple[dict, list | None]:
    """Exports of a model without label dictionaries carry an empty `label_embs_concat`
    [0, D] and one empty dictionary (what s3prl's and the fork's builders make of that):
    read back, that is no dictionary at all."""
    if dictionaries is not None and any(d is None for d in dictionaries):
        dictionaries = None  # s3prl's marker of a fine-tuned model without labels
    labels = state.get("label_embs_concat")
    if labels is not None and labels.shape[0] == 0:
        state = {k: v for k, v in state.items() if k != "label_embs_concat"}
        if dictionaries is not None and not any(dictionaries):
            dictionaries = None
    return state, dictionaries


def load_weights(model: TeraModel, state: dict[str, torch.Tensor], path: Path) -> None:
    """Strict load with an error that names the file and the first key that does not fit.

    The model's own tensors are replaced by the checkpoint's (cast to the model's dtypes), so
    it may be built on the meta device."""
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
    state = {name: state[name].to(tensor.dtype) for name, tensor in expected.items()}
    model.load_state_dict(state, strict=True, assign=True)


# --- the restricted unpickler for fairseq-written files ---------------------------------------


class _RefusedClass(Exception):
    pass


class _StandIn:
    """What a pickled omegaconf / fairseq / argparse object becomes: its state, as data."""

    state: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # dict subclasses (DictConfig)
        if not isinstance(self.state, dict):
            self.state = {}
        self.state.setdefault("_items", {})[key] = value


def _stand_in_type(qualified: str) -> type:
    return type(qualified.rsplit(".", 1)[-1], (_StandIn,), {"qualified": qualified})


# Classes a checkpoint may name: containers, tensor and numpy rebuilders (they build arrays
# from bytes and run nothing else), and `_codecs.encode`, protocol 2's way to write bytes.
_ALLOWED = {
    ("collections", "OrderedDict"), ("collections", "defaultdict"),
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "set"), ("builtins", "tuple"),
    ("builtins", "frozenset"), ("builtins", "int"), ("builtins", "float"),
    ("builtins", "bool"), ("builtins", "complex"), ("builtins", "slice"),
    ("builtins", "bytes"), ("builtins", "bytearray"), ("_codecs", "encode"),
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch", "Size"), ("torch", "device"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "dtype"), ("numpy", "ndarray"),
}
_PYTHON2_NAMES = {("__builtin__", "long"): ("builtins", "int")}
# Classes whose pickled state is only data: they become stand-ins, their code never runs.
_STAND_IN_MODULES = ("omegaconf", "fairseq.data.dictionary", "argparse", "typing", "enum")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        module, name = _PYTHON2_NAMES.get((module, name), (module, name))
        if module == "__builtin__":
            module = "builtins"
        if (module, name) in _ALLOWED or (module == "torch" and name.endswith("Storage")):
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
    dicts, lists and values; tuples become lists (as in JSON)."""
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
    if name.endswith("Namespace"):
        return _plain({k: v for k, v in state.items() if not k.startswith("_")})
    return _plain(state)  # fairseq's Dictionary: its attributes


# --- pickling fairseq's Dictionary without fairseq --------------------------------------------


class _ForkDictionary:
    """Pickled as `fairseq.data.dictionary.Dictionary` with the state fairseq gives it, so the
    fork's task reads the label dictionaries from `task_state` as from its own files."""

    def __init__(self, state: dict) -> None:
        self.__dict__.update(state)


class _ForkPickler(pickle._Pickler):
    """The pure-Python pickler, naming `_ForkDictionary` by fairseq's class name (the C
    pickler would insist on importing fairseq to check the name)."""

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj is _ForkDictionary:
            self.write(pickle.GLOBAL + b"fairseq.data.dictionary\nDictionary\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


class _ForkPickle:
    """The `pickle_module` torch.save uses for fairseq exports."""

    Pickler = _ForkPickler


# --- safetensors directory ----------------------------------------------------------------------


def _load_safetensors_dir(path: Path, map_location: str | torch.device) -> LoadedCheckpoint:
    from safetensors.torch import load_file

    weights, config = path / "model.safetensors", path / "config.json"
    if not weights.is_file() or not config.is_file():
        raise UserError(f"{path}: a safetensors checkpoint directory needs model.safetensors "
                        "and config.json")
    try:
        meta = json.loads(config.read_text())
        state = load_file(str(weights), device=str(map_location))
    except Exception as err:  # json or safetensors header errors
        raise UserError(f"{path}: unreadable safetensors checkpoint ({_first_line(err)})") from err
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != SAFETENSORS_FORMAT_VERSION or not isinstance(meta.get("model_cfg"), dict):
        raise UserError(f"{config}: expected format_version {SAFETENSORS_FORMAT_VERSION} and a "
                        f"model_cfg mapping, found format_version {version!r}")
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


def _beyond_reference(ckpt: LoadedCheckpoint) -> dict:
    """What the reference fields cannot hold: our model options (`normalize` travels as the
    task's), extra task keys and the metadata."""
    ours = ckpt.model_cfg.to_dict()
    return {
        "model_cfg": {k: v for k, v in ours.items()
                      if k not in REFERENCE_MODEL_DEFAULTS and k != "normalize"},
        "task_cfg": {k: v for k, v in ckpt.task_cfg.items() if k not in REFERENCE_TASK_DEFAULTS},
        "metadata": ckpt.metadata,
    }


def _labelled_weights(ckpt: LoadedCheckpoint, state: dict) -> tuple[dict, list[list[str]]]:
    """State and dictionaries as s3prl's and the fork's builders expect them: one
    `label_embs_concat` row per dictionary symbol, an empty one when there are none."""
    labels = state.get("label_embs_concat")
    symbols = ckpt.dictionaries_symbols
    if labels is None:
        cfg = ckpt.model_cfg
        final_dim = cfg.final_dim if cfg.final_dim > 0 else cfg.encoder_embed_dim
        return {**state, "label_embs_concat": torch.zeros(0, final_dim)}, [[]]
    if symbols is None:  # a checkpoint without its dictionaries: name the rows by number
        return state, [[str(i) for i in range(labels.shape[0])]]
    rows = sum(len(s) for s in symbols)
    if rows != labels.shape[0]:
        raise UserError(
            f"{ckpt.path}: the label dictionaries have {rows} symbols but label_embs_concat "
            f"has {labels.shape[0]} rows; s3prl and fairseq could not load the export"
        )
    return state, symbols


def save_checkpoint(ckpt: LoadedCheckpoint, dst: str | Path, fmt: str) -> None:
    """Write `ckpt` as "s3prl" (a file), "fairseq" (a file) or "safetensors" (a directory),
    atomically."""
    dst = Path(dst)
    state = {k: v.detach().cpu().contiguous() for k, v in ckpt.model.state_dict().items()}
    if fmt == "s3prl":
        _save_s3prl(ckpt, dst, state)
    elif fmt == "fairseq":
        _save_fairseq(ckpt, dst, state)
    elif fmt == "safetensors":
        _save_safetensors_dir(ckpt, dst, state)
    else:
        raise UserError(f"unknown checkpoint format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _save_s3prl(ckpt: LoadedCheckpoint, dst: Path, state: dict) -> None:
    model_cfg, task_cfg = reference_configs(ckpt)
    state, symbols = _labelled_weights(ckpt, state)
    save_atomic({"task_cfg": task_cfg, "model_cfg": model_cfg, "model_weight": state,
                 "dictionaries_symbols": symbols, "tera_extra": _beyond_reference(ckpt)}, dst)


def _save_fairseq(ckpt: LoadedCheckpoint, dst: Path, state: dict) -> None:
    """The fork's layout: `cfg` as plain dicts (fairseq >= 0.12 turns them into a DictConfig
    on load), label dictionaries as fairseq `Dictionary` objects in `task_state`."""
    model_cfg, task_cfg = reference_configs(ckpt)
    beyond = _beyond_reference(ckpt)
    task_cfg.update(beyond.pop("task_cfg"))  # the fork's own task keys (data, labels, ...)
    state, symbols = _labelled_weights(ckpt, state)
    fork = ckpt.metadata.get("fairseq") or {}
    known = fork.get("dictionaries") or []
    dictionaries = [
        known[i] if i < len(known) and known[i].get("symbols") == s else _dictionary_state(s)
        for i, s in enumerate(symbols)
    ]
    history = fork.get("optimizer_history") or [{
        "criterion_name": "TeraCriterion", "optimizer_name": "FairseqAdam",
        "lr_scheduler_state": {"best": None}, "num_updates": ckpt.metadata.get("update", 0),
    }]
    sections = dict(fork.get("cfg") or {})
    sections.pop("args", None)  # an old checkpoint's flat namespace, kept in tera_extra only
    checkpoint = {
        "args": None,
        "cfg": {**sections, "model": {"_name": FAIRSEQ_MODEL_NAME, **model_cfg},
                "task": {"_name": FAIRSEQ_TASK_NAME, **task_cfg}},
        "model": state,
        "criterion": None,
        "optimizer_history": history,
        "task_state": {"dictionaries": [_ForkDictionary(d) for d in dictionaries]},
        "extra_state": fork.get("extra_state") or {"train_iterator": {"epoch": 1,
                                                                      "iterations_in_epoch": 0}},
        "last_optimizer_state": None,
        "tera_extra": beyond,
    }
    save_atomic(checkpoint, dst, pickle_module=_ForkPickle)


def _save_safetensors_dir(ckpt: LoadedCheckpoint, dst: Path, state: dict) -> None:
    from safetensors.torch import save_file

    if dst.exists() and not dst.is_dir():
        raise UserError(f"{dst}: a safetensors checkpoint is a directory, and this is a file")
    dst.mkdir(parents=True, exist_ok=True)
    tmp = dst / ".model.safetensors.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, dst / "model.safetensors")
    meta = {"format_version": SAFETENSORS_FORMAT_VERSION, "model_cfg": ckpt.model_cfg.to_dict(),
            "task_cfg": ckpt.task_cfg, "dictionaries_symbols": ckpt.dictionaries_symbols,
            "metadata": ckpt.metadata}
    _write_text_atomic(dst / "config.json", json.dumps(meta, indent=2, default=str))
    _write_text_atomic(dst / "README.md", model_card(ckpt))


# The fields that make two models the same architecture (for naming a checkpoint's preset).
ARCHITECTURE_FIELDS = ("encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim",
                       "encoder_attention_heads", "conv_feature_layers", "conv_bias",
                       "extractor_mode", "conv_pos", "conv_pos_groups", "layer_norm_first",
                       "final_dim")


def preset_name(ckpt: LoadedCheckpoint) -> str:
    """The preset a checkpoint was trained as (its metadata), else the first preset with the
    same architecture ("slim (same architecture)"), else "unknown"."""
    from tera.presets import load_preset, model_config, preset_names

    if ckpt.metadata.get("preset"):
        return str(ckpt.metadata["preset"])
    for name in preset_names():
        preset = model_config(load_preset(name))
        if all(getattr(ckpt.model_cfg, f) == getattr(preset, f) for f in ARCHITECTURE_FIELDS):
            return f"{name} (same architecture)"
    return "unknown"


def model_card(ckpt: LoadedCheckpoint) -> str:
    """The README of a safetensors checkpoint: preset, size, cost and training summary."""
    from tera.presets import model_cost

    cfg, meta = ckpt.model_cfg, ckpt.metadata
    cost = model_cost(cfg)
    lines = [
        "# TERA2 checkpoint", "",
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
    lines += ["", "Files: `model.safetensors` (the weights, fairseq / s3prl names), "
              "`config.json` (`model_cfg`, `task_cfg`, `dictionaries_symbols`, `metadata`).",
              "", "Load with `tera.checkpoint.load_checkpoint(DIR)` or "
              "`tera.upstream.load_upstream(\"tera2\", DIR)`; convert with "
              "`tera convert DIR OUT.pt --to s3prl|fairseq`."]
    return "\n".join(lines) + "\n"


def convert_checkpoint(src: str | Path, dst: str | Path, fmt: str) -> LoadedCheckpoint:
    """Load `src` (any format) and write it to `dst` as `fmt`; returns what was loaded."""
    if fmt not in FORMATS:
        raise UserError(f"unknown checkpoint format {fmt!r}; choose one of {', '.join(FORMATS)}")
    ckpt = load_checkpoint(src)
    save_checkpoint(ckpt, dst, fmt)
    return ckpt
