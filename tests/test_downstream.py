"""Downstream: metrics against hand-checked cases, the feature cache, batching, and every
task end to end on the small embedded corpus with a tiny upstream."""

from __future__ import annotations

import json
import random

import jiwer
import numpy as np
import pytest
import torch

from tera.cli import main
from tera.corpora import speech_commands
from tera.downstream.bootstrap import read_items
from tera.downstream.features import FeatureCache, batches_by_length
from tera.downstream.metrics import (
    accuracy,
    equal_error_rate,
    error_rate,
    rank_trials,
    token_errors,
)
from tera.downstream.recipe import load_recipe, parse_overrides
from tera.downstream.runner import run
from tera.downstream.tasks import TASK_CLASSES, task_class, task_names
from tera.errors import UserError
from tera.report import superb_table
from tera.upstream import load_upstream

from .helpers import best_dev_step

FEW_STEPS = ["runner.total_steps=6", "runner.eval_step=3", "runner.save_step=3",
             "runner.log_step=3"]


def test_word_error_rate_counts_substitutions_deletions_insertions():
    # ref 6 words; "sat"->"sit" (S), "the" deleted (D), "too" inserted (I): 3 / 6
    errors = token_errors("the cat sat on the mat".split(), "the cat sit on mat too".split())
    assert errors == 3 and error_rate([errors], [6]).tolist() == [0.5]
    pairs = [("a b", "a b"), ("c d e", "")]
    errors = [token_errors(r.split(), h.split()) for r, h in pairs]
    assert errors == [0, 3] and error_rate(errors, [2, 3]).tolist() == [pytest.approx(3 / 5)]
    # weights count an utterance that many times: the second twice -> 6 / 8; only the first
    assert error_rate(errors, [2, 3], np.array([[1, 2], [1, 0]])).tolist() == [0.75, 0.0]


def test_word_errors_are_jiwers():
    rng = random.Random(0)
    for _ in range(300):
        words = [" ".join(rng.choices("abcd", k=rng.randint(1, 8))) for _ in range(2)]
        counted = jiwer.process_words(*words)
        assert token_errors(words[0].split(), words[1].split()) == \
            counted.substitutions + counted.deletions + counted.insertions, words


def test_phone_error_rate_over_tokens():
    # one substitution (b->x), one deletion (d) over 4 phones
    assert token_errors(["a", "b", "c", "d"], ["a", "x", "c"]) == 2
    # an insertion: multi-character tokens count as one
    assert token_errors(("aa", "b"), ["aa", "b", "zh"]) == 1
    assert error_rate([2, 1], [4, 2]).tolist() == [0.5]


def test_accuracy_and_equal_error_rate_at_a_known_crossing():
    # targets 0.9, 0.8, 0.3; non-targets 0.7, 0.2, 0.1: at a threshold in (0.3, 0.7]
    # one target of three is rejected and one non-target of three accepted -> 1/3
    ranked = rank_trials([1, 1, 1, 0, 0, 0], [0.9, 0.8, 0.3, 0.7, 0.2, 0.1])
    assert equal_error_rate(ranked).tolist() == [pytest.approx(1 / 3)]
    assert equal_error_rate(rank_trials([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1])).tolist() == [0.0]
    assert np.isnan(equal_error_rate(rank_trials([1, 1], [0.1, 0.2]))).all()
    assert accuracy([1, 1, 0, 1]).tolist() == [0.75]
    assert accuracy([1, 1, 0, 1], np.array([[0, 0, 1, 1], [1, 1, 0, 0]])).tolist() == [0.5, 1]


def test_every_task_is_found_by_its_name_and_s3prls_and_orders_the_report():
    assert task_names() == ["pr", "ks", "sid", "asr", "asv"]
    for task in TASK_CLASSES:
        assert task_class(task.name) is task
        assert all(task_class(alias) is task for alias in task.aliases)
        assert task.header.startswith(task.name.upper()) and task.corpus_part
        assert task.higher_is_better == (task.metric == "accuracy") and task.seconds_per_step > 0
    assert task_class("ctc") is task_class("libriphone") is task_class("pr")
    assert task_class("sv_voxceleb1").name == "asv"
    with pytest.raises(UserError, match=r"'wer'; choose one of pr, ks, sid, asr, asv \(or "
                       r"s3prl's ctc, libriphone, speech_commands, voxceleb1, sv_voxceleb1\)"):
        task_class("wer")
    assert superb_table([]).splitlines()[0] == (
        "| upstream | PR PER % | KS Acc % | SID Acc % | ASR WER % | ASV EER % | params | "
        "pre-train FLOPs | wall |")


def test_cache_gives_the_features_of_a_recomputation(small_corpus):
    upstream = load_upstream("tera2", preset="tiny")
    utts = speech_commands.load_split(small_corpus / "speech_commands", "valid")[:6]
    cached = FeatureCache(upstream, None, enabled=True)
    first = cached.states(utts, torch.device("cpu"))
    again = cached.states(utts, torch.device("cpu"))
    fresh = FeatureCache(upstream, None, enabled=False).states(utts, torch.device("cpu"))
    assert cached.hits == 6 and cached.misses == 6
    for a, b, c in zip(first, again, fresh):
        assert torch.equal(a, b)
        # float16 whether stored or not: a run's numbers do not depend on the cache
        assert torch.equal(a, c)


