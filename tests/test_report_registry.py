"""The report's registry: sections and figures declared once, rules that survive -OO,
and the committed CPU report reproduced byte for byte from its committed runs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bnlab.report import build_report
from bnlab.report.core import (
    FIGURES,
    SECTIONS,
    SUPPORTED,
    Finding,
    Rule,
    section,
)
from bnlab.report.load import RunTables
from bnlab.report.render import verdict_table
from bnlab.report.sections import evaluate_sections
from tests.conftest import REPO
from tests.report_synth import make_run

# As the README's command gives it, from the repository root: runs.csv keeps the
# runs folder as it was named.
COMMITTED_RUNS = Path("results/cpu/runs")
COMMITTED = REPO / "results" / "cpu"
COMPARED = ("report.md", "runs.csv", "epochs.csv")


def _assert_same_as_committed(out: Path) -> None:
    for name in COMPARED:
        assert (out / name).read_bytes() == (COMMITTED / name).read_bytes(), name


def test_committed_cpu_report_is_reproduced_byte_for_byte(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    build_report(COMMITTED_RUNS, tmp_path / "report")
    _assert_same_as_committed(tmp_path / "report")


@pytest.mark.e2e
def test_rules_survive_python_OO(tmp_path):
    # -OO strips docstrings: a rule kept in one would print empty.
    out = tmp_path / "report"
    cmd = [sys.executable, "-OO", "-m", "bnlab.cli", "report", "--runs", str(COMMITTED_RUNS)]
    proc = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    _assert_same_as_committed(out)


def test_every_rule_renders_with_its_values_filled_in():
    for key, sec in SECTIONS.items():
        text = sec.rule.render()
        assert len(text) > 100 and "{" not in text and "}" not in text, key


def test_declared_figures_exist_and_every_figure_is_used():
    declared = {f for sec in SECTIONS.values() for f in sec.figures}
    assert declared == set(FIGURES)


def test_a_toy_claim_is_one_registry_entry_and_one_function(tmp_path):
    make_run(tmp_path / "runs", norm="bn", final=0.7)
    toy_rule = Rule("SUPPORTED when some run reached {level}.", {"level": "50%"})

    @section("toy", "Toy claim", "A run exists.", toy_rule)
    def toy_claim(tables: RunTables) -> Finding:
        best = float(tables.runs["test_acc"].max())
        return Finding(SUPPORTED, numbers={"best_acc_pct": 100 * best})

    try:
        assert list(SECTIONS)[-1] == "toy"
        result = build_report(tmp_path / "runs", tmp_path / "report", experiment="toy")
        [claim] = result.claims
        assert (claim.key, claim.verdict, claim.rule) == (
            "toy",
            SUPPORTED,
            "SUPPORTED when some run reached 50%.",
        )
        assert "## 1. Toy claim: SUPPORTED" in result.report_md.read_text()
        table = verdict_table(evaluate_sections(build_tables(tmp_path / "runs")))
        assert table["claim"].tolist()[-1] == "toy"
    finally:
        del SECTIONS["toy"]


def build_tables(runs: Path) -> RunTables:
    from bnlab.report.load import load_runs

    return load_runs(runs)


def test_a_key_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="registered twice"):
        section("lr", "again", "again", Rule("x"))(lambda t: Finding(SUPPORTED))


def test_no_module_imports_another_modules_private_names():
    for path in (REPO / "bnlab").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bnlab"):
                names = [a.name for a in node.names if not a.name.startswith("__")]
                private = [n for n in names if n.startswith("_")]
                assert not private, f"{path.relative_to(REPO)} imports {private}"


def test_verdict_table_follows_registry_order():
    empty = RunTables(runs=pd.DataFrame(), epochs=pd.DataFrame())
    assert list(SECTIONS)[:3] == ["lr", "depth", "convergence"]
    assert callable(SECTIONS["lr"]) and empty.warnings == []
