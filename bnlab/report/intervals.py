"""Seeds give the noise: means with 95% intervals, effects with theirs, and verdicts.

A grid point measured over seeds is an `Estimate` (mean, Student-t 95% interval).
An effect is a signed combination of point means (`contrast`): a difference of two
arms, or a difference of differences (BN's drop with depth against an arm's); its
interval is Welch-Satterthwaite's, so groups may have different spreads and seed
counts. `judge` turns an effect into a verdict with one rule for every claim:

- fewer than MIN_SEEDS seeds in any group: INCONCLUSIVE (the point is exploratory:
  drawn in the figures, never deciding);
- the interval excludes zero in the claimed direction and the effect reaches the
  rule's minimum: SUPPORTED;
- the whole interval lies below that minimum (no effect as large as the claim's, or
  the opposite one): NOT SUPPORTED;
- otherwise INCONCLUSIVE (the seeds cannot tell).

Intervals assume the seeds' results are roughly normal; with 3 seeds the t quantile
is 4.30, so intervals are wide and a verdict needs a clear effect. When every seed
agrees exactly (e.g. the same largest lr on a grid), the interval is the point: the
grid's resolution, not the seeds, limits the claim, and the rule's minimum covers it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from scipy import stats as scipy_stats

from bnlab.report.core import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, Verdict
from bnlab.report.keys import COMPLETED, STATUS, TEST_ACC, K
from bnlab.report.select import EXECUTION_KEYS, TRAINING_PREFIXES, drop_probe_twins

CONFIDENCE = 0.95
MIN_SEEDS = 3  # a comparison decides only with at least this many seeds per group


@dataclass(frozen=True)
class Estimate:
    """One quantity at one grid point, over seeds."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / self.n if self.values else math.nan

    @property
    def sd(self) -> float:
        """Sample standard deviation (NaN below 2 seeds)."""
        if self.n < 2:
            return math.nan
        m = self.mean
        return math.sqrt(math.fsum((v - m) ** 2 for v in self.values) / (self.n - 1))

    @property
    def half_width(self) -> float:
        """Half the 95% t-interval of the mean (NaN below 2 seeds)."""
        if self.n < 2:
            return math.nan
        return _t(self.n - 1) * self.sd / math.sqrt(self.n)

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def estimate(values: Iterable[float]) -> Estimate:
    """The finite values among `values` as an Estimate."""
    return Estimate(tuple(float(v) for v in values if v is not None and math.isfinite(v)))


@dataclass(frozen=True)
class Effect:
    """A combination of point means with its 95% interval."""

    value: float
    low: float
    high: float
    seeds: tuple[int, ...]  # seeds of each group involved

    @property
    def exploratory(self) -> bool:
        return not self.seeds or min(self.seeds) < MIN_SEEDS

    def scaled(self, factor: float) -> Effect:
        """The same effect in other units (e.g. fractions to percentage points)."""
        return Effect(self.value * factor, self.low * factor, self.high * factor, self.seeds)


def contrast(terms: Sequence[tuple[float, Estimate]]) -> Effect:
    """sum(c * mean) over (c, estimate) terms, with Welch-Satterthwaite's 95% interval."""
    value = math.fsum(c * e.mean for c, e in terms)
    seeds = tuple(e.n for _, e in terms)
    if any(e.n < 2 for _, e in terms):
        return Effect(value, math.nan, math.nan, seeds)
    parts = [c * c * e.sd**2 / e.n for c, e in terms]
    se2 = math.fsum(parts)
    if se2 == 0.0:  # every seed agrees exactly: the interval is the point
        return Effect(value, value, value, seeds)
    df = se2**2 / math.fsum(p * p / (e.n - 1) for p, (_, e) in zip(parts, terms, strict=True))
    half = _t(df) * math.sqrt(se2)
    return Effect(value, value - half, value + half, seeds)


def difference(a: Estimate, b: Estimate) -> Effect:
    """mean(a) - mean(b): Welch's interval."""
    return contrast([(1.0, a), (-1.0, b)])


def judge(effect: Effect, minimum: float) -> tuple[str, str]:
    """(verdict, reason) for an effect in the claimed direction and the rule's minimum."""
    if effect.exploratory:
        return INCONCLUSIVE, f"exploratory: fewer than {MIN_SEEDS} seeds"
    if math.isnan(effect.value):
        return INCONCLUSIVE, "no effect measured"
    if effect.low > 0 and effect.value >= minimum:
        return SUPPORTED, "interval above zero, effect at least the minimum"
    if effect.high < minimum:
        return NOT_SUPPORTED, "interval below the minimum effect"
    return INCONCLUSIVE, "interval too wide to decide"


