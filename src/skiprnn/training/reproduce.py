"""``skiprnn reproduce table1|table2|table4``: the paper's rows, several seeds, side by side.

Each (row, seed) is one ``skiprnn train`` run in ``runs/{full,quick}/<table>/<row>/seed<k>``
(``--runs-dir``; a subprocess, ``--jobs`` at a time); a run whose results.json exists is reused, so
the command is resumable. The table is written to ``OUT/<table>.md`` (+ ``.csv`` and ``.json``;
``OUT`` = ``runs/reproduce`` unless ``--out`` names another: the tracked tables in ``results/`` are
only rewritten with ``--out results``): the paper's numbers (paper.md §4) next to ours, mean ± std
over seeds, with our training settings. No table is written before a run has finished.
"""

from __future__ import annotations

import csv
import datetime as _dt
import fnmatch
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Optional

from .config import ConfigError

__all__ = ["TABLES", "Row", "reproduce", "row_ids", "DEFAULT_OUT"]

#: where ``reproduce`` writes its tables unless told (``--out results`` publishes them)
DEFAULT_OUT = "runs/reproduce"


@dataclass
class Row:
    id: str
    label: str
    model: str
    cost_per_sample: float = 0.0
    p_skip: Optional[float] = None
    task_options: dict = field(default_factory=dict)
    paper: dict = field(default_factory=dict)
    group: Optional[str] = None     # Table 4: the Ts column


def _t1() -> list[Row]:
    P = lambda s, u, f: {"solved": s, "updates": u, "flops": f}  # noqa: E731
    return [
        Row("lstm", "LSTM", "lstm", paper=P("Yes", "100.0% ± 0.0%", "2.46e6")),
        Row("lstm_p0.2", "LSTM (p_skip = 0.2)", "random_skip_lstm", p_skip=0.2, paper=P("No", "80.0% ± 0.1%", "1.97e6")),
        Row("lstm_p0.5", "LSTM (p_skip = 0.5)", "random_skip_lstm", p_skip=0.5, paper=P("No", "50.1% ± 0.1%", "1.23e6")),
        Row("skip_lstm_l0", "Skip LSTM, λ = 0", "skip_lstm", 0.0, paper=P("Yes", "81.1% ± 3.6%", "2.00e6")),
        Row("skip_lstm_l1e-5", "Skip LSTM, λ = 1e-5", "skip_lstm", 1e-5, paper=P("Yes", "53.9% ± 2.1%", "1.33e6")),
        Row("gru", "GRU", "gru", paper=P("Yes", "100.0% ± 0.0%", "1.85e6")),
        Row("gru_p0.02", "GRU (p_skip = 0.02)", "random_skip_gru", p_skip=0.02, paper=P("No", "98.0% ± 0.0%", "1.81e6")),
        Row("gru_p0.5", "GRU (p_skip = 0.5)", "random_skip_gru", p_skip=0.5, paper=P("No", "49.9% ± 0.6%", "9.25e5")),
        Row("skip_gru_l0", "Skip GRU, λ = 0", "skip_gru", 0.0, paper=P("Yes", "97.9% ± 3.2%", "1.81e6")),
        Row("skip_gru_l1e-5", "Skip GRU, λ = 1e-5", "skip_gru", 1e-5, paper=P("Yes", "50.7% ± 2.6%", "9.40e5")),
        # not in the paper: a larger budget, for CPU runs too short for λ = 1e-5 (clearly labelled)
        Row("skip_lstm_l1e-4", "Skip LSTM, λ = 1e-4 (extra, not in paper)", "skip_lstm", 1e-4),
        Row("skip_gru_l1e-4", "Skip GRU, λ = 1e-4 (extra, not in paper)", "skip_gru", 1e-4),
    ]


