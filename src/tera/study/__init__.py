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

The modules, in the order a study uses them:

- `config`: the study file, checked against `STUDY_SCHEMA`, and its seeds;
- `corpus`: one corpus per study folder, and the pre-training manifest;
- `plan`: the pre-trainings, the upstreams and each job's `tera` command;
- `cost`: each job's expected seconds, for the ETA;
- `scheduler`: the jobs run N at a time, with progress lines;
- `collect`: the results gathered into the report's rows;
- `run`: all of it, end to end (`run_study`).
"""

from tera.study.collect import collect_results, upstream_result
from tera.study.config import FIRST_SEED, STUDY_SCHEMA, check_study, study_config, study_seeds
from tera.study.corpus import check_study_corpus, write_training_manifest
from tera.study.plan import (
    PretrainRun,
    StudyUpstream,
    downstream_job,
    expdir,
    pretrain_config,
    pretrain_job,
    pretrain_runs,
    save_random_model,
    study_upstreams,
)
from tera.study.run import run_study
from tera.study.scheduler import Job, default_jobs, job_position, run_jobs

__all__ = [
    "FIRST_SEED", "STUDY_SCHEMA", "Job", "PretrainRun", "StudyUpstream", "check_study",
    "check_study_corpus", "collect_results", "default_jobs", "downstream_job", "expdir",
    "job_position", "pretrain_config", "pretrain_job", "pretrain_runs", "run_jobs",
    "run_study", "save_random_model", "study_config", "study_seeds", "study_upstreams",
    "upstream_result", "write_training_manifest",
]
