"""`tera study`: the seed's compute-matched scaling study, end to end, resumable.

    1. the corpus (generated if absent)
    2. pre-training of every size at every budget (max_update from the planner)
    3. the five downstream tasks for every checkpoint, FBANK and a random TERA
    4. report.md / report.json with the SUPERB table, the valley curve, the loss curves and
       the learned layer weights

Every step leaves its output in the study folder; a step whose output is complete is
skipped when the study runs again, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from tera.errors import UserError
from tera.report import UpstreamResult, write_report


@dataclass
class PretrainRun:
    name: str
    size: float
    budget: float
    overrides: list[str]
    save_dir: Path


def study_config(path: str | Path | None, quick: bool) -> DictConfig:
    if path is None:
        name = "quick.yaml" if quick else "default.yaml"
        path = Path(str(resources.files("tera") / "configs" / "study" / name))
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such study file")
    return OmegaConf.load(path)


# Rough seconds per step on a 2-core CPU, measured on the default study: only the ratios
# matter, the ETA rescales them by the time the finished steps really took.
SECONDS_PER_PRETRAIN_UPDATE = 0.19  # the 100 % model; every run of a budget costs the same
SECONDS_PER_DOWNSTREAM_STEP = {"pr": 0.033, "ks": 0.007, "sid": 0.017, "asr": 0.19,
                               "asv": 0.08}


class Progress:
    """One line per step with the elapsed time and an ETA.

    Steps have expected costs; the ETA is the remaining cost times the ratio of time taken
    to cost for the steps that did work (a step found done on a re-run takes no time and
    does not count)."""

    def __init__(self, costs: list[float]) -> None:
        self.costs, self.done, self.started = costs, 0, time.perf_counter()
        self.last = self.started
        self.spent = self.counted = 0.0  # seconds and cost of the steps that did work

    def step(self, text: str) -> None:
        now = time.perf_counter()
        if self.done:
            taken, cost = now - self.last, self.costs[self.done - 1]
            if taken > 0.05 * cost:
                self.spent, self.counted = self.spent + taken, self.counted + cost
        self.last = now
        remaining = sum(self.costs[self.done:])
        rate = self.spent / self.counted if self.counted else 1.0
        print(f"[study {self.done + 1}/{len(self.costs)} | {(now - self.started) / 60:.1f} min, "
              f"ETA {remaining * rate / 60:.0f} min] {text}", file=sys.stderr, flush=True)
        self.done += 1


def run_study(config: str | Path | None = None, quick: bool = False,
              out: str | Path | None = None) -> Path:
    from tera.corpora import default_corpus_dir
    from tera.corpora.synthetic import synthesize

    spec = study_config(config, quick)
    out = Path(out or ("study-quick" if quick else "study"))
    out.mkdir(parents=True, exist_ok=True)
    corpus = Path(spec.corpus.root) if spec.corpus.root else default_corpus_dir(spec.corpus.preset)
    runs = pretrain_runs(spec, out)
    upstreams = [("fbank", "fbank", None)] if "fbank" in spec.downstream.baselines else []
    tasks = list(spec.downstream.tasks)
    upstream_count = len(runs) + len(spec.downstream.baselines)
    progress = Progress(
        [30.0]
        + [run.budget * spec.pretrain.budget_updates * SECONDS_PER_PRETRAIN_UPDATE
           for run in runs]
        + [downstream_cost(spec, task) for task in tasks] * upstream_count
        + [5.0])

    progress.step(f"corpus {spec.corpus.preset} in {corpus}")
    if not spec.corpus.root:
        synthesize(corpus, spec.corpus.preset, int(spec.corpus.seed))
    manifest = out / "manifest"
    if not (manifest / "train.tsv").is_file():
        write_training_manifest(corpus, manifest)

    for run in runs:
        progress.step(f"pre-train {run.name}")
        pretrain_once(spec, run, manifest)
    random_ckpt = None
    if "random" in spec.downstream.baselines:
        random_ckpt = save_random_model(spec, out / "random_init")
        upstreams.append(("random TERA (100 %)", "tera2", str(random_ckpt)))
    upstreams = [(run.name, "tera2", str(run.save_dir / "checkpoint_last.pt")) for run in runs] \
        + upstreams

    results = []
    for label, kind, ckpt in upstreams:
        metrics, weights = {}, {}
        for task in tasks:
            progress.step(f"{task} with {label}")
            result = downstream_once(spec, task, kind, ckpt, corpus,
                                     out / "downstream" / f"{_slug(label)}_{task}")
            metrics[task] = float(result["value"])
            weights[task] = list(result["layer_weights"])
        results.append(upstream_result(label, kind, ckpt, runs, metrics, weights))
    progress.step("report")
    notes = [f"corpus: {corpus} ({spec.corpus.preset})",
             f"pre-training: preset {spec.pretrain.preset}, {spec.pretrain.budget_updates} "
             f"updates for the 100 % model at the full budget",
             "metrics in %; PER/WER/EER lower is better, accuracies higher is better; ASV "
             "checkpoints selected on dev trials"]
    return write_report(results, out, str(spec.title), notes)


def write_training_manifest(corpus: Path, manifest: Path) -> None:
    """Pre-training audio: the training splits of the three parts only, so that no dev or
    test utterance is seen, even without its label."""
    from tera.corpora import librispeech, speech_commands, voxceleb1
    from tera.pretrain.data import write_manifest_files

    utterances = (librispeech.load_split(corpus / "librispeech", "train")
                  + voxceleb1.load_identification(corpus / "voxceleb1", "train")
                  + [u for u in speech_commands.load_split(corpus / "speech_commands", "train")
                     if u.num_samples is None])
    files = sorted({u.path for u in utterances})
    write_manifest_files(corpus, files, manifest, valid_percent=0.03, seed=0)


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label).strip("_").lower()


def pretrain_runs(spec: DictConfig, out: Path) -> list[PretrainRun]:
    runs = []
    for budget in spec.pretrain.budgets:
        for size, extra in spec.pretrain.sizes.items():
            name = f"tera2 {size}% @ {float(budget):g}x"
            overrides = [*spec.pretrain.overrides, *[f"{k}={v}" for k, v in extra.items()]]
            runs.append(PretrainRun(name, float(size), float(budget), overrides,
                                    out / "pretrain" / f"size{size}_budget{float(budget):g}"))
    return runs


def _config(spec: DictConfig, overrides: list[str], manifest: Path, save_dir: Path):
    from tera.pretrain.config import load_config

    return load_config(spec.pretrain.preset, overrides=[
        *overrides, f"task.data={manifest}", f"checkpoint.save_dir={save_dir}",
        "checkpoint.save_interval_updates=0"])


def pretrain_once(spec: DictConfig, run: PretrainRun, manifest: Path) -> None:
    from tera.pretrain.planner import plan
    from tera.pretrain.trainer import pretrain

    budget_cfg = _config(spec, [*spec.pretrain.overrides,
                                f"optimization.max_update={spec.pretrain.budget_updates}"],
                         manifest, run.save_dir)
    cfg = _config(spec, run.overrides, manifest, run.save_dir)
    max_update = plan(cfg, budget_cfg, run.budget)["max_update"]
    warmup = max(1, max_update // 10)
    cfg = _config(spec, [*run.overrides, f"optimization.max_update={max_update}",
                         f"lr_scheduler.warmup_updates={warmup}",
                         f"dataset.validate_interval_updates={max(1, max_update // 5)}"],
                  manifest, run.save_dir)
    last = run.save_dir / "checkpoint_last.pt"
    if last.is_file():
        meta = torch.load(last, weights_only=True)["extra_state"]["tera"]
        if int(meta["update"]) >= max_update:
            return
    if pretrain(cfg)["stopped"]:  # Ctrl-C / SIGTERM: the checkpoint is saved; stop the study
        raise KeyboardInterrupt


def save_random_model(spec: DictConfig, path: Path) -> Path:
    """A randomly initialised TERA of the 100 % size, saved so the runner can load it."""
    from tera.checkpoint import LoadedCheckpoint, save_checkpoint
    from tera.model.tera import TeraModel
    from tera.presets import load_preset, model_config
    from tera.pretrain.config import apply_override

    if (path / "model.safetensors").is_file():
        return path
    cfg = load_preset(spec.pretrain.preset)
    for override in spec.pretrain.overrides:
        apply_override(cfg, override)
    for key, value in (spec.pretrain.sizes.get(100) or spec.pretrain.sizes.get("100") or {}
                       ).items():
        apply_override(cfg, f"{key}={value}")
    torch.manual_seed(0)
    model = TeraModel(model_config(cfg)).eval()
    save_checkpoint(LoadedCheckpoint(model, model.cfg, {}, None, "tera", path,
                                     {"preset": "random init (100 %)"}), path, "safetensors")
    return path


def downstream_once(spec: DictConfig, task: str, kind: str, ckpt: str | None, corpus: Path,
                    expdir: Path) -> dict:
    from tera.downstream.runner import run

    results_file = expdir / "results.json"
    if results_file.is_file():
        return json.loads(results_file.read_text())
    overrides = list(spec.downstream.overrides.get(task, []))
    return run(task, upstream=kind, upstream_ckpt=ckpt, expdir=expdir, data_root=corpus,
               overrides=overrides)


def downstream_cost(spec: DictConfig, task: str) -> float:
    """Expected seconds of one downstream run (for the ETA)."""
    from tera.corpora import is_embedded_corpus
    from tera.downstream.runner import load_recipe

    embedded = not spec.corpus.root or is_embedded_corpus(Path(spec.corpus.root))
    recipe = load_recipe(task, None, "embedded" if embedded else None,
                         list(spec.downstream.overrides.get(task, [])))
    return 10.0 + SECONDS_PER_DOWNSTREAM_STEP.get(task, 0.05) * int(recipe.runner.total_steps)


def upstream_result(label: str, kind: str, ckpt: str | None, runs: list[PretrainRun],
                    metrics: dict, weights: dict) -> UpstreamResult:
    from tera.checkpoint import load_checkpoint
    from tera.presets import count_parameters

    result = UpstreamResult(name=label, kind="tera2" if label.startswith("tera2") else
                            ("random" if kind == "tera2" else kind),
                            metrics=metrics, layer_weights=weights)
    if kind == "tera2" and ckpt:
        loaded = load_checkpoint(ckpt)
        result.parameters = count_parameters(loaded.model_cfg)
    run = next((r for r in runs if r.name == label), None)
    if run is not None:
        meta = torch.load(run.save_dir / "checkpoint_last.pt", weights_only=True)
        meta = meta["extra_state"]["tera"]
        result.size_percent, result.budget = run.size, run.budget
        result.pretrain_updates = int(meta["update"])
        result.pretrain_flops = float(meta["train_flops"])
        result.pretrain_wall_s = float(meta["wall_time_s"])
        log = run.save_dir / "log.jsonl"
        result.loss_curve = [json.loads(line) for line in log.read_text().splitlines()]
    return result