def _t2() -> list[Row]:
    P = lambda a, u, f: {"accuracy": a, "updates": u, "flops": f}  # noqa: E731
    return [
        Row("lstm", "LSTM", "lstm", paper=P("0.910 ± 0.045", "784.00 ± 0.00", "3.83e7")),
        Row("lstm_p0.5", "LSTM (p_skip = 0.5)", "random_skip_lstm", p_skip=0.5, paper=P("0.893 ± 0.003", "392.03 ± 0.05", "1.91e7")),
        Row("skip_lstm_l1e-4", "Skip LSTM, λ = 1e-4", "skip_lstm", 1e-4, paper=P("0.973 ± 0.002", "379.38 ± 33.09", "1.86e7")),
        Row("gru", "GRU", "gru", paper=P("0.968 ± 0.013", "784.00 ± 0.00", "2.87e7")),
        Row("gru_p0.5", "GRU (p_skip = 0.5)", "random_skip_gru", p_skip=0.5, paper=P("0.912 ± 0.004", "391.86 ± 0.14", "1.44e7")),
        Row("skip_gru_l1e-4", "Skip GRU, λ = 1e-4", "skip_gru", 1e-4, paper=P("0.976 ± 0.003", "392.62 ± 26.48", "1.44e7")),
    ]


_T4_PAPER = {  # row -> (solved, updates) at Ts = 1 ms, Ts = 0.5 ms
    "lstm": (("Yes", "100.0 ± 0.00"), ("Yes", "200.0 ± 0.00")),
    "skip_lstm_l0": (("Yes", "55.5 ± 16.9"), ("Yes", "147.9 ± 27.0")),
    "skip_lstm_l1e-5": (("Yes", "47.4 ± 14.1"), ("Yes", "50.7 ± 16.8")),
    "skip_lstm_l1e-4": (("Yes", "12.7 ± 0.5"), ("Yes", "19.9 ± 1.5")),
    "gru": (("Yes", "100.0 ± 0.00"), ("Yes", "200.0 ± 0.00")),
    "skip_gru_l0": (("Yes", "73.7 ± 17.9"), ("Yes", "167.0 ± 18.3")),
    "skip_gru_l1e-5": (("Yes", "51.9 ± 10.2"), ("Yes", "54.2 ± 4.4")),
    "skip_gru_l1e-4": (("Yes", "23.5 ± 6.2"), ("Yes", "22.5 ± 2.1")),
}


def _t4() -> list[Row]:
    rows = []
    for ts, col in ((1.0, 0), (0.5, 1)):
        for rid, (s, u) in ((rid, p[col]) for rid, p in _T4_PAPER.items()):
            model, lam = rid.rsplit("_l", 1) if rid.startswith("skip_") else (rid, "")
            label = f"Skip {model[5:].upper()}, λ = {lam}" if lam else model.upper()
            rows.append(Row(f"{rid}_ts{ts:g}", label, model, float(lam or 0),
                            task_options={"sampling_period_ms": ts},
                            paper={"solved": s, "updates": u}, group=f"Ts = {ts:g} ms"))
    for ts in (1.0, 0.5):   # not in the paper: a larger budget for CPU-length runs (clearly labelled)
        for m in ("skip_lstm", "skip_gru"):
            rows.append(Row(f"{m}_l1e-3_ts{ts:g}",
                            f"Skip {m[5:].upper()}, λ = 1e-3 (extra, not in paper)", m, 1e-3,
                            task_options={"sampling_period_ms": ts}, group=f"Ts = {ts:g} ms"))
    return rows


#: per table: task, rows, our training settings (full and --quick). The learning rate and the
#: gate's training controls come from the recipe (``fast`` by default; ``--set recipe=paper`` for
#: the paper's code); the full settings add the stop rules chosen for CPU budgets (the paper trained
#: the synthetic tasks until interrupted, MNIST for 600 epochs).
_QUICK_SYNTHETIC = {"recipe": "fast", "lr": 1e-3, "max_steps": 20, "val_every": 10,
                    "batch_size": 64, "task_options": {"val_size": 256, "test_size": 512}}
