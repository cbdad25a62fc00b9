"""Coming from the fairseq fork and s3prl: the fork's config files and command lines work as
they are (pre-training from its Hydra files, `task.label_dir`, `-u tera2_local`, s3prl's
recipe paths, `convert.py CKPT --output_dir=DIR`).

The YAML files under tests/data/fork_config are written for these tests in the fork's layout
(`scripts/check_fork_configs.py` runs the same comparison on the fork's own folder)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tera.checkpoint import load_checkpoint
from tera.cli import main
from tera.errors import UserError
from tera.model.config import TeraConfig
from tera.presets import canonical_name, model_config
from tera.pretrain.config import load_config

from .helpers import best_dev_step
from .paths import COMPAT, FLAC

FORK = Path(__file__).parent / "data" / "fork_config" / "pretrain"
FORK_FILES = sorted(FORK.rglob("*.yaml"))
COMMAND_LINE = ["task.data=/data/960", "task.label_dir=/labels/960"]
MODEL_FIELDS = {f.name for f in dataclasses.fields(TeraConfig)} - {"extra"}
# After 6 steps, the upstream in s3prl's -o syntax.
FEW_STEPS = ("config.runner.total_steps=6,,config.runner.eval_step=3,,"
             "config.runner.save_step=3,,config.runner.log_step=3")


def settings(cfg) -> dict:
    """What a run does: every section but logging and checkpoint intervals; the model as
    the model it builds."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    model = model_config(cfg).to_dict()
    plain["model"] = {k: v for k, v in model.items() if k in MODEL_FIELDS}
    return {section: plain[section] for section in ("model", "task", "dataset", "criterion",
                                                     "optimization", "optimizer",
                                                     "lr_scheduler")}


@pytest.mark.parametrize("path", FORK_FILES, ids=lambda p: p.stem)
def test_fork_files_resolve_to_the_preset_of_the_same_name(path, capsys):
    fork = load_config(path.stem, path.parent, COMMAND_LINE)
    ignored = capsys.readouterr().err.strip().splitlines()
    preset = load_config(canonical_name(path.stem), None, COMMAND_LINE[:1])
    assert settings(fork) == settings(preset)
    assert fork.common.preset == preset.common.preset == canonical_name(path.stem)
    assert fork.checkpoint == preset.checkpoint
    assert isinstance(fork.optimization.lr, float) and list(fork.optimizer.adam_betas) == \
        [0.9, 0.98]
    # the keys tera-speech does not use are named once, in one line, with why
    assert len(ignored) == 1 and ignored[0].startswith("tera pretrain: ignoring keys")
    for key in ("task.label_dir, task.labels (TERA2 reconstructs MFCC", "hydra.*",
                "distributed_training.ddp_backend", "model.untie_final_proj"):
        assert key in ignored[0]
    assert "label_dir" not in fork.task and "hydra" not in fork


def test_fork_file_below_the_config_dir_and_with_its_suffix():
    a = load_config("exp/tera_slim_200per_50flops_librispeech", FORK, COMMAND_LINE)
    b = load_config("tera_slim_200per_50flops_librispeech.yaml", FORK / "exp", COMMAND_LINE)
    assert settings(a) == settings(b) and a.model.encoder_layers == 15


def test_label_overrides_are_ignored_with_our_presets_too(capsys):
    cfg = load_config("tiny", None, ["task.data=/d", "task.label_dir=/l", "+task.labels=[km]",
                                     "hydra.run.dir=x"])
    line = capsys.readouterr().err.strip()
    assert "task.label_dir, task.labels" in line and "hydra.*" in line
    assert "labels" not in cfg.task
    load_config("tiny", None, ["task.data=/d"])
    assert capsys.readouterr().err == ""  # nothing ignored: nothing said


@pytest.mark.parametrize("change, error", [
    (("lr: [0.0005]", "lr: [0.0005, 0.0001]"), "per-epoch learning rates"),
    (("_name: adam", "_name: sgd"), "optimizer._name: 'sgd' is not supported"),
    (("pred_nomask_weight: 0.0", "pred_nomask_weight: 0.5"), "pred_nomask_weight"),
    (("adam_betas: (0.9,0.98)", "adam_betas: (0.9)"), "adam_betas"),
    (("label_rate: ${model.label_rate}", "label_rate: ${model.rate}"), "interpolation"),
    (("  warmup_updates: 32000", "  warmup_updates: 32000\n  warmup_update: 1"),
     "unknown config key 'lr_scheduler.warmup_update'"),
])
def test_what_cannot_be_honoured_is_an_error_naming_the_file(tmp_path, change, error):
    text = (FORK / "tera_slim_librispeech.yaml").read_text()
    assert change[0] in text
    (tmp_path / "mine.yaml").write_text(text.replace(change[0], change[1], 1))
    with pytest.raises(UserError, match=error) as caught:
        load_config("mine", tmp_path, COMMAND_LINE)
    assert "mine.yaml" in str(caught.value) and "\n" not in str(caught.value)


