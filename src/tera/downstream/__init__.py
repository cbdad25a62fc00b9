"""Downstream evaluation: one runner (`runner`), a small file per SUPERB task."""

DEFAULT_SEED = 1337  # a downstream run's seed unless told (s3prl's run_downstream default)
