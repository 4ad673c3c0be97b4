"""Paper tasks: data, loss, metric and paper defaults, one file per task, plus a registry.

>>> from skiprnn.tasks import get_task
>>> task = get_task("adding", seq_len=100)
>>> x, y = task.sample_batch(4)          # x (4, 100, 2) float32, y (4,) float32

Registry: ``TASKS`` maps a name to its task class; ``get_task(name, **overrides)`` builds one
(unknown names or overrides raise ``ValueError`` listing the valid ones). See ``base.py`` for the
conventions shared by every task (item shapes, loss/metric, datasets).
"""

from __future__ import annotations

from .adding import AddingTask
from .base import SyntheticStream, SyntheticTask, Task, derive_seed, make_generator
from .frequency import FrequencyTask
from .mnist import (MNISTDataError, MNISTDataset, MNISTNotFoundError, MNISTTask, download_mnist,
                    load_mnist)

__all__ = [
    "TASKS", "get_task", "task_names",
    "Task", "SyntheticTask", "SyntheticStream", "AddingTask", "FrequencyTask", "MNISTTask",
    "MNISTDataset", "MNISTDataError", "MNISTNotFoundError", "load_mnist", "download_mnist",
    "derive_seed", "make_generator",
]

#: name -> task class
TASKS: dict[str, type[Task]] = {
    AddingTask.name: AddingTask,
    FrequencyTask.name: FrequencyTask,
    MNISTTask.name: MNISTTask,
}


def task_names() -> list[str]:
    """Valid task names, sorted."""
    return sorted(TASKS)


def get_task(name: str, **overrides) -> Task:
    """Build task ``name`` with its paper defaults, replacing the fields given in ``overrides``.

    Raises ``ValueError`` for an unknown name or override, listing the valid ones.
    """
    key = str(name).strip().lower().replace("-", "_")
    if key not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(task_names())}")
    cls = TASKS[key]
    valid = cls.field_names()
    bad = sorted(set(overrides) - set(valid))
    if bad:
        raise ValueError(f"task {key!r} has no option(s) {', '.join(map(repr, bad))}; "
                         f"valid options: {', '.join(valid)}")
    return cls(**overrides)
