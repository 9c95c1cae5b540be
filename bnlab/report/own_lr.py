"""Each point at its own lr, chosen leave-one-seed-out, and where its best lr sits.

The rules that tune every arm on its own lr grid (sequence, dropout_rule, lr_limit,
depth_rule) share the choice (`own_lr`): each seed is measured at the lr with the best
mean accuracy over the *other* seeds, so no run both picks its lr and measures it. A
best lr at an edge of the lrs tried is one a wider grid could beat (`edge_of`); each
rule words that edge as its rule text does (`EdgeWords`).

Nothing registers here (no section, no figure): a rule module can import this one
without changing the report's order (bnlab.report.sections).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple, TypeVar

import pandas as pd

from bnlab.report.arms import TRAINS_AT
from bnlab.report.intervals import Estimate, estimate
from bnlab.report.keys import K


class EdgeWords(NamedTuple):
    """How a rule names a best lr at an edge of its lrs: templates with `{lr}`."""

    only: str  # the only lr tried
    bottom: str  # the smallest lr tried
    top: str  # the largest lr tried


def edge_of(grid: Sequence[float], best_lr: float, words: EdgeWords) -> str:
    """Where `best_lr` sits in `grid` (ascending) when a wider grid could beat it, in
    `words` ("" inside the grid)."""
    if len(grid) < 2:
        template = words.only
    elif math.isclose(best_lr, grid[0]):
        template = words.bottom
    elif math.isclose(best_lr, grid[-1]):
        template = words.top
    else:
        return ""
    return template.format(lr=f"{best_lr:g}")


def leave_one_seed_out(part: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """Each seed's run of `part` (one point's runs, with `acc`) at the lr with the best
    mean `acc` over the other seeds (its own best with one seed; ties go to the smaller
    lr), one row per seed in seed order; and the mean `acc` per lr over all seeds."""
    lr, seed = K.optim.lr, K.train.seed
    chosen = []
    for s, mine in part.groupby(seed, sort=True):
        others = part[part[seed].ne(s) & part[lr].isin(mine[lr])]
        pick = (others if not others.empty else mine).groupby(lr)["acc"].mean().idxmax()
        chosen.append(mine[mine[lr].eq(pick)].iloc[[0]])
    return pd.concat(chosen), part.groupby(lr)["acc"].mean()


# The edge as the sequence and depth rules word it.
GRID_EDGES = EdgeWords(
    only="its only lr ({lr})",
    bottom="the smallest of its grid ({lr})",
    top="the largest of its grid ({lr})",
)

P = TypeVar("P", bound="Point")


@dataclass(frozen=True)
class Point:
    """One point (an arm, at one setting) at its own lr (`own_lr`)."""

    arm: str
    label: str  # as the report names it, e.g. "LSTM per-step BN"
    runs: pd.DataFrame  # one row per seed: its run at the lr the other seeds chose
    grid: tuple[float, ...]  # the lrs tried, ascending
    best_lr: float  # the highest mean final test accuracy over all seeds
    best_fit: float  # the highest mean `fit` over the lrs (what `trained` judges)

    EDGES: ClassVar[EdgeWords] = GRID_EDGES  # how `edge` words it

    @classmethod
    def tuned(cls: type[P], part: pd.DataFrame, arm: str, label: str, fit: str = "fit") -> P:
        """The point of `part` (its runs, with `acc` and the `fit` column), each seed at
        its own lr (`leave_one_seed_out`)."""
        runs, means = leave_one_seed_out(part)
        return cls(
            arm=arm,
            label=label,
            runs=runs,
            grid=tuple(float(v) for v in means.index),
            best_lr=float(means.idxmax()),
            best_fit=float(part.groupby(K.optim.lr)[fit].mean().max()),
        )

    @property
    def acc(self) -> Estimate:
        return estimate(self.runs["acc"])

    @property
    def trained(self) -> bool:
        return self.best_fit >= TRAINS_AT

    @property
    def edge(self) -> str:
        """Where the best lr sits when a wider grid could beat it ("" inside the grid)."""
        return edge_of(self.grid, self.best_lr, self.EDGES)

    @property
    def chosen(self) -> str:
        """The lr each seed was measured at, e.g. "0.1, 0.1, 0.3"."""
        return ", ".join(f"{v:g}" for v in self.runs[K.optim.lr])


def own_lr(part: pd.DataFrame, arm: str, label: str, fit: str = "fit") -> Point:
    """The Point of `part` (one arm's runs at one setting, with `acc` and `fit` columns):
    each seed at the lr with the best mean `acc` over the other seeds (its own best with
    one seed); ties go to the smaller lr. `fit`: the column that decides whether the
    point trained ("acc" for a rule that judges training on test accuracy)."""
    return Point.tuned(part, arm, label, fit)
