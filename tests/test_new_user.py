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
