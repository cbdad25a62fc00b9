"""Planning a study: its pre-trainings, its upstreams and the `tera` command of each job.

Every job leaves its output in the study folder; a job whose output is complete is not
planned again, and an unfinished one resumes from its last saved state.

    runs = pretrain_runs(spec, out)                  # every size at every budget
    job = pretrain_job(spec, runs[0], manifest, out, threads=1)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from tera.checkpoint import LoadedCheckpoint, save_checkpoint
from tera.checkpoint.training import read_training_state
from tera.corpora import is_embedded_corpus
from tera.downstream.bootstrap import items_path
from tera.downstream.recipe import load_recipe
from tera.errors import UserError
from tera.presets import load_preset, model_config
from tera.pretrain.config import apply_override, load_config
from tera.pretrain.planner import plan
from tera.runs.checkpoints import downstream_states
from tera.runs.records import read_result
from tera.study.config import FIRST_SEED
from tera.study.cost import downstream_cost, pretrain_cost
from tera.study.scheduler import Job
from tera.upstream import random_tera


@dataclass
class PretrainRun:
    """One pre-training of the study: a model size at a compute budget."""

    name: str
    size: float
    budget: float
    overrides: list[str]
    save_dir: Path
    seed: int = 0  # the study seed (index) this pre-training belongs to


@dataclass
class StudyUpstream:
    """One upstream at one study seed: a row of the report and what its jobs load."""

    label: str
    kind: str  # "tera2" (pre-trained) | "random" (a random TERA) | "fbank"
    ckpt: str | None
    seed: int = 0
    run: PretrainRun | None = None

    @property
    def upstream_name(self) -> str:
        """What `tera downstream -u` calls it."""
        return "tera2" if self.kind == "random" else self.kind


# --- pre-training ---------------------------------------------------------------------------


def pretrain_runs(spec: DictConfig, out: Path, seed: int = 0) -> list[PretrainRun]:
    """Every size at every budget of the study file, for study seed `seed`."""
    runs = []
    suffix = f"_seed{seed}" if seed else ""
    for budget in spec.pretrain.budgets:
        for size, extra in spec.pretrain.sizes.items():
            name = f"tera2 {size}% @ {float(budget):g}x"
            overrides = [*spec.pretrain.overrides, *[f"{k}={v}" for k, v in extra.items()]]
            if seed:
                overrides.append(f"common.seed={FIRST_SEED + seed}")
            runs.append(PretrainRun(name, float(size), float(budget), overrides,
                                    out / "pretrain" / f"size{size}_budget{float(budget):g}"
                                    f"{suffix}", seed))
    return runs


def pretrain_config(spec: DictConfig, overrides: list[str], manifest: Path, save_dir: Path
                    ) -> DictConfig:
    """The training config of the study's preset with `overrides`, on `manifest`."""
    return load_config(spec.pretrain.preset, overrides=[
        *overrides, f"task.data={manifest}", f"checkpoint.save_dir={save_dir}",
        "checkpoint.save_interval_updates=0"])


def pretrain_overrides(spec: DictConfig, run: PretrainRun, manifest: Path
                       ) -> tuple[list[str], int]:
    """The run's config overrides and max_update, from the planner (equal FLOPs for every
    size of a budget), with warm-up, validation and checkpoints scaled to it."""
    budget_cfg = pretrain_config(spec, [*spec.pretrain.overrides,
                                        f"optimization.max_update={spec.pretrain.budget_updates}"],
                                 manifest, run.save_dir)
    cfg = pretrain_config(spec, run.overrides, manifest, run.save_dir)
    max_update = plan(cfg, budget_cfg, run.budget)["max_update"]
    return [*run.overrides, f"optimization.max_update={max_update}",
            f"lr_scheduler.warmup_updates={max(1, max_update // 10)}",
            f"dataset.validate_interval_updates={max(1, max_update // 5)}",
            f"task.data={manifest.resolve()}", f"checkpoint.save_dir={run.save_dir.resolve()}",
            # a killed run resumes from its last tenth
            f"checkpoint.save_interval_updates={max(1, max_update // 10)}",
            "checkpoint.keep_interval_updates=1"], max_update


