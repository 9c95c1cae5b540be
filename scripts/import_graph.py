"""bnlab's import graph: cycles between modules and imports that climb a layer.

    python scripts/import_graph.py          # prints both; exit 1 if either exists

The layers follow the data flow of ARCHITECTURE.md (a lower layer never imports a
higher one, not even inside a function): foundations (errors, config, the norm
registry's schemas, composition) < data, models, store < build, train, sinks <
recipe, pack, export < sweep < report < cli. `from pkg import submodule` counts as a
dependency on the submodule, not on the package's __init__.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bnlab"
LAYERS = [
    ("errors", "progress", "config", "norm_kinds", "compose"),
    ("data", "models", "store"),
    ("build", "train", "sinks"),
    ("recipe", "pack", "export"),
    ("sweep",),
    ("report",),
    ("cli", "__main__"),
]


def layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    return next((i for i, names in enumerate(LAYERS) if part in names), -1)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    found = {}
    for path in sorted(root.rglob("*.py")):
        name = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the bnlab modules it imports (at the top or inside a function)."""
    edges: dict[str, set[str]] = defaultdict(set)
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bnlab"):
                subs = [f"{node.module}.{a.name}" for a in node.names]
                subs = [s for s in subs if s in mods]
                targets = subs if len(subs) == len(node.names) else [node.module, *subs]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("bnlab")]
            edges[mod].update(t for t in targets if t in mods and t != mod)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def upward(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a in edges for b in edges[a] if layer(b) > layer(a) >= 0)


def main() -> int:
    edges = imports(modules())
    loops, climbs = cycles(edges), upward(edges)
    print(f"{len(edges)} modules; cycles: {len(loops)}; upward imports: {len(climbs)}")
    for group in loops:
        print("  cycle: " + " <-> ".join(group))
    for a, b in climbs:
        print(f"  upward: {a} -> {b}")
    return 1 if loops or climbs else 0


if __name__ == "__main__":
    sys.setrecursionlimit(10_000)
    sys.exit(main())