TABLES = {
    "table1": {
        "task": "adding", "title": "Table 1: Adding task", "rows": _t1,
        "full": {"recipe": "fast", "max_steps": 5000, "val_every": 100, "stop_when_solved": True,
                 "solved_patience": 10},
        "quick": _QUICK_SYNTHETIC,
        "metric": "mse",
    },
    "table2": {
        "task": "mnist", "title": "Table 2: Sequential MNIST", "rows": _t2,
        "full": {"recipe": "fast", "max_epochs": 600},
        "quick": {"recipe": "fast", "lr": 1e-3, "max_steps": 6, "batch_size": 32, "eval_batch_size": 128,
                  "task_options": {"limit_train": 192, "limit_val": 64, "limit_test": 128}},
        "metric": "accuracy",
    },
    "table4": {
        "task": "frequency", "title": "Table 4: Frequency discrimination", "rows": _t4,
        "full": {"recipe": "fast", "max_steps": 4000, "val_every": 100, "stop_when_solved": True,
                 "solved_patience": 30},
        "quick": _QUICK_SYNTHETIC,
        "metric": "accuracy",
    },
}


def row_ids(table: str) -> list[str]:
    return [r.id for r in TABLES[table]["rows"]()]


def select_rows(table: str, patterns: Optional[list[str]]) -> list[Row]:
    rows = TABLES[table]["rows"]()
    if not patterns:
        return [r for r in rows if r.paper]  # the paper's rows only
    chosen = []
    for pat in patterns:
        hit = [r for r in rows if fnmatch.fnmatchcase(r.id, pat)]
        if not hit:
            raise ConfigError(f"no row {pat!r} in {table}; valid rows: {', '.join(r.id for r in rows)}")
        chosen += [r for r in hit if r not in chosen]
    return chosen


def _train_args(table: str, row: Row, seed: int, settings: dict, run_dir: Path, extra: list[str]) -> list[str]:
    t = TABLES[table]
    args = [sys.executable, "-m", "skiprnn", "train", t["task"], "--model", row.model,
            "--seed", str(seed), "--out", str(run_dir), "--no-progress"]
    if row.model.startswith("skip_"):
        args += ["--cost-per-sample", repr(row.cost_per_sample)]
    if row.p_skip is not None:
        args += ["--p-skip", repr(row.p_skip)]
    for k, v in {**settings.get("task_options", {}), **row.task_options}.items():
        args += ["--task-option", f"{k}={v}"]
    for k, v in settings.items():
        if k == "task_options":
            continue
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            if v:
                args.append(flag)
            elif k == "stop_when_solved":
                args.append("--no-stop-when-solved")
        else:
            args += [flag, str(v)]
    if settings.get("stop_when_solved") and (not row.model.startswith("skip_")
                                             or row.cost_per_sample == 0):
        args += ["--solved-patience", "0"]
    return args + list(extra)


#: RunConfig fields that ``--set`` may not change: each row or reproduce itself decides them
_ROW_FIELDS = {
    "task": "the table's task", "model": "each row's model", "seed": "--seeds",
    "cost_per_sample": "each row's λ", "p_skip": "each row's p_skip", "period": "each row",
    "out": "--runs-dir", "quick": "reproduce --quick", "progress_bar": "reproduce (always off)",
}


def check_settings(settings: dict) -> None:
    """Refuse ``--set`` keys that are not training settings (RunConfig fields) or that the rows fix."""
    from .config import RunConfig
    from dataclasses import fields as _fields
    names = [f.name for f in _fields(RunConfig)]
    allowed = [n for n in names if n not in _ROW_FIELDS]
    unknown = [k for k in settings if k not in names]
    if unknown:
        raise ConfigError(f"--set {', '.join(unknown)}: no such training setting; valid keys: "
                          f"{', '.join(allowed)}")
    fixed = [k for k in settings if k in _ROW_FIELDS]
    if fixed:
        raise ConfigError("; ".join(f"--set {k} cannot be changed here (set by {_ROW_FIELDS[k]})"
                                    for k in fixed) + f". Valid keys: {', '.join(allowed)}")
    if "task_options" in settings and not isinstance(settings["task_options"], dict):
        raise ConfigError(f"--set task_options must be a dict, e.g. task_options={{'val_size':256}}, "
                          f"got {settings['task_options']!r}")


