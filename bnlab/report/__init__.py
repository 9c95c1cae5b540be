"""`bnlab report`: run folders -> tidy tables -> one verdict per claim -> figures + report.

core.py     verdicts, Rule (versioned), Verdict rows, Finding -> ClaimResult, the
            registry of sections, superseded rule versions and figures
keys.py     the tables' column names, once: config keys read off the schema
            (K.optim.lr == "optim.lr"), summary/metrics fields as the store writes them
load.py     runs folder -> RunTables (one row per run, one per epoch, probes, warnings)
select.py   which runs a section compares (config values, one setting), arm labels
arms.py     BN and the no-BN arms it is compared with; selecting and measuring them
intervals.py  seeds -> means with 95% intervals, effects (Welch), the decision rule
points.py   grid points: a run's accuracy, looking points up by norm or arm, pivots
cells.py    numbers and table cells as the report prints them
claims.py   the seven claims and the norms table, one registered function each
mechanisms.py  the same for why BN helps: ICS, landscape, small-batch alternatives, why
            BN degrades at small batch, depth without BN
sequence.py the sequence-model claims (LN/RMSNorm/BN in RNNs and a transformer), their
            figures, each arm at its own lr chosen across seeds
probe_maths.py  per-run quantities from probes.csv (distribution shift, ICS, landscape)
superseded.py   the earlier rule versions that committed reports show: still decided,
            their verdicts shown beside (stats.py is their noise rule)
sections.py imports the sections and figures, so they register, in report order
figure_kit.py, plots.py, mechanism_plots.py  figure styles/helpers; one figure each
render.py   report.md, standalone report.html, runs.csv, epochs.csv
publish.py  build in a staging folder, then move into place
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bnlab.errors import BnlabError
from bnlab.report.core import ClaimResult
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
