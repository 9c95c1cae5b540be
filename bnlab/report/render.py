"""Write a report folder: report.md, a standalone report.html, figures/, runs.csv, epochs.csv.

Markdown and HTML are rendered from the same pieces (header facts, claim
sections, problem runs) so they never disagree. The HTML embeds its figures as
base64 PNG and its CSS inline: it opens from disk with no server or network.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bnlab.report.core import ClaimResult
from bnlab.report.figure_kit import save_figure
from bnlab.report.intervals import seed_noise
from bnlab.report.keys import (
    BNLAB_VERSION,
    DATASET,
    DEVICE,
    FAILED,
    GIT_COMMIT,
    INCOMPLETE,
    RUN_NAME,
    STATUS,
    K,
)
from bnlab.report.load import RunTables
from bnlab.report.sections import FIGURES
from bnlab.report.tables import cell_text, html_table, markdown_table

TITLE = "bnlab report: popular claims about Batch Normalization"
FIGURES_DIR = "figures"
RUNS_CSV, EPOCHS_CSV, REPORT_MD, REPORT_HTML = "runs.csv", "epochs.csv", "report.md", "report.html"
# What a report folder holds, in the order it is moved into place: figures first and
# the documents last, so a reader who opens report.md as it appears finds its figures.
OWNED = (FIGURES_DIR, RUNS_CSV, EPOCHS_CSV, REPORT_MD, REPORT_HTML)
MAX_LISTED = 8  # commits/devices listed before "and N more"


@dataclass
class Written:
    """The files written, relative to the report folder."""

    report_md: Path
    report_html: Path
    runs_csv: Path
    epochs_csv: Path
    figures: list[Path]


def write_report(folder: Path, tables: RunTables, claims: list[ClaimResult]) -> Written:
    """Everything into `folder` (a staging folder: the caller moves it into place)."""
    fig_dir = folder / FIGURES_DIR
    fig_dir.mkdir()
    figures: list[Path] = []
    pngs: dict[str, bytes] = {}
    for claim in claims:
        for key in claim.figures:
            if key in pngs:
                continue
            fig = FIGURES[key](claim)
            png, svg = save_figure(fig, fig_dir, key)
            figures += [png.relative_to(folder), svg.relative_to(folder)]
            pngs[key] = png.read_bytes()
    runs_csv, epochs_csv = folder / RUNS_CSV, folder / EPOCHS_CSV
    _csv_ready(tables.runs).to_csv(runs_csv, index=False)
    tables.epochs.to_csv(epochs_csv, index=False)
    facts = header_facts(tables)
    problems = problem_runs(tables)
    report_md, report_html = folder / REPORT_MD, folder / REPORT_HTML
    report_md.write_text(render_markdown(facts, claims, problems))
    report_html.write_text(render_html(facts, claims, problems, pngs))
    names = [p.relative_to(folder) for p in (report_md, report_html, runs_csv, epochs_csv)]
    return Written(*names, figures=figures)


# ----------------------------------------------------------------------------- pieces


# Issue 24: what a CPU-scale folder can decide (conf/grid/_suites.yaml).
CPU_SCALE = (
    "`experiment=all preset=cpu` sweeps the three headline claims (lr, with convergence; "
    "depth; batch; its size in training images: `bnlab sweep experiment=all preset=cpu "
    "--dry-run`); a claim whose section reads NO DATA here is decided at GPU scale "
    "(`bnlab sweep experiment=all preset=gpu`)"
)


def header_facts(tables: RunTables) -> list[tuple[str, str]]:
    runs = tables.runs
    counts = runs[STATUS].value_counts()
    by_status = ", ".join(f"{n} {s}" for s, n in counts.sort_index().items())
    skipped = f"; {len(tables.skipped)} unreadable folder(s) skipped" if tables.skipped else ""
    presets = set(runs.get(K.preset_name, pd.Series(dtype=object)).dropna())
    scale = [("Scale", CPU_SCALE)] if presets == {"cpu"} else []
    return [
        ("Dataset variants", _listing(runs.get(DATASET))),
        ("Presets", _listing(runs.get(K.preset_name))),
        ("Runs", f"{len(runs)} ({by_status}){skipped}"),
        ("bnlab versions", _listing(runs.get(BNLAB_VERSION))),
        ("Git commits", _listing(runs.get(GIT_COMMIT))),
        ("Devices", _listing(runs.get(DEVICE))),
        ("Seed noise", seed_noise_text(runs)),
        *scale,
    ]


def seed_noise_text(runs: pd.DataFrame) -> str:
    """The noise floor measured from the seeds: the pooled standard deviation of final
    test accuracy over every training config run with 2 or more seeds -- per dataset
    variant when the store holds several (their accuracies' noise differs)."""
    variants = runs[DATASET].dropna().unique() if DATASET in runs else []
    if len(variants) <= 1:
        sd, dof = seed_noise(runs)
        if not dof:
            return "not measured (no config was run with 2 or more seeds)"
        return (
            f"{100 * sd:.2f} pp (pooled SD of final test accuracy between seeds, "
            f"{dof} degrees of freedom)"
        )
    parts = []
    for variant in sorted(variants):
        sd, dof = seed_noise(runs[runs[DATASET].eq(variant)])
        parts.append(f"{variant}: " + (f"{100 * sd:.2f} pp ({dof} dof)" if dof else "not measured"))
    return "; ".join(parts) + " (pooled SD of final test accuracy between seeds)"


def problem_runs(tables: RunTables) -> pd.DataFrame:
    """Folders that gave no result: skipped (unreadable), incomplete, failed."""
    rows = [
        {"run folder": name, "status": "skipped", "reason": why} for name, why in tables.skipped
    ]
    runs = tables.runs
    for _, run in runs[runs[STATUS].isin([INCOMPLETE, FAILED])].iterrows():
        if run[STATUS] == INCOMPLETE:
            reason = "no summary.json: still running or interrupted (rerun to resume)"
        else:
            reason = str(run.get("error") or "failed (no error recorded)")
        rows.append({"run folder": run[RUN_NAME], "status": run[STATUS], "reason": reason})
    return pd.DataFrame(rows, columns=["run folder", "status", "reason"])


def verdict_table(claims: list[ClaimResult]) -> pd.DataFrame:
    """One row per comparison a claim decides (one row for a claim without any): the
    effect with its 95% interval, the seeds, the rule version, the verdict, and the
    verdicts of the claim's earlier rule versions on the same runs."""
    rows = []
    for c in claims:
        earlier = "; ".join(f"v{v}: {verdict}" for v, verdict, _ in c.superseded) or "–"
        base = {
            "claim": c.key,
            "rule": f"v{c.version}",
            "earlier rules": earlier,
            "runs from": c.setting.caption if c.setting else "–",
        }
        if not c.comparisons:
            rows.append(
                {
                    **base,
                    "comparison": "–",
                    "effect [95% CI]": "–",
                    "seeds": "–",
                    "verdict": c.verdict,
                }
            )
        for v in c.comparisons:
            rows.append(
                {
                    **base,
                    "comparison": v.against,
                    "effect [95% CI]": v.effect_text(),
                    "seeds": v.seeds or "–",
                    "verdict": v.verdict,
                }
            )
    columns = [
        "claim",
        "comparison",
        "effect [95% CI]",
        "seeds",
        "rule",
        "verdict",
        "earlier rules",
        "runs from",
    ]
    return pd.DataFrame(rows, columns=columns)


def comparisons_table(claim: ClaimResult) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "comparison": [v.against for v in claim.comparisons],
            "effect [95% CI]": [v.effect_text() for v in claim.comparisons],
            "seeds": [v.seeds or "–" for v in claim.comparisons],
            "verdict": [v.verdict for v in claim.comparisons],
            "why": [v.why or "–" for v in claim.comparisons],
        }
    )