def check_train_args(args: list[str], what: str):
    """Parse and check one run's ``skiprnn train`` arguments (those after ``train``) in this
    process (no training), so that bad --set / --train-arg values fail once, up front, instead of
    inside every run's train.log. Returns the run's RunConfig."""
    import contextlib
    import io
    from .args import build_train_config, train_parser
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = train_parser().parse_args(args)
    except SystemExit:
        msg = err.getvalue().strip().splitlines()
        msg = msg[-1].split("error: ", 1)[-1] if msg else "bad arguments"
        raise ConfigError(f"{what}: `skiprnn train` would refuse its arguments: {msg}") from None
    try:
        return build_train_config(ns)[0]
    except ConfigError as e:
        raise ConfigError(f"{what}: {e}") from None


def _command(table, seeds, quick, jobs, out, rows, runs_dir, extra, threads, settings_override,
             report_only, seed_major, notes) -> str:
    import shlex
    a = ["skiprnn", "reproduce", table]
    if quick:
        a.append("--quick")
    a += ["--seeds", str(seeds)]
    if rows:
        a += ["--rows", *rows]
    for k, v in (settings_override or {}).items():
        a += ["--set", f"{k}={v}"]
    a += ["--out", str(out)]
    if runs_dir:
        a += ["--runs-dir", str(runs_dir)]
    if jobs != 1:
        a += ["--jobs", str(jobs)]
    if threads != 1:
        a += ["--threads", str(threads)]
    if seed_major:
        a.append("--seed-major")
    if report_only:
        a.append("--report-only")
    for x in extra or []:
        a.append(f"--train-arg={x}")
    for n in notes or []:
        a += ["--note", n]
    return shlex.join(a)


def _running_pid(rd: Path):
    """pid of a live training process marked in ``rd/RUNNING`` (another reproduce), else None."""
    try:
        pid = int((rd / "RUNNING").read_text().split()[0])
        os.kill(pid, 0)
    except (ValueError, IndexError, OSError):   # no mark (FileNotFoundError), no such process
        return None
    return pid


def _fmt_pm(vals, fmt="{:.1f}", suffix=""):
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return "–"
    return f"{fmt.format(_mean(vals))}{suffix} ± {fmt.format(_std(vals))}{suffix}"


def _sci(x):
    if x is None:
        return "–"
    e = int(math.floor(math.log10(abs(x)))) if x else 0
    return f"{x / 10 ** e:.2f} × 10^{e}"


_PAPER_SETTINGS = ("Adam lr 1e-4, batch 256, global-norm clip 1; iterations not stated "
                   "(adding/frequency), 600 epochs (MNIST)")


def reproduce(table: str, seeds: int = 4, quick: bool = False, jobs: int = 1, out: str = DEFAULT_OUT,
              rows: Optional[list[str]] = None, runs_dir: Optional[str] = None,
              extra_train_args: Optional[list[str]] = None, threads: Optional[int] = 1,
              settings_override: Optional[dict] = None, verbose: bool = True,
              report_only: bool = False, seed_major: bool = False,
              notes: Optional[list[str]] = None, command: Optional[str] = None) -> dict:
    """Run (or reuse) every (row, seed) of ``table`` and write OUT/<table>.{md,csv,json}.

    ``command``: the command line recorded in the table (default: rebuilt from the arguments)."""
    _check_counts(table, seeds, jobs)
    chosen = select_rows(table, rows)
    settings = dict(TABLES[table]["quick" if quick else "full"])
    if settings_override:
        check_settings(settings_override)
        settings.update(settings_override)
    if command is None:
        command = _command(table, seeds, quick, jobs, out, rows, runs_dir, extra_train_args, threads,
                           settings_override, report_only, seed_major, notes)
    if threads:
        settings["threads"] = threads
    out = Path(out)
    base = Path(runs_dir) if runs_dir else Path("runs") / ("quick" if quick else "full") / table
    extra = list(extra_train_args or [])
    runs, todo, elsewhere = _plan_runs(chosen, seeds, base, seed_major)
    if not report_only:
        _check_before_any_run(table, todo, settings, extra)
    if verbose:
        print(f"[skiprnn] {table}: {len(chosen)} rows × {seeds} seeds, "
              f"{len(runs) - len(todo) - len(elsewhere)} "
              f"done, {len(todo)} to run ({jobs} at a time) in {base}"
              + (f"; {len(elsewhere)} running elsewhere" if elsewhere else ""), flush=True)

    def current_summary():
        sm = summarise(table, chosen, runs, settings, quick, seeds)
        sm["notes"] = list(notes or [])
        sm["command"] = command
        return sm

    failed = []

    def finished(job: _Job):
        if not _close_run(job, table, verbose):
            failed.append(f"{job.row.id}/seed{job.seed}")
        write_table(table, current_summary(), out, quick)   # current while the other runs go on

    _run_jobs([] if report_only else todo, elsewhere, jobs,
              lambda row, s, rd: _launch(table, row, s, rd, settings, extra), finished)
    summary = current_summary()
    summary["table_path"] = write_table(table, summary, out, quick)
    if failed and verbose:
        print(f"[skiprnn] {len(failed)} run(s) failed: " + ", ".join(failed))
    summary["failed"] = failed
    return summary


