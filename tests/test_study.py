"""`tera study --quick` end to end on the small corpus, shrunk through a study file."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from tera.cli import main

STUDY = {
    "title": "test study",
    "corpus": {"preset": "small", "seed": 0, "root": None},
    "pretrain": {
        "preset": "tiny",
        "overrides": ["task.max_sample_size=32000", "dataset.max_tokens=96000",
                      "model.encoder_layers=1"],
        "budget_updates": 6,
        "budgets": [1.0],
        "sizes": {30: {"model.encoder_embed_dim": 64, "model.encoder_ffn_embed_dim": 128},
                  100: {}},
    },
    "downstream": {
        "tasks": ["pr", "ks", "sid", "asr", "asv"],
        "baselines": ["fbank", "random"],
        "overrides": {
            task: ["runner.total_steps=3", "runner.eval_step=3", "runner.save_step=3"]
            + (["downstream_expert.modelrc.hidden_size=16",
                "downstream_expert.modelrc.project_dim=16"] if task == "asr" else [])
            for task in ["pr", "ks", "sid", "asr", "asv"]
        },
    },
}


def test_quick_study_writes_every_artefact(small_corpus, tmp_path, capsys):
    spec = dict(STUDY, corpus={**STUDY["corpus"], "root": str(small_corpus)})
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(spec))
    out = tmp_path / "study"
    assert main(["study", "--quick", "--config", str(config), "--out", str(out)]) == 0
    for name in ("report.md", "report.json", "valley_curve.png", "pretrain_loss.png",
                 "layer_weights.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    report = json.loads((out / "report.json").read_text())
    names = [u["name"] for u in report["upstreams"]]
    assert len(names) == 4 and "fbank" in names and any("random" in n for n in names)
    for upstream in report["upstreams"]:
        assert set(upstream["metrics"]) == {"pr", "ks", "sid", "asr", "asv"}
        for task, value in upstream["metrics"].items():
            assert math.isfinite(value), (upstream["name"], task)
            # error rates can pass 100 % (insertions); accuracies and EER are fractions
            assert value >= 0.0 and (task in ("pr", "asr") or value <= 1.0)
            # every metric has a finite bootstrap interval holding it
            bounds = upstream["intervals"][task]
            assert math.isfinite(bounds["low"]) and math.isfinite(bounds["high"])
            assert bounds["low"] <= value <= bounds["high"], (upstream["name"], task, bounds)
            assert bounds["level"] == 0.95 and bounds["resamples"] >= 900
            assert bounds["unit"] == ("speaker" if task == "asv" else "utterance")
        if upstream["kind"] == "tera2":
            assert upstream["pretrain_flops"] > 0 and upstream["pretrain_updates"] > 0
            assert all(math.isfinite(p["loss"]) for p in upstream["loss_curve"] if "loss" in p)
    # paired tests: each pre-trained model against both baselines and the other size, on
    # every task, each difference inside its own interval
    tests = report["comparisons"]
    families = {t["family"] for t in tests}
    assert families == {"pre-trained vs random TERA", "TERA vs FBANK", "neighbouring sizes"}
    assert len(tests) == (2 + 2 + 1) * 5
    metrics = {u["name"]: u["metrics"] for u in report["upstreams"]}
    for test in tests:
        assert math.isfinite(test["low"]) and math.isfinite(test["high"])
        assert test["low"] <= test["difference"] <= test["high"], test
        assert test["significant"] == (test["low"] > 0 or test["high"] < 0)
        # a - b of the two metrics; the better one scores higher on an accuracy, lower on
        # an error rate
        a, b = metrics[test["a"]][test["task"]], metrics[test["b"]][test["task"]]
        assert test["difference"] == pytest.approx(a - b, rel=1e-9, abs=1e-12), test
        gain = test["difference"] if test["task"] in ("ks", "sid") else -test["difference"]
        expected = None if gain == 0 else test["a"] if gain > 0 else test["b"]
        assert test["better"] == expected, test
    markdown = (out / "report.md").read_text()
    assert "| upstream | PR PER %" in markdown and "valley_curve.png" in markdown
    assert "## Which differences are significant" in markdown and "### TERA vs FBANK" in markdown
    # compute matching: both sizes spend about the same pre-training FLOPs (planner)
    flops = {u["size_percent"]: u["pretrain_flops"] for u in report["upstreams"]
             if u["kind"] == "tera2"}
    assert abs(flops[30.0] / flops[100.0] - 1) < 0.35  # a few updates: coarse rounding
    # a second run finds everything done and only rewrites the report (and its lock, which
    # names the running process): it starts no job, and writes no other file
    rewritten = {out / name for name in ("report.md", "report.json", "valley_curve.png",
                                         "pretrain_loss.png", "layer_weights.png", ".tera.lock")}
    before = files_written(out, rewritten)
    capsys.readouterr()
    assert main(["study", "--config", str(config), "--out", str(out)]) == 0
    assert "] 0 jobs to run," in capsys.readouterr().err
    after = files_written(out, rewritten)
    assert after == before, sorted(str(path) for path in set(after) ^ set(before)
                                   | {path for path in after if after[path] != before.get(path)})


def files_written(folder, leave_out) -> dict:
    """Every file under `folder` but those of `leave_out`, with its size and time written."""
    return {path: (path.stat().st_size, path.stat().st_mtime_ns)
            for path in folder.rglob("*") if path.is_file() and path not in leave_out}


def test_shipped_study_files_build_every_model(tmp_path):
    # the overrides of the shipped files (the conv extractor spec included) must parse and
    # give the model sizes in the right order, with the random baseline the 100 % model
    from tera.presets import count_parameters, model_config
    from tera.study import pretrain_config, pretrain_runs, save_random_model, study_config

    for quick in (False, True):
        spec = study_config(None, quick)
        runs = pretrain_runs(spec, tmp_path)
        sizes, conv = {}, {}
        for run in runs:
            cfg = pretrain_config(spec, run.overrides, tmp_path, run.save_dir)
            conv[run.size] = cfg.model.conv_feature_layers
            sizes[run.size] = count_parameters(model_config(cfg))
        assert all(layers.startswith("[(64,10,5)]") for layers in conv.values())
        assert sizes[30.0] < sizes[100.0] < sizes[200.0]
        random_dir = save_random_model(spec, tmp_path / f"random_{quick}")
        config = json.loads((random_dir / "config.json").read_text())["model_cfg"]
        assert config["conv_feature_layers"] == conv[100.0]


def test_failed_job_stops_the_study_with_the_end_of_its_log(tmp_path):
    import time

    from tera.errors import UserError
    from tera.study import Job, run_jobs

    log = tmp_path / "logs" / "bad.log"
    bad = Job("pre-train bad", ["pretrain", "--config-name", "no_such_preset"], log, 1.0, 1)
    waiting = Job("pr with bad", ["plan", "--config-name", "tiny"], tmp_path / "w.log", 1.0, 1,
                  needs=bad)
    with pytest.raises(UserError, match="pre-train bad failed") as error:
        run_jobs([bad, waiting], 2, 1, time.perf_counter())
    assert "no_such_preset" in str(error.value)  # the log's end names the problem
    assert log.read_text().startswith("$ tera pretrain --config-name no_such_preset")
    assert not waiting.log.exists()  # never started: what it needs failed


def test_downstream_job_resumes_from_its_last_state_and_skips_a_finished_run(tmp_path):
    from tera.runs.records import DownstreamResult, write_result
    from tera.study import downstream_job, study_config

    spec = study_config(None, quick=True)
    folder = tmp_path / "study" / "downstream" / "fbank_ks"
    folder.mkdir(parents=True)
    assert "-e" not in downstream_job(spec, "ks", "fbank", None, tmp_path, folder, "ks").args
    for step in (2, 10):
        (folder / f"states-{step}.ckpt").write_bytes(b"")
    job = downstream_job(spec, "ks", "fbank", None, tmp_path, folder, "ks with fbank")
    assert job.args[job.args.index("-e") + 1] == str((folder / "states-10.ckpt").resolve())
    assert job.total == 40 and job.log == tmp_path / "study" / "logs" / "fbank_ks.log"
    assert job.args[job.args.index("--seed") + 1] == "1337"
    # results cut short, then results without the per-item statistics the report needs:
    # evaluated again; both present: finished
    (folder / "results.json").write_text('{"split": "test"')
    assert downstream_job(spec, "ks", "fbank", None, tmp_path, folder, "ks") is not None
    write_result(folder, DownstreamResult(
        task="ks", metric="accuracy", value=0.5, split="test", checkpoint="states-10.ckpt",
        upstream="fbank", upstream_ckpt=None, layer_weights=[1.0], step=10, wall_time_s=1.0))
    assert downstream_job(spec, "ks", "fbank", None, tmp_path, folder, "ks") is not None
    (folder / "test_items.tsv").write_text("id\tcorrect\nu1\t1\n")
    assert downstream_job(spec, "ks", "fbank", None, tmp_path, folder, "ks") is None


def test_progress_line_reads_the_last_record_of_a_log(tmp_path):
    from tera.study import Job, job_position

    job = Job("asr with fbank", [], tmp_path / "asr.log", 1.0, 500)
    assert job_position(job) == "starting"
    job.log.write_text('$ tera downstream\n[asr] {"step": 50, "train_loss": 3.1}\n'
                       '[asr] {"step": 100, "train_loss": 2.8}\nnoise {not json\n')
    assert job_position(job) == "step 100/500"


def test_seeds_repeat_the_runs_and_the_report_gives_their_spread(small_corpus, tmp_path):
    import copy

    from tera.errors import UserError

    spec = copy.deepcopy(STUDY)
    spec["corpus"]["root"] = str(small_corpus)
    spec["pretrain"].update(sizes={100: {}}, budget_updates=4)
    spec["downstream"].update(tasks=["ks"], baselines=["fbank"])
    spec["seeds"] = {"count": 1, "pretraining": True}
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(spec))
    out = tmp_path / "study"
    assert main(["study", "--config", str(config), "--out", str(out), "--seeds", "2"]) == 0
    assert (out / "pretrain" / "size100_budget1_seed1" / "checkpoint_last.pt").is_file()
    assert "common.seed=1338" in (out / "logs" / "pretrain_size100_budget1_seed1.log"
                                  ).read_text().splitlines()[0]
    assert "--seed 1338" in (out / "logs" / "fbank_ks_seed1.log").read_text().splitlines()[0]
    report = json.loads((out / "report.json").read_text())
    for upstream in report["upstreams"]:
        values = upstream["seed_values"]["ks"]
        assert len(values) == 2
        assert upstream["metrics"]["ks"] == pytest.approx(sum(values) / 2)
        # the sample standard deviation of two values: their distance over sqrt(2)
        assert upstream["seed_std"]["ks"] == pytest.approx(abs(values[0] - values[1])
                                                           / math.sqrt(2), abs=1e-12)
        assert upstream["intervals"]["ks"]["low"] <= upstream["metrics"]["ks"] \
            <= upstream["intervals"]["ks"]["high"]
    assert " ± " in (out / "report.md").read_text()
    # the study folder belongs to its corpus: another one is refused, not mixed in
    (out / "corpus.json").write_text('{"preset": "small", "seed": 0, "generator": 1}')
    with pytest.raises(UserError, match="choose another --out folder"):
        from tera.study import run_study

        run_study(config, out=out, seeds=2)


def test_report_tests_the_pairs_and_marks_what_is_significant(tmp_path):
    import numpy as np

    from tera.downstream.bootstrap import Items, interval
    from tera.report import UpstreamResult, comparison_pairs, significance_cell, write_report

    rng = np.random.default_rng(0)
    truth = rng.random(400)

    def items(skill: float, difficulty=truth) -> list[Items]:  # right where easier than skill
        return [Items("accuracy", {"id": [f"u{i:03d}" for i in range(400)],
                                   "correct": (difficulty < skill).astype(int)})]

    skills = {("tera2", 30.0, 1.0): 0.70, ("tera2", 100.0, 1.0): 0.72,
              ("tera2", 30.0, 0.5): 0.60, ("tera2", 100.0, 0.5): 0.71,
              ("fbank", None, None): 0.71, ("random", None, None): 0.30}
    results, all_items = [], {}
    for (kind, size, budget), skill in skills.items():
        name = f"{kind} {size} {budget}"
        # FBANK errs on other items than the TERA models (its own difficulties)
        runs = items(skill, rng.random(400) if kind == "fbank" else truth)
        all_items[name] = {"ks": runs}
        results.append(UpstreamResult(name, kind, size_percent=size, budget=budget,
                                      metrics={"ks": runs[0].value()},
                                      intervals={"ks": interval(runs)},
                                      seed_values={"ks": [runs[0].value()]}))
    families = [family for family, _, _ in comparison_pairs(results)]
    assert families.count("pre-trained vs random TERA") == 4
    assert families.count("TERA vs FBANK") == 4
    assert families.count("full vs lower budget") == 2
    assert families.count("neighbouring sizes") == 2
    write_report(results, tmp_path, "t", [], all_items)
    report = json.loads((tmp_path / "report.json").read_text())
    tests = {(t["a"], t["b"]): t for t in report["comparisons"]}
    big = tests["tera2 100.0 1.0", "random None None"]
    assert big["significant"] and big["better"] == "tera2 100.0 1.0"
    gain = 100 * (all_items[big["a"]]["ks"][0].value() - all_items[big["b"]]["ks"][0].value())
    assert significance_cell(big).startswith(f"**A** by {gain:.2f} [")
    close = tests["tera2 100.0 1.0", "fbank None None"]  # 0.72 vs ~0.71, other errors
    assert not close["significant"] and significance_cell(close).endswith("n.s.")
    half = tests["tera2 30.0 1.0", "tera2 30.0 0.5"]
    assert half["significant"] and half["family"] == "full vs lower budget"
    assert report["bootstrap"]["units"] == {"ks": "utterance"}
    markdown = (tmp_path / "report.md").read_text()
    assert "### pre-trained vs random TERA" in markdown and f"**A** by {gain:.2f}" in markdown


def test_seed_spread_is_the_sample_standard_deviation():
    from tera.report import UpstreamResult, seed_spread

    result = UpstreamResult("fbank", "fbank", seed_values={"ks": [0.5, 0.7, 0.9], "sid": [0.4]})
    spread = seed_spread(result)
    assert spread["ks"] == pytest.approx(0.2, abs=1e-12)  # n - 1 in the denominator
    assert spread["sid"] is None  # one seed: no spread to report
