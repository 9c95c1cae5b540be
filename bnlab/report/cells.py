"""Numbers as the report prints them: deciding numbers rounded, table cells formatted.

Accuracies are fractions internally; the report gives them in % and differences in
percentage points (pp).
"""

from __future__ import annotations

import math

import pandas as pd

from bnlab.report.intervals import Estimate


def pct(x: float | None) -> float | None:
    """A fraction as a percentage (or pp), 2 decimals; None for a missing value."""
    return None if x is None or math.isnan(x) else round(100 * float(x), 2)


def round2(x: float) -> float | None:
    return None if math.isnan(x) else round(float(x), 2)


def sig4(x: float | None) -> float | None:
    """4 significant digits (ratios and probe values span many magnitudes)."""
    return None if x is None or not math.isfinite(x) else float(f"{x:.4g}")


def ci_cell(p: pd.Series) -> str:
    """An accuracy point as "mean [95% interval] (n=k)" in %; one seed is exploratory."""
    mean, n = p["mean"], int(p.get("n", 1))
    if pd.isna(mean):
        return "–"
    if n >= 2 and not pd.isna(p.get("low")):
        return f"{100 * mean:.1f} [{100 * p['low']:.1f}, {100 * p['high']:.1f}] (n={n})"
    return f"{100 * mean:.1f} (n={n}, exploratory)"


def ci_cells(pts: pd.DataFrame) -> list[str]:
    return [ci_cell(p) for _, p in pts.iterrows()]


def ci_table(pts: pd.DataFrame, index: list[str], column: str, header: str) -> pd.DataFrame:
    """Points as a table: `index` columns as rows, one column per `column` value (named
    `header` formatted with it, e.g. "depth {:g} acc %"), "mean [95% CI]" cells."""
    wide = (
        pts.assign(cell=ci_cells(pts))
        .pivot_table(index=index, columns=column, values="cell", aggfunc="first")
        .reset_index()
    )
    wide.columns = [c if c in index else header.format(c) for c in wide.columns]
    return wide


def sig3_cell(x: float | None) -> str:
    """3 significant digits, "inf" for a blow-up, "–" for missing."""
    if x is None or pd.isna(x):
        return "–"
    return "inf" if math.isinf(x) else f"{x:.3g}"


def pct_ci(e: Estimate) -> str:
    """An accuracy Estimate as "mean [95% interval] (n=k)" in %."""
    if e.n >= 2 and not math.isnan(e.low):
        return f"{100 * e.mean:.1f} [{100 * e.low:.1f}, {100 * e.high:.1f}] (n={e.n})"
    return f"{100 * e.mean:.1f} (n={e.n})"


def pp_ci(e: Estimate) -> str:
    """A difference Estimate (fractions) as signed pp with its interval."""
    if e.n >= 2 and not math.isnan(e.low):
        return f"{100 * e.mean:+.1f} [{100 * e.low:+.1f}, {100 * e.high:+.1f}] (n={e.n})"
    return f"{100 * e.mean:+.1f} (n={e.n})"


def num_ci(e: Estimate) -> str:
    """A plain-number Estimate (e.g. epochs) with its interval."""
    if e.n >= 2 and not math.isnan(e.low):
        return f"{e.mean:.2f} [{e.low:.2f}, {e.high:.2f}] (n={e.n})"
    return f"{e.mean:.2f} (n={e.n})"
