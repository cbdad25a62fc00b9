"""Checkpoint formats: loading (fairseq, s3prl, ours, safetensors), exports, exact round
trips, and the errors on files that are not checkpoints or do not fit their config."""

from __future__ import annotations

import importlib.util
import pickle
import pickletools
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch

from tera.audio import load_audio
from tera.checkpoint import (
    REFERENCE_MODEL_DEFAULTS,
    REFERENCE_TASK_DEFAULTS,
    LoadedCheckpoint,
    load_checkpoint,
    save_checkpoint,
)
from tera.errors import UserError
from tera.model.tera import TeraModel, build_model
from tera.presets import load_preset, model_config

from .paths import COMPAT, FLAC

S3PRL = COMPAT / "tera2_s3prl_converted.pt"
FAIRSEQ = COMPAT / "tera2_fairseq.pt"
SUFFIX = {"s3prl": ".pt", "fairseq": ".pt", "safetensors": ""}


@pytest.fixture(scope="module")
def wave() -> torch.Tensor:
    return load_audio(FLAC)[:32000]


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(S3PRL, weights_only=True)


def hidden_states(model: TeraModel, wave: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack(model.extract_features(wave[None]).hidden_states)


def same_checkpoint(a: LoadedCheckpoint, b: LoadedCheckpoint) -> None:
    """Identical tensors, configs, dictionaries and metadata."""
    state_a, state_b = a.model.state_dict(), b.model.state_dict()
    assert state_a.keys() == state_b.keys()
    for name, tensor in state_a.items():
        assert torch.equal(state_b[name], tensor), name
    assert a.model_cfg == b.model_cfg
    assert a.task_cfg == b.task_cfg
    assert a.dictionaries_symbols == b.dictionaries_symbols
    assert a.metadata == b.metadata


def pickled_globals(path: Path) -> set[str]:
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    return {arg for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


# --- the reference files ----------------------------------------------------------------------


def test_fairseq_file_loads_without_fairseq_or_omegaconf():
    assert importlib.util.find_spec("fairseq") is None
    ckpt = load_checkpoint(FAIRSEQ)
    assert ckpt.source_format == "fairseq"
    assert ckpt.dictionaries_symbols[0][:4] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert len(ckpt.dictionaries_symbols[0]) == 12
    assert ckpt.model_cfg.encoder_layers == 3 and ckpt.model_cfg.final_dim == 32
    assert ckpt.task_cfg["labels"] == ["km"] and ckpt.task_cfg["sample_rate"] == 16000
    assert ckpt.metadata["update"] == 1000
    assert ckpt.metadata["fairseq"]["cfg"]["optimization"]["max_update"] == 400000
    assert not ckpt.model.training


def test_both_reference_files_hold_the_same_model(wave):
    a, b = load_checkpoint(S3PRL), load_checkpoint(FAIRSEQ)
    assert a.source_format == "s3prl" and a.model_cfg == b.model_cfg
    assert torch.equal(hidden_states(a.model, wave), hidden_states(b.model, wave))


# --- exports and round trips ------------------------------------------------------------------


@pytest.mark.parametrize("source", [S3PRL, FAIRSEQ], ids=["from-s3prl", "from-fairseq"])
@pytest.mark.parametrize("via", ["s3prl", "fairseq", "safetensors"])
def test_round_trips_through_every_format_are_exact(tmp_path, source, via):
    original = load_checkpoint(source)
    home = original.source_format
    there, back = tmp_path / f"there{SUFFIX[via]}", tmp_path / f"back{SUFFIX[home]}"
    save_checkpoint(original, there, via)
    middle = load_checkpoint(there)
    assert middle.source_format == via
    same_checkpoint(original, middle)
    save_checkpoint(middle, back, home)
    same_checkpoint(original, load_checkpoint(back))


def test_fairseq_round_trip_rewrites_the_same_sections(tmp_path):
    from tera.checkpoint.unpickler import read_torch_file, to_plain

    save_checkpoint(load_checkpoint(FAIRSEQ), tmp_path / "a.safetensors", "safetensors")
    save_checkpoint(load_checkpoint(tmp_path / "a.safetensors"), tmp_path / "b.pt", "fairseq")
    original = read_torch_file(FAIRSEQ, "cpu")
    written = read_torch_file(tmp_path / "b.pt", "cpu")
    assert set(written) == set(original) | {"tera_extra"}
    assert to_plain(written["cfg"]) == to_plain(original["cfg"])
    assert to_plain(written["task_state"]) == to_plain(original["task_state"])
    for key in ("optimizer_history", "extra_state"):
        assert to_plain(written[key]) == to_plain(original[key])
    # The same classes as the fork writes, and no other (plain dicts stand for omegaconf).
    assert pickled_globals(tmp_path / "b.pt") <= pickled_globals(FAIRSEQ)


def test_fairseq_export_is_what_fairseq_unpickles(tmp_path, monkeypatch):
    """With a stand-in `fairseq.data.dictionary` module, plain `torch.load` rebuilds the
    label dictionary as fairseq would: same attributes as in the fork's own file."""

    class Dictionary:
        def __len__(self) -> int:
            return len(self.symbols)

    module = types.ModuleType("fairseq.data.dictionary")
    module.Dictionary = Dictionary
    for name in ("fairseq", "fairseq.data"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "fairseq.data.dictionary", module)
    save_checkpoint(load_checkpoint(S3PRL), tmp_path / "f.pt", "fairseq")
    written = torch.load(tmp_path / "f.pt", weights_only=False)
    (dictionary,) = written["task_state"]["dictionaries"]
    assert isinstance(dictionary, Dictionary) and len(dictionary) == 12
    fork = torch.load(FAIRSEQ, weights_only=False)["task_state"]["dictionaries"][0]
    assert set(vars(dictionary)) == set(vars(fork))
    assert written["cfg"]["model"]["_name"] == "tera"
    assert written["cfg"]["task"]["_name"] == "tera_pretraining"
    assert written["optimizer_history"][-1]["num_updates"] == 0
    assert "train_iterator" in written["extra_state"]


def test_s3prl_export_is_strictly_loadable_with_reference_fields_only(tmp_path, reference):
    save_checkpoint(load_checkpoint(FAIRSEQ), tmp_path / "out.pt", "s3prl")
    raw = torch.load(tmp_path / "out.pt", weights_only=True)
    required = {"task_cfg", "model_cfg", "model_weight", "dictionaries_symbols"}
    assert required <= set(raw) and set(raw) - required == {"tera_extra"}
    assert set(raw["model_cfg"]) == set(REFERENCE_MODEL_DEFAULTS)
    assert set(raw["task_cfg"]) == set(REFERENCE_TASK_DEFAULTS)
    assert raw["model_cfg"] == reference["model_cfg"]
    assert raw["task_cfg"] == reference["task_cfg"]
    # What s3prl's load_converted_model does: build from model_cfg, one label row per symbol.
    rows = sum(len(symbols) for symbols in raw["dictionaries_symbols"])
    model = build_model(raw["model_cfg"], num_label_classes=rows)
    model.load_state_dict(raw["model_weight"], strict=True)


def test_model_without_label_dictionaries_exports_an_empty_one(tmp_path, wave):
    torch.manual_seed(0)
    model = TeraModel(model_config(load_preset("tiny"))).eval()
    ckpt = LoadedCheckpoint(model, model.cfg, {}, None, "tera", tmp_path / "x", {"preset": "tiny"})
    save_checkpoint(ckpt, tmp_path / "s3prl.pt", "s3prl")
    raw = torch.load(tmp_path / "s3prl.pt", weights_only=True)
    # s3prl's builder makes label_embs_concat [sum of dictionary sizes, final_dim].
    assert raw["dictionaries_symbols"] == [[]]
    assert raw["model_weight"]["label_embs_concat"].shape == (0, model.cfg.final_dim)
    for fmt in ("fairseq", "safetensors"):
        save_checkpoint(load_checkpoint(tmp_path / "s3prl.pt"), tmp_path / f"{fmt}.out", fmt)
        loaded = load_checkpoint(tmp_path / f"{fmt}.out")
        assert loaded.dictionaries_symbols is None and loaded.metadata == {"preset": "tiny"}
        assert torch.equal(hidden_states(loaded.model, wave), hidden_states(model, wave))


def test_hidden_states_are_identical_whichever_format(tmp_path, wave):
    source = load_checkpoint(S3PRL)
    expected = hidden_states(source.model, wave)
    ours = tmp_path / "checkpoint_last.pt"
    torch.save({"cfg": {"model": source.model_cfg.to_dict(), "task": {"sample_rate": 16000}},
                "model": source.model.state_dict(), "task_state": {"dictionaries_symbols": None},
                "extra_state": {"tera": {"preset": "compat", "update": 7}}}, ours)
    paths = {"tera": ours, "s3prl": S3PRL, "fairseq": FAIRSEQ}
    for fmt in ("s3prl", "fairseq", "safetensors"):
        paths[f"exported {fmt}"] = tmp_path / f"out{SUFFIX[fmt]}"
        save_checkpoint(source, paths[f"exported {fmt}"], fmt)
    for name, path in paths.items():
        loaded = load_checkpoint(path)
        assert torch.equal(hidden_states(loaded.model, wave), expected), name
    assert load_checkpoint(ours).source_format == "tera"
    assert load_checkpoint(ours).metadata["update"] == 7


def test_safetensors_directory_has_config_and_card(tmp_path):
    import json

    save_checkpoint(load_checkpoint(FAIRSEQ), tmp_path / "st", "safetensors")
    assert sorted(p.name for p in (tmp_path / "st").iterdir()) == [
        "README.md", "config.json", "model.safetensors"]
    config = json.loads((tmp_path / "st" / "config.json").read_text())
    assert config["format_version"] == 1 and config["model_cfg"]["encoder_embed_dim"] == 48
    card = (tmp_path / "st" / "README.md").read_text()
    assert "parameters: 97,870" in card and "pre-training updates: 1,000" in card


# --- older and plainer files ------------------------------------------------------------------


@pytest.mark.parametrize("style", ["cfg", "args", "namespace"])
def test_plain_fairseq_layouts_load(tmp_path, reference, wave, style):
    """A fork-layout file written with plain `torch.save` of dicts, new (`cfg`) or old
    (`args`: one flat namespace, as a dict or a pickled argparse.Namespace) style."""
    import argparse

    model_cfg = reference["model_cfg"]
    if style == "cfg":
        key, config = "cfg", {"model": {"_name": "tera", **model_cfg}, "task": {}}
    else:
        key, config = "args", {**model_cfg, "sample_rate": 16000, "lr": [5e-4], "arch": "tera"}
    if style == "namespace":
        config = argparse.Namespace(**config)
    path = tmp_path / f"{style}.pt"
    torch.save({key: config, "model": reference["model_weight"],
                "task_state": {"dictionaries_symbols": reference["dictionaries_symbols"]}}, path)
    ckpt = load_checkpoint(path)
    assert ckpt.source_format == "fairseq" and ckpt.model_cfg.encoder_embed_dim == 48
    assert ckpt.dictionaries_symbols == reference["dictionaries_symbols"]
    assert "lr" not in ckpt.model_cfg.extra
    assert torch.equal(hidden_states(ckpt.model, wave),
                       hidden_states(load_checkpoint(S3PRL).model, wave))


def test_missing_newer_keys_take_defaults_and_unknown_keys_are_kept(tmp_path, reference):
    cfg = {k: v for k, v in reference["model_cfg"].items() if k not in ("conv_pos", "fp16")}
    cfg["a_future_option"] = 3
    torch.save({**reference, "model_cfg": cfg}, tmp_path / "old.pt")
    ckpt = load_checkpoint(tmp_path / "old.pt")
    assert ckpt.model_cfg.conv_pos == 128 and ckpt.model_cfg.extra["a_future_option"] == 3
    save_checkpoint(ckpt, tmp_path / "new.pt", "s3prl")
    raw = torch.load(tmp_path / "new.pt", weights_only=True)
    assert "a_future_option" not in raw["model_cfg"] and raw["model_cfg"]["fp16"] is False
    assert load_checkpoint(tmp_path / "new.pt").model_cfg.extra["a_future_option"] == 3


def test_weight_norm_in_parametrization_storage_loads(tmp_path, reference, wave):
    state = dict(reference["model_weight"])
    prefix = "encoder.pos_conv.0."
    state[f"{prefix}parametrizations.weight.original0"] = state.pop(f"{prefix}weight_g")
    state[f"{prefix}parametrizations.weight.original1"] = state.pop(f"{prefix}weight_v")
    torch.save({**reference, "model_weight": state}, tmp_path / "param.pt")
    assert torch.equal(hidden_states(load_checkpoint(tmp_path / "param.pt").model, wave),
                       hidden_states(load_checkpoint(S3PRL).model, wave))


# --- errors -------------------------------------------------------------------------------


def test_shape_mismatch_names_file_and_first_mismatching_key(tmp_path, reference):
    cfg = dict(reference["model_cfg"], encoder_ffn_embed_dim=64)
    torch.save({**reference, "model_cfg": cfg}, tmp_path / "bad.pt")
    with pytest.raises(UserError, match=r"bad\.pt.*'encoder\.layers\.0\.fc1\.weight'.*\(96, 48\)"):
        load_checkpoint(tmp_path / "bad.pt")


def test_missing_weight_is_named(tmp_path, reference):
    state = {k: v for k, v in reference["model_weight"].items() if k != "mask_emb"}
    torch.save({**reference, "model_weight": state}, tmp_path / "short.pt")
    with pytest.raises(UserError, match=r"short\.pt.*lacks weight 'mask_emb'"):
        load_checkpoint(tmp_path / "short.pt")


def test_unsupported_config_value_names_the_file(tmp_path, reference):
    torch.save({**reference, "model_cfg": dict(reference["model_cfg"], activation_fn="relu")},
               tmp_path / "relu.pt")
    with pytest.raises(UserError, match=r"relu\.pt.*activation_fn"):
        load_checkpoint(tmp_path / "relu.pt")


@pytest.mark.parametrize("content", [b"hello, not a checkpoint", b""])
def test_non_checkpoint_files_are_rejected(tmp_path, content):
    path = tmp_path / "notes.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"notes\.pt.*not a checkpoint"):
        load_checkpoint(path)


def test_torch_file_that_is_not_a_checkpoint_is_rejected(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "tensor.pt")
    with pytest.raises(UserError, match=r"tensor\.pt: not a TERA checkpoint.*found weights"):
        load_checkpoint(tmp_path / "tensor.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(UserError, match=r"list\.pt: not a TERA checkpoint \(found a list\)"):
        load_checkpoint(tmp_path / "list.pt")


def test_truncated_checkpoint_is_reported(tmp_path):
    data = S3PRL.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut\.pt.*(corrupt|truncated|not a checkpoint)"):
        load_checkpoint(tmp_path / "cut.pt")


def test_missing_path_and_incomplete_safetensors_dir(tmp_path):
    with pytest.raises(UserError, match=r"nowhere\.pt: no such checkpoint"):
        load_checkpoint(tmp_path / "nowhere.pt")
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"st: a safetensors checkpoint directory needs"):
        load_checkpoint(tmp_path / "st")


def test_pickled_code_outside_the_allow_list_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"cfg": {"model": {}}, "model": {}, "x": print}, f, protocol=2)
    with pytest.raises(UserError, match=r"evil\.pt: refusing to unpickle builtins\.print"):
        load_checkpoint(path)