def judge_below(effect: Effect, bound: float) -> tuple[str, str]:
    """(verdict, reason) for a claim that an effect is small: its interval below `bound`
    (SUPPORTED), above it (NOT SUPPORTED), or across it (INCONCLUSIVE)."""
    if effect.exploratory:
        return INCONCLUSIVE, f"exploratory: fewer than {MIN_SEEDS} seeds"
    if math.isnan(effect.value):
        return INCONCLUSIVE, "no effect measured"
    if effect.high < bound:
        return SUPPORTED, f"interval below {bound:g}"
    if effect.low > bound:
        return NOT_SUPPORTED, f"interval above {bound:g}"
    return INCONCLUSIVE, "interval too wide to decide"


def verdict_row(
    against: str,
    effect: Effect | None,
    minimum: float,
    unit: str,
    why: str = "",
    *,
    below: bool = False,
    rule: Callable[[Effect, float], tuple[str, str]] | None = None,
) -> Verdict:
    """A Verdict for the report: `judge`d (or, with `below`, `judge_below` with `minimum`
    as the bound; or by another `rule` of the same shape), unless `why` already says why
    it cannot be decided."""
    if effect is None:
        return Verdict(against, INCONCLUSIVE, unit=unit, why=why or "no data")
    if why:
        verdict, reason = INCONCLUSIVE, why
    else:
        verdict, reason = (rule or (judge_below if below else judge))(effect, minimum)
    return Verdict(
        against,
        verdict,
        effect=effect.value,
        low=effect.low,
        high=effect.high,
        unit=unit,
        seeds=" vs ".join(str(n) for n in effect.seeds),
        why=reason,
        blocked=bool(why),  # a reason given up front keeps the measured effect from deciding
    )


def pooled_sd(estimates: Iterable[Estimate]) -> tuple[float, int]:
    """The seed noise measured over many points: pooled SD and its degrees of freedom."""
    num, dof = 0.0, 0
    for e in estimates:
        if e.n >= 2:
            num += (e.n - 1) * e.sd**2
            dof += e.n - 1
    return (math.sqrt(num / dof) if dof else math.nan), dof


def _t(df: float) -> float:
    return float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, df))


def point_table(per_run: pd.DataFrame, by: Sequence[str], value: str) -> pd.DataFrame:
    """Per grid point (the `by` columns): mean, std, n and the 95% interval of `value`
    over seeds (low/high NaN below 2 seeds), sorted by `by`."""
    rows = []
    for key, part in per_run.groupby(list(by), dropna=False, sort=True):
        e = estimate(part[value])
        key = key if isinstance(key, tuple) else (key,)
        rows.append(
            {
                **dict(zip(by, key, strict=True)),
                "mean": e.mean,
                "std": e.sd,
                "n": e.n,
                "low": e.low,
                "high": e.high,
            }
        )
    return pd.DataFrame(rows, columns=[*by, "mean", "std", "n", "low", "high"])


def estimates_by(per_run: pd.DataFrame, by: Sequence[str], value: str) -> dict[Any, Estimate]:
    """{grid point: Estimate of `value`}; a point is the `by` value (one key) or tuple."""
    out: dict[Any, Estimate] = {}
    for key, part in per_run.groupby(list(by) if len(by) > 1 else by[0], sort=True):
        out[key] = estimate(part[value])
    return out


def seed_noise(runs: pd.DataFrame) -> tuple[float, int]:
    """Pooled SD of final test accuracy between seeds of the same training config
    (completed runs; configs with one seed add nothing)."""
    if runs.empty or K.train.seed not in runs:
        return math.nan, 0
    done, _ = drop_probe_twins(runs[runs[STATUS].eq(COMPLETED)])
    keys = [
        c
        for c in done.columns
        if c.startswith(TRAINING_PREFIXES) and c not in EXECUTION_KEYS and c != K.train.seed
    ]
    identity = done[keys].apply(lambda row: "|".join(repr(v) for v in row), axis=1)
    groups = done.groupby(identity)[TEST_ACC]
    return pooled_sd(estimate(g) for _, g in groups)
