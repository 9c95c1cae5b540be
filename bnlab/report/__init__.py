"""`bnlab report`: run folders -> tidy tables -> one verdict per claim -> figures + report.

load.py     runs folder -> RunTables (one row per run, one per epoch, warnings)
select.py   which runs a claim compares (config values, one setting)
stats.py    seeds -> mean/std/n, and when a difference counts
claims.py   one function per claim, each with its rule as its docstring
mechanisms.py  the same for why BN helps: ICS, landscape, small-batch alternatives, depth
sections.py every section in report order, and every figure
plots.py, mechanism_plots.py  one matplotlib figure per claim or section (PNG + SVG)
render.py   report.md, standalone report.html, runs.csv, epochs.csv
publish.py  build in a staging folder, then move into place
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bnlab.errors import BnlabError
from bnlab.report.claims import ClaimResult
from bnlab.report.load import load_runs
from bnlab.report.publish import publish
from bnlab.report.render import OWNED, write_report
from bnlab.report.sections import SECTIONS, evaluate_sections

__all__ = ["SECTIONS", "ClaimResult", "ReportResult", "build_report"]


@dataclass
class ReportResult:
    out: Path
    report_md: Path
    report_html: Path
    runs_csv: Path
    epochs_csv: Path
    figures: list[Path]
    claims: list[ClaimResult]
    warnings: list[str] = field(default_factory=list)  # e.g. skipped run folders


def build_report(runs: Path, out: Path, experiment: str | None = None) -> ReportResult:
    """Read every run under `runs`, decide each claim, write the report into `out`.

    experiment: one section key (lr, depth, ..., ics, landscape) to report on alone;
    None for all.
    Raises BnlabError (one line) for an unknown key, a runs folder with no
    readable run, or an output folder that cannot be written.
    """
    if experiment is not None and experiment not in SECTIONS:
        known = ", ".join(SECTIONS)
        raise BnlabError(f"unknown experiment '{experiment}' (choose one of: {known})")
    out = Path(out)
    tables = load_runs(Path(runs))
    claims = evaluate_sections(tables, [experiment] if experiment else None)
    written = publish(out, lambda staging: write_report(staging, tables, claims), OWNED)
    return ReportResult(
        out=out,
        report_md=out / written.report_md,
        report_html=out / written.report_html,
        runs_csv=out / written.runs_csv,
        epochs_csv=out / written.epochs_csv,
        figures=[out / f for f in written.figures],
        claims=claims,
        warnings=list(tables.warnings),
    )
