"""The architecture as the imports draw it: no loops, data flowing one way, the core torch-free.

Reads every installed module's imports (module level and inside functions) with the
installed names (``faceq.workers`` is the repository's ``workers/``: pyproject's package-dir),
so graph tools that only know folders cannot miss an edge.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from tests.conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PACKAGE_DIRS = {"faceq": "faceq", **PYPROJECT["tool"]["setuptools"]["package-dir"]}
SERVICE_ONLY = {"torch", "celery", "cv2", "flower", "matplotlib", "simplejpeg", "billiard"}


def product_modules() -> dict[str, Path]:
    """Installed module name → source file, for every package pyproject installs."""
    modules = {}
    for package in PYPROJECT["tool"]["setuptools"]["packages"]:
        name, folder = max(((name, folder) for name, folder in PACKAGE_DIRS.items()
                            if package == name or package.startswith(name + ".")), key=lambda nf: len(nf[0]))
        directory = REPO / folder / package[len(name):].lstrip(".").replace(".", "/")
        for path in directory.glob("*.py"):
            module = package if path.stem == "__init__" else f"{package}.{path.stem}"
            modules[module] = path
    return modules


def imports_of(module: str, path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module if path.stem == "__init__" else module.rsplit(".", 1)[0]
                parent = ".".join(parent.split(".")[: len(parent.split(".")) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def graph() -> dict[str, set[str]]:
    modules = product_modules()
    return {m: {i for i in imports_of(m, p) if i in modules and i != m} for m, p in modules.items()}


def test_no_import_loops():
    edges = graph()
    index, low, stack, on_stack, loops = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert not loops, f"import loops: {loops}"


def layer_of(module: str) -> str:
    return next((p for p in ("faceq.models", "faceq.workers", "faceq.producer")
                 if module == p or module.startswith(p + ".")), "core")


# who may import whom: the core (faceq.*) is the ground both sides of the queue stand on
MAY_IMPORT = {"core": {"core"}, "faceq.models": {"core", "faceq.models"},
              "faceq.workers": {"core", "faceq.models", "faceq.workers"}, "faceq.producer": {"core", "faceq.producer"}}
EXCEPTIONS = {
    # the package face hands the client on, lazily (from faceq import Client)
    "faceq -> faceq.producer", "faceq -> faceq.producer.client",
    "faceq.producer.models_fetch -> faceq.models.weights",  # a fetched checkpoint loaded strictly, if torch is here
}


def test_imports_run_one_way():
    wrong = sorted(f"{a} -> {b}" for a, targets in graph().items() for b in targets
                   if layer_of(b) not in MAY_IMPORT[layer_of(a)])
    assert [edge for edge in wrong if edge not in EXCEPTIONS] == []


def test_the_core_and_the_client_import_nothing_of_the_worker_stack():
    modules = product_modules()
    heavy = {}
    for module, path in modules.items():
        if layer_of(module) in ("core", "faceq.producer"):  # what `pip install faceq` runs
            top = {i.split(".")[0] for i in imports_of(module, path)}
            if top & SERVICE_ONLY:
                heavy[module] = sorted(top & SERVICE_ONLY)
    allowed = {"faceq.outputs.report": ["matplotlib"],  # only where installed (histogram; else a note)
               "faceq.producer.models_fetch": []}
    assert {m: v for m, v in heavy.items() if allowed.get(m) != v} == {}


def test_dev_machinery_is_not_installed():
    modules = product_modules()
    assert not [m for m in modules if "devstack" in m]
    for module, path in modules.items():
        assert not {i for i in imports_of(module, path) if i.split(".")[0] in {"devstack", "tests", "bench"}}, module