def numbers_table(numbers: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(
        {"quantity": list(numbers), "value": [_number(v) for v in numbers.values()]}
    )


# ----------------------------------------------------------------------------- markdown


def render_markdown(
    facts: list[tuple[str, str]], claims: list[ClaimResult], problems: pd.DataFrame
) -> str:
    out = [f"# {TITLE}", ""]
    out += [f"- **{label}:** {value}" for label, value in facts]
    out += ["", "## Verdicts", "", markdown_table(verdict_table(claims)), ""]
    for i, c in enumerate(claims, 1):
        out += [f"## {i}. {c.title}: {c.verdict}", ""]
        out += [f"**Claim.** {c.claim}", "", f"**Verdict.** **{c.verdict}**", ""]
        if c.setting:
            out += [f"**Runs.** {c.setting.caption}", ""]
        if c.comparisons:
            out += ["**Comparisons.**", "", markdown_table(comparisons_table(c)), ""]
        out += [f"**Rule (v{c.version}).** {c.rule}", ""]
        for version, verdict, text in c.superseded:
            out += [f"**Earlier rule v{version}** (on these runs: **{verdict}**). {text}", ""]
        if c.numbers:
            out += ["**Deciding numbers.**", "", markdown_table(numbers_table(c.numbers)), ""]
        if not c.evidence.empty:
            out += ["**Evidence.**", "", markdown_table(c.evidence), ""]
        if c.notes:
            out += ["**Notes.**", "", *[f"- {n}" for n in c.notes], ""]
        for key in c.figures:
            out += [
                f"![{c.title}: {key}]({FIGURES_DIR}/{key}.png)",
                "",
                f"Figure `{key}` ([SVG]({FIGURES_DIR}/{key}.svg)).",
                "",
            ]
    out += ["## Runs without a result", ""]
    out += [markdown_table(problems) if not problems.empty else "None.", ""]
    out += [
        "## Data",
        "",
        "`runs.csv`: one row per run. `epochs.csv`: one row per run and epoch.",
        "",
    ]
    return "\n".join(out)


# ----------------------------------------------------------------------------- HTML

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 72rem;
       margin: 2rem auto; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .88rem; }
