"""Import layers and import cycles of the installed package (DESIGN.md, "Layers and data flow").

Every module of ``morphometry`` is imported, and its import statements, at the top and inside
functions, are read from its source with ``ast``. Layers, lowest first: the vocabulary modules of
the base package (io, labels, tables, errors, ...: every module directly under ``morphometry``);
``segment`` and ``analysis`` above them, independent of each other; ``reports``, which may use
``analysis``; the API facade (the ``morphometry`` package itself and ``morphometry.demo``) and
``cli`` on top. Reading the package's ``__version__`` (``from morphometry import __version__``)
is allowed everywhere: the facade exports its API lazily, so that import loads no layer.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import pkgutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

ROOT = "morphometry"
API_MODULES = (ROOT, "morphometry.demo")
"""The facade and the demo it exports (the whole chain through the API)."""
SUBPACKAGES = ("morphometry", "morphometry.segment", "morphometry.analysis", "morphometry.reports")
"""Walked with pkgutil: in an editable install each lives in its own folder (see pyproject.toml)."""
NEEDS_TORCH = "morphometry.segment.training."
ALLOWED = {
    "vocabulary": {"vocabulary"},
    "segment": {"vocabulary", "segment"},
    "analysis": {"vocabulary", "analysis"},
    "reports": {"vocabulary", "analysis", "reports"},
    "api": {"vocabulary", "segment", "analysis", "reports", "api"},
    "cli": {"vocabulary", "segment", "analysis", "reports", "api", "cli"},
}
VERSION_ONLY = "__version__"


def package_modules() -> list[str]:
    names = set(SUBPACKAGES)
    for package in SUBPACKAGES:
        path = importlib.import_module(package).__path__
        names.update(info.name for info in pkgutil.walk_packages(path, package + "."))
    return sorted(names)


MODULES = package_modules()


def layer(module: str) -> str:
    if module in API_MODULES:
        return "api"
    part = module.split(".")[1]
    return part if part in ("segment", "analysis", "reports", "cli") else "vocabulary"


def _is_package(module: str) -> bool:
    return importlib.util.find_spec(module).submodule_search_locations is not None


class _Imports(ast.NodeVisitor):
    """(line, imported module, only under ``if TYPE_CHECKING``) of every import of the package's
    modules; ``from a import b`` names the module ``a.b`` when that is one, else ``a``."""

    def __init__(self, module: str, known: set[str]):
        self.package = module if _is_package(module) else module.rpartition(".")[0]
        self.known, self.found, self.typing = known, [], 0

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        guarded = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
            (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
        self.typing += guarded
        for child in node.body:
            self.visit(child)
        self.typing -= guarded
        for child in node.orelse:
            self.visit(child)

    def _add(self, line: int, target: str) -> None:
        if target == ROOT or target.startswith(ROOT + "."):
            self.found.append((line, target, self.typing > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node.lineno, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = ".".join(base[: len(base) - node.level + 1])
            source = f"{base}.{node.module}" if node.module else base
        else:
            source = node.module
        for alias in node.names:
            if source == ROOT and alias.name == VERSION_ONLY:
                continue
            child = f"{source}.{alias.name}"
            self._add(node.lineno, child if child in self.known else source)


def imports_of(module: str) -> list[tuple[int, str, bool]]:
    origin = importlib.util.find_spec(module).origin
    with open(origin, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), origin)
    visitor = _Imports(module, set(MODULES))
    visitor.visit(tree)
    return list(dict.fromkeys(visitor.found))


def test_import_reader_sees_every_kind_of_import():
    source = """
from typing import TYPE_CHECKING
from morphometry import __version__
from morphometry.errors import InputError
from . import metrics
if TYPE_CHECKING:
    from morphometry.reports.style import method_order
def f():
    import morphometry.segment.bundle as b
    from ..reports import html
