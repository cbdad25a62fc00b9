"""What a study job is expected to cost, in seconds, for the ETA of the progress lines.

Rough seconds per step of a job running beside another on a 2-core CPU (one thread each),
measured on the default study: only the ratios matter, since the ETA rescales them by the
time the finished jobs really took.
"""

from __future__ import annotations

SECONDS_PER_PRETRAIN_UPDATE = 0.10  # the 100 % model; x (size / 100) ** 0.3 for the others
SECONDS_PER_DOWNSTREAM_JOB = 10.0  # process start, features, evaluation
SECONDS_PER_DOWNSTREAM_STEP = {"pr": 0.015, "ks": 0.0015, "sid": 0.007, "asr": 0.074,
                               "asv": 0.051}


def pretrain_cost(max_update: int, size: float) -> float:
    """Expected seconds of a pre-training of `max_update` updates of the `size` % model."""
    return max_update * SECONDS_PER_PRETRAIN_UPDATE * (size / 100) ** 0.3


def downstream_cost(task: str, steps: int) -> float:
    """Expected seconds of a downstream run of `steps` steps."""
    return SECONDS_PER_DOWNSTREAM_JOB + SECONDS_PER_DOWNSTREAM_STEP.get(task, 0.05) * steps
