"""The import layering of README.md ("Layering"), checked on the source: no import cycle, no import upwards.

Every ``import`` and ``from ... import`` of every module is read with ``ast`` (also those inside functions: a
lazy import is still a dependency, it only moves the failure to run time). Layers, lowest first:

    spectra.contracts < spectra.common < spectra < catalog < runtime < training < export < benchmarks, tests

Inside ``spectra`` (layer ``spectra``), lowest first:

    its shared top modules (schema, wavegrid, prior) < forward < stores < synth < observed < cli, plots

(the forward model works on arrays; the stores read and write files with it; the synthesis fills grid stores; observed
spectra reuse synthesis, forward model and stores; the command line and plots use them all).

A module may import its own layer and the layers below it; ``spectra.contracts`` imports only the standard library
and numpy, ``spectra.common`` (generic helpers) only the standard library and the contracts; ``runtime`` and
``catalog`` never import torch or FrEIA. Exceptions would be listed in :data:`KNOWN_VIOLATIONS`, each with its
reason (none is left); the list may only shrink: an entry that is no longer needed fails the test too, so that it
is removed with the fix.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("spectra", "catalog", "runtime", "training", "export", "benchmarks", "tests")
#: layer of each package (spectra.contracts and spectra.common are the two layers below spectra), lowest first
LAYERS = {"spectra.contracts": 0, "spectra.common": 1, "spectra": 2, "catalog": 3, "runtime": 4, "training": 5,
          "export": 6, "benchmarks": 7, "tests": 7}
#: rank of spectra's top modules and sub-packages inside the ``spectra`` layer, lowest first (README.md, Layering)
SPECTRA_RANKS = {"spectra": 0, "spectra.schema": 0, "spectra.wavegrid": 0, "spectra.prior": 0, "spectra.forward": 1,
                 "spectra.stores": 2, "spectra.synth": 3, "spectra.observed": 4, "spectra.cli": 5, "spectra.plots": 5,
                 "spectra.__main__": 5}
#: third-party packages a layer must never import
FORBIDDEN_THIRD_PARTY = {"runtime": {"torch", "FrEIA", "onnx"}, "catalog": {"torch", "FrEIA", "onnx"}}
#: the only non-standard-library package ``spectra.contracts`` may import
CONTRACTS_THIRD_PARTY = {"numpy"}

#: (importer, imported module) -> why it is still there. Shrink only: fix the import, then delete its line.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the repository's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if any(part.startswith(".") or part in ("__pycache__", "build") for part in path.parts):
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _target(name: str) -> str | None:
    """The repository module ``name`` refers to (itself or the nearest enclosing module), None if not ours."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> list[tuple[str, int]]:
    """(imported name, line) of every import statement in ``module``, relative imports resolved; ``from a import b``
    gives ``a.b`` (a submodule or a name in ``a``; :func:`_target` decides which)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            out += [(f"{prefix}.{alias.name}", node.lineno) for alias in node.names]
    return out


def _layer(module: str) -> tuple[str, int]:
    name = next((sub for sub in ("spectra.contracts", "spectra.common")
                 if module == sub or module.startswith(sub + ".")), module.split(".")[0])
    return name, LAYERS[name]


def spectra_rank(module: str) -> int | None:
    """Rank of a module of the ``spectra`` layer among its sub-packages (:data:`SPECTRA_RANKS`); None outside it."""
    if _layer(module)[0] != "spectra":
        return None
    return SPECTRA_RANKS[".".join(module.split(".")[:2])]


def dependency_graph() -> dict[str, set[str]]:
    """Module -> the repository modules it imports (package ``__init__`` files reached only implicitly are not
    edges: importing ``spectra.contracts.flags`` runs ``spectra/__init__.py``, which imports nothing)."""
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        targets = {_target(name) for name, _ in imports_of(module)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def layering_violations() -> dict[tuple[str, str], int]:
    """(importer, imported) -> line, for every import of a higher layer's module."""
    found = {}
    for module in MODULES:
        _, own = _layer(module)
        for name, line in imports_of(module):
            target = _target(name)
            if target is None or target == module:
                continue
            if _layer(target)[1] > own:
                found.setdefault((module, target), line)
    return found


