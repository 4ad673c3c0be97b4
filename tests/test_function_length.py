"""No function of the package is over 100 lines, the Triton kernels aside (issue 14): a long
function does several jobs, and its parts belong in functions of their own."""

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "src" / "skiprnn"
LIMIT = 100


def _is_kernel(fn) -> bool:
    """Decorated with ``triton.jit`` / ``tl.jit`` / ``jit`` (a kernel is one GPU program)."""
    for d in fn.decorator_list:
        target = d.func if isinstance(d, ast.Call) else d
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name == "jit":
            return True
    return False


def long_functions(package_dir: Path, limit: int = LIMIT) -> list:
    """``[(file, function, lines)]`` of the functions (docstring included) over ``limit`` lines."""
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _is_kernel(node):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    found.append((str(path.relative_to(package_dir)), node.name, n))
    return found


def test_no_function_over_100_lines_outside_the_kernels():
    assert long_functions(PACKAGE_DIR) == []


def test_the_rule_sees_a_long_function_and_spares_a_kernel(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT))
    (tmp_path / "m.py").write_text(f"def long():\n{body}\n\n@triton.jit\ndef kernel():\n{body}\n")
    assert long_functions(tmp_path) == [("m.py", "long", LIMIT + 1)]