"""
    visitor = _Imports("morphometry.analysis.evaluation", set(MODULES))
    visitor.visit(ast.parse(source))
    assert visitor.found == [(4, "morphometry.errors", False), (5, "morphometry.analysis.metrics", False),
                             (7, "morphometry.reports.style", True), (9, "morphometry.segment.bundle", False),
                             (10, "morphometry.reports.html", False)]
    upward = [t for _, t, _ in visitor.found if layer(t) not in ALLOWED["analysis"]]
    assert upward == ["morphometry.reports.style", "morphometry.segment.bundle", "morphometry.reports.html"]


def _torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


@pytest.mark.parametrize("module", [m for m in MODULES if not m.endswith(".__main__")])
def test_every_module_imports(module):
    if module.startswith(NEEDS_TORCH) and not _torch_available():
        pytest.skip("PyTorch is not installed (the [train] extra)")
    importlib.import_module(module)


def test_modules_import_only_their_own_or_lower_layers():
    known = set(MODULES)
    problems = []
    for module in MODULES:
        for line, target, _ in imports_of(module):
            if target not in known:
                problems.append(f"{module}:{line} imports {target}, which is not a module of the package")
            elif layer(target) not in ALLOWED[layer(module)]:
                problems.append(f"{module}:{line} ({layer(module)}) imports {target} ({layer(target)})")
    assert not problems, "\n".join(problems)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of a directed graph (node -> successors)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_strongly_connected_components_of_a_known_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}, "g": set()}
    assert sorted(strongly_connected(graph)) == [["a", "b", "c"], ["d", "e"], ["f"], ["g"]]


def test_no_import_cycles():
    known = set(MODULES)
    graph = {m: {t for _, t, typing in imports_of(m) if t in known and t != m and not typing} for m in MODULES}
    cycles = [c for c in strongly_connected(graph) if len(c) > 1]
    lines = []
    for cycle in cycles:
        members = set(cycle)
        edges = [f"{m} -> {t}" for m in cycle for t in sorted(graph[m] & members)]
        lines.append(f"cycle between {', '.join(cycle)}: {'; '.join(edges)}")
    assert not cycles, "\n".join(lines)


# -- light commands load no heavy runtime -----------------------------------------------------------

HEAVY = ("onnxruntime", "torch")
PROBE = """
import json, sys
from morphometry.cli import main
try:
    code = main(json.loads(sys.argv[1]))
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "loaded": [m for m in json.loads(sys.argv[2]) if m in sys.modules]}))
"""


def _probe(argv: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(HEAVY)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _small_cohort(folder) -> tuple:
    """60 scans of one method with every volume column, and their ages and sexes."""
    from morphometry.labels import STRUCTURES, TOTAL_INTRACRANIAL
    from morphometry.tables import write_volumes

    rng = np.random.default_rng(3)
    n = 60
    ages = rng.uniform(20, 90, n)
    spacing = np.ones((n, 3))
    spacing[np.arange(n), np.arange(n) % 3] = rng.uniform(1, 8, n)  # one thick-slice axis per scan
    volumes = pd.DataFrame({"scan_id": [f"s{i:02d}" for i in range(n)], "subject_id": [f"p{i:02d}" for i in range(n)],
                            "session_id": "ses-1", "path": "scan.nii.gz", "method": "synthseg+", "model_id": "test",
                            "spacing_x_mm": spacing[:, 0], "spacing_y_mm": spacing[:, 1], "spacing_z_mm": spacing[:, 2],
                            "slice_spacing_mm": spacing.max(1),
                            "slice_axis": np.array(["sagittal", "coronal", "axial"])[np.arange(n) % 3],
                            "shape_x": 100, "shape_y": 100, "shape_z": 100})
    for s in STRUCTURES:
        volumes[s] = 4000.0 * (1 - 0.003 * (ages - 20)) * (1 + 0.03 * rng.normal(size=n))
    volumes[TOTAL_INTRACRANIAL] = volumes[list(STRUCTURES)].sum(axis=1)
    write_volumes(volumes, folder / "seg")
    covariates = folder / "covariates.csv"
    pd.DataFrame({"scan_id": volumes["scan_id"], "age": ages, "sex": rng.choice(["F", "M"], n)}) \
        .to_csv(covariates, index=False)
    return folder / "seg" / "volumes.parquet", covariates


def test_fit_ageing_loads_no_onnx_runtime(tmp_path):
    shown = _probe(["fit-ageing", "--help"])
    assert shown == {"code": 0, "loaded": []}
    volumes, covariates = _small_cohort(tmp_path)
    out = tmp_path / "ageing"
    ran = _probe(["fit-ageing", str(volumes), "--covariates", str(covariates), "-o", str(out),
                  "--structures", "hippocampus"])
    assert ran == {"code": 0, "loaded": []}
    assert (out / "trajectories.parquet").is_file()  # the command did fit
