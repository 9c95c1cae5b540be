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
    depth_rule,
    dropout_rule,
    lr_limit,
    mechanism_plots,
    mechanisms,
    plots,
    sequence,
    small_batch,
    superseded,
)
from bnlab.report.core import FIGURES, SECTIONS, ClaimResult
from bnlab.report.load import RunTables

# Report order: the claims first, in the order the mission lists them (the three
# headline claims first), then whatever registered after them (the norms table, the
# mechanism sections, the sequence-model claims) in registration order. The new
# versions of lr, depth, batch and convergence (issue 24) live in modules of their own
# and register after claims.py's, so the order is stated here, not left to imports.
CLAIM_ORDER = (
    "lr",
    "depth",
    "batch",
    "convergence",
    "init",
    "regularization",
    "dropout",
    "inference",
)
# Then the norms table and the sequence-model claims, stated too: they came before the
# mechanism sections while the depth and lr rules imported sequence.py for its own_lr
# (now bnlab.report.own_lr), and the report keeps that order.
AFTER_CLAIMS = ("norms", "rnn_ln", "rnn_bn_time", "transformer_norms")
_rest = [k for k in SECTIONS if k not in (*CLAIM_ORDER, *AFTER_CLAIMS)]
for _key in [*CLAIM_ORDER, *AFTER_CLAIMS, *_rest]:
    SECTIONS[_key] = SECTIONS.pop(_key)

__all__ = ["FIGURES", "SECTIONS", "evaluate_sections"]


def evaluate_sections(tables: RunTables, keys: Iterable[str] | None = None) -> list[ClaimResult]:
    return [SECTIONS[k](tables) for k in (keys or SECTIONS)]