def _check_counts(table: str, seeds, jobs) -> None:
    if table not in TABLES:
        raise ConfigError(f"unknown table {table!r}; valid tables: {', '.join(TABLES)}")
    if not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"--seeds must be an integer >= 1, got {seeds!r}")
    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs must be an integer >= 1, got {jobs!r}")


def _plan_runs(chosen: list[Row], seeds: int, base: Path, seed_major: bool):
    """``(runs, todo, elsewhere)``: every (row id, seed)'s run directory; the (row, seed, dir) to
    run, in order; the directories another ``reproduce`` is running now (left alone)."""
    todo, runs, elsewhere = [], {}, []
    order = ([(row, s) for s in range(seeds) for row in chosen] if seed_major
             else [(row, s) for row in chosen for s in range(seeds)])
    for row, s in order:
        rd = base / row.id / f"seed{s}"
        runs[(row.id, s)] = rd
        if (rd / "results.json").exists():
            continue
        if _running_pid(rd) is not None:
            elsewhere.append(rd)
            continue
        todo.append((row, s, rd))
    return runs, todo, elsewhere


def _check_before_any_run(table: str, todo: list, settings: dict, extra: list[str]) -> None:
    """Each row's train arguments, and the data (MNIST files): one clear error up front instead of
    every run failing."""
    checked = {}
    for row, s, rd in todo:
        if row.id not in checked:
            after_train = _train_args(table, row, s, settings, rd, extra)[4:]   # python -m skiprnn train
            checked[row.id] = check_train_args(after_train, f"row {row.id}")
    if checked:
        from .module import build_task
        build_task(next(iter(checked.values())).to_dict()).data_source()


class _Job(NamedTuple):
    process: subprocess.Popen
    log: object
    row: Row
    seed: int
    run_dir: Path
    started: float


def _launch(table: str, row: Row, s: int, rd: Path, settings: dict, extra: list[str]) -> _Job:
    """Start the run (row, seed) in ``rd``: resumed from its last.ckpt when it has one, else anew
    (a run that stopped before its first checkpoint is removed first)."""
    rd.mkdir(parents=True, exist_ok=True)
    resume = (rd / "checkpoints" / "last.ckpt").exists() and (rd / "config.json").exists()
    if resume:
        args = [sys.executable, "-m", "skiprnn", "train", "--resume", str(rd), "--no-progress"]
    else:
        if (rd / "checkpoints").exists() or (rd / "config.json").exists():
            import shutil
            shutil.rmtree(rd)
            rd.mkdir(parents=True)
        args = _train_args(table, row, s, settings, rd, extra)
    log = open(rd / "train.log", "a")
    log.write(f"$ {' '.join(args)}\n")
    log.flush()
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    (rd / "RUNNING").write_text(f"{p.pid}\n")
    return _Job(p, log, row, s, rd, time.time())