def test_pretraining_from_the_fork_file_with_label_dir(manifest, tmp_path, capsys):
    audio = manifest
    save_dir = tmp_path / "run"
    code = main([
        "pretrain", "--config-dir", str(FORK / "exp"),
        "--config-name", "tera_slim_200per_50flops_librispeech",
        f"task.data={audio}", "task.label_dir=/path/to/label_dir/960",
        f"checkpoint.save_dir={save_dir}",
        # shrunk to seconds: the fork's file gives everything else
        "model.encoder_layers=1", "model.encoder_embed_dim=96", "model.encoder_ffn_embed_dim=128",
        "model.conv_feature_layers='[(64,10,5)] + [(64,3,2)] * 4 + [(64,2,2)] * 2'",
        "model.conv_pos=16", "task.max_sample_size=16000", "task.min_sample_size=4000",
        "dataset.max_tokens=40000", "dataset.num_workers=0", "common.amp=fp32",
        "optimization.max_update=2", "common.log_interval=1",
    ])
    assert code == 0
    err = capsys.readouterr().err
    assert sum("ignoring keys" in line for line in err.splitlines()) == 1
    saved = OmegaConf.load(save_dir / "config.yaml")
    assert saved.common.preset == "slim_200per_50flops"
    assert saved.optimization.lr == 0.0004 and saved.model.encoder_attention_heads == 12
    ckpt = load_checkpoint(save_dir / "checkpoint_last.pt")
    assert ckpt.metadata["update"] == 2 and ckpt.metadata["preset"] == "slim_200per_50flops"


def test_s3prl_pr_command_with_tera2_local(small_corpus, tmp_path, capsys):
    expdir = tmp_path / "pr_tera2"
    code = main(["downstream", "-m", "train", "-d", "ctc", "-c", "downstream/ctc/libriphone.yaml",
                 "-u", "tera2_local", "-k", str(COMPAT / "tera2_s3prl_converted.pt"),
                 "-p", str(expdir), "-o", f"config.optimizer.lr=1.0e-3,,{FEW_STEPS}",
                 "--data-root", str(small_corpus)])
    assert code == 0
    results = json.loads((expdir / "results.json").read_text())
    assert results["task"] == "pr" and results["upstream"] == "tera2"
    assert results["step"] == best_dev_step(expdir / "log.jsonl", "per", False)  # the one tested
    assert len(results["layer_weights"]) == 4
    assert OmegaConf.load(expdir / "config.yaml").optimizer.lr == 1.0e-3
    capsys.readouterr()
    # s3prl's names need the checkpoint; a recipe path of another task is refused
    assert main(["downstream", "-d", "pr", "-u", "tera2_local", "-p", str(tmp_path / "x")]) == 2
    assert "no -k was given" in capsys.readouterr().err
    assert main(["downstream", "-d", "asr", "-c", "downstream/ctc/libriphone.yaml",
                 "-p", str(tmp_path / "y"), "--data-root", str(small_corpus)]) == 2
    assert "s3prl's pr recipe, not one for asr" in capsys.readouterr().err
    assert main(["downstream", "-d", "ks", "-c", str(tmp_path / "missing.yaml"),
                 "-p", str(tmp_path / "z"), "--data-root", str(small_corpus)]) == 2
    assert "no such recipe file" in capsys.readouterr().err


def test_extract_takes_s3prl_upstream_names(tmp_path):
    out = tmp_path / "feats.npz"
    assert main(["extract", "-u", "tera2_local", "-k", str(COMPAT / "tera2_s3prl_converted.pt"),
                 "--layer", "all", str(FLAC), "-o", str(out)]) == 0
    import numpy as np

    assert np.load(out)[FLAC.stem].shape == (4, 596, 48)


def test_s3prl_recipe_paths_name_the_built_in_recipes():
    from tera.downstream.recipe import S3PRL_RECIPES, recipe_file, recipe_path

    for path, task in S3PRL_RECIPES.items():
        assert recipe_file(task, path) == recipe_path(task)
        assert recipe_file(task, f"/home/me/s3prl/s3prl/{path}") == recipe_path(task)


def test_convert_with_output_dir_as_s3prl_convert_py(tmp_path, capsys):
    source = COMPAT / "tera2_fairseq.pt"
    out = tmp_path / "converted_ckpts"
    assert main(["convert", str(source), f"--output_dir={out}"]) == 0
    written = out / "tera2_fairseq.pt"
    raw = torch.load(written, weights_only=True)
    assert {"task_cfg", "model_cfg", "model_weight", "dictionaries_symbols"} <= set(raw)
    original, converted = load_checkpoint(source), load_checkpoint(written)
    assert converted.source_format == "s3prl"
    for name, tensor in original.model.state_dict().items():
        assert torch.equal(converted.model.state_dict()[name], tensor)
    capsys.readouterr()
    assert main(["convert", str(source)]) == 2
    assert "--output_dir" in capsys.readouterr().err
