"""The earlier rule versions' noise rule (bnlab.report.superseded): seeds to grid
points, and when a difference between two grid points counts. The current rules use
bnlab.report.intervals (95% intervals from the seeds) instead.

One rule for every claim: a difference counts only if it exceeds the noise,
taken as the root-sum-square of the seed standard deviations of the means it
is made of, and never less than a floor (the smallest effect worth reporting;
also the assumed noise when a point has a single seed and no spread to measure).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from bnlab.report.core import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED

MIN_MARGIN = 0.01  # 1 percentage point, for accuracy differences (accuracies are fractions)

GREATER, LESS, EQUAL, UNRESOLVED = "greater", "less", "equal", "unresolved"

# The rule above in words, as the sections that compare accuracies quote it.
NOISE_RULE = (
    "A difference counts when it exceeds the margin: the root-sum-square of the seed "
    "standard deviations of the means it compares, and at least {floor} (also the noise "
    "assumed at a single seed). Inside the margin it is 'equal' when the margin is "
    "{floor} and 'unresolved' when seed spread widened it."
).format(floor=f"{100 * MIN_MARGIN:g} pp")


def aggregate(runs: pd.DataFrame, by: Sequence[str], value: str) -> pd.DataFrame:
    """Per grid point: mean, std (sample, NaN for one seed) and n of `value` over seeds."""
    grouped = runs.groupby(list(by), dropna=False)[value]
    table = grouped.agg(mean="mean", std="std", n="count").reset_index()
    return table.sort_values(list(by), ignore_index=True)


@dataclass(frozen=True)
class Comparison:
    """diff = a - b against a margin; `outcome` says which side, if any, is ahead.

    greater / less: |diff| exceeds the margin. Within the margin: `equal` when the
    margin is the floor (the measurement is precise enough and the effect is
    smaller than any worth reporting), `unresolved` when seed spread widened the
    margin (the experiment cannot tell).
    """

    diff: float
    margin: float
    floor: float

    @property
    def outcome(self) -> str:
        if self.diff > self.margin:
            return GREATER
        if self.diff < -self.margin:
            return LESS
        return UNRESOLVED if self.margin > self.floor else EQUAL


def compare(diff: float, stds: Iterable[float], floor: float = MIN_MARGIN) -> Comparison:
    """Compare a difference of means with the combined seed spread of those means."""
    spread = math.sqrt(sum(s * s for s in stds if s is not None and not math.isnan(s)))
    return Comparison(diff=float(diff), margin=max(floor, spread), floor=floor)


def all_of(outcomes: Sequence[str]) -> str:
    """Verdict when the claim must hold at every point: each comparison `greater`."""
    if outcomes and all(o == GREATER for o in outcomes):
        return SUPPORTED
    if any(o in (LESS, EQUAL) for o in outcomes):
        return NOT_SUPPORTED
    return INCONCLUSIVE


def any_of(outcomes: Sequence[str]) -> str:
    """Verdict when one point showing it suffices, provided no point contradicts it."""
    ahead, behind = GREATER in outcomes, LESS in outcomes
    if ahead and not behind:
        return SUPPORTED
    if behind and not ahead:
        return NOT_SUPPORTED
    if ahead and behind:
        return INCONCLUSIVE  # contradictory points
    return INCONCLUSIVE if UNRESOLVED in outcomes or not outcomes else NOT_SUPPORTED


def verdict_of(outcome: str) -> str:
    """Verdict from a single comparison where `greater` is what the claim predicts."""
    return all_of([outcome])
