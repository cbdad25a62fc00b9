"""What a study job is expected to cost, in seconds, for the ETA of the progress lines.

Rough seconds per pre-training update here, and per downstream step in each task class
(`Task.seconds_per_step`), of a job running beside another on a 2-core CPU (one thread each),
measured on the default study: only the ratios matter, since the ETA rescales them by the
time the finished jobs really took.
"""

from __future__ import annotations

from tera.downstream.tasks import task_class

SECONDS_PER_PRETRAIN_UPDATE = 0.10  # the 100 % model; x (size / 100) ** 0.3 for the others
SECONDS_PER_DOWNSTREAM_JOB = 10.0  # process start, features, evaluation


def pretrain_cost(max_update: int, size: float) -> float:
    """Expected seconds of a pre-training of `max_update` updates of the `size` % model."""
    return max_update * SECONDS_PER_PRETRAIN_UPDATE * (size / 100) ** 0.3


def downstream_cost(task: str, steps: int) -> float:
    """Expected seconds of a downstream run of `steps` steps (the task's own step cost)."""
    return SECONDS_PER_DOWNSTREAM_JOB + task_class(task).seconds_per_step * steps
