"""The `skiprnn` command line: tiny train / evaluate / plot / reproduce runs and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning")

from skiprnn.cli import main  # noqa: E402

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
    assert (r["task"], r["model"], r["steps"], r["lr"]) == ("adding", "skip_lstm", 6, 1e-3)
    assert r["hardware"]["skiprnn"] and "torch" in r["hardware"]
    assert (run / "config.json").exists() and (run / "csv" / "metrics.csv").exists()
    assert (run / "checkpoints" / "best.ckpt").exists() and (run / "checkpoints" / "last.ckpt").exists()
    assert any((run / "tb").iterdir())

    assert main(["evaluate", str(run), "--threshold", "0.5", "0.9"]) == 0
    ev = json.loads((run / "eval_test.json").read_text())
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
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = run / "csv" / "metrics.csv"
    t0 = time.time()
    while time.time() - t0 < 60 and not (metrics.exists() and (run / "checkpoints" / "last.ckpt").exists()):
        time.sleep(0.2)
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
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
])
def test_bad_input(args, code, msg, capsys, tmp_path):
    if args[0] == "train" and "--resume" not in args:
        args = args + ["--out", str(tmp_path / "r")]
    try:
        rc = main(args)
    except SystemExit as e:   # argparse
        rc = e.code
    err = capsys.readouterr().err
    assert rc == code
    assert msg in err
    assert "Traceback" not in err
    assert not (tmp_path / "r" / "results.json").exists()


def test_reproduce_quick_one_row(tmp_path, capsys):
    """`skiprnn reproduce table1 --quick` with one row and one seed, then reuse of the done run."""
    args = ["reproduce", "table1", "--quick", "--seeds", "1", "--rows", "gru",
            "--out", str(tmp_path / "results"), "--runs-dir", str(tmp_path / "runs"),
            "--set", "max_steps=4", "--train-arg=--hidden-size=8"]
    assert main(args) == 0, capsys.readouterr()
    md = (tmp_path / "results" / "table1_quick.md").read_text()
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