def test_refused_class_runs_nothing(tmp_path):
    """A pickle that would call os.system is refused before anything runs."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    path = tmp_path / "payload.pt"
    torch.save({"cfg": {"model": {}}, "model": {}, "payload": Payload()}, path)
    with pytest.raises(UserError, match=r"payload\.pt: refusing to unpickle (posix|os)\.system"):
        load_checkpoint(path)
    assert not marker.exists()


def test_unknown_format_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="unknown checkpoint format 'onnx'"):
        save_checkpoint(load_checkpoint(S3PRL), tmp_path / "x", "onnx")



# --- our own training checkpoints -------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """`checkpoint_last.pt` of a one-update `tera pretrain` run (tiny, one layer)."""
    import soundfile as sf

    from tera.pretrain.config import load_config
    from tera.pretrain.manifest import write_manifest
    from tera.pretrain.trainer import Trainer

    audio = tmp_path_factory.mktemp("audio")
    samples = load_audio(FLAC).numpy()
    for i in range(4):
        sf.write(audio / f"u{i}.wav", samples[i * 16000 : i * 16000 + 20000], 16000)
    manifest = tmp_path_factory.mktemp("manifest")
    write_manifest(audio, manifest, valid_percent=0.25, seed=0)
    save_dir = tmp_path_factory.mktemp("run")
    overrides = [f"task.data={manifest}", f"checkpoint.save_dir={save_dir}",
                 "model.encoder_layers=1", "task.max_sample_size=16000",
                 "task.min_sample_size=4000", "dataset.max_tokens=40000",
                 "dataset.num_workers=0", "common.amp=fp32", "optimization.max_update=1"]
    Trainer(load_config("tiny", overrides=overrides)).train()
    return save_dir / "checkpoint_last.pt"


def test_training_checkpoint_loads_and_converts_exactly(tmp_path, trained, wave):
    ckpt = load_checkpoint(trained)
    assert ckpt.source_format == "tera" and ckpt.metadata["preset"] == "tiny"
    assert ckpt.metadata["update"] == 1 and ckpt.model_cfg.encoder_layers == 1
    for fmt in ("s3prl", "fairseq", "safetensors"):
        there = tmp_path / f"{fmt}{SUFFIX[fmt]}"
        save_checkpoint(ckpt, there, fmt)
        same_checkpoint(ckpt, load_checkpoint(there))
    card = (tmp_path / "safetensors" / "README.md").read_text()
    assert "preset: tiny" in card and "pre-training updates: 1" in card
    assert torch.equal(hidden_states(load_checkpoint(tmp_path / "s3prl.pt").model, wave),
                       hidden_states(ckpt.model, wave))


# --- refusing what should not load ----------------------------------------------------------


def test_non_finite_weights_are_refused(tmp_path, reference, capsys):
    state = dict(reference["model_weight"])
    state["layer_norm.weight"] = state["layer_norm.weight"].clone().fill_(float("nan"))
    torch.save({**reference, "model_weight": state}, tmp_path / "nan.pt")
    with pytest.raises(UserError, match=r"nan\.pt: weight 'layer_norm\.weight' has 32 NaN or "
                                        r"infinite values"):
        load_checkpoint(tmp_path / "nan.pt")
    from tera.cli import main

    assert main(["extract", "-k", str(tmp_path / "nan.pt"), str(FLAC), "-o",
                 str(tmp_path / "x.npz")]) == 2
    assert "NaN or infinite" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.parametrize("call", ["bytearray", "bytes", "ndarray"])
def test_allowed_callables_with_absurd_arguments_are_refused(tmp_path, call):
    """`bytearray(10**15)` is on torch's weights_only allow-list: refused before loading."""
    import numpy as np

    class Payload:
        def __reduce__(self):
            if call == "ndarray":
                return np.ndarray, ((10**6, 10**6),)
            return {"bytearray": bytearray, "bytes": bytes}[call], (10**15,)

    for protocol, path in ((2, tmp_path / "plain.pt"), (None, tmp_path / "zip.pt")):
        if protocol is None:
            torch.save({"cfg": {"model": {}}, "model": {}, "x": Payload()}, path)
        else:
            path.write_bytes(pickle.dumps({"cfg": {"model": {}}, "model": {}, "x": Payload()},
                                          protocol=protocol))
        with pytest.raises(UserError, match=rf"{path.name}: not a checkpoint tera-speech can "
                                            r"read safely: refusing to unpickle .*absurd"):
            load_checkpoint(path)


