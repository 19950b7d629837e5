"""The package's dependencies run one way (issue: "a house that is easy to read").

Every import in featlab/, function-level ones included, is parsed; each module belongs to a unit
(a top-level module or subpackage) and each unit to a layer. A unit may import units of lower
layers, and units of its own layer as long as no cycle forms. ``python tests/test_architecture.py
[ROOT]`` prints the upward edges and cycles of a checkout (the refactor's before/after measurement).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# lowest first: _utils -> data, models -> attacks -> metrics -> defenses -> train -> pretrained, recipes -> evaluate, checklist
# -> results -> experiments -> viz, widgets -> cli, runner
LAYERS: list[tuple[str, ...]] = [
    ("_utils", "nbtools", "checkpoint", "distributed"),
    ("data", "models"),
    ("attacks",),
    ("metrics",),
    ("defenses",),
    ("train", "runs"),
    ("pretrained", "recipes"),
    ("evaluate", "checklist", "probe"),
    ("results", "verdicts"),
    ("experiments",),
    ("viz", "widgets"),
    ("cli", "runner", "__init__"),
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _module_name(path: Path, pkg: Path) -> str:
    rel = path.relative_to(pkg.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _unit(module: str, units: set[str] | None = None) -> str:
    """The unit of a dotted name: featlab.train.afd -> train; a name defined in featlab/__init__.py
    (featlab.__version__) -> __init__."""
    parts = module.split(".")
    unit = parts[1] if len(parts) > 1 else "__init__"
    return unit if units is None or unit in units else "__init__"


def import_edges(root: Path = ROOT) -> set[tuple[str, str, str]]:
    """(importing unit, imported unit, where) for every import between featlab's units."""
    pkg = root / "featlab"
    units = {_unit(_module_name(p, pkg)) for p in pkg.rglob("*.py")}
    edges = set()
    for path in sorted(pkg.rglob("*.py")):
        mod = _module_name(path, pkg)
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == "featlab"]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".")
                    base = base if is_pkg else base[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                if prefix.split(".")[0] != "featlab":
                    continue
                # "from . import data" imports the unit data; "from .x import y" the unit of x
                targets = [f"{prefix}.{a.name}" if prefix == "featlab" else prefix for a in node.names]
            for t in targets:
                a, b = _unit(mod), _unit(t, units)
                if a != b:
                    edges.add((a, b, f"{path.relative_to(root)}:{node.lineno}"))
    return edges


def upward_edges(edges) -> list[tuple[str, str, str]]:
    return sorted((a, b, w) for a, b, w in edges if LAYER.get(b, 99) > LAYER.get(a, 99))


def cycles(edges) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2
    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    return found


def test_every_unit_has_a_layer():
    units = {_unit(_module_name(p, ROOT / "featlab")) for p in (ROOT / "featlab").rglob("*.py")}
    assert units <= set(LAYER), f"units without a layer in LAYERS: {sorted(units - set(LAYER))}"


def test_dependencies_run_one_way():
    edges = import_edges()
    assert edges, "no imports found: the parser is broken"
    up = upward_edges(edges)
    assert not up, "imports that go up the layers:\n" + "\n".join(f"  {a} -> {b} ({w})" for a, b, w in up)


def test_no_import_cycles():
    found = cycles(import_edges())
    assert not found, "import cycles between units: " + "; ".join(" -> ".join(c) for c in found)


def test_checker_catches_an_upward_edge_and_a_cycle(tmp_path):
    """The checker itself: a defense importing the trainer (up) and a cycle are both reported."""
    pkg = tmp_path / "featlab"
    for sub in ("defenses", "train"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "defenses" / "x.py").write_text("def f():\n    from ..train import Objective\n")
    (pkg / "train" / "y.py").write_text("from ..defenses import x\n")
    edges = import_edges(tmp_path)
    assert [(a, b) for a, b, _ in upward_edges(edges)] == [("defenses", "train")]
    assert cycles(edges)


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    e = import_edges(root)
    up, cyc = upward_edges(e), cycles(e)
    print(f"{root}: {len({(a, b) for a, b, _ in e})} unit edges, {len(up)} upward imports, {len(cyc)} cycles")
    for a, b, w in up:
        print(f"  up: {a} -> {b} ({w})")
    for c in cyc:
        print("  cycle: " + " -> ".join(c))
