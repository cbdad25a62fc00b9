"""Plain helpers shared by test modules: a small model config, the tiny pre-training
arguments, the lines a command printed on stderr, the comparison of two checkpoints, and the
step of a downstream run's best dev checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tera.checkpoint import LoadedCheckpoint
from tera.model.config import TeraConfig

SMALL_CONV = "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2"

# A one-layer tiny pre-training on a few short cuts, logging and validating often.
TINY = ["model.encoder_layers=1", "task.max_sample_size=16000", "task.min_sample_size=4000",
        "dataset.max_tokens=40000", "dataset.num_workers=0", "common.log_interval=1",
        "lr_scheduler.warmup_updates=2", "common.amp=fp32", "dataset.validate_interval_updates=3"]


def small_config(**overrides) -> TeraConfig:
    """A two-layer model of width 48 without dropout, masking 80 % of the frames."""
    values = dict(
        encoder_layers=2, encoder_embed_dim=48, encoder_ffn_embed_dim=96,
        encoder_attention_heads=4, conv_feature_layers=SMALL_CONV, conv_pos=16,
        conv_pos_groups=4, dropout=0.0, attention_dropout=0.0, encoder_layerdrop=0.0,
        dropout_input=0.0, mask_prob=0.8,
    )
    values.update(overrides)
    return TeraConfig(**values)


def pretrain_args(manifest, save_dir, *extra: str) -> list[str]:
    """`tera pretrain` arguments for the tiny preset on `manifest`, saving to `save_dir`."""
    return ["pretrain", "--config-name", "tiny", f"task.data={manifest}",
            f"checkpoint.save_dir={save_dir}", *TINY, *extra]


def error_lines(capsys) -> list[str]:
    """The non-blank lines written to stderr since the last read."""
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


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


def best_dev_step(log: Path, metric: str, higher_is_better: bool) -> int:
    """The step of the best dev checkpoint, from the dev values a downstream run's
    `log.jsonl` holds (`dev_<metric>`): the first step reaching the best value (a later
    checkpoint replaces it only by beating it)."""
    dev = [(r["step"], r[f"dev_{metric}"]) for r in map(json.loads, log.read_text().splitlines())
           if f"dev_{metric}" in r]
    best = (max if higher_is_better else min)(value for _, value in dev)
    return min(step for step, value in dev if value == best)
