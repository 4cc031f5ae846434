# SPDX-License-Identifier: GPL-3.0-or-later
"""The import rule of the netconf_callhome package, checked on its source (docs/architecture.md).

Layers import downward only: a module may import its own layer or the layers above it. The
service and the CLI are the composition root: nothing imports them. No import cycle anywhere,
and the distribution never imports the collection; Ansible and ncclient only in the endpoints
layer (the optional ``ansible`` extra, imported when the first endpoint is opened).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import netconf_callhome

PACKAGE = Path(netconf_callhome.__file__).resolve().parent

# Rank of each layer: lower ranks are "above" (more general); imports go to the same or a lower rank.
LAYERS: Dict[str, int] = {
    "errors": 0,
    "paths": 0,
    "fingerprints": 0,
    "config": 0,
    "netutil": 0,
    "logs": 0,
    "protocol": 1,
    "policy": 2,
    "state": 3,
    "metrics": 3,
    "sessions": 4,
    "control": 5,
    "endpoints": 5,
    "service": 6,
    "cli": 6,
    "__main__": 7,
}
ROOTS = {"service", "cli"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["netconf_callhome"] + parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports() -> Dict[str, Set[str]]:
    """Every netconf_callhome module and the package modules it imports (TYPE_CHECKING included)."""
    graph: Dict[str, Set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        found: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.level:
                    raise AssertionError("%s uses a relative import; the package uses absolute ones" % name)
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = found
    return graph


GRAPH = _imports()


def test_the_package_is_found_and_layered() -> None:
    layers = {_layer(m) for m in GRAPH} - {"__init__"}
    assert layers <= set(LAYERS), "a module outside every layer: %s" % sorted(layers - set(LAYERS))
    assert {"protocol", "policy", "state", "control", "service", "cli"} <= layers


def test_imports_go_downward_only() -> None:
    wrong: List[Tuple[str, str]] = []
    for module, imported in GRAPH.items():
        own = _layer(module)
        for target in imported:
            if not target.startswith("netconf_callhome.") or _layer(target) == own:
                continue
            if own != "__init__" and LAYERS[_layer(target)] > LAYERS.get(own, 0):
                wrong.append((module, target))
    assert not wrong, "imports that go up a layer: %s" % wrong


def test_nothing_imports_the_composition_root() -> None:
    importers = [
        (module, target)
        for module, imported in GRAPH.items()
        for target in imported
        if target.startswith("netconf_callhome.")
        and _layer(target) in ROOTS
        and _layer(module) not in ROOTS | {"__main__"}
    ]
    assert not importers, importers


def test_no_import_cycle() -> None:
    package_graph = {m: {t for t in ts if t in GRAPH} for m, ts in GRAPH.items()}
    visiting: Set[str] = set()
    done: Set[str] = set()
    stack: List[str] = []

    def visit(node: str) -> None:
        if node in done:
            return
        if node in visiting:
            cycle = stack[stack.index(node):] + [node]
            raise AssertionError("import cycle: %s" % " -> ".join(cycle))
        visiting.add(node)
        stack.append(node)
        for nxt in sorted(package_graph[node]):
            visit(nxt)
        stack.pop()
        visiting.discard(node)
        done.add(node)

    for module in sorted(package_graph):
        visit(module)


def test_the_distribution_never_imports_the_collection_or_ansible() -> None:
    leaks = [
        (module, target)
        for module, imported in GRAPH.items()
        for target in imported
        if target.split(".")[0] == "ansible_collections"
        or (target.split(".")[0] in ("ansible", "ncclient") and _layer(module) != "endpoints")
    ]
    assert not leaks, leaks


def test_ansible_is_imported_lazily_in_the_endpoints() -> None:
    """The listener runs without the ``ansible`` extra: no module-level import of ansible/ncclient."""
    eager = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text(), str(path)).body:
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            eager += [(_module_name(path), n) for n in names if n.split(".")[0] in ("ansible", "ncclient")]
    assert not eager, eager
