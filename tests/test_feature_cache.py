"""The feature cache shared by runs: no feature computed twice across runs, a size budget
kept by evicting the least recently used entries, and `tera cache ls` / `prune`."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tera.cli import main
from tera.corpora import speech_commands
from tera.downstream.features import FeatureCache, cache_entries, write_entry
from tera.downstream.runner import run
from tera.runs.files import temporary_files
from tera.upstream import FbankUpstream, load_upstream

FEW_STEPS = ["runner.total_steps=6", "runner.eval_step=3", "runner.save_step=3",
             "runner.log_step=3"]
CPU = torch.device("cpu")


@pytest.fixture
def computed(monkeypatch) -> list[str]:
    """A fingerprint of every waveform the FBANK upstream computes features for."""
    seen: list[str] = []
    forward = FbankUpstream.forward

    def counted(self, wavs):  # noqa: ANN001, ANN202
        seen.extend(hashlib.sha256(w.numpy().tobytes()).hexdigest() for w in wavs)
        return forward(self, wavs)

    monkeypatch.setattr(FbankUpstream, "forward", counted)
    return seen


def test_later_runs_on_the_same_upstream_and_corpus_compute_no_feature_again(
        small_corpus, tmp_path, computed):
    cache = tmp_path / "cache"
    first = run("pr", upstream="fbank", expdir=tmp_path / "pr", data_root=small_corpus,
                overrides=FEW_STEPS, cache_dir=cache)
    assert computed and len(set(computed)) == len(computed)
    assert first["cache"]["misses"] == len(computed)
    after_first = len(computed)
    # another seed, a resume, an evaluation and another task on the same split: each a new
    # FeatureCache (nothing in memory), all served by the folder
    run("pr", upstream="fbank", expdir=tmp_path / "pr_seed2", data_root=small_corpus,
        overrides=FEW_STEPS, cache_dir=cache, seed=2)
    run("pr", expdir=tmp_path / "pr", init_ckpt=tmp_path / "pr" / "states-6.ckpt",
        overrides=["runner.total_steps=9"], cache_dir=cache)
    evaluated = run("pr", mode="evaluate", init_ckpt=tmp_path / "pr" / "dev-best.ckpt",
                    cache_dir=cache)
    asr = run("asr", upstream="fbank", expdir=tmp_path / "asr", data_root=small_corpus,
              overrides=FEW_STEPS + ["downstream_expert.modelrc.hidden_size=32",
                                     "downstream_expert.modelrc.project_dim=32"],
              cache_dir=cache)
    assert len(computed) == after_first, "a later run computed features again"
    assert evaluated["cache"]["misses"] == asr["cache"]["misses"] == 0
    assert asr["cache"]["hits"] > 0


def test_a_changed_audio_file_is_computed_again(small_corpus, tmp_path, computed):
    utts = speech_commands.load_split(small_corpus / "speech_commands", "valid")[:1]
    copy = tmp_path / "copy.wav"
    shutil.copy(utts[0].path, copy)
    utt = replace(utts[0], path=copy)
    upstream = load_upstream("fbank")
    FeatureCache(upstream, tmp_path / "cache").states([utt], CPU)
    FeatureCache(upstream, tmp_path / "cache").states([utt], CPU)
    assert len(computed) == 1
    os.utime(copy, ns=(0, 10**18))  # re-recorded: same path, other content
    FeatureCache(upstream, tmp_path / "cache").states([utt], CPU)
    assert len(computed) == 2


def _entry_bytes(folder: Path) -> int:
    return sum(entry.size for entry in cache_entries(folder))


def test_the_cache_keeps_to_its_budget_evicting_the_least_recently_used(small_corpus,
                                                                       tmp_path):
    utts = speech_commands.load_split(small_corpus / "speech_commands", "train")[:12]
    upstream = load_upstream("fbank")
    folder = tmp_path / "cache"
    probe = FeatureCache(upstream, tmp_path / "probe")
    probe.states(utts[:1], CPU)
    entry_size = _entry_bytes(tmp_path / "probe")
    budget = 4.5 * entry_size

    def cache() -> FeatureCache:  # memory 0: every use reads (and touches) the file
        return FeatureCache(upstream, folder, max_memory_bytes=0, budget_bytes=budget)

    def kept() -> list[int]:  # which utterances have an entry
        names = {entry.path.stem for entry in cache_entries(folder)}
        return [i for i, utt in enumerate(utts) if cache()._key(utt) in names]

    for utt in utts[:4]:
        cache().states([utt], CPU)
        time.sleep(0.01)
    assert kept() == [0, 1, 2, 3]
    used = cache()
    used.states(utts[:1], CPU)  # the oldest entry used again: now the most recent
    assert used.hits == 1
    time.sleep(0.01)
    cache().states(utts[4:5], CPU)  # over the budget: the least recently used go
    assert 0 in kept() and 1 not in kept() and 4 in kept()
    used_order = [1, 2, 3, 0, 4]  # least recently used first
    for index in range(5, len(utts)):
        time.sleep(0.01)
        cache().states([utts[index]], CPU)
        used_order.append(index)
        assert _entry_bytes(folder) <= budget
        survivors = kept()  # the most recently used, whatever was written when
        assert set(survivors) == set(used_order[-len(survivors):])
    assert len(kept()) >= 3 and not temporary_files(folder)


def test_an_entry_alone_over_the_budget_is_not_written(small_corpus, tmp_path):
    utts = speech_commands.load_split(small_corpus / "speech_commands", "valid")[:2]
    cache = FeatureCache(load_upstream("fbank"), tmp_path, budget_bytes=100)
    cache.states(utts, CPU)
    assert not cache_entries(tmp_path) and len(cache.memory) == 2


def test_an_entry_evicted_by_another_process_is_computed_again(small_corpus, tmp_path,
                                                               computed):
    utts = speech_commands.load_split(small_corpus / "speech_commands", "valid")[:3]
    upstream = load_upstream("fbank")
    first = FeatureCache(upstream, tmp_path, max_memory_bytes=0).states(utts, CPU)
    cache_entries(tmp_path)[0].path.unlink()
    again = FeatureCache(upstream, tmp_path, max_memory_bytes=0)
    for a, b in zip(first, again.states(utts, CPU)):
        assert torch.equal(a, b)
    assert again.misses == 1 and len(cache_entries(tmp_path)) == 3


def _fill(folder: str, budget: float, start: int) -> None:
    for i in range(start, start + 30):
        write_entry(Path(folder), Path(folder) / "up-x" / f"{i % 7:02d}" / f"{i}.pt",
                    torch.full((1, 50 + i, 8), float(i), dtype=torch.float16), budget)


def test_two_processes_filling_one_cache_keep_it_whole_and_within_budget(tmp_path):
    import multiprocessing

    budget = 12 * 1900.0
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_fill, args=(str(tmp_path), budget, start))
               for start in (0, 20)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    entries = cache_entries(tmp_path)
    assert entries and sum(entry.size for entry in entries) <= budget
    for entry in entries:  # every file whole, none torn by the other writer
        i = int(entry.path.stem)
        assert torch.equal(torch.load(entry.path, weights_only=True),
                           torch.full((1, 50 + i, 8), float(i), dtype=torch.float16))
    assert not temporary_files(tmp_path)


def test_cache_ls_and_prune_from_the_command_line(small_corpus, tmp_path, capsys,
                                                  monkeypatch):
    monkeypatch.setenv("TERA_SPEECH_HOME", str(tmp_path / "home"))
    utts = speech_commands.load_split(small_corpus / "speech_commands", "valid")[:6]
    default = tmp_path / "home" / "features"
    fbank = FeatureCache(load_upstream("fbank"), default)
    fbank.states(utts, CPU)
    FeatureCache(load_upstream("tera2", preset="tiny"), default).states(utts[:2], CPU)
    capsys.readouterr()
    assert main(["cache", "ls"]) == 0
    out = capsys.readouterr().out
    assert f"feature cache {default}: 8 entries" in out
    assert f"  fbank-{fbank.identity}: 6 entries" in out and "  tera2-" in out
    assert "last used 2" in out
    # prune to about half: the least recently used go, what is left fits
    half = _entry_bytes(default) / 2
    time.sleep(0.01)
    FeatureCache(load_upstream("fbank"), default, max_memory_bytes=0).states(utts[:2], CPU)
    assert main(["cache", "prune", "--max-gb", str(half / 1e9)]) == 0
    assert "entries deleted" in capsys.readouterr().out
    assert 0 < _entry_bytes(default) <= half
    survivors = FeatureCache(load_upstream("fbank"), default)
    survivors.states(utts[:2], CPU)
    assert survivors.hits == 2
    assert main(["cache", "prune", "--all", "--cache-dir", str(default)]) == 0
    assert not cache_entries(default) and not list(default.rglob("*.pt"))
    assert main(["cache", "prune", "--max-gb", "-1"]) == 2
    assert "--max-gb -1.0: expected a finite number" in capsys.readouterr().err


def test_a_writer_waits_while_another_holds_the_cache_lock(tmp_path):
    import threading

    from tera.downstream.features import locked_usage

    # flock excludes another open of the file in this process as in another process
    entry = tmp_path / "up-x" / "00" / "0.pt"
    writer = threading.Thread(target=write_entry,
                              args=(tmp_path, entry, torch.zeros(1, 4, 8), 1e6))
    with locked_usage(tmp_path) as usage:
        writer.start()
        time.sleep(0.5)
        assert not entry.exists() and usage.bytes == 0  # the writer waits for the lock
    writer.join(60)
    assert entry.is_file()
    with locked_usage(tmp_path) as usage:
        assert usage.bytes == entry.stat().st_size


def test_a_cache_folder_that_cannot_be_written_leaves_the_features_to_memory(small_corpus,
                                                                           tmp_path, capsys):
    utts = speech_commands.load_split(small_corpus / "speech_commands", "valid")[:2]
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    cache = FeatureCache(load_upstream("fbank"), blocked)
    cache.states(utts, CPU)
    cache.states(utts, CPU)
    assert cache.hits == 2 and cache.misses == 2
    err = capsys.readouterr().err
    assert err.count("features: not cached on disk") == 1 and str(blocked) in err
