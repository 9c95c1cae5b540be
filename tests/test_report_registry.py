"""The report's registry: sections and figures declared once, rules that survive -OO,
the committed CPU report reproduced byte for byte from its committed runs, and the
earlier rule versions kept exactly while a committed report shows them."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bnlab.report import build_report
from bnlab.report.core import (
    FIGURES,
    SECTIONS,
    SUPERSEDED,
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
COMMITTED_REPORTS = sorted((REPO / "results").glob("*/report.md"))


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
    assert list(SECTIONS)[:3] == ["lr", "depth", "batch"]
    assert callable(SECTIONS["lr"]) and empty.warnings == []


def _versions_shown(report: Path) -> dict[str, tuple[int, set[int]]]:
    """Per section of a report.md: the rule version that judged it, and the earlier
    versions it shows beside."""
    key_of = {s.title: key for key, s in SECTIONS.items()}
    shown: dict[str, tuple[int, set[int]]] = {}
    key = ""
    for line in report.read_text().splitlines():
        if m := re.match(r"## \d+\. (.*): [A-Z ]+$", line):
            key = key_of[m.group(1)]
        elif m := re.match(r"\*\*Rule \(v(\d+)\)\.\*\*", line):
            shown[key] = (int(m.group(1)), set())
        elif m := re.match(r"\*\*Earlier rule v(\d+)\*\* \(on these runs: ", line):
            shown[key][1].add(int(m.group(1)))
    return shown


def test_earlier_rule_versions_stay_exactly_while_a_committed_report_shows_them():
    # Issue 27: an earlier version stays only while committed results are judged by it;
    # once they are regenerated without it, it is deleted (git keeps it). Each committed
    # report also names the version that judged it: the one the code has now.
    assert len(COMMITTED_REPORTS) >= 2
    shown: set[tuple[str, int]] = set()
    for report in COMMITTED_REPORTS:
        versions = _versions_shown(report)
        assert versions, report
        for key, (current, earlier) in versions.items():
            assert current == SECTIONS[key].rule.version, f"{report}: {key} judged by v{current}"
            shown |= {(key, v) for v in earlier}
    kept = {(key, old.rule.version) for key, olds in SUPERSEDED.items() for old in olds}
    assert kept == shown, (
        f"kept but shown by no committed report: {sorted(kept - shown)}; "
        f"shown but not kept: {sorted(shown - kept)}"
    )
