"""`tera study`: the seed's compute-matched scaling study, end to end, resumable.

    1. the corpus (generated if absent)
    2. pre-training of every size at every budget (max_update from the planner)
    3. the five downstream tasks for every checkpoint, FBANK and a random TERA
    4. report.md / report.json with the SUPERB table (every metric with its 95 % bootstrap
       interval), the paired significance tests between upstreams, the valley curve, the
       loss curves and the learned layer weights

With `seeds.count` N (or `--seeds N`) every downstream run is repeated with N seeds (and,
with `seeds.pretraining`, every pre-training and the random TERA too); a metric is then the
mean over the seeds, reported with its spread.

Steps 2 and 3 are jobs, each a `tera pretrain` or `tera downstream` command (the command
line heads its log in `logs/`), run two at a time on a CPU. Every job leaves its output in
the study folder; a job whose output is complete is skipped when the study runs again, and
an unfinished one resumes, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tera.checkpoint.training import read_training_state
from tera.downstream import DEFAULT_SEED
from tera.downstream.bootstrap import interval, items_path, read_items
from tera.errors import UserError, raise_terminated
from tera.report import TASKS, UpstreamResult, write_report
from tera.runs.checkpoints import downstream_states
from tera.runs.lock import folder_lock
from tera.runs.log import read_log
from tera.runs.records import read_result

# Seed k of a study runs its downstream jobs with `--seed 1337 + k` (1337: the runner's
# default) and, with `seeds.pretraining`, pre-trains with `common.seed=1337 + k` and draws
# its random TERA with torch seed k; seed 0 is what a study without seeds runs.
FIRST_SEED = DEFAULT_SEED


@dataclass
class PretrainRun:
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


def study_config(path: str | Path | None, quick: bool) -> DictConfig:
    if path is None:
        name = "quick.yaml" if quick else "default.yaml"
        path = Path(str(resources.files("tera") / "configs" / "study" / name))
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such study file")
    try:
        spec = OmegaConf.load(path)
    except Exception as err:  # yaml and omegaconf raise many types; all mean "bad file"
        raise UserError(f"{path}: not a valid YAML file: {' '.join(str(err).split())}"
                        ) from err
    if not isinstance(spec, DictConfig):
        raise UserError(f"{path}: expected a mapping of sections (corpus, pretrain, "
                        "downstream, ...)")
    check_study(spec, path)
    return spec


# --- the study file's schema: each key's type and range, checked before anything runs ----------


def _is_count(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _is_share(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def _is_list_of(check) -> object:  # noqa: ANN001
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


_TASK_NAMES = tuple(name for name, _, _ in TASKS)

# key -> (allowed, what is allowed, required)
STUDY_SCHEMA = {
    "title": (lambda v: isinstance(v, str), "a string", False),
    "corpus.preset": (lambda v: v in ("small", "default"), "small or default", True),
    "corpus.seed": (lambda v: _is_count(v, 0), "an integer of at least 0", True),
    "corpus.root": (lambda v: v is None or isinstance(v, str), "a folder or null", False),
    "pretrain.preset": (lambda v: isinstance(v, str) and v != "", "a preset name", True),
    "pretrain.overrides": (_is_list_of(lambda x: isinstance(x, str)),
                           "a list of KEY=VALUE strings", False),
    "pretrain.budget_updates": (lambda v: _is_count(v, 1), "an integer of at least 1", True),
    "pretrain.budgets": (lambda v: _is_list_of(_is_share)(v) and len(v) > 0,
                         "a non-empty list of numbers above 0", True),
    "pretrain.sizes": (lambda v: isinstance(v, dict) and len(v) > 0 and all(
        _is_share(size) and isinstance(extra, dict) for size, extra in v.items()),
        "a mapping of sizes (numbers above 0) to override mappings", True),
    "downstream.tasks": (_is_list_of(lambda x: x in _TASK_NAMES),
                         f"a list of tasks among {', '.join(_TASK_NAMES)}", True),
    "downstream.baselines": (_is_list_of(lambda x: x in ("fbank", "random")),
                             "a list among fbank, random", False),
    "downstream.overrides": (lambda v: isinstance(v, dict) and all(
        k in _TASK_NAMES and _is_list_of(lambda x: isinstance(x, str))(o)
        for k, o in v.items()), "a mapping of task to a list of KEY=VALUE strings", False),
    "seeds.count": (lambda v: _is_count(v, 1), "an integer of at least 1", False),
    "seeds.pretraining": (lambda v: isinstance(v, bool), "true or false", False),
}


def check_study(spec: DictConfig, path: Path) -> None:
    """Every key of a study file against `STUDY_SCHEMA`, then each pre-training's config
    (the preset, its overrides and every size's), so that a mistake is one line naming the
    file and the key before the first job starts."""
    for key, (allowed, meaning, required) in STUDY_SCHEMA.items():
        value = OmegaConf.select(spec, key, default=_ABSENT, throw_on_missing=False)
        if value is _ABSENT or value is None:
            if required:
                raise UserError(f"{path}: {key} is missing: expected {meaning}")
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value)
        if not allowed(value):
            raise UserError(f"{path}: {key}={value!r}: expected {meaning}")
    from tera.pretrain.config import load_config

    for size, extra in spec.pretrain.sizes.items():
        overrides = [*spec.pretrain.get("overrides", []), *[f"{k}={v}" for k, v in extra.items()],
                     "task.data=."]
        try:
            load_config(spec.pretrain.preset, overrides=overrides)
        except UserError as err:
            raise UserError(f"{path}: pretrain (size {size}): {err}") from None


_ABSENT = object()


# Rough seconds per step of a job running beside another on a 2-core CPU (one thread each),
# measured on the default study and scaled by the speed-ups of issue 15 (CPU time per update
# or per job, old against new code, side by side): only the ratios matter, the ETA rescales
# them by the time the finished jobs really took.
SECONDS_PER_PRETRAIN_UPDATE = 0.10  # the 100 % model; x (size / 100) ** 0.3 for the others
SECONDS_PER_DOWNSTREAM_JOB = 10.0  # process start, features, evaluation
SECONDS_PER_DOWNSTREAM_STEP = {"pr": 0.015, "ks": 0.0015, "sid": 0.007, "asr": 0.074,
                               "asv": 0.051}


@dataclass(eq=False)
class Job:
    """One step of the study: a `tera` command whose output lands in the study folder."""

    name: str  # what the progress lines call it
    args: list[str]  # the `tera` command line that does it
    log: Path  # its stdout and stderr
    cost: float  # expected seconds, for the ETA
    total: int  # its updates or steps, for the progress lines
    needs: Job | None = None  # starts only once this one has finished


def default_jobs() -> int:
    """Two jobs at a time on a CPU (tiny models use two cores poorly: two one-thread
    pre-trainings do 1.52x the updates of one two-thread pre-training on a 2-core machine,
    benchmarks/study_jobs.py), one on a GPU."""
    return 1 if torch.cuda.is_available() else max(1, min(2, os.cpu_count() or 1))


def study_seeds(spec: DictConfig, count: int | None = None) -> tuple[list[int], bool]:
    """(the study seeds 0 .. N-1, whether each seed pre-trains its own models)."""
    seeds = spec.get("seeds") or {}
    count = int(seeds.get("count", 1)) if count is None else count
    if count < 1:
        raise UserError(f"seeds: {count}; a study needs at least one seed")
    return list(range(count)), bool(seeds.get("pretraining", False))


def run_study(config: str | Path | None = None, quick: bool = False,
              out: str | Path | None = None, jobs: int | None = None,
              seeds: int | None = None) -> Path:

    spec = study_config(config, quick)
    seed_list, seed_pretraining = study_seeds(spec, seeds)
    out = Path(out or ("study-quick" if quick else "study"))
    with folder_lock(out, "tera study"):  # one study per folder
        return _run_study(spec, out, jobs, seed_list, seed_pretraining)


def _run_study(spec: DictConfig, out: Path, jobs: int | None, seed_list: list[int],
               seed_pretraining: bool) -> Path:
    from tera.corpora import default_corpus_dir
    from tera.corpora.synthetic import synthesize

    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs {jobs}: at least one job must run at a time")
    workers = jobs or default_jobs()
    threads = max(1, (os.cpu_count() or 1) // workers)
    corpus = Path(spec.corpus.root) if spec.corpus.root else default_corpus_dir(spec.corpus.preset)
    started = time.perf_counter()
    say(started, f"corpus {spec.corpus.preset} in {corpus}")
    if not spec.corpus.root:
        synthesize(corpus, spec.corpus.preset, int(spec.corpus.seed))
    check_study_corpus(out, corpus)
    manifest = out / "manifest"
    if not (manifest / "train.tsv").is_file():
        write_training_manifest(corpus, manifest)

    runs = [run for seed in (seed_list if seed_pretraining else [0])
            for run in pretrain_runs(spec, out, seed)]
    todo: list[Job] = []
    pretraining = {run.save_dir: pretrain_job(spec, run, manifest, out, threads) for run in runs}
    todo += [job for job in pretraining.values() if job is not None]
    upstreams = study_upstreams(spec, out, runs, seed_list, seed_pretraining)
    tasks = list(spec.downstream.tasks)
    for upstream in upstreams:
        for task in tasks:
            job = downstream_job(spec, task, upstream.upstream_name, upstream.ckpt, corpus,
                                 expdir(out, upstream.label, task, upstream.seed),
                                 f"{task} with {upstream.label}"
                                 + (f" (seed {upstream.seed})" if upstream.seed else ""),
                                 seed=FIRST_SEED + upstream.seed)
            if job is not None:
                job.needs = pretraining.get(upstream.run.save_dir) if upstream.run else None
                todo.append(job)
    say(started, f"{len(todo)} jobs to run, {workers} at a time with {threads} thread"
        f"{'s' if threads > 1 else ''} each; logs in {out / 'logs'}")
    run_jobs(todo, workers, threads, started)

    say(started, "report (bootstrap intervals and paired tests)")
    results, items = collect_results(out, upstreams, tasks)
    notes = [f"corpus: {corpus} ({spec.corpus.preset})",
             f"pre-training: preset {spec.pretrain.preset}, {spec.pretrain.budget_updates} "
             f"updates for the 100 % model at the full budget",
             "metrics in %; PER/WER/EER lower is better, accuracies higher is better; ASV "
             "checkpoints selected on dev trials",
             "recipe profile of each task (docs/superb.md): " + ", ".join(
                 f"{task} {profile}" for task, profile in
                 task_profiles(out, upstreams[0], tasks).items()),
             f"seeds: {len(seed_list)} (downstream --seed {FIRST_SEED}"
             + (f"..{FIRST_SEED + len(seed_list) - 1}" if len(seed_list) > 1 else "")
             + ("; each seed pre-trains its own models" if seed_pretraining and
                len(seed_list) > 1 else "") + ")"]
    return write_report(results, out, str(spec.title), notes, items)


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


def check_study_corpus(out: Path, corpus: Path) -> None:
    """A study folder holds the results of one corpus: refuse to mix in another (e.g. the
    embedded corpus made again by a newer generator)."""
    from tera.corpora.base import generator_of, is_embedded_corpus, read_summary
    from tera.runs.files import read_json, write_json

    if not is_embedded_corpus(corpus):
        return
    summary = read_summary(corpus)
    made = {key: summary.get(key) for key in ("preset", "seed")}
    made["generator"] = generator_of(summary)
    record = out / "corpus.json"
    if record.is_file():
        before = read_json(record)
        if before != made:
            raise UserError(f"{out} holds a study on the embedded corpus {before}, but the "
                            f"corpus is now {made}: choose another --out folder or delete {out}")
    else:
        write_json(record, made)


def say(started: float, text: str, eta_s: float | None = None) -> None:
    eta = "" if eta_s is None else f", ETA {eta_s / 60:.0f} min"
    print(f"[study | {(time.perf_counter() - started) / 60:.1f} min{eta}] {text}",
          file=sys.stderr, flush=True)


# --- running the jobs ---------------------------------------------------------------------


class Board:
    """The progress lines: one when a job starts or ends, and every minute what the running
    jobs are at. The ETA is the remaining jobs' expected cost, scaled by the time the finished
    ones took against theirs, shared among the workers."""

    def __init__(self, jobs: list[Job], workers: int, started: float) -> None:
        self.count, self.workers, self.started = len(jobs), workers, started
        self.cost_left = sum(job.cost for job in jobs)
        self.spent = self.counted = 0.0  # seconds and cost of the finished jobs
        self.running: dict[Job, float] = {}
        self.done = 0
        self.last = time.perf_counter()

    def eta(self) -> float:
        rate = self.spent / self.counted if self.counted else 1.0
        now = time.perf_counter()
        under_way = sum(min(now - since, 0.9 * job.cost * rate)
                        for job, since in self.running.items())
        return max(self.cost_left * rate - under_way, 0.0) / self.workers

    def say(self, text: str) -> None:
        say(self.started, f"{self.done}/{self.count} done; {text}", self.eta())
        self.last = time.perf_counter()

    def start(self, job: Job) -> None:
        self.running[job] = time.perf_counter()
        self.say(f"start {job.name}")

    def finish(self, job: Job) -> None:
        taken = time.perf_counter() - self.running.pop(job)
        self.spent, self.counted = self.spent + taken, self.counted + job.cost
        self.cost_left -= job.cost
        self.done += 1
        self.say(f"finished {job.name} in {taken / 60:.1f} min")

    def tick(self) -> None:
        if self.running and time.perf_counter() - self.last >= 60:
            self.say("running: " + "; ".join(f"{job.name} ({job_position(job)})"
                                             for job in self.running))


def job_position(job: Job) -> str:
    """'update 1200/3000' from the last progress record in the job's log."""
    try:
        with open(job.log, "rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - 4096, 0))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return "starting"
    for line in reversed(lines):
        try:
            record = json.loads(line[line.index("{"):])
        except ValueError:
            continue
        for key in ("update", "step"):
            if isinstance(record, dict) and key in record:
                return f"{key} {record[key]}/{job.total}"
    return "starting"


def run_jobs(jobs: list[Job], workers: int, threads: int, started: float) -> None:
    """Run every job as a `tera` process, `workers` at a time with `threads` threads each; a
    job waits for the job it needs. Pre-training goes first (the downstream jobs wait for
    it), then the longest jobs, so that no long job is left running alone at the end.

    Ctrl-C or SIGTERM stops the running jobs the way their commands stop (a pre-training
    saves its state) and the study with them; a failed job stops the study with the end of
    its log."""
    board = Board(jobs, workers, started)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    pending, running, finished = list(jobs), {}, set()
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        while pending or running:
            for job, process in list(running.items()):
                if process.poll() is None:
                    continue
                del running[job]
                if process.returncode in (130, 143):  # stopped by SIGINT / SIGTERM
                    raise KeyboardInterrupt
                if process.returncode:
                    raise UserError(f"{job.name} failed (exit status {process.returncode}); "
                                    f"the end of {job.log}:\n{_tail(job.log)}")
                finished.add(job)
                board.finish(job)
            ready = [job for job in pending if job.needs is None or job.needs in finished]
            ready.sort(key=lambda job: (job.args[0] != "pretrain", -job.cost))
            for job in ready[: workers - len(running)]:
                pending.remove(job)
                job.log.parent.mkdir(parents=True, exist_ok=True)
                with open(job.log, "a") as log:
                    log.write(f"$ tera {shlex.join(job.args)}\n")
                    log.flush()
                    running[job] = subprocess.Popen([sys.executable, "-m", "tera.cli", *job.args],
                                                    stdout=log, stderr=subprocess.STDOUT, env=env)
                board.start(job)
            if not running and pending:
                raise UserError("study jobs wait for jobs that are not in the study: "
                                + ", ".join(job.name for job in pending))
            board.tick()
            time.sleep(0.5)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for process in running.values():  # a pre-training saves its state on SIGTERM
            process.send_signal(signal.SIGTERM)
        for process in running.values():
            try:
                process.wait(timeout=300)
            except subprocess.TimeoutExpired:
                process.kill()


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def write_training_manifest(corpus: Path, manifest: Path) -> None:
    """Pre-training audio: the training splits of the three parts only, so that no dev or
    test utterance is seen, even without its label."""
    from tera.corpora import librispeech, speech_commands, voxceleb1
    from tera.pretrain.manifest import write_manifest_files

    utterances = (librispeech.load_split(corpus / "librispeech", "train")
                  + voxceleb1.load_identification(corpus / "voxceleb1", "train")
                  + [u for u in speech_commands.load_split(corpus / "speech_commands", "train")
                     if u.num_samples is None])
    files = sorted({u.path for u in utterances})
    write_manifest_files(corpus, files, manifest, valid_percent=0.03, seed=0)


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label).strip("_").lower()


def pretrain_runs(spec: DictConfig, out: Path, seed: int = 0) -> list[PretrainRun]:
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


def _config(spec: DictConfig, overrides: list[str], manifest: Path, save_dir: Path):
    from tera.pretrain.config import load_config

    return load_config(spec.pretrain.preset, overrides=[
        *overrides, f"task.data={manifest}", f"checkpoint.save_dir={save_dir}",
        "checkpoint.save_interval_updates=0"])


def pretrain_overrides(spec: DictConfig, run: PretrainRun, manifest: Path
                       ) -> tuple[list[str], int]:
    """The run's config overrides and max_update, from the planner (equal FLOPs for every
    size of a budget), with warm-up, validation and checkpoints scaled to it."""
    from tera.pretrain.planner import plan

    budget_cfg = _config(spec, [*spec.pretrain.overrides,
                                f"optimization.max_update={spec.pretrain.budget_updates}"],
                         manifest, run.save_dir)
    cfg = _config(spec, run.overrides, manifest, run.save_dir)
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
    cost = max_update * SECONDS_PER_PRETRAIN_UPDATE * (run.size / 100) ** 0.3
    return Job(f"pre-train {run.name}", ["pretrain", "--config-name", str(spec.pretrain.preset),
                                         *overrides],
               out / "logs" / f"pretrain_{run.save_dir.name}.log", cost, max_update)


def save_random_model(spec: DictConfig, path: Path, seed: int = 0) -> Path:
    """A randomly initialised TERA of the 100 % size (torch seed `seed`), saved so the
    runner can load it."""
    from tera.checkpoint import LoadedCheckpoint, save_checkpoint
    from tera.presets import load_preset, model_config
    from tera.pretrain.config import apply_override
    from tera.upstream import random_tera

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


def expdir(out: Path, label: str, task: str, seed: int = 0) -> Path:
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
    from tera.corpora import is_embedded_corpus
    from tera.downstream.recipe import load_recipe

    embedded = not spec.corpus.root or is_embedded_corpus(Path(spec.corpus.root))
    return load_recipe(task, None, "embedded" if embedded else None,
                       list(spec.downstream.overrides.get(task, [])))


def downstream_cost(task: str, steps: int) -> float:
    """Expected seconds of a downstream run of `steps` steps (for the ETA)."""
    return SECONDS_PER_DOWNSTREAM_JOB + SECONDS_PER_DOWNSTREAM_STEP.get(task, 0.05) * steps


def upstream_result(label: str, kind: str, ckpt: str | None, run: PretrainRun | None,
                    metrics: dict, weights: dict) -> UpstreamResult:
    from tera.checkpoint import load_checkpoint
    from tera.presets import count_parameters

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
