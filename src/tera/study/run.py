"""Running a study end to end: the corpus, the jobs, the report."""

from __future__ import annotations

import os
import time
from pathlib import Path

from omegaconf import DictConfig

from tera.corpora import default_corpus_dir
from tera.corpora.synthetic import synthesize
from tera.errors import UserError
from tera.report import write_report
from tera.runs.lock import folder_lock
from tera.study.collect import collect_results, task_profiles
from tera.study.config import FIRST_SEED, study_config, study_seeds
from tera.study.corpus import check_study_corpus, write_training_manifest
from tera.study.plan import downstream_job, expdir, pretrain_job, pretrain_runs, study_upstreams
from tera.study.scheduler import Job, default_jobs, run_jobs, say


def run_study(config: str | Path | None = None, quick: bool = False,
              out: str | Path | None = None, jobs: int | None = None,
              seeds: int | None = None) -> Path:
    """Run the study of the file `config` (None: the shipped default, or quick, study) in
    `out`, `jobs` at a time, with `seeds` seeds (None: the file's), skipping what is done;
    return the path of its report.md."""
    spec = study_config(config, quick)
    seed_list, seed_pretraining = study_seeds(spec, seeds)
    out = Path(out or ("study-quick" if quick else "study"))
    with folder_lock(out, "tera study"):  # one study per folder
        return _run_study(spec, out, jobs, seed_list, seed_pretraining)


def _run_study(spec: DictConfig, out: Path, jobs: int | None, seed_list: list[int],
               seed_pretraining: bool) -> Path:
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