def _run_jobs(pending: list, elsewhere: list[Path], jobs: int, start, finished) -> None:
    """``start(row, seed, dir)`` for each pending run, ``jobs`` at a time (counting the runs
    another reproduce has in ``elsewhere``), ``finished(job)`` as each ends. Ctrl-C stops the
    running ones with SIGTERM (they save last.ckpt and are resumed next time) and is re-raised."""
    running: list = []
    try:
        pending = list(pending)
        while pending or running:
            busy = len(running) + sum(_running_pid(rd) is not None for rd in elsewhere)
            while pending and busy < jobs:
                running.append(start(*pending.pop(0)))
                busy += 1
            time.sleep(0.5)
            for job in list(running):
                if job.process.poll() is None:
                    continue
                running.remove(job)
                finished(job)
    except KeyboardInterrupt:
        for job in running:
            job.process.terminate()
        for job in running:
            try:
                job.process.wait(timeout=60)
            except subprocess.TimeoutExpired:  # pragma: no cover
                job.process.kill()
        raise


def _close_run(job: _Job, table: str, verbose: bool) -> bool:
    """Close an ended run's log and RUNNING mark; whether it succeeded (printed when verbose)."""
    job.log.close()
    rd = job.run_dir
    (rd / "RUNNING").unlink(missing_ok=True)
    code = job.process.returncode
    ok = code == 0 and (rd / "results.json").exists()
    if verbose:
        msg = "ok" if ok else f"FAILED (exit {code}; see {rd / 'train.log'})"
        if ok:
            r = json.loads((rd / "results.json").read_text())
            msg += (f": {r['metric_name']}={r['test_metric']:.4g} solved={r['solved']} "
                    f"updates={r['updates_mean']:.1f} ({r['updates_percent']:.1f}%) "
                    f"steps={r['steps']}")
        print(f"[skiprnn] {table} {job.row.id} seed{job.seed} {msg} [{time.time() - job.started:.0f} s]",
              flush=True)
    return ok


def summarise(table, chosen, runs, settings, quick, seeds) -> dict:
    spec = TABLES[table]
    out_rows = []
    for row in chosen:
        paths = [runs[(row.id, s)] / "results.json" for s in range(seeds)]
        res = [json.loads(p.read_text()) for p in paths if p.exists()]
        d = {"id": row.id, "label": row.label, "model": row.model, "cost_per_sample": row.cost_per_sample,
             "p_skip": row.p_skip, "group": row.group, "paper": row.paper, "n_runs": len(res),
             "runs": [str(runs[(row.id, s)]) for s in range(seeds)]}
        if res:
            for key, src in (("metric", "test_metric"), ("solved", "solved"),
                             ("updates", "updates_mean"), ("updates_percent", "updates_percent"),
                             ("flops", "flops"), ("steps", "steps")):
                d[key] = [r[src] for r in res]
            d["ckpt_steps"] = [r.get("test_checkpoint_step") for r in res]
            for name in ("last", "best_metric"):   # the other checkpoint rules, where measured
                o = [(r.get("test_other_checkpoints") or {}).get(name) for r in res]
                if all(o):
                    d[f"metric_{name}"] = [x["metric"] for x in o]
                    d[f"updates_{name}"] = [x["updates_mean"] for x in o]
            d["max_steps"] = sorted({r["max_steps"] for r in res if r.get("max_steps")})
            d["lr"] = sorted({r["lr"] for r in res})
            d["wall_time_s"] = [r["wall_time_s"] for r in res]
            d["seq_len"] = res[0]["seq_len"]
        out_rows.append(d)
    return {"table": table, "task": spec["task"], "title": spec["title"], "quick": quick,
            "seeds": seeds, "settings": settings, "rows": out_rows,
            "paper_settings": _PAPER_SETTINGS,
            "written_at": _dt.datetime.now().isoformat(timespec="seconds")}


def _solved_cell(d):
    if not d.get("solved"):
        return "–"
    s = d["solved"]
    if all(v is None for v in s):
        return "n/a"
    k = sum(bool(v) for v in s)
    word = "Yes" if k == len(s) else ("No" if k == 0 else "Partly")
    return f"{word} ({k}/{len(s)})"


