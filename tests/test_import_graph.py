"""bnlab's layers hold: no import cycle, no import from a higher layer (scripts/import_graph.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("import_graph", REPO / "scripts/import_graph.py")
assert spec is not None and spec.loader is not None
graph = importlib.util.module_from_spec(spec)
spec.loader.exec_module(graph)


def test_bnlab_has_no_import_cycle_and_no_upward_import():
    edges = graph.imports(graph.modules())
    assert graph.cycles(edges) == []
    assert graph.upward(edges) == []
    assert all(graph.layer(m) >= 0 for m in edges if m != "bnlab"), "a module in no layer"


def test_the_checks_find_what_they_look_for():
    edges = {"bnlab.config": {"bnlab.sweep.grid"}, "bnlab.sweep.grid": {"bnlab.config"}}
    assert graph.cycles(edges) == [["bnlab.config", "bnlab.sweep.grid"]]
    assert graph.upward(edges) == [("bnlab.config", "bnlab.sweep.grid")]
