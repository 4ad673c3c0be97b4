"""DDP on 2 CPU processes (gloo): Lightning's script launcher re-runs `python -m skiprnn train`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning")

SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_ddp_two_cpu_processes(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "skiprnn", "train", "--quick", "--max-steps", "4", "--val-every", "2",
           "--hidden-size", "8", "--batch-size", "16", "--devices", "2", "--strategy", "ddp",
           "--accelerator", "cpu", "--out", str(run), "--no-progress",
           "--warmup-until-metric", "10"]   # released by the first validation, on both ranks
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads((run / "results.json").read_text())
    assert r["devices"] == 2 and r["strategy"] == "DDPStrategy" and r["steps"] == 4
    assert r["warmup_released_at"] == 2
    assert "world_size: 2" in (p.stdout + p.stderr) or "distributed_backend=gloo" in (p.stdout + p.stderr)
