"""The downstream tasks there are: one tuple of `Task` classes, in the report's column
order, and the look-ups the runner, the report and the study make in it. Everything else
about a task (its metric, direction, header, corpus folder, s3prl names, cost per step) is
a class attribute of its `Task`."""

from __future__ import annotations

from tera.downstream.asr import AsrTask
from tera.downstream.asv import AsvTask
from tera.downstream.base import Task
from tera.downstream.ks import KsTask
from tera.downstream.pr import PrTask
from tera.downstream.sid import SidTask
from tera.errors import UserError

TASK_CLASSES: tuple[type[Task], ...] = (PrTask, KsTask, SidTask, AsrTask, AsvTask)


def task_names() -> list[str]:
    """The tasks' names in column order."""
    return [task.name for task in TASK_CLASSES]


def task_class(name: str) -> type[Task]:
    """The task called `name` or one of its s3prl names (`ctc`, `speech_commands`, ...)."""
    for task in TASK_CLASSES:
        if name == task.name or name in task.aliases:
            return task
    aliases = [alias for task in TASK_CLASSES for alias in task.aliases]
    raise UserError(f"unknown downstream task {name!r}; choose one of "
                    f"{', '.join(task_names())} (or s3prl's {', '.join(aliases)})")