def table_path(table: str, out, quick: bool) -> Path:
    """``OUT/<table>[_quick].md`` (the .csv and .json beside it)."""
    return Path(out) / (table + ("_quick" if quick else "") + ".md")


def write_table(table: str, summary: dict, out: Path, quick: bool) -> Optional[Path]:
    """Write the table files; none (returns None) while no run has finished."""
    if not any(d.get("n_runs") for d in summary["rows"]):
        return None
    out.mkdir(parents=True, exist_ok=True)
    stem = table_path(table, out, quick).with_suffix("")
    rows = summary["rows"]
    st = summary["settings"]
    ours = ", ".join(f"{k}={v}" for k, v in st.items() if k not in ("threads",))
    lines = [f"# {summary['title']}" + (" (--quick smoke run, not a result)" if quick else ""), ""]
    lines += [f"Paper: {summary['paper_settings']}.",
              f"Ours: {ours}; {summary['seeds']} seed(s); test set of the task (fixed, seeded); "
              "updates/FLOPs per test sequence (paper §6 FLOP rule). Mean ± std over seeds.", ""]
    lines += _result_rows(table, rows)
    lines += _setting_differences(rows, st)
    lines += [f"- {n}" for n in summary.get("notes", [])]
    lines += _per_run_lines(rows)
    lines += _table_footer(table, summary, quick)
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    _write_csv(stem.with_suffix(".csv"), rows)
    return stem.with_suffix(".md")