th, td { border: 1px solid #ccc; padding: .25rem .55rem; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #eee; }
.verdict { font-weight: bold; padding: .1rem .45rem; border-radius: .3rem; }
.v-supported { background: #d8f0d8; } .v-not-supported { background: #f6d5d5; }
.v-inconclusive { background: #fbeec8; } .v-no-data, .v-descriptive { background: #e4e4e4; }
.v-mixed { background: #dde6f6; } .old { opacity: .8; font-size: .92em; }
.rule { background: #f8f8f8; border-left: 3px solid #bbb; padding: .4rem .7rem; }
"""


def render_html(
    facts: list[tuple[str, str]],
    claims: list[ClaimResult],
    problems: pd.DataFrame,
    pngs: dict[str, bytes],
) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(TITLE)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(TITLE)}</h1><ul>",
        *[f"<li><strong>{e(label)}:</strong> {e(value)}</li>" for label, value in facts],
        "</ul><h2>Verdicts</h2>",
        html_table(verdict_table(claims)),
    ]
    for i, c in enumerate(claims, 1):
        out += [
            f'<h2 id="{e(c.key)}">{i}. {e(c.title)}: {_badge(c.verdict)}</h2>',
            f"<p><strong>Claim.</strong> {e(c.claim)}</p>",
        ]
        if c.setting:
            out.append(f"<p><strong>Runs.</strong> {e(c.setting.caption)}</p>")
        if c.comparisons:
            out += ["<h3>Comparisons</h3>", html_table(comparisons_table(c))]
        out.append(f'<p class="rule"><strong>Rule (v{c.version}).</strong> {e(c.rule)}</p>')
        for version, verdict, text in c.superseded:
            out.append(
                f'<p class="rule old"><strong>Earlier rule v{version}</strong> (on these runs: '
                f"{_badge(verdict)}). {e(text)}</p>"
            )
        if c.numbers:
            out += ["<h3>Deciding numbers</h3>", html_table(numbers_table(c.numbers))]
        if not c.evidence.empty:
            out += ["<h3>Evidence</h3>", html_table(c.evidence)]
        if c.notes:
            out += ["<h3>Notes</h3><ul>", *[f"<li>{e(n)}</li>" for n in c.notes], "</ul>"]
        for key in c.figures:
            data = base64.b64encode(pngs[key]).decode("ascii")
            out.append(
                f'<figure><img alt="{e(c.title)}: {e(key)}" '
                f'src="data:image/png;base64,{data}"><figcaption>Figure {e(key)}'
                "</figcaption></figure>"
            )
    out.append("<h2>Runs without a result</h2>")
    out.append(html_table(problems) if not problems.empty else "<p>None.</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _badge(verdict: str) -> str:
    css = "v-" + verdict.lower().replace(" ", "-")
    return f'<span class="verdict {css}">{html.escape(verdict)}</span>'


# ----------------------------------------------------------------------------- helpers


def _listing(col: pd.Series | None) -> str:
    if col is None:
        return "unknown"
    values = sorted({str(v) for v in col.dropna()})
    if not values:
        return "unknown"
    more = f" and {len(values) - MAX_LISTED} more" if len(values) > MAX_LISTED else ""
    return ", ".join(values[:MAX_LISTED]) + more


def _number(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(cell_text(v) for v in value) or "none"
    return cell_text(value)


def _csv_ready(runs: pd.DataFrame) -> pd.DataFrame:
    """List-valued config cells (e.g. optim.milestones) as JSON, not Python reprs."""
    out = runs.copy()
    for column in out.columns:
        if out[column].map(lambda v: isinstance(v, list)).any():
            out[column] = out[column].map(lambda v: json.dumps(v) if isinstance(v, list) else v)
    return out
