"""``fit()``: one training run in its own directory, and ``evaluate_run()`` for a finished one.

A run directory holds::

    config.json            the resolved RunConfig (what --resume and evaluate rebuild)
    csv/metrics.csv        CSVLogger (a resumed session logs to csv_resume<k>/)
    tb/                    TensorBoard logs
    checkpoints/best.ckpt  best validation loss (task loss + budget)
    checkpoints/last.ckpt  latest state: written at every validation, at the last step and on
                           Ctrl-C / SIGTERM (a resumed run trains the same batches, with the same
                           random state, as one that was never stopped)
    results.json           task, model, λ, p_skip, seed, test metric, solved, updates, FLOPs, ...
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from .._env import git_commit
from .config import RECIPE_CONTROLS, SOLVED_LEVEL, ConfigError, RunConfig

__all__ = ["fit", "evaluate_run", "load_module", "read_checkpoint", "choose_checkpoint", "RunInterrupted",
           "environment_info", "git_commit"]


class RunInterrupted(RuntimeError):
    """Training was interrupted (Ctrl-C / SIGTERM) after saving a resumable checkpoint."""

    def __init__(self, run_dir, step):
        self.run_dir, self.step = Path(run_dir), step
        super().__init__(f"training interrupted at step {step}; a resumable checkpoint is in "
                         f"{self.run_dir / 'checkpoints' / 'last.ckpt'}. Continue with: "
                         f"skiprnn train --resume {self.run_dir}")


def environment_info(device: Optional[torch.device] = None, commit: Optional[str] = None) -> dict:
    """Versions, hardware and ``commit`` (default: ``git_commit()`` now)."""
    import lightning

    from .. import __version__
    from ..ops.cpu_kernels import kernel_status
    info = {
        "skiprnn": __version__, "torch": torch.__version__, "lightning": lightning.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "git_commit": commit or git_commit(),
        "cpu_flush_denormal": flushing_denormals(),
        # how the Skip LSTM's CPU loop ran: the fused C kernels and the torch ops round differently
        "cpu_kernels": kernel_status(),
    }
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["gpu"] = torch.cuda.get_device_name(device if device is not None and device.type == "cuda" else 0)
    return info


def trainer_is_zero() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def _accelerator(cfg: RunConfig) -> str:
    acc = cfg.accelerator
    if acc == "cuda":
        acc = "gpu"
    if acc == "gpu" and not torch.cuda.is_available():
        raise ConfigError("--accelerator gpu was asked for but no CUDA device is available "
                          f"(torch {torch.__version__}, cuda available: False)")
    return acc


def _devices(v):
    return int(v) if isinstance(v, str) and v != "auto" and "," not in v else v


def _new_log_version(run_dir: Path) -> tuple[str, str]:
    if not (run_dir / "csv").exists():
        return "csv", "tb"
    k = 1
    while (run_dir / f"csv_resume{k}").exists():
        k += 1
    return f"csv_resume{k}", f"tb_resume{k}"


def _command_line() -> str:
    """The command that started this process, as one can type it again."""
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    if prog in ("__main__.py", "-m", "-c", ""):
        prog = "python -m skiprnn"
    return " ".join([prog] + [shlex.quote(a) for a in sys.argv[1:]])


def _seeded_evaluate(module, loader, device, seed: int) -> dict:
    """``module.evaluate`` with the global RNGs seeded by ``seed`` (random-skip masks: the same
    numbers on every call) and restored afterwards."""
    device = torch.device(device)
    devs = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devs):
        torch.manual_seed(int(seed))
        return module.evaluate(loader, device=device)


def read_checkpoint(path, what_to_do: str) -> dict:
    """The checkpoint at ``path`` (on the CPU); a missing, empty, truncated or foreign file raises
    :class:`ConfigError` naming the file, what went wrong and ``what_to_do``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no checkpoint {path}; {what_to_do}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:   # zip reader / unpickling / EOF errors of a damaged file
        detail = (str(e).strip().splitlines() or [""])[0]
        raise ConfigError(f"cannot read the checkpoint {path} ({path.stat().st_size} bytes: empty, "
                          f"truncated or not a checkpoint; {type(e).__name__}: {detail}); "
                          f"{what_to_do}") from None
    if not isinstance(ck, dict) or "state_dict" not in ck:
        raise ConfigError(f"{path} is not a checkpoint of a skiprnn run (no state_dict); {what_to_do}")
    return ck