def test_exports_are_readable_like_ordinary_files(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        ckpt = load_checkpoint(S3PRL)
        save_checkpoint(ckpt, tmp_path / "s.pt", "s3prl")
        save_checkpoint(ckpt, tmp_path / "st", "safetensors")
    finally:
        os.umask(umask)
    for path in (tmp_path / "s.pt", *sorted((tmp_path / "st").iterdir())):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_an_unreadable_checkpoint_is_one_line(tmp_path, monkeypatch, capsys):
    """Permission denied (simulated: the tests may run as root, who reads anything)."""
    import builtins

    from tera.cli import main

    real_open = builtins.open

    def denied(file, *args, **kwargs):
        if str(file).endswith("locked.pt"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    (tmp_path / "locked.pt").write_bytes(S3PRL.read_bytes())
    monkeypatch.setattr(builtins, "open", denied)
    assert main(["info", str(tmp_path / "locked.pt")]) == 2
    assert capsys.readouterr().err == (f"tera info: error: {tmp_path / 'locked.pt'}: cannot "
                                       "read: permission denied\n")


# --- bounded work and memory: the same for every reader -------------------------------------


def _readers():
    """How each command reads a checkpoint: `tera info` / `tera convert`, resuming
    `tera pretrain`, and the upstream of `tera downstream`."""
    from tera.checkpoint.training import read_training_checkpoint
    from tera.upstream import load_upstream

    return {"info/convert": load_checkpoint, "pretrain resume": read_training_checkpoint,
            "downstream upstream": lambda path: load_upstream("tera2", path)}


@pytest.mark.parametrize("reader", ["info/convert", "pretrain resume", "downstream upstream"])
@pytest.mark.parametrize("craft, reason", [
    ("shared_structure", "shared parts expand to more than"),
    ("huge_buffers", r"refusing to unpickle builtins\.bytearray\(1073741824\): an absurd"),
    ("deep_nesting", "nested deeper than 100 levels"),
    ("self_containing", "a structure that contains itself"),
    ("wrong_arguments", "TypeError"),
])
def test_crafted_checkpoints_are_refused_in_bounded_memory(tmp_path, reader, craft, reason):
    """Each refused with one line, the load never holding 100 MB (tracemalloc sees every
    Python allocation, bytearray's included)."""
    import tracemalloc

    from . import crafted

    path = getattr(crafted, craft)(tmp_path / f"{craft}.pt")
    assert path.stat().st_size < 250_000  # small files, unbounded asks
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=rf"{craft}\.pt: not a checkpoint tera-speech can "
                                            rf"read safely: .*{reason}") as refused:
            _readers()[reader](path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20, f"{peak / 2**20:.0f} MiB"
    assert "\n" not in str(refused.value)


def test_the_call_budget_is_shared_by_all_calls_of_a_file(tmp_path):
    """Three buffers of 40 MiB: each small enough alone, refused together at the second."""
    import tracemalloc

    from . import crafted

    path = crafted.huge_buffers(tmp_path / "three.pt", size=40 * 2**20)
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=r"builtins\.bytearray\(41943040\): an absurd"):
            load_checkpoint(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20, f"{peak / 2**20:.0f} MiB"
