"""Collecting a study's results: each upstream's metrics over its seeds, their bootstrap
intervals, and what the report says of each model (size, FLOPs, loss curve)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tera.checkpoint import load_checkpoint
from tera.checkpoint.training import read_training_state
from tera.downstream.bootstrap import interval, items_path, read_items
from tera.presets import count_parameters
from tera.report import UpstreamResult
from tera.runs.log import read_log
from tera.runs.records import read_result
from tera.study.plan import PretrainRun, StudyUpstream, expdir


def task_profiles(out: Path, upstream: StudyUpstream, tasks: list[str]) -> dict[str, str]:
    """The recipe profile each task ran with ("embedded" or "real": s3prl's settings), as
    the runs of `upstream` recorded it."""
    return {task: read_result(expdir(out, upstream.label, task, upstream.seed)
                              ).extra.get("profile", "not recorded") for task in tasks}


def collect_results(out: Path, upstreams: list[StudyUpstream], tasks: list[str]
                    ) -> tuple[list[UpstreamResult], dict]:
    """One report row per upstream label: each task's metric (the mean over the seeds), its
    bootstrap interval and the seeds' values; and the per-item statistics of every run
    ({label: {task: [Items of each seed]}}) for the paired tests."""
    by_label: dict[str, list[StudyUpstream]] = {}
    for upstream in upstreams:
        by_label.setdefault(upstream.label, []).append(upstream)
    results, items = [], {}
    for label, seeds in by_label.items():
        metrics, weights, intervals, values = {}, {}, {}, {}
        items[label] = {}
        for task in tasks:
            folders = [expdir(out, label, task, u.seed) for u in seeds]
            records = [read_result(f) for f in folders]
            runs = [read_items(items_path(f, r.split)) for f, r in zip(folders, records)]
            values[task] = [float(r.value) for r in records]
            metrics[task] = float(np.mean(values[task]))
            weights[task] = np.mean([r.layer_weights for r in records], axis=0).tolist()
            intervals[task] = interval(runs)
            items[label][task] = runs
        first = seeds[0]
        result = upstream_result(label, first.kind, first.ckpt, first.run, metrics, weights)
        result.intervals, result.seed_values = intervals, values
        results.append(result)
    return results, items


def upstream_result(label: str, kind: str, ckpt: str | None, run: PretrainRun | None,
                    metrics: dict, weights: dict) -> UpstreamResult:
    """The report row of one upstream: its metrics and layer weights, its parameters and,
    for a pre-trained model, its updates, FLOPs, time and loss curve."""
    result = UpstreamResult(name=label, kind=kind, metrics=metrics, layer_weights=weights)
    if kind in ("tera2", "random") and ckpt:
        loaded = load_checkpoint(ckpt)
        result.parameters = count_parameters(loaded.model_cfg)
    if run is not None:
        state = read_training_state(run.save_dir / "checkpoint_last.pt")
        result.size_percent, result.budget = run.size, run.budget
        result.pretrain_updates = state.update
        result.pretrain_flops = state.train_flops
        result.pretrain_wall_s = state.wall_time_s
        result.loss_curve = read_log(run.save_dir)
    return result