def test_cache_spills_to_disk(small_corpus, tmp_path):
    upstream = load_upstream("fbank")
    utts = speech_commands.load_split(small_corpus / "speech_commands", "valid")[:3]
    cache = FeatureCache(upstream, tmp_path, enabled=True, max_memory_bytes=0)
    first = cache.states(utts, torch.device("cpu"))
    assert len(list(tmp_path.rglob("*.pt"))) == 3 and not cache.memory
    for a, b in zip(first, cache.states(utts, torch.device("cpu"))):
        assert torch.equal(a, b)


def test_batches_are_bounded_by_total_length():
    sizes = [16000, 48000, 300000, 20000, 22000, 160000, 90000]
    batches = batches_by_length(sizes, 200000, shuffle=True, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(len(sizes)))
    for batch in batches:
        assert len(batch) * min(max(sizes[i] for i in batch), 200000) <= 200000


def test_overrides_follow_s3prl_syntax():
    assert parse_overrides("config.optimizer.lr=1e-4,,config.runner.total_steps=7") == [
        "optimizer.lr=1e-4", "runner.total_steps=7"]
    cfg = load_recipe("ks", None, None, parse_overrides("config.runner.total_steps=7"))
    assert cfg.runner.total_steps == 7 and cfg.optimizer.lr == 1e-4
    with pytest.raises(UserError, match="runner.total_steps"):
        load_recipe("ks", None, None, ["runner.total_step=7"])


# After 6 steps a CTC head can emit a symbol on most frames: error rates far above 100 %
# (insertions) are possible, bounded by the frame count (a few per reference token here).
@pytest.mark.parametrize("task, low, high", [("ks", 0, 1), ("sid", 0, 1), ("pr", 0, 5),
                                              ("asr", 0, 5), ("asv", 0, 1)])
def test_task_end_to_end(small_corpus, tmp_path, task, low, high):
    expdir = tmp_path / task
    results = run(task, upstream="tera2", upstream_preset="tiny", expdir=expdir,
                  data_root=small_corpus, overrides=FEW_STEPS + (
                      ["downstream_expert.modelrc.hidden_size=32",
                       "downstream_expert.modelrc.project_dim=32"] if task == "asr" else []))
    written = json.loads((expdir / "results.json").read_text())
    assert written["task"] == task and written["split"] == "test"
    assert low <= written["value"] <= high
    best = expdir / ("dev-clean-best.ckpt" if task == "asr" else "dev-best.ckpt")
    assert best.is_file() and (expdir / "states-6.ckpt").is_file()
    # the layer weights reported are those the evaluated checkpoint learned: moved from the
    # uniform start, and the softmax of its saved featurizer weights
    evaluated = torch.load(written["checkpoint"], weights_only=True)
    learned = torch.softmax(evaluated["featurizer"]["weights"], 0)
    assert torch.allclose(torch.tensor(written["layer_weights"]), learned)
    assert not torch.allclose(learned, torch.full((4,), 0.25))
    assert (expdir / "test_predictions.txt").read_text().strip()
    assert (expdir / "config.yaml").is_file() and any((expdir / "tb").iterdir())
    # the per-item statistics give the metric back, and its bootstrap interval holds it
    items = read_items(expdir / "test_items.tsv")
    assert items.value() == pytest.approx(written["value"])
    assert read_items(best.with_name(best.stem + "_items.tsv")).value() == \
        pytest.approx(written["dev_best"])
    bounds = written["interval"]
    assert bounds["low"] <= written["value"] <= bounds["high"]
    assert bounds["unit"] == ("speaker" if task == "asv" else "utterance")
    assert bounds["items"] == len(items) and bounds["level"] == 0.95
    if task == "asv":
        protocol = written["best_test_eer_over_checkpoints"]
        assert "selected on test" in protocol["protocol"]
        # the best of the saved checkpoints' test EERs, and the checkpoint it names
        assert set(protocol["all"]) == {"states-3.ckpt", "states-6.ckpt"}
        assert protocol["value"] == min(protocol["all"].values())
        assert protocol["all"][protocol["checkpoint"]] == protocol["value"]
        assert protocol["interval"]["low"] <= protocol["value"] <= protocol["interval"]["high"]
        assert written["dev_eer_interval"]["low"] <= written["dev_eer"] <= \
            written["dev_eer_interval"]["high"]
        assert len(items) == len((expdir / "test_predictions.txt").read_text().splitlines())
    # evaluating the kept checkpoint reproduces the number
    assert main(["downstream", "-m", "evaluate", "-e", str(best)]) == 0
    again = json.loads((expdir / "results.json").read_text())
    assert again["value"] == pytest.approx(results["value"])


