"""Downstream evaluation: one runner (`runner`, its run's state and training loop in
`training`), a small file per SUPERB task, all of them listed in `tasks`."""

DEFAULT_SEED = 1337  # a downstream run's seed unless told (s3prl's run_downstream default)
# The feature cache's default size budget in GB: above it, features are computed at every
# step (as s3prl does) instead of being stored.
CACHE_BUDGET_GB = 8.0