def pretrain_job(spec: DictConfig, run: PretrainRun, manifest: Path, out: Path, threads: int
                 ) -> Job | None:
    """The `tera pretrain` job of a run, or None when its checkpoint is complete."""
    overrides, max_update = pretrain_overrides(spec, run, manifest)
    last = run.save_dir / "checkpoint_last.pt"
    if last.is_file() and read_training_state(last).update >= max_update:
        return None
    if threads == 1:  # a data-loading process would take turns with the trainer on its core
        overrides.append("dataset.num_workers=0")
    return Job(f"pre-train {run.name}", ["pretrain", "--config-name", str(spec.pretrain.preset),
                                         *overrides],
               out / "logs" / f"pretrain_{run.save_dir.name}.log",
               pretrain_cost(max_update, run.size), max_update)


# --- the upstreams --------------------------------------------------------------------------


def study_upstreams(spec: DictConfig, out: Path, runs: list[PretrainRun], seeds: list[int],
                    seed_pretraining: bool) -> list[StudyUpstream]:
    """Every upstream at every seed: the pre-trained models, FBANK, the random TERA."""
    upstreams = []
    for seed in seeds:
        source = seed if seed_pretraining else 0  # whose pre-trainings this seed evaluates
        upstreams += [StudyUpstream(run.name, "tera2", str(run.save_dir / "checkpoint_last.pt"),
                                    seed, run) for run in runs if run.seed == source]
        if "fbank" in spec.downstream.baselines:
            upstreams.append(StudyUpstream("fbank", "fbank", None, seed))
        if "random" in spec.downstream.baselines:
            folder = out / ("random_init" + (f"_seed{source}" if source else ""))
            upstreams.append(StudyUpstream("random TERA (100 %)", "random",
                                           str(save_random_model(spec, folder, source)), seed))
    return upstreams


def save_random_model(spec: DictConfig, path: Path, seed: int = 0) -> Path:
    """A randomly initialised TERA of the 100 % size (torch seed `seed`), saved so the
    runner can load it."""
    if (path / "model.safetensors").is_file():
        return path
    cfg = load_preset(spec.pretrain.preset)
    for override in spec.pretrain.overrides:
        apply_override(cfg, override)
    for key, value in (spec.pretrain.sizes.get(100) or spec.pretrain.sizes.get("100") or {}
                       ).items():
        apply_override(cfg, f"{key}={value}")
    model = random_tera(model_config(cfg), seed=seed)
    save_checkpoint(LoadedCheckpoint(model, model.cfg, {}, None, "tera", path,
                                     {"preset": "random init (100 %)"}), path, "safetensors")
    return path


# --- downstream -----------------------------------------------------------------------------


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label).strip("_").lower()


def expdir(out: Path, label: str, task: str, seed: int = 0) -> Path:
    """The folder of the downstream run of `task` with the upstream `label` at `seed`."""
    return out / "downstream" / (f"{_slug(label)}_{task}" + (f"_seed{seed}" if seed else ""))


def downstream_job(spec: DictConfig, task: str, kind: str, ckpt: str | None, corpus: Path,
                   folder: Path, name: str, seed: int = FIRST_SEED) -> Job | None:
    """The `tera downstream` job of one task and upstream (resuming from its last saved
    state, if any), or None when its results and per-item statistics are in."""
    if _finished(folder):
        return None
    args = ["downstream", "-m", "train", "-d", task, "-u", kind, "-p", str(folder.resolve()),
            "--data-root", str(corpus.resolve()), "--seed", str(seed)]
    if ckpt is not None:
        args += ["-k", str(Path(ckpt).resolve())]
    overrides = list(spec.downstream.overrides.get(task, []))
    if overrides:
        args += ["-o", ",,".join(overrides)]
    states = downstream_states(folder)
    if states:
        args += ["-e", str(states[-1].resolve())]
    steps = int(downstream_recipe(spec, task).runner.total_steps)
    return Job(name, args, folder.parent.parent / "logs" / f"{folder.name}.log",
               downstream_cost(task, steps), steps)


def _finished(folder: Path) -> bool:
    """Whether a downstream run left its results and the per-item statistics of its test
    split (what the report's intervals need)."""
    try:
        split = read_result(folder).split
    except UserError:  # absent, cut short or malformed: run (or evaluate) it again
        return False
    return items_path(folder, split).is_file()


def downstream_recipe(spec: DictConfig, task: str) -> DictConfig:
    """The recipe a study's `task` runs with: the embedded profile on the embedded corpus,
    and the study file's overrides."""
    embedded = not spec.corpus.root or is_embedded_corpus(Path(spec.corpus.root))
    return load_recipe(task, None, "embedded" if embedded else None,
                       list(spec.downstream.overrides.get(task, [])))
