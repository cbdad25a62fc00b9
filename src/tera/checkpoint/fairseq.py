"""The fairseq fork's checkpoint layout: `{"cfg": {"model", "task", ...}, "model",
"task_state", "optimizer_history", "extra_state", ...}`, or an older one with `args` (one
flat argparse namespace) instead of `cfg`.

The fork pickles `omegaconf` and `fairseq.data.dictionary.Dictionary` objects, which the
restricted unpickler turns into plain data. The export writes the same layout with `cfg` as
plain dicts and the label dictionaries pickled under fairseq's class name (without fairseq),
so the fork's `checkpoint_utils` reads it; what the fork's fields cannot hold travels in a
top-level `tera_extra` entry.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from tera.checkpoint.common import (
    REFERENCE_MODEL_DEFAULTS,
    REFERENCE_TASK_DEFAULTS,
    LoadedCheckpoint,
    beyond_reference,
    from_parts,
    labelled_weights,
    reference_configs,
    section,
    weights_for_export,
)
from tera.checkpoint.unpickler import to_plain
from tera.errors import UserError
from tera.model.config import TeraConfig
from tera.runs.files import save_torch

# The fork's registry names for the model and the task (`cfg.model._name`, `cfg.task._name`).
FAIRSEQ_MODEL_NAME, FAIRSEQ_TASK_NAME = "tera", "tera_pretraining"
# What fairseq's `Dictionary()` starts with, for label dictionaries we have only symbols of.
_DICTIONARY_SPECIALS = {"bos_word": "<s>", "unk_word": "<unk>", "pad_word": "<pad>",
                        "eos_word": "</s>"}


def is_fairseq_layout(raw: dict) -> bool:
    """The fork's layout (ours, `tera pretrain`'s, uses it too)."""
    return "model" in raw and ("cfg" in raw or "args" in raw)


def load(path: Path, raw: dict) -> LoadedCheckpoint:
    """A fork checkpoint, or a plain-dict file in the same layout."""
    model_cfg, task_cfg, other_sections = fairseq_configs(raw, path)
    extra_state = to_plain(raw.get("extra_state"))
    extra_state = extra_state if isinstance(extra_state, dict) else {}
    dictionaries = dictionary_states(raw.get("task_state"))
    symbols = None if dictionaries is None else [d["symbols"] for d in dictionaries]
    history = to_plain(raw.get("optimizer_history")) or []
    metadata = {"fairseq": {"cfg": other_sections, "optimizer_history": history,
                            "extra_state": extra_state, "dictionaries": dictionaries}}
    if history and isinstance(history[-1], dict) and "num_updates" in history[-1]:
        metadata["update"] = history[-1]["num_updates"]
    extra = raw.get("tera_extra") or {}  # what our own fairseq export could not put in cfg
    model_cfg.update(extra.get("model_cfg", {}))
    task_cfg.update(extra.get("task_cfg", {}))
    if "metadata" in extra:
        metadata = extra["metadata"]
    return from_parts(path, "fairseq", model_cfg, task_cfg, raw["model"], symbols, metadata)


def fairseq_configs(raw: dict, path: Path) -> tuple[dict, dict, dict]:
    """(model section, task section, the other sections) of a fairseq-layout checkpoint; the
    registry names (`_name`) are dropped: they belong to the format, not to the model."""
    cfg = raw.get("cfg")
    if cfg is not None:
        cfg = section(cfg, path, "cfg")
        if not isinstance(cfg.get("model"), dict):
            raise UserError(f"{path}: fairseq checkpoint without a cfg.model section")
        model_cfg = {k: v for k, v in cfg.pop("model").items() if k != "_name"}
        task_cfg = {k: v for k, v in (cfg.pop("task", None) or {}).items() if k != "_name"}
        return model_cfg, task_cfg, cfg
    args = to_plain(raw.get("args"))
    if not isinstance(args, dict):
        raise UserError(f"{path}: fairseq checkpoint with neither cfg nor args")
    # Old checkpoints keep one flat namespace: model, task and training keys side by side.
    model_keys = set(REFERENCE_MODEL_DEFAULTS) | set(TeraConfig.from_dict({}).to_dict())
    task_keys = set(REFERENCE_TASK_DEFAULTS) | {"data", "labels", "label_dir"}
    model_cfg = {k: v for k, v in args.items() if k in model_keys}
    task_cfg = {k: v for k, v in args.items() if k in task_keys}
    rest = {k: v for k, v in args.items() if k not in model_keys | task_keys}
    return model_cfg, task_cfg, {"args": rest}


def dictionary_states(task_state: Any) -> list[dict] | None:
    """The label dictionaries of a fairseq-layout `task_state`, each as fairseq's Dictionary
    state (`symbols`, `count`, `indices`, special words and indices)."""
    task_state = to_plain(task_state)
    if not isinstance(task_state, dict):
        return None
    symbols = task_state.get("dictionaries_symbols")  # symbol lists (tera's own files)
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


# --- export -------------------------------------------------------------------------------------


def save(ckpt: LoadedCheckpoint, dst: Path) -> None:
    """The fork's layout: `cfg` as plain dicts (fairseq >= 0.12 turns them into a DictConfig
    on load), label dictionaries as fairseq `Dictionary` objects in `task_state`."""
    model_cfg, task_cfg = reference_configs(ckpt)
    beyond = beyond_reference(ckpt)
    task_cfg.update(beyond.pop("task_cfg"))  # the fork's own task keys (data, labels, ...)
    state, symbols = labelled_weights(ckpt, weights_for_export(ckpt))
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
    save_torch(checkpoint, dst, pickle_module=_ForkPickle)


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