def load_initial_weights(module, path) -> None:
    """Load the weights of the checkpoint at ``path`` into ``module`` (``--init-from``); a
    checkpoint of another model or size raises :class:`ConfigError` naming what differs."""
    what = "--init-from needs a checkpoint of a run of the same model, layers and hidden size"
    state = read_checkpoint(path, what)["state_dict"]
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} (this run: {tuple(own[k].shape)})"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or extra or shapes:
        parts = [f"{w} {sep.join(v)}" for w, sep, v in (
            ("missing", ", ", missing), ("not in this model", ", ", extra),
            ("other shapes", "; ", shapes)) if v]
        raise ConfigError(f"{path} does not fit this run's model: {'; '.join(parts)}. {what}")
    module.load_state_dict(state)


def _remove_new_entries(run_dir: Path, before: Optional[set]) -> Path:
    """Remove ``run_dir`` (``before`` None: this run created it) or the entries of it that are not
    in ``before``."""
    import shutil
    for p in ([run_dir] if before is None else [p for p in run_dir.iterdir() if p not in before]):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return run_dir


def _holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds (part of) a run: a killed run leaves config.json and csv/."""
    return any((run_dir / p).exists() for p in ("results.json", "checkpoints", "config.json", "csv"))


def _nothing_to_do(run_dir: Path, step: int, verbose: bool) -> Optional[dict]:
    """A resume that has nothing left to train: the run's results.json stays as it is."""
    old = run_dir / "results.json"
    if verbose and trainer_is_zero():
        print(f"[skiprnn] {run_dir} is already at step {step}; nothing to do (raise --max-steps / "
              "--max-epochs / --max-time to train further)", flush=True)
    return json.loads(old.read_text()) if old.exists() else None


def flushing_denormals() -> bool:
    """Whether CPU float arithmetic flushes subnormal numbers to zero in this thread."""
    return bool((torch.tensor([1e-39], dtype=torch.float32) * 1.0).item() == 0.0)


def fit(cfg: RunConfig, resume: Optional[str | os.PathLike] = None, overwrite: bool = False,
        verbose: bool = True, callbacks: Optional[list] = None) -> Optional[dict]:
    """Train one run; returns the results dict (written to RUN/results.json) on rank 0, else None.

    ``resume``: a run directory; its config.json is used (``cfg`` supplies new stop rules only)
    and training continues from ``checkpoints/last.ckpt``. Raises :class:`RunInterrupted` after
    Ctrl-C / SIGTERM (a resumable last.ckpt has been written). A resume with nothing left to
    train (already at ``max_steps``) keeps results.json and returns it. ``callbacks``: extra
    Lightning callbacks (tests).

    CPU arithmetic flushes subnormal floats to zero while it runs (``torch.set_flush_denormal``;
    the caller's setting is restored after): gradients back-propagated through hundreds of steps
    decay into subnormal numbers, which x86 CPUs process 10-100x slower. One sequential-MNIST
    training step (batch 256, 784 steps, one thread) took ~16 s with them instead of ~1.3 s
    (nn.LSTM and Skip LSTM alike), with the same gradients to 6 digits.
    """
    before = flushing_denormals()
    torch.set_flush_denormal(True)
    from .callbacks import quiet_lightning
    created: list = []
    try:
        with quiet_lightning():
            return _fit(cfg, resume, overwrite, verbose, callbacks, created)
    except BaseException as e:
        # a new run that failed (or was stopped) before its first checkpoint leaves nothing
        # behind: a half-written directory would only block the same --out
        if created and not (created[0][0] / "checkpoints" / "last.ckpt").exists():
            run_dir = _remove_new_entries(*created[0])
            if isinstance(e, RunInterrupted):   # there is no checkpoint to resume from
                raise KeyboardInterrupt(f"interrupted before the first checkpoint; {run_dir} "
                                        "was removed") from e
        raise
    finally:
        torch.set_flush_denormal(before)


