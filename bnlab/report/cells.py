"""Numbers as the report prints them: deciding numbers rounded, table cells formatted.

Accuracies are fractions internally; the report gives them in % and differences in
percentage points (pp).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from bnlab.report.intervals import Estimate
from bnlab.report.select import Setting


def pct(x: float | None) -> float | None:
    """A fraction as a percentage (or pp), 2 decimals; None for a missing value."""
    return None if x is None or math.isnan(x) else round(100 * float(x), 2)


def round2(x: float) -> float | None:
    return None if math.isnan(x) else round(float(x), 2)


def sig4(x: float | None) -> float | None:
    """4 significant digits (ratios and probe values span many magnitudes)."""
    return None if x is None or not math.isfinite(x) else float(f"{x:.4g}")


def images_for(epochs: float, setting: Setting | None) -> int | None:
    """Training images seen in `epochs` epochs of the setting's training set."""
    if setting is None or not setting.train_images or math.isnan(epochs):
        return None
    return int(round(epochs * setting.train_images))


def acc_cell(p: pd.Series, suffix: str = "") -> str:
    """An accuracy point as "mean ± std (n=k)" in %, or the mean alone at one seed."""
    mean, std, n = p[f"mean{suffix}"], p[f"std{suffix}"], p.get("n", 1)
    if pd.isna(mean):
        return "–"
    if n > 1 and not pd.isna(std):
        return f"{100 * mean:.1f} ± {100 * std:.1f} (n={int(n)})"
    return f"{100 * mean:.1f}"


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


def acc_cells(pts: pd.DataFrame, suffix: str = "") -> list[str]:
    return [acc_cell(p, suffix) for _, p in pts.iterrows()]


def num_cell(p: pd.Series, digits: int) -> str:
    if p["n"] > 1 and not pd.isna(p["std"]):
        return f"{p['mean']:.{digits}f} ± {p['std']:.{digits}f}"
    return f"{p['mean']:.{digits}f}"


def pp_cell(diff: float) -> str:
    return "–" if pd.isna(diff) else f"{100 * diff:+.1f}"


def sig3_cell(x: float | None) -> str:
    """3 significant digits, "inf" for a blow-up, "–" for missing."""
    if x is None or pd.isna(x):
        return "–"
    return "inf" if math.isinf(x) else f"{x:.3g}"


def yes_no(v: Any) -> str:
    return "–" if pd.isna(v) else ("yes" if v else "no")


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
