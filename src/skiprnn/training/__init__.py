"""Training on Lightning: the LightningModule, data modules, callbacks, ``fit()`` and the paper's
tables (``reproduce``). Needs the ``train`` extra (lightning, matplotlib, tensorboard, tqdm)."""

from .config import ConfigError, RunConfig
from .fit import RunInterrupted, evaluate_run, fit, load_module

__all__ = ["RunConfig", "ConfigError", "fit", "evaluate_run", "load_module", "RunInterrupted",
           "SkipRNNModule", "TaskDataModule"]


def __getattr__(name):  # lazy: importing skiprnn.training must not require lightning at once
    if name == "SkipRNNModule":
        from .module import SkipRNNModule
        return SkipRNNModule
    if name == "TaskDataModule":
        from .data import TaskDataModule
        return TaskDataModule
    raise AttributeError(name)
