"""Every section of the report, in report order, and every figure they can name.

Importing the section and figure modules registers them (bnlab.report.core): the
seven claims and the norms table first (claims.py), then the mechanism sections
(mechanisms.py), then the sequence-model claims (sequence.py, with their figures). A
new section is one decorated function in one of them.
"""

from __future__ import annotations

from collections.abc import Iterable

# (they register: claims first, then the mechanism sections, then the figures, the
# sequence-model sections and the superseded rule versions)
from bnlab.report import (  # noqa: F401
    claims,
    mechanism_plots,
    mechanisms,
    plots,
    sequence,
    superseded,
)
from bnlab.report.core import FIGURES, SECTIONS, ClaimResult
from bnlab.report.load import RunTables

__all__ = ["FIGURES", "SECTIONS", "evaluate_sections"]


def evaluate_sections(tables: RunTables, keys: Iterable[str] | None = None) -> list[ClaimResult]:
    return [SECTIONS[k](tables) for k in (keys or SECTIONS)]