def test_resume_continues_at_the_saved_step(small_corpus, tmp_path):
    run("sid", upstream="fbank", expdir=tmp_path, data_root=small_corpus, overrides=FEW_STEPS)
    first_run = len((tmp_path / "log.jsonl").read_text().splitlines())
    results = run("sid", expdir=tmp_path, init_ckpt=tmp_path / "states-6.ckpt",
                  overrides=["runner.total_steps=9"])
    lines = (tmp_path / "log.jsonl").read_text().splitlines()[first_run:]
    steps = [json.loads(line)["step"] for line in lines]
    assert steps == [9, 9]  # the resumed run starts after 6: one train and one dev record
    assert (tmp_path / "states-9.ckpt").is_file()
    # the test number is the best dev checkpoint's, over both runs
    assert results["step"] == best_dev_step(tmp_path / "log.jsonl", "accuracy", True)


# SID in batches of 2 utterances, 2 per update: an epoch of several updates, stopped inside
# one with losses not logged yet; ASR: dropout, drawn from torch's generator.
@pytest.mark.parametrize("task, overrides", [
    ("sid", ["runner.batch_size=2", "runner.gradient_accumulate_steps=2"]),
    ("asr", ["downstream_expert.modelrc.hidden_size=16", "downstream_expert.modelrc.project_dim=16",
             "runner.batch_samples=100000"])])
def test_a_resumed_run_equals_the_uninterrupted_one(small_corpus, tmp_path, task, overrides):
    steps = ["runner.eval_step=4", "runner.save_step=3", "runner.log_step=2",
             "runner.max_keep=0", *overrides]
    run(task, upstream="fbank", expdir=tmp_path / "whole", data_root=small_corpus,
        overrides=[*steps, "runner.total_steps=12"])
    run(task, upstream="fbank", expdir=tmp_path / "resumed", data_root=small_corpus,
        overrides=[*steps, "runner.total_steps=6"])
    run(task, expdir=tmp_path / "resumed", init_ckpt=tmp_path / "resumed" / "states-6.ckpt",
        overrides=["runner.total_steps=12"])
    whole, resumed = (torch.load(tmp_path / name / "states-12.ckpt", weights_only=True)
                      for name in ("whole", "resumed"))
    for part in ("head", "featurizer"):
        assert whole[part].keys() == resumed[part].keys()
        for name, value in whole[part].items():
            assert torch.equal(value, resumed[part][name]), (part, name)
    losses = [[line for line in (tmp_path / name / "log.jsonl").read_text().splitlines()
               if "train_loss" in line] for name in ("whole", "resumed")]
    assert losses[0] == losses[1]  # the same losses at the same steps


def test_a_checkpoint_for_another_upstream_size_is_one_line(small_corpus, tmp_path, capsys):
    from .paths import COMPAT

    run("sid", upstream="tera2", upstream_preset="tiny", expdir=tmp_path,
        data_root=small_corpus, overrides=["runner.total_steps=2"])  # 4 layers of 128
    other = COMPAT / "tera2_s3prl_converted.pt"  # 4 layers of 48
    capsys.readouterr()
    assert main(["downstream", "-m", "evaluate", "-e", str(tmp_path / "states-2.ckpt"),
                 "-k", str(other)]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines()
               if not line.startswith("[sid]")]
    assert "states-2.ckpt: " in line and "expects [" in line and "another upstream" in line
    assert "size mismatch" not in line


def test_missing_data_is_explained(tmp_path):
    with pytest.raises(UserError, match="no data"):
        run("ks", upstream="fbank", expdir=tmp_path / "x", data_root=tmp_path / "nowhere")


def test_a_truncated_cache_file_is_recomputed_not_loaded(small_corpus, tmp_path):
    upstream = load_upstream("tera2", preset="tiny")
    utts = speech_commands.load_split(small_corpus / "speech_commands", "valid")[:2]
    cpu = torch.device("cpu")
    first = FeatureCache(upstream, tmp_path, max_memory_bytes=0).states(utts, cpu)
    files = sorted(tmp_path.rglob("*.pt"))
    assert len(files) == 2 and not list(tmp_path.rglob(".*.tmp"))
    files[0].write_bytes(files[0].read_bytes()[:100])  # as a killed, non-atomic writer left it
    again = FeatureCache(upstream, tmp_path, max_memory_bytes=0)
    states = again.states(utts, cpu)
    assert again.misses == 1 and again.hits == 1
    for a, b in zip(first, states):  # recomputed alone rather than in a batch: fp16 rounding
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)
    assert len(torch.load(files[0], weights_only=True)) == len(first[0])  # rewritten whole


def test_a_mistyped_override_is_one_line(small_corpus, tmp_path, capsys):
    assert main(["downstream", "-m", "train", "-d", "ks", "-u", "fbank", "-p",
                 str(tmp_path / "ks"), "--data-root", str(small_corpus),
                 "-o", "config.runner.total_steps=abc"]) == 2
    err = capsys.readouterr().err
    assert err == ("tera downstream: error: downstream config key 'runner.total_steps' "
                   "expects an int, got 'abc'\n")


def test_an_unwritable_run_folder_fails_before_any_feature(small_corpus, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    assert main(["downstream", "-m", "train", "-d", "ks", "-u", "fbank", "-p",
                 str(tmp_path / "file" / "ks"), "--data-root", str(small_corpus)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith("file is a file, not a folder")
