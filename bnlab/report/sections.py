"""Every section of the report, in report order, and every figure they can name.

The seven claims and the norms table (claims.py) read runs and epochs; the
mechanism sections (mechanisms.py) read the training probes as well.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from matplotlib.figure import Figure

from bnlab.report.claims import CLAIMS, ClaimResult
from bnlab.report.load import RunTables
from bnlab.report.mechanism_plots import MECHANISM_FIGURES
from bnlab.report.mechanisms import MECHANISMS
from bnlab.report.plots import FIGURES as CLAIM_FIGURES

Section = Callable[[RunTables], ClaimResult]

SECTIONS: dict[str, Section] = {
    **{key: (lambda t, fn=fn: fn(t.runs, t.epochs)) for key, fn in CLAIMS.items()},
    **{key: (lambda t, fn=fn: fn(t.runs, t.epochs, t.probes)) for key, fn in MECHANISMS.items()},
}
FIGURES: dict[str, Callable[[ClaimResult], Figure]] = {**CLAIM_FIGURES, **MECHANISM_FIGURES}


def evaluate_sections(tables: RunTables, keys: Iterable[str] | None = None) -> list[ClaimResult]:
    return [SECTIONS[k](tables) for k in (keys or SECTIONS)]
