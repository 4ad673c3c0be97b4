"""The package's import graph has no cycle (issue 14).

The graph is read from the source with ``ast``: every ``import`` / ``from ... import`` of a
``skiprnn`` module, at module level or inside a function (a lazy import still ties the two modules
together), relative imports resolved, plus the ``"skiprnn.module:function"`` strings that the
backend dispatch imports by name. ``from package import name`` counts as an import of the
submodule when ``name`` is one, else of the package.
"""

import ast
import re
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "src" / "skiprnn"
IMPORT_STRING = re.compile(r"^(skiprnn(?:\.\w+)*):\w+$")


def package_modules(package_dir: Path) -> dict:
    """``{dotted module name: (path, is_package)}`` of every .py file under ``package_dir``."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules[".".join(parts)] = (path, is_package)
    return modules


def _imported_names(module: str, is_package: bool, node) -> list:
    """The dotted names an import statement (or a dispatch string) of ``module`` refers to."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            anchor = anchor[:len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([node.module] if node.module else []))
        return [f"{base}.{alias.name}" for alias in node.names]
    match = IMPORT_STRING.match(node.value)
    return [match.group(1)] if match else []


def _known_module(name: str, modules: dict):
    """The longest prefix of ``name`` that is a module of the package (``pkg.attr`` → ``pkg``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict:
    """``{module: set of package modules it imports}``."""
    modules = package_modules(package_dir)
    graph = {}
    for module, (path, is_package) in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            is_string = isinstance(node, ast.Constant) and isinstance(node.value, str)
            if isinstance(node, (ast.Import, ast.ImportFrom)) or is_string:
                for name in _imported_names(module, is_package, node):
                    dep = _known_module(name, modules) if name.startswith("skiprnn") else None
                    if dep is not None and dep != module:
                        deps.add(dep)
        graph[module] = deps
    return graph


def find_cycle(graph: dict):
    """One cycle of ``graph`` as a list ``[a, b, ..., a]``, or None."""
    state = {}   # module -> "open" while on the current path, "done" once fully explored

    def visit(node, path):
        state[node] = "open"
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                return path[path.index(dep):] + [dep]
            if dep not in state:
                cycle = visit(dep, path)
                if cycle:
                    return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [])
            if cycle:
                return cycle
    return None


def test_the_package_import_graph_has_no_cycle():
    graph = import_graph()
    assert "skiprnn.cli" in graph and "skiprnn.training.args" in graph["skiprnn.cli"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_sees_lazy_relative_and_dispatch_imports(tmp_path):
    """The checker itself: a function-level relative import closing a loop is a cycle, and so is
    a ``"module:function"`` string; ``from . import submodule`` is not an import of the package."""
    pkg = tmp_path / "skiprnn"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .sub import b\n")
    (pkg / "a.py").write_text("from .sub.b import f\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "sub" / "c.py").write_text("def g():\n    from ..a import f\n")
    graph = import_graph(pkg)
    assert graph["skiprnn.sub.b"] == {"skiprnn.sub.c"}
    assert set(find_cycle(graph)) == {"skiprnn.a", "skiprnn.sub.b", "skiprnn.sub.c"}
    (pkg / "sub" / "c.py").write_text("TARGETS = {'x': 'skiprnn.sub.b:f'}\n")
    assert set(find_cycle(import_graph(pkg))) == {"skiprnn.sub.b", "skiprnn.sub.c"}
    (pkg / "sub" / "c.py").write_text("NOTE = 'see skiprnn.a'\n")
    assert find_cycle(import_graph(pkg)) is None


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(text: str, module: str, package: str, is_package: bool = False) -> list:
    """``"line: what"`` for every underscore name that ``module`` (its source ``text``) of
    subpackage ``package`` (e.g. ``skiprnn.inference``) takes from another part of skiprnn: a
    private module or name in an import from outside ``package``, and any ``obj._name``
    attribute whose object is not ``self`` / ``cls`` (a layer's or another module's private
    member). ``is_package``: ``module`` is a package's ``__init__``."""
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom):
            probe = ast.ImportFrom(module=node.module, names=[ast.alias(name="x")],
                                   level=node.level)
            source = _imported_names(module, is_package, probe)[0].rpartition(".")[0]
            if source.startswith("skiprnn") and not (source + ".").startswith(package + "."):
                found += [f"{node.lineno}: from {source} import {a.name}" for a in node.names
                          if _private(a.name)]
                if any(map(_private, source.split("."))):
                    found.append(f"{node.lineno}: from {source} (a private module)")
        elif isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names
                      if a.name.startswith("skiprnn") and any(map(_private, a.name.split(".")))]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if owner not in ("self", "cls"):
                found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_inference_uses_only_public_names_of_other_packages():
    """Issue 14, point 7: ``skiprnn.inference`` runs over the public surface of the layers and ops
    (``layer.layer_weights()``, ``layer.parse_state``, ``ops.skipping.NumpyStack``, ...)."""
    modules = {m: v for m, v in package_modules(PACKAGE_DIR).items()
               if (m + ".").startswith("skiprnn.inference.")}
    assert {"skiprnn.inference", "skiprnn.inference.lazy"} <= set(modules)
    bad = {m: private_uses(path.read_text(), m, "skiprnn.inference", is_pkg)
           for m, (path, is_pkg) in modules.items()}
    assert not {m: v for m, v in bad.items() if v}, bad


def test_private_use_checker():
    src = ("from ..ops.skipping import _Hidden, Public\n"
           "from .._env import x\n"
           "from .stream import _same_package\n"
           "import skiprnn._env\n"
           "def f(layer):\n"
           "    return layer._parse_hx(1), self._own, layer.__class__\n")
    assert private_uses(src, "skiprnn.inference.probe", "skiprnn.inference") == [
        "1: from skiprnn.ops.skipping import _Hidden",
        "2: from skiprnn._env (a private module)",
        "4: import skiprnn._env",
        "6: layer._parse_hx"]
