"""Callbacks: stop when solved, save a resumable checkpoint on Ctrl-C / SIGTERM, wall clock, one
line per validation; ``quiet_lightning``: Lightning's messages that say nothing about a run."""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Checkpoint, TQDMProgressBar
from lightning.pytorch.utilities.rank_zero import rank_zero_info

__all__ = ["SolvedStopping", "InterruptCheckpoint", "LastCheckpoint", "WallClock",
           "StepMetricsProgressBar", "ValidationLines", "quiet_lightning"]


#: warnings of Lightning / torch that no skiprnn user can act on: (message regex, why it is harmless)
_QUIET_WARNINGS = (
    # torch deprecated LeafSpec; Lightning's own pytree code still uses it
    (r".*isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # the synthetic training stream (an IterableDataset with a length: batches per validation
    # period) is generated in the training process: the warning is about worker processes
    (r"Your `IterableDataset` has `__len__` defined", UserWarning),
    # a resumed run writes into its own checkpoints/ (a new run refuses a directory holding one)
    (r"Checkpoint directory .* exists and is not empty", UserWarning),
)


@contextlib.contextmanager
def quiet_lightning():
    """Silence, while training, what Lightning prints on every run that is not about the run: the
    "💡 Tip" advert for its cloud logger and the warnings in ``_QUIET_WARNINGS``."""
    from lightning.fabric.utilities.rank_zero import rank_zero_module
    log = rank_zero_module.log
    def drop(record) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip")
    log.addFilter(drop)
    try:
        with warnings.catch_warnings():
            for message, category in _QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            yield
    finally:
        log.removeFilter(drop)


class SolvedStopping(pl.Callback):
    """Stop training once the task is solved on the validation set (synthetic tasks).

    With ``patience = 0`` training stops at the first solved validation. With ``patience = k``
    it goes on while solved validations keep lowering the mean number of updates (by more than
    ``min_delta`` per sequence) and stops after ``k`` validations without a new such best — the
    budget loss needs that time to remove updates once the task itself is solved. Validations
    that are no longer solved count as "no progress". With ``ckpt_path``, each new best (solved,
    fewest updates on validation) is saved there (``best_solved.ckpt``).
    """

    def __init__(self, task, patience: int = 0, min_delta: float = 0.25, ckpt_path=None):
        self.task = task
        self.ckpt_path = None if ckpt_path is None else Path(ckpt_path)
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.best_updates = float("inf")
        self.wait = 0
        self.triggered = False
        self.solved_at_step = None

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics.get(f"val/{self.task.metric_name}")
        u = trainer.callback_metrics.get("val/updates")
        if m is None or u is None:
            return
        solved = bool(self.task.solved(float(m)))
        if self.solved_at_step is None:
            if not solved:
                return
            self.solved_at_step = int(trainer.global_step)
        # once solved, every validation that is not a new best (solved with fewer updates) counts:
        # a run that loses the solution (e.g. the gate collapses) stops too
        u = float(u)
        if solved and u < self.best_updates - self.min_delta:
            self.best_updates = u
            self.wait = 0
            if self.ckpt_path is not None:   # the solved model with the fewest updates so far
                trainer.save_checkpoint(self.ckpt_path, weights_only=False)
        else:
            self.wait += 1
        if self.patience == 0 or self.wait >= self.patience:
            self.triggered = True
            trainer.should_stop = True
            rank_zero_info(f"[skiprnn] solved on validation at step {self.solved_at_step}; stopping at "
                           f"step {trainer.global_step} ({self.task.metric_name}={float(m):.4g}, "
                           f"{u:.2f} updates/sequence; best solved: {self.best_updates:.2f})")

    def state_dict(self):
        return {"best_updates": self.best_updates, "wait": self.wait,
                "solved_at_step": self.solved_at_step}

    def load_state_dict(self, state):
        self.best_updates = state.get("best_updates", float("inf"))
        self.wait = state.get("wait", 0)
        self.solved_at_step = state.get("solved_at_step")


class InterruptCheckpoint(pl.Callback):
    """On KeyboardInterrupt / SIGTERM (or any crash) write ``last.ckpt`` so ``--resume`` continues."""

    def __init__(self, path):
        self.path = Path(path)
        self.interrupted = False

    def on_exception(self, trainer, pl_module, exception):
        self.interrupted = True
        if trainer.state.fn != "fit" or trainer.global_step == 0 and trainer.current_epoch == 0:
            return
        try:
            ckpt = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
            if trainer.is_global_zero:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                trainer.strategy.checkpoint_io.save_checkpoint(ckpt, self.path)
                rank_zero_info(f"[skiprnn] {type(exception).__name__}: saved a resumable checkpoint at "
                               f"step {trainer.global_step} to {self.path}")
        except Exception as e:  # pragma: no cover - best effort while shutting down
            rank_zero_info(f"[skiprnn] could not save an interrupt checkpoint: {e}")


class LastCheckpoint(Checkpoint):
    """``last.ckpt`` = the latest state: after every validation, at the step where training
    stops (before the epoch is closed, so a resume goes on mid-epoch), and at the end of
    training if neither wrote it. A ``Checkpoint`` so Lightning runs it after the other
    callbacks (their state, e.g. the best score or the Timer's stop, is then current)."""

    def __init__(self, path):
        self.path = Path(path)
        self.saved_step = None

    def _save(self, trainer):
        trainer.save_checkpoint(self.path, weights_only=False)  # full state (resumable)
        self.saved_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.should_stop or (trainer.max_steps is not None and trainer.max_steps > 0
                                   and trainer.global_step >= trainer.max_steps):
            self._save(trainer)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._save(trainer)

    def on_train_end(self, trainer, pl_module):
        if self.saved_step != trainer.global_step:
            self._save(trainer)


class WallClock(pl.Callback):
    """Training wall time, accumulated across resumed sessions (saved in checkpoints)."""

    def __init__(self):
        self.previous = 0.0
        self._start = None

    def on_train_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return self.previous + (0.0 if self._start is None else time.perf_counter() - self._start)

    def state_dict(self):
        return {"elapsed": self.elapsed}

    def load_state_dict(self, state):
        self.previous = float(state.get("elapsed", 0.0))


class StepMetricsProgressBar(TQDMProgressBar):
    """The TQDM bar with the training values the module read at its last logging step
    (``SkipRNNModule.progress_values``: loss, metric, update fraction). Logged as progress-bar
    metrics instead, Lightning would read them from the device after every batch (a host-GPU
    sync per step)."""

    def get_metrics(self, trainer, pl_module):
        metrics = super().get_metrics(trainer, pl_module)
        for k, v in getattr(pl_module, "progress_values", {}).items():
            metrics[f"train/{k}"] = v
        return metrics


class ValidationLines(pl.Callback):
    """One line per validation on stdout (rank 0): step, epoch, the validation values and the
    elapsed time; used instead of the progress bar with ``--no-progress`` or when stdout is not a
    terminal (a log file would fill with the bar's redraws)."""

    def __init__(self, metric_name: str):
        self.metric_name = metric_name
        self._t0 = None

    def on_train_start(self, trainer, pl_module):
        self._t0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        parts = [f"{k} {float(m[f'val/{k}']):.4g}" for k in ("loss", self.metric_name, "updates")
                 if f"val/{k}" in m]
        if "val/update_fraction" in m:
            parts.append(f"({100 * float(m['val/update_fraction']):.1f}%)")
        held = f"val/{self.metric_name}_held_open"   # logged while a metric warm-up holds
        warmup = getattr(pl_module, "metric_warmup", None)
        if held in m and warmup is not None and warmup.passed_at is None:
            parts.append(f"[gate held open: {self.metric_name} {float(m[held]):.4g}]")
        took = time.perf_counter() - self._t0 if self._t0 is not None else 0.0
        print(f"[skiprnn] step {trainer.global_step} (epoch {trainer.current_epoch}): validation "
              + " ".join(parts) + f"  [{took:.0f} s]", flush=True)