def test_no_import_cycle():
    cycles = find_cycles(dependency_graph())
    assert not cycles, "import cycles (each a set of modules that import each other):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_imports_follow_the_layering():
    found = layering_violations()
    new = {k: v for k, v in found.items() if k not in KNOWN_VIOLATIONS}
    assert not new, "imports against the layering of README.md (Layering):\n" + "\n".join(
        f"{a} (line {line}) imports {b}" for (a, b), line in sorted(new.items()))
    fixed = sorted(k for k in KNOWN_VIOLATIONS if k not in found)
    assert not fixed, f"these imports are gone: remove them from KNOWN_VIOLATIONS: {fixed}"


def spectra_violations() -> dict[tuple[str, str], int]:
    """(importer, imported) -> line, for every import of a higher-ranked part of ``spectra`` (:data:`SPECTRA_RANKS`)."""
    found = {}
    for module in MODULES:
        own = spectra_rank(module)
        for name, line in imports_of(module) if own is not None else ():
            target = _target(name)
            rank = spectra_rank(target) if target is not None else None
            if rank is not None and rank > own:
                found.setdefault((module, target), line)
    return found


def test_spectra_subpackages_follow_their_order():
    """``spectra.forward`` imported ``spectra.stores`` (the grid-file steps normalise-grid and rotate-grid) while the
    stores import the forward model: sub-packages importing each other. Every part of spectra is ranked, so the
    knot cannot come back; a new sub-package must be given its rank."""
    unranked = sorted({".".join(m.split(".")[:2]) for m in MODULES if _layer(m)[0] == "spectra"} - set(SPECTRA_RANKS))
    assert not unranked, f"give these parts of spectra a rank in SPECTRA_RANKS: {unranked}"
    found = spectra_violations()
    assert not found, "imports against the order inside spectra (README.md, Layering):\n" + "\n".join(
        f"{a} (line {line}) imports {b}" for (a, b), line in sorted(found.items()))


def test_contracts_import_only_the_standard_library_and_numpy():
    for module in (m for m in MODULES if m.startswith("spectra.contracts")):
        for name, line in imports_of(module):
            root = name.split(".")[0]
            if _target(name) is not None:
                pytest.fail(f"{module} (line {line}) imports {name}: a contract imports nothing of the repository")
            assert root in sys.stdlib_module_names or root in CONTRACTS_THIRD_PARTY or root == "__future__", (
                f"{module} (line {line}) imports {name}: contracts use only the standard library and numpy")


def test_common_helpers_import_only_the_standard_library_and_the_contracts():
    for module in (m for m in MODULES if _layer(m)[0] == "spectra.common"):
        for name, line in imports_of(module):
            target = _target(name)
            if target is not None:
                assert _layer(target)[0] in ("spectra.contracts", "spectra.common"), (
                    f"{module} (line {line}) imports {name}: the common helpers import only the contracts")
                continue
            root = name.split(".")[0]
            assert root in sys.stdlib_module_names or root == "__future__", (
                f"{module} (line {line}) imports {name}: the common helpers use only the standard library")


def test_runtime_and_catalog_never_import_torch():
    for module in MODULES:
        forbidden = FORBIDDEN_THIRD_PARTY.get(module.split(".")[0], set())
        for name, line in imports_of(module):
            assert name.split(".")[0] not in forbidden, f"{module} (line {line}) imports {name}"


def test_the_checks_can_fail():
    """The cycle finder and the layer rule on a made-up graph: a cycle is found, an upward import is one."""
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    assert _layer("spectra.contracts.flags")[1] < _layer("spectra.common.outputs")[1] < _layer("spectra.schema")[1] \
        < _layer("catalog.writers")[1] \
        < _layer("runtime.bundle")[1] < _layer("training.fit")[1] < _layer("export.onnx")[1] < _layer("tests.x")[1]
    assert spectra_rank("spectra.wavegrid") < spectra_rank("spectra.forward.rotation") \
        < spectra_rank("spectra.stores.gridstore") < spectra_rank("spectra.synth.grid") \
        < spectra_rank("spectra.observed.rv") < spectra_rank("spectra.cli")
    assert spectra_rank("spectra.contracts.flags") is None and spectra_rank("catalog.writers") is None
    # an import inside a function counts: spectra.stores.survey_reader opens simulated surveys lazily
    assert "spectra.stores.simulated" in dependency_graph()["spectra.stores.survey_reader"]


def test_spectra_package_import_is_light():
    """``import spectra`` (which every ``spectra.contracts`` import runs) loads neither numpy nor
    importlib.metadata: the version is looked up on first use."""
    import subprocess

    code = ("import sys, spectra, spectra.contracts; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'importlib') and 'metadata' in m "
            "or m == 'numpy'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