def _result_rows(table: str, rows: list[dict]) -> list[str]:
    """The markdown table: the paper's numbers beside ours, one line per row."""
    lines = []
    if table == "table1":
        lines += ["| Model | Paper: solved | Paper: updates | Paper: FLOPs | Ours: solved | Ours: test MSE | "
                  "Ours: updates | Ours: FLOPs | Ours: steps run (measured ckpt) |", "|---|---|---|---|---|---|---|---|---|"]
        for d in rows:
            p = d["paper"] or {}
            lines.append(f"| {d['label']} | {p.get('solved', '–')} | {p.get('updates', '–')} | "
                         f"{p.get('flops', '–')} | {_solved_cell(d)} | "
                         f"{_fmt_pm(d.get('metric', []), '{:.2e}')} | "
                         f"{_fmt_pm(d.get('updates_percent', []), '{:.1f}', '%')} | "
                         f"{_sci(_mean(d.get('flops')))} | {_steps_cell(d)} |")
    elif table == "table2":
        lines += ["| Model | Paper: accuracy | Paper: updates | Paper: FLOPs | Ours: accuracy | "
                  "Ours: updates | Ours: FLOPs | Ours: steps run (measured ckpt) | Ours, final "
                  "weights: accuracy / updates | Ours, best validation accuracy: accuracy / updates |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for d in rows:
            p = d["paper"] or {}
            other = [f"{_fmt_pm(d[f'metric_{n}'], '{:.3f}')} / {_fmt_pm(d[f'updates_{n}'], '{:.2f}')}"
                     if d.get(f"metric_{n}") else "–" for n in ("last", "best_metric")]
            lines.append(f"| {d['label']} | {p.get('accuracy', '–')} | {p.get('updates', '–')} | "
                         f"{p.get('flops', '–')} | {_fmt_pm(d.get('metric', []), '{:.3f}')} | "
                         f"{_fmt_pm(d.get('updates', []), '{:.2f}')} | {_sci(_mean(d.get('flops')))} | "
                         f"{_steps_cell(d)} | {other[0]} | {other[1]} |")
    else:
        lines += ["| Model | Ts | Paper: solved | Paper: updates | Ours: solved | Ours: test accuracy | "
                  "Ours: updates | Ours: steps run (measured ckpt) |", "|---|---|---|---|---|---|---|---|"]
        for d in rows:
            p = d["paper"] or {}
            lines.append(f"| {d['label']} | {d['group']} | {p.get('solved', '–')} | {p.get('updates', '–')} | "
                         f"{_solved_cell(d)} | {_fmt_pm(d.get('metric', []), '{:.4f}')} | "
                         f"{_fmt_pm(d.get('updates', []), '{:.1f}')} | "
                         f"{_steps_cell(d)} |")
    return lines


def _setting_differences(rows: list[dict], st: dict) -> list[str]:
    """A note for each row whose runs used other max_steps / lr than the table's settings."""
    lines = []
    for d in rows:
        diffs = []
        if d.get("max_steps") and st.get("max_steps") and d["max_steps"] != [st["max_steps"]]:
            diffs.append(f"max_steps={'/'.join(map(str, d['max_steps']))}")
        if d.get("lr") and st.get("lr") and d["lr"] != [st["lr"]]:
            diffs.append(f"lr={'/'.join(f'{x:g}' for x in d['lr'])}")
        if diffs:
            lines.append(f"- {d['label']}: run with {', '.join(diffs)} (differs from the settings above).")
    return lines


def _per_run_lines(rows: list[dict]) -> list[str]:
    """Each finished run's seed, solved, test metric, updates and steps."""
    lines = []
    per = [d for d in rows if d.get("n_runs")]
    if per:
        lines += ["", "Per run (seed: solved, test metric, updates per sequence, steps run):", ""]
        for d in per:
            cells = []
            for run in d["runs"]:
                p = Path(run) / "results.json"
                if not p.exists():
                    continue
                r = json.loads(p.read_text())
                cells.append(f"s{r['seed']}: {'solved' if r['solved'] else ('not solved' if r['solved'] is False else 'n/a')}, "
                             f"{r['test_metric']:.4g}, {r['updates_mean']:.2f} ({r['updates_percent']:.1f}%), {r['steps']}")
            lines.append(f"- {d['label']}" + (f" [{d['group']}]" if d.get("group") else "") + ": " + "; ".join(cells))
    return lines


def _table_footer(table: str, summary: dict, quick: bool) -> list[str]:
    """How the numbers were measured, and the command that wrote the table."""
    command = summary.get("command") or (f"skiprnn reproduce {table}" + (" --quick" if quick else "")
                                         + f" --seeds {summary['seeds']}")
    return ["", "The test metric, updates and FLOPs are measured on one checkpoint per run, chosen on the "
            "validation set: the solved validation with the fewest updates when the run solved the task "
            "(stop-when-solved runs), else the lowest validation loss (task loss + budget). Table 2 also "
            "gives the final weights and the best validation accuracy's checkpoint (where the runs "
            "measured them: results.json's test_other_checkpoints). 'steps run' "
            "counts all training steps, '(measured ckpt)' the step of that checkpoint. Test set: fixed and "
            "seeded, the same for every run.",
            "Rows with fewer runs than seeds are still running or failed (see n_runs in the .json).",
            f"Written {summary['written_at']} by `{command}`."]


def _write_csv(path: Path, rows: list[dict]) -> None:
    """One line per row: the means and spreads over seeds, and the paper's numbers."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", "group", "n_runs", "solved", "metric_mean", "metric_std",
                    "updates_mean", "updates_std", "updates_percent_mean", "flops_mean", "steps_mean",
                    "lr", "paper"])
        for d in rows:
            w.writerow([d["id"], d["label"], d["group"], d["n_runs"], _solved_cell(d),
                        _mean(d.get("metric")), _std(d.get("metric")), _mean(d.get("updates")),
                        _std(d.get("updates")), _mean(d.get("updates_percent")), _mean(d.get("flops")),
                        _mean(d.get("steps")), ";".join(map(str, d.get("lr", []))), json.dumps(d["paper"])])


def _steps_cell(d):
    if not d.get("steps"):
        return "–"
    out = "/".join(str(x) for x in d["steps"])
    ck = [c for c in d.get("ckpt_steps", []) if c is not None]
    if ck and ck != d["steps"]:
        out += " (" + "/".join(str(c) for c in ck) + ")"
    return out


def _mean(v):
    return sum(v) / len(v) if v else None


def _std(v):
    if not v or len(v) < 2:
        return 0.0 if v else None
    m = _mean(v)
    return (sum((x - m) ** 2 for x in v) / (len(v) - 1)) ** 0.5