def _fit(cfg: RunConfig, resume, overwrite: bool, verbose: bool, callbacks,
         created: Optional[list] = None) -> Optional[dict]:
    import lightning.pytorch as pl

    from .data import TaskDataModule
    from .module import SkipRNNModule

    run_dir, ckpt_path, start_step = _open_run_dir(cfg, resume, overwrite)
    cfg.validate()
    # a resume with nothing left to train keeps results.json; without one (stopped in the last
    # validation or the test evaluation) the run goes on: Lightning re-runs an interrupted
    # validation, then the test evaluation writes results.json
    done = resume is not None and (run_dir / "results.json").exists()
    if done and cfg.max_steps and start_step >= cfg.max_steps:
        return _nothing_to_do(run_dir, start_step, verbose)
    acc = _accelerator(cfg)
    _set_torch_threads(cfg, acc)

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    conf = cfg.to_dict()
    module = SkipRNNModule(conf)
    if resume is not None:
        _report_changed_settings(run_dir, conf)
    elif cfg.init_from is not None:
        load_initial_weights(module, cfg.init_from)
    task = module.task
    data_source = task.data_source()   # reads the data now: missing files fail before any is written
    dm = TaskDataModule(task, seed=cfg.seed, eval_batch_size=cfg.eval_batch_size,
                        num_workers=cfg.num_workers)

    if created is not None and resume is None and trainer_is_zero():
        created.append((run_dir, set(run_dir.iterdir()) if run_dir.is_dir() else None))
    run_dir.mkdir(parents=True, exist_ok=True)
    cbs = _RunCallbacks(cfg, task, run_dir / "checkpoints", verbose, callbacks)
    trainer = _make_trainer(cfg, acc, task, run_dir, cbs, verbose)
    if trainer.is_global_zero:
        _save_and_announce(cfg, module, run_dir, verbose)

    commit = git_commit()   # the code that trains: HEAD may move while a long run goes on
    session_time = _train(trainer, module, dm, ckpt_path, cbs.interrupt, run_dir)
    if not trainer.is_global_zero:
        return None
    if done and trainer.global_step == start_step:
        # nothing trained in this session (already at its stop rule): keep the run's results
        return _nothing_to_do(run_dir, start_step, verbose)

    measured = _measure_test(module, dm, cfg, run_dir / "checkpoints")
    others = _measure_other_checkpoints(module, dm, cfg, run_dir / "checkpoints", measured[2])
    results = _results(cfg, module, trainer, cbs, measured, data_source=data_source,
                       session_time=session_time, commit=commit, run_dir=run_dir)
    results["test_other_checkpoints"] = others
    (run_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    if verbose:
        print(format_summary(results), flush=True)
    return results


def _open_run_dir(cfg: RunConfig, resume, overwrite: bool) -> tuple[Path, Optional[str], Optional[int]]:
    """``(run_dir, checkpoint to continue from, its step)`` of a resume, or of a new run (whose
    directory is chosen, checked and, with ``overwrite``, emptied; ``cfg.out`` is set to it)."""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.json").exists():
            raise ConfigError(f"--resume {run_dir}: not a run directory (no config.json)")
        last = run_dir / "checkpoints" / "last.ckpt"
        if not last.exists():
            raise ConfigError(f"--resume {run_dir}: no checkpoints/last.ckpt to continue from")
        start_step = int(read_checkpoint(last, (
            f"the run cannot be continued from it. Train it again into the same directory with "
            f"--out {run_dir} --overwrite (its settings are in {run_dir / 'config.json'}), or "
            f"measure its best weights with `skiprnn evaluate {run_dir} --ckpt best`")).get("global_step", 0))
        return run_dir, str(last), start_step
    cfg.validate()
    run_dir = Path(cfg.out) if cfg.out else Path("runs") / (
        cfg.run_name() + "-" + _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    # DDP: the other ranks re-run this command once rank 0 has started the run in run_dir
    if trainer_is_zero() and _holds_run(run_dir):
        if not overwrite:
            if (run_dir / "checkpoints" / "last.ckpt").exists() or not (run_dir / "config.json").exists():
                raise ConfigError(f"run directory {run_dir} already holds a run; use --resume {run_dir} "
                                  "to continue it, --overwrite to replace it, or another --out")
            raise ConfigError(f"run directory {run_dir} already holds a run that stopped before its "
                              "first checkpoint (nothing to resume); use --overwrite to replace it, "
                              "or another --out")
        import shutil
        shutil.rmtree(run_dir)
    cfg.out = str(run_dir)
    return run_dir, None, None


def _set_torch_threads(cfg: RunConfig, acc: str) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif acc == "cpu" or (acc == "auto" and not torch.cuda.is_available()):
        # a 110-unit RNN's small matmuls gain nothing from more threads, and oversubscribed
        # cores (parallel runs, shared machines) make them many times slower
        torch.set_num_threads(1)
    if acc in ("gpu", "auto") and torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")


def _report_changed_settings(run_dir: Path, conf: dict) -> None:
    """A resume's settings that differ from the run's config.json, printed (rank 0)."""
    conf_saved = json.loads((run_dir / "config.json").read_text())
    changed = {k: (conf_saved.get(k), v) for k, v in conf.items() if conf_saved.get(k) != v}
    if changed and trainer_is_zero():
        print("[skiprnn] resume with changed settings: "
              + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changed.items()), flush=True)


class _RunCallbacks:
    """The Lightning callbacks of one run, with the ones ``_fit`` reads afterwards by name."""

    def __init__(self, cfg: RunConfig, task, ckpt_dir: Path, verbose: bool, extra: Optional[list]):
        from lightning.pytorch.callbacks import ModelCheckpoint

        from .callbacks import (InterruptCheckpoint, LastCheckpoint, SolvedStopping,
                                StepMetricsProgressBar, ValidationLines, WallClock)

        # best.ckpt only; last.ckpt is LastCheckpoint's (ModelCheckpoint(save_last=True) with a
        # monitor rewrites last.ckpt only when the monitored loss improves)
        # saved after validations only (not at the end of a training epoch, which a run stopped by
        # --max-steps before its first validation reaches with no validation loss to compare)
        kw = dict(dirpath=str(ckpt_dir), save_top_k=1, save_last=False,
                  auto_insert_metric_name=False, enable_version_counter=False,
                  save_on_train_epoch_end=False)
        self.best = ModelCheckpoint(filename="best", monitor="val/loss", mode="min", **kw)
        # best_metric.ckpt: the best validation task metric alone (OTHER_TEST_CHECKPOINTS)
        self.best_metric = ModelCheckpoint(
            filename="best_metric", monitor=f"val/{task.metric_name}",
            mode="max" if task.higher_is_better else "min", **kw)
        self.interrupt = InterruptCheckpoint(ckpt_dir / "last.ckpt")
        self.clock = WallClock()
        self.all = [self.best, self.best_metric, LastCheckpoint(ckpt_dir / "last.ckpt"),
                    self.interrupt, self.clock]
        self.solved = None
        if cfg.stop_when_solved and task.solved(0.0 if not task.higher_is_better else 1.0) is not None:
            self.solved = SolvedStopping(task, patience=cfg.solved_patience,
                                         ckpt_path=ckpt_dir / "best_solved.ckpt")
            self.all.append(self.solved)
        # the bar on a terminal; else (--no-progress, or stdout a log file) one line per validation
        self.progress_bar = bool(cfg.progress_bar) and sys.stdout.isatty()
        if self.progress_bar:
            self.all.append(StepMetricsProgressBar(refresh_rate=10))
        elif verbose:   # first: its line comes before the stopping callbacks' messages
            self.all.insert(0, ValidationLines(task.metric_name))
        self.all += list(extra or [])


def _make_trainer(cfg: RunConfig, acc: str, task, run_dir: Path, cbs: _RunCallbacks, verbose: bool):
    """The Lightning Trainer of the run (``cfg.precision`` becomes the precision it runs at)."""
    import lightning.pytorch as pl

    trainer_kw = {}
    if hasattr(task, "sample"):
        n_batches = getattr(task, "train_batches_per_epoch", None) or 50
    else:
        n_batches = -(-len(task.train_dataset(cfg.seed)) // task.batch_size)
        if cfg.val_every and cfg.val_every < n_batches:   # real datasets: validate every N batches
            trainer_kw["val_check_interval"] = int(cfg.val_every)
    trainer = pl.Trainer(
        accelerator=acc, devices=_devices(cfg.devices), num_nodes=cfg.num_nodes, strategy=cfg.strategy,
        precision=cfg.precision, max_steps=cfg.max_steps if cfg.max_steps else -1,
        max_epochs=cfg.max_epochs if cfg.max_epochs else (None if cfg.max_steps or cfg.max_time else 1),
        max_time=cfg.max_time, gradient_clip_val=task.grad_clip or None,
        gradient_clip_algorithm="norm", logger=_loggers(run_dir), callbacks=cbs.all,
        enable_progress_bar=cbs.progress_bar, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=max(1, min(50, n_batches)),
        default_root_dir=str(run_dir), deterministic=False, **trainer_kw)
    if cfg.max_epochs is None and not cfg.max_steps and cfg.max_time:
        trainer.fit_loop.max_epochs = -1
    if str(trainer.precision) != str(cfg.precision):   # e.g. 16-mixed runs as bf16-mixed on CPU
        if verbose and trainer.is_global_zero:
            print(f"[skiprnn] precision {cfg.precision} runs as {trainer.precision} here; recorded as "
                  f"{trainer.precision}", flush=True)
        cfg.precision = str(trainer.precision)
    return trainer


def _loggers(run_dir: Path) -> list:
    """A CSV logger and, when tensorboard is installed, a TensorBoard one (new versions on a resume)."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    csv_v, tb_v = _new_log_version(run_dir)
    loggers = [CSVLogger(save_dir=str(run_dir), name="", version=csv_v)]
    try:
        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="", version=tb_v,
                                         default_hp_metric=False))
    except ModuleNotFoundError:  # pragma: no cover - tensorboard is optional
        pass
    return loggers


def _save_and_announce(cfg: RunConfig, module, run_dir: Path, verbose: bool) -> None:
    """Write the run's config.json and (``verbose``) its one-line description."""
    cfg.save(run_dir / "config.json")
    if verbose:
        task = module.task
        print(f"[skiprnn] run {run_dir}: {cfg.task} / {cfg.model}"
              + (f" λ={cfg.cost_per_sample:g}" if module.learned_gate else "")
              + (f" p_skip={cfg.p_skip:g}" if cfg.model.startswith('random_') else "")
              + f", lr={task.lr:g}, batch={task.batch_size}, hidden={task.hidden_size}, "
              f"seed={cfg.seed}, backend={cfg.backend}; recipe {cfg.recipe}"
              + (f" ({d})" if (d := recipe_description(cfg, module.learned_gate)) else ""), flush=True)


def _train(trainer, module, dm, ckpt_path: Optional[str], interrupt, run_dir: Path) -> float:
    """``trainer.fit``; returns its wall time, raises :class:`RunInterrupted` when it was stopped."""
    t0 = time.perf_counter()
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    except SystemExit as e:   # Lightning exits after KeyboardInterrupt; SIGTERM raises SIGTERMException
        if interrupt.interrupted:
            raise RunInterrupted(run_dir, trainer.global_step) from e
        raise
    if interrupt.interrupted:
        raise RunInterrupted(run_dir, trainer.global_step)
    return time.perf_counter() - t0


def choose_checkpoint(ckpt_dir: Path, ckpt: str) -> tuple[str, Path]:
    """``(name, path)`` of the weights that ``ckpt`` names in a run's ``checkpoints/``.

    'best': the solved validation checkpoint with the fewest updates when the run has one
    (``best_solved.ckpt``, stop-when-solved runs: the paper reports "solved" and the number of
    updates), else the one with the lowest validation loss (``best.ckpt``: task loss + budget);
    'last', 'best_solved' and 'best_metric' (the best validation task metric, no budget term):
    those files; anything else is a file path. The file may not exist
    (no validation before the run stopped): the caller decides what then."""
    ckpt_dir = Path(ckpt_dir)
    if ckpt == "best" and (ckpt_dir / "best_solved.ckpt").exists():
        return "best_solved", ckpt_dir / "best_solved.ckpt"
    if ckpt in ("best", "last", "best_solved", "best_metric"):
        return ckpt, ckpt_dir / f"{ckpt}.ckpt"
    return ckpt, Path(ckpt)


def _measure_test(module, dm, cfg: RunConfig, ckpt_dir: Path) -> tuple[dict, Optional[int], str]:
    """``(test metrics, the checkpoint's step, its name)``: the test set measured on one device,
    exactly (no DDP padding), on the checkpoint ``cfg.test_ckpt`` names; on the final weights
    ('final') when that checkpoint was never written."""
    which, path = choose_checkpoint(ckpt_dir, cfg.test_ckpt)
    if path.exists():
        return (*_test_on(module, dm, cfg, path), which)
    return _seeded_evaluate(module, dm.test_dataloader(), module.device, cfg.seed), None, "final"


def _test_on(module, dm, cfg: RunConfig, path: Path) -> tuple[dict, Optional[int]]:
    """``(test metrics, step)`` of the checkpoint at ``path``, loaded into ``module``."""
    ck = read_checkpoint(path, "the test metrics cannot be measured on it")
    module.load_state_dict(ck["state_dict"])
    test = _seeded_evaluate(module, dm.test_dataloader(), module.device, cfg.seed)
    return test, ck.get("global_step")


#: checkpoints measured on the test set besides the one results.json reports: the final weights
#: (the paper's "after 600 epochs") and the best validation task metric alone, no budget term
#: (the paper code's "best validation performance"), so that a table can report both rules
OTHER_TEST_CHECKPOINTS = ("last", "best_metric")


def _measure_other_checkpoints(module, dm, cfg: RunConfig, ckpt_dir: Path, measured: str) -> dict:
    """``{name: {step, metric, updates_mean, updates_percent, solved}}`` on the test set for each of
    :data:`OTHER_TEST_CHECKPOINTS` the run wrote, other than the one ``measured`` already."""
    out = {}
    metric = module.task.metric_name
    for name in OTHER_TEST_CHECKPOINTS:
        path = ckpt_dir / f"{name}.ckpt"
        if name == measured or not path.exists():
            continue
        test, step = _test_on(module, dm, cfg, path)
        out[name] = {"step": step, "metric": test[metric],
                     "updates_mean": test["updates_mean"],
                     "updates_percent": 100.0 * test["update_fraction"], "solved": test["solved"]}
    return out


def _stop_reason(cfg: RunConfig, trainer, solved_cb) -> str:
    if solved_cb is not None and solved_cb.triggered:
        return "solved"
    if cfg.max_steps and trainer.global_step >= cfg.max_steps:
        return "max_steps"
    if cfg.max_epochs and trainer.current_epoch >= cfg.max_epochs:
        return "max_epochs"
    if cfg.max_time:
        return "max_time"
    return "finished"


def _results(cfg: RunConfig, module, trainer, cbs: _RunCallbacks, measured: tuple, *, data_source,
             session_time: float, commit, run_dir: Path) -> dict:
    """The run's results.json."""
    test, ckpt_step, which = measured
    t = module.task
    best_ckpt, solved_cb = cbs.best, cbs.solved
    return {
        "task": t.name, "model": cfg.model,
        "cost_per_sample": module.cost_per_sample,
        "p_skip": cfg.p_skip if cfg.model.startswith("random_") else None,
        "seed": cfg.seed, "hidden_size": t.hidden_size, "num_layers": t.num_layers,
        "seq_len": t.seq_len, "lr": t.lr, "batch_size": t.batch_size, "grad_clip": t.grad_clip,
        "task_options": cfg.task_options, "data": data_source, "recipe": cfg.recipe,
        "controls": {k: getattr(cfg, k) for k in RECIPE_CONTROLS} if module.learned_gate else None,
        "metric_name": t.metric_name, "test_metric": test[t.metric_name],
        "solved": test["solved"], "test": test,
        "updates_mean": test["updates_mean"], "updates_std": test["updates_std"],
        "updates_percent": 100.0 * test["update_fraction"],
        "flops": test["flops"], "flops_rule": "paper §6: updates × per-update MACs"
        + (" (+h for the learned gate)" if module.learned_gate else ""),
        "test_checkpoint": which, "test_checkpoint_step": ckpt_step,
        "max_steps": cfg.max_steps, "max_epochs": cfg.max_epochs, "max_time": cfg.max_time,
        "val_every": cfg.val_every, "stop_when_solved": cfg.stop_when_solved,
        "solved_patience": cfg.solved_patience, "best_checkpoint": best_ckpt.best_model_path or None,
        "best_val_loss": (float(best_ckpt.best_model_score) if best_ckpt.best_model_score is not None
                          else None),
        "val": {k.split("/", 1)[1]: float(v) for k, v in trainer.callback_metrics.items()
                if k.startswith("val/")},
        "steps": int(trainer.global_step), "epochs": int(trainer.current_epoch),
        "stop_reason": _stop_reason(cfg, trainer, solved_cb),
        "solved_at_step": solved_cb.solved_at_step if solved_cb is not None else None,
        "warmup_released_at": (module.metric_warmup.passed_at if module.metric_warmup is not None
                               else None),
        "wall_time_s": cbs.clock.elapsed, "session_wall_time_s": session_time,
        "accelerator": str(trainer.accelerator.__class__.__name__), "devices": trainer.num_devices,
        "num_nodes": trainer.num_nodes, "strategy": type(trainer.strategy).__name__,
        "backend": getattr(module, "train_backend", None) or getattr(module.rnn, "last_backend", "torch"),
        "precision": cfg.precision,
        "hardware": environment_info(module.device, commit), "run_dir": str(run_dir),
        "command": _command_line(),
        "finished_at": _dt.datetime.now().isoformat(timespec="seconds"),
    }


def format_summary(r: dict) -> str:
    solved = {True: "yes", False: "no", None: "n/a"}[r["solved"]]
    lines = [
        "",
        f"== {r['task']} / {r['model']}"
        + (f" λ={r['cost_per_sample']:g}" if r["model"].startswith("skip_") else "")
        + (f" p_skip={r['p_skip']:g}" if r.get("p_skip") is not None else "")
        + f" / seed {r['seed']} / recipe {r.get('recipe', 'paper')} ==",
        f"test {r['metric_name']}: {r['test_metric']:.5g}   solved: {solved}",
        f"state updates: {r['updates_mean']:.2f} of {r['seq_len']} per sequence "
        f"({r['updates_percent']:.1f}%)   inference FLOPs: {r['flops']:.3g}",
        f"{r['steps']} steps ({r['stop_reason']}; measured: {r['test_checkpoint']} checkpoint"
        + (f" @ step {r['test_checkpoint_step']}" if r.get('test_checkpoint_step') is not None else "")
        + f"), lr {r['lr']:g}, {r['wall_time_s']:.0f} s, "
        f"backend {r['backend']}",
    ]
    for name, o in (r.get("test_other_checkpoints") or {}).items():
        lines.append(f"  {name} checkpoint @ step {o['step']}: test {r['metric_name']} "
                     f"{o['metric']:.5g}, {o['updates_mean']:.2f} updates ({o['updates_percent']:.1f}%)")
    lines.append(f"run dir: {r['run_dir']}  (skiprnn evaluate / plot {r['run_dir']})")
    return "\n".join(lines)


def recipe_description(cfg: RunConfig, learned_gate: bool = True) -> str:
    """The gate controls of a run in words, e.g. 'gate open 300 steps, λ = 0 for 300 then a ramp
    over 300, gate lr × 0.1' ('constant λ' when none is used; '' for a model without a learned
    gate and nothing to say)."""
    parts = []
    if cfg.gate_warmup:
        parts.append(f"gate open {cfg.gate_warmup} steps")
    if cfg.budget_warmup or cfg.budget_ramp:
        parts.append(f"λ = 0 for {cfg.budget_warmup or 0} steps, then a ramp over {cfg.budget_ramp or 0}")
    if cfg.warmup_until_metric is not None:
        level = cfg.warmup_until_metric
        parts.append("warm-ups last until the validation metric passes "
                     + ("the solved level" if level == SOLVED_LEVEL else f"{level:g}"))
    if cfg.gate_lr_mult not in (None, 1.0):
        parts.append(f"gate lr × {cfg.gate_lr_mult:g}")
    if cfg.max_skip is not None:
        parts.append(f"at most {cfg.max_skip} skipped steps in a row")
    if cfg.lr_decay is not None:
        parts.append(f"lr cosine-decayed to × {cfg.lr_decay:g} "
                     + ("after the ramp" if cfg.lr_decay_start is None else f"from step {cfg.lr_decay_start}"))
    if cfg.init is not None and cfg.init != "paper":
        parts.append(f"{cfg.init} initialisation")
    if cfg.layer == "paper" and cfg.recipe != "paper":
        parts.append("the paper code's cell")
    if cfg.target_rate is not None:
        parts.append(f"target rate {cfg.target_rate:g} (weight {cfg.target_weight:g})")
    if cfg.init_from is not None:
        parts.append(f"started from the weights of {cfg.init_from}")
    return ", ".join(parts) or ("constant λ" if learned_gate else "")


def load_module(run_dir, ckpt: str = "best", device: str | torch.device = "cpu"):
    """The trained SkipRNNModule of a run (``ckpt``: best | last | a path)."""
    from .module import SkipRNNModule
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise ConfigError(f"{run_dir} is not a run directory (no config.json)")
    cfg = json.loads((run_dir / "config.json").read_text())
    which, path = choose_checkpoint(run_dir / "checkpoints", ckpt)
    if which == "best" and not path.exists():   # no validation before the run stopped
        path = run_dir / "checkpoints" / "last.ckpt"
    others = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt") if p != path)
    state = read_checkpoint(path, "pass another --ckpt: best, last or a file path"
                            + (f" ({', '.join(others)} in {run_dir / 'checkpoints'})" if others else "")
                            + ", or train the run again")["state_dict"]
    module = SkipRNNModule(cfg)
    module.load_state_dict(state)
    return module.to(device).eval(), cfg, path


def evaluate_run(run_dir, ckpt: str = "best", split: str = "test", thresholds=None,
                 device: str = "cpu", eval_batch_size: Optional[int] = None) -> dict:
    """Metrics of a trained run on ``split`` (test | val), optionally at several inference
    thresholds τ of the learned gate (u_t = 1[ũ_t > τ]; paper: 0.5)."""
    from .data import TaskDataModule
    if split not in ("test", "val"):
        raise ConfigError(f"split must be 'test' or 'val', got {split!r}")
    module, cfg, path = load_module(run_dir, ckpt, device)
    dm = TaskDataModule(module.task, seed=cfg.get("seed", 0),
                        eval_batch_size=eval_batch_size or cfg.get("eval_batch_size", 1024))
    loader = dm.test_dataloader() if split == "test" else dm.val_dataloader()
    taus = list(thresholds) if thresholds else [None]
    if any(t is not None for t in taus) and not module.learned_gate:
        raise ConfigError(f"--threshold needs a model with a learned gate (skip_lstm, skip_gru); "
                          f"this run is {cfg['model']!r}")
    rows = []
    for tau in taus:
        if tau is not None:
            if not (0.0 <= tau < 1.0):
                raise ConfigError(f"--threshold must lie in [0, 1), got {tau}")
            module.rnn.threshold = float(tau)
        r = _seeded_evaluate(module, loader, device, cfg.get("seed", 0))
        r["threshold"] = getattr(module.rnn, "threshold", None)
        rows.append(r)
    return {"run_dir": str(run_dir), "checkpoint": str(path), "split": split, "task": cfg["task"],
            "model": cfg["model"], "metric_name": module.metric_name,
            "seq_len": module.task.seq_len, "results": rows}
