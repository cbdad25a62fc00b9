"""Pre-training as the fairseq fork trains: guards against non-finite updates, fairseq's Adam
and LayerDrop behaviour, and batches cut and sized as fairseq cuts and sizes them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from tera.audio import load_audio
from tera.cli import main
from tera.errors import UserError
from tera.pretrain.config import load_config
from tera.pretrain.data import CroppedAudio, size_ordered, token_batches
from tera.pretrain.manifest import write_manifest
from tera.pretrain.optim import FairseqAdam
from tera.pretrain.trainer import Trainer

from .fork_reference import fairseq_batch_by_size, fairseq_ordered_indices, update_losses
from .helpers import error_lines, pretrain_args
from .paths import FLAC

# --- guards: a NaN in a batch, after the audio checks passed --------------------------------


def nan_in_batches(monkeypatch, numbers: set[int] | None, start: int = 1) -> list[int]:
    """Make the training batches numbered `numbers` (1-based, in the order read; None: every
    batch from `start` on) hold a NaN sample; returns the list of batch numbers seen."""
    collate = CroppedAudio.collate
    seen: list[int] = []

    def poisoned(self, items):
        waves, lengths = collate(self, items)
        if self.random_crop:  # the training set (validation crops from 0)
            seen.append(len(seen) + 1)
            if (numbers is None and seen[-1] >= start) or (numbers and seen[-1] in numbers):
                waves[0, 100] = float("nan")
        return waves, lengths

    monkeypatch.setattr(CroppedAudio, "collate", poisoned)
    return seen


def last_line(capsys) -> str:
    """The error line that ends the run (the log lines of its updates come before it)."""
    lines = error_lines(capsys)
    assert not any("Traceback" in line for line in lines)
    assert all(line.startswith("{") for line in lines[:-1]), lines  # JSON log lines only
    return lines[-1]


def finite_weights(path) -> bool:
    weights = torch.load(path, weights_only=True)["model"]
    return all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


def test_a_nan_in_float32_stops_with_one_line_and_keeps_the_last_checkpoint(
        manifest, tmp_path, capsys, monkeypatch):
    nan_in_batches(monkeypatch, {3})
    args = pretrain_args(manifest, tmp_path, "optimization.max_update=6",
                         "checkpoint.save_interval_updates=1")
    assert main(args) == 2
    line = last_line(capsys)
    assert line.startswith("tera pretrain: error: update 3 (epoch 1, files ")
    assert "the loss is nan and the gradient norm is nan; stopped without applying it: " \
           f"{tmp_path / 'checkpoint_last.pt'} holds update 2" in line
    state = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)
    assert state["extra_state"]["tera"]["update"] == 2
    assert finite_weights(tmp_path / "checkpoint_last.pt")


def test_with_a_loss_scaler_a_nan_update_is_skipped_and_not_counted(manifest, tmp_path,
                                                                    monkeypatch):
    seen = nan_in_batches(monkeypatch, {2})
    cfg = load_config("tiny", overrides=pretrain_args(manifest, tmp_path)[3:] + [
        "common.amp=fp16", "optimization.max_update=4", "dataset.validate_interval_updates=0"])
    trainer = Trainer(cfg)
    assert trainer.scaler.is_enabled()
    assert trainer.train()["update"] == 4
    assert seen == [1, 2, 3, 4, 5]  # 5 batches for 4 updates: the second was skipped
    assert trainer.scaler.get_scale() == 2.0**15  # halved once, from 2**16
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").open()]
    log = [r for r in log if "skipped_updates" in r]  # the training lines
    assert [r["update"] for r in log] == [1, 2, 3, 4]
    assert [r["skipped_updates"] for r in log] == [0, 1, 0, 0]
    assert all(math.isfinite(r["loss"]) for r in log)
    assert finite_weights(tmp_path / "checkpoint_last.pt")


def test_too_many_skipped_updates_in_a_row_stop_with_one_line(manifest, tmp_path, capsys,
                                                              monkeypatch):
    nan_in_batches(monkeypatch, None, start=2)
    args = pretrain_args(manifest, tmp_path, "common.amp=bf16", "optimization.max_update=6",
                         "common.max_consecutive_skips=3")
    assert main(args) == 2
    line = last_line(capsys)
    assert line.startswith("tera pretrain: error: update 2 (epoch ")
    assert "3 updates in a row skipped (common.max_consecutive_skips = 3), stopped: no " \
           "checkpoint_last.pt was written yet" in line


def test_the_new_settings_are_checked_before_a_run(manifest, tmp_path):
    def config(*extra: str):
        return load_config("tiny", overrides=pretrain_args(manifest, tmp_path, *extra)[3:])

    assert config().optimizer.adam_variant == "fairseq"
    with pytest.raises(UserError, match="optimizer.adam_variant='adamw': expected one of "
                                        "fairseq, torch"):
        config("optimizer.adam_variant=adamw")
    with pytest.raises(UserError, match="required_batch_size_multiple=0: expected an integer "
                                        "of at least 1"):
        config("dataset.required_batch_size_multiple=0")
    with pytest.raises(UserError, match="common.max_consecutive_skips=0: expected an integer "
                                        "of at least 1"):
        config("common.max_consecutive_skips=0")


# --- fairseq's Adam ------------------------------------------------------------------------


def test_fairseq_adam_adds_eps_before_the_bias_correction():
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = FairseqAdam([weight], lr=0.1, betas=(0.9, 0.98), eps=1e-2, weight_decay=0.5)
    grads = [torch.tensor([0.03, -0.5]), torch.tensor([0.01, 0.2])]
    expected, m, v = torch.tensor([1.0, -2.0]), torch.zeros(2), torch.zeros(2)
    for step, grad in enumerate(grads, start=1):
        weight.grad = grad.clone()
        optimizer.step()
        m, v = 0.9 * m + 0.1 * grad, 0.98 * v + 0.02 * grad**2
        expected = expected * (1 - 0.1 * 0.5)
        expected -= 0.1 * math.sqrt(1 - 0.98**step) / (1 - 0.9**step) * m / (v.sqrt() + 1e-2)
        torch.testing.assert_close(weight.detach(), expected, rtol=1e-6, atol=1e-7)
    # torch's AdamW adds eps after the bias correction: a different first step
    fairseq_first, torch_first = (torch.nn.Parameter(torch.tensor([1.0, -2.0])) for _ in "ab")
    for weights, make in ((fairseq_first, FairseqAdam), (torch_first, torch.optim.AdamW)):
        weights.grad = grads[0].clone()
        make([weights], lr=0.1, betas=(0.9, 0.98), eps=1e-2, weight_decay=0.5).step()
    assert not torch.allclose(fairseq_first, torch_first, rtol=1e-3)


def test_a_layer_skipped_by_layerdrop_still_moves():
    """The fork's fp16 / no_c10d setup zero-fills missing gradients: momentum and weight
    decay still act on a layer LayerDrop skipped."""
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = FairseqAdam([weight], lr=0.1, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    weight.grad = torch.full((3,), 0.5)
    optimizer.step()
    after_first = weight.detach().clone()
    weight.grad = None  # skipped by LayerDrop in the second update
    optimizer.step()
    assert optimizer.state[weight]["step"] == 2
    assert (weight.detach() < after_first).all()  # moved on its momentum
    torch_weight = torch.nn.Parameter(torch.ones(3))
    adamw = torch.optim.AdamW([torch_weight], lr=0.1, betas=(0.9, 0.98), eps=1e-6,
                              weight_decay=0.01)
    torch_weight.grad = torch.full((3,), 0.5)
    adamw.step()
    kept = torch_weight.detach().clone()
    torch_weight.grad = None
    adamw.step()
    assert torch.equal(torch_weight.detach(), kept)  # torch's Adam leaves it alone


def test_updates_match_a_port_of_fairseqs_recipe():
    """The comparison benchmarks/fork_parity.py prints (tests/fork_reference.py), small: tiny
    with LayerDrop on (so skipped layers' zero-filled steps count), past the warm-up so the
    schedule's numbering shows."""
    result = update_losses(4, 48000, preset="tiny", overrides=(
        "model.encoder_layerdrop=0.3", "criterion.target_norm=none", "task.max_sample_size=16000",
        "lr_scheduler.warmup_updates=2", "optimization.lr=0.01"))
    rows = result["rows"]
    assert rows[0]["lr_fork"] == rows[0]["lr_tera"] == 0.0
    assert [r["lr_tera"] for r in rows] == pytest.approx([r["lr_fork"] for r in rows])
    assert result["max_gap_tera"] < 1e-5
    assert result["max_gap_before"] > 1e-4  # what the comparison can tell apart


# --- batches as fairseq makes them ---------------------------------------------------------


def write_audio(folder, lengths: list[int]) -> None:
    folder.mkdir(parents=True)
    wave = load_audio(FLAC).numpy()
    for i, length in enumerate(lengths):
        sf.write(folder / f"u{i:02d}.wav", np.resize(wave, length), 16000)


def slim_trainer(tmp_path, lengths: list[int], *extra: str) -> Trainer:
    write_audio(tmp_path / "audio", lengths)
    write_manifest(tmp_path / "audio", tmp_path / "manifest", valid_percent=0.01, seed=0)
    return Trainer(load_config("slim", overrides=[
        f"task.data={tmp_path / 'manifest'}", f"checkpoint.save_dir={tmp_path / 'run'}",
        "dataset.num_workers=0", "common.device=cpu", *extra]))


def test_equal_six_second_utterances_make_batches_of_eight_with_slim(tmp_path):
    trainer = slim_trainer(tmp_path, [96000] * 20)
    assert len(trainer.train_set) == 20
    # 1400000 // 96000 = 14 fit; fairseq rounds down to a multiple of 8 and drops the rest
    assert [len(b) for b in trainer.sampler.batches] == [8, 8]
    waves, lengths = next(trainer._batches())
    assert waves.shape == (8, 96000) and lengths.tolist() == [96000] * 8


def test_a_batch_is_cut_to_its_shortest_utterance_at_a_random_offset(tmp_path):
    lengths = [40000 + 4000 * i for i in range(10)]
    trainer = slim_trainer(tmp_path, lengths, "dataset.max_tokens=300000")
    batch = trainer.sampler.batches[trainer.sampler.epoch_order(0)[0]]
    waves, cut = next(trainer._batches())
    shortest = min(trainer.train_set.sizes[batch])
    assert waves.shape == (len(batch), shortest) and cut.tolist() == [shortest] * len(batch)
    offsets = set()
    for row, index in zip(waves, batch):
        whole = load_audio(trainer.train_set.root / trainer.train_set.files[index])
        candidates = torch.nonzero(whole[: len(whole) - shortest + 1] == row[0]).flatten()
        starts = [s for s in candidates.tolist() if torch.equal(whole[s : s + shortest], row)]
        assert starts, index
        offsets.add(starts[0])
    assert len(offsets) > 1  # not all from the start
    padded = slim_trainer(tmp_path / "pad", lengths, "dataset.max_tokens=300000",
                          "task.pad_audio=true")
    batch = padded.sampler.batches[padded.sampler.epoch_order(0)[0]]
    waves, cut = next(padded._batches())
    assert waves.shape[1] == max(padded.train_set.sizes[batch])
    assert sorted(cut.tolist()) == sorted(padded.train_set.sizes[batch].tolist())


def librispeech_like_sizes(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    seconds = np.clip(rng.normal(12.3, 3.8, count), 1.3, 35.2)
    return (seconds * 16000).astype(np.int64)


@pytest.mark.parametrize("pad_audio", [False, True])
def test_batches_equal_a_port_of_fairseqs_batch_by_size(pad_audio):
    sizes = librispeech_like_sizes(3000, seed=5)
    sizes[:40] = 96000  # a run of ties, broken at random by both
    cap = 250000
    num_tokens = sizes if pad_audio else np.minimum(sizes, cap)
    ours = token_batches(size_ordered(sizes, 1337), num_tokens, 1400000, multiple=8)
    order = fairseq_ordered_indices(sizes, seed=1337)
    theirs = fairseq_batch_by_size(order, num_tokens, 1400000, 8)
    assert [list(b) for b in theirs] == list(ours)

