"""Grid points: the accuracy a run counts with, and looking points up by norm or arm.

A grid point is one row of `stats.aggregate` or `intervals.point_table`: the config
values that define it, and the mean (and spread) of a value over its seeds. Points are
keyed by norm (`norm.kind`) or by arm (an `arm` column, e.g. "fixup" or "ghost_bn/4"):
`by` says which.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from bnlab.report.cells import ci_cell, pct
from bnlab.report.keys import DIVERGED, EPOCH, RUN_ID, STATUS, TEST_ACC, K
from bnlab.report.stats import Comparison

CHANCE_ACC = 0.1  # 10 classes: a diverged run scores chance wherever accuracy is averaged
# "Learns": clearly above chance. A net stuck near 10% is within a few pp of its own
# best when its best is chance too, yet it does not train.
LEARNS_ABOVE_CHANCE = 0.10
LEARNS = CHANCE_ACC + LEARNS_ABOVE_CHANCE
# "Stuck": a run that finished with a finite loss but whose final test accuracy stayed
# within 2 pp of chance (a constant prediction scores exactly 10%; a random one is
# within 0.3 pp of it on the 10k test set, so 12% is far outside noise). It did not
# train, whatever its status says (issue 24: failed to train is a result).
STUCK_BELOW = CHANCE_ACC + 0.02
TRAINED, STUCK = "trained", "stuck"  # with keys.DIVERGED: what `outcome` says of a run
NORM_ORDER = ("bn", "gn", "ln", "none")


def with_acc(runs: pd.DataFrame, column: str = TEST_ACC, name: str = "acc") -> pd.DataFrame:
    """`name`: the final `column` accuracy, chance for a diverged run (it learned
    nothing usable)."""
    return runs.assign(**{name: runs[column].where(runs[STATUS].ne(DIVERGED), CHANCE_ACC)})


def outcome(runs: pd.DataFrame, column: str = TEST_ACC) -> pd.Series:
    """Per run: "diverged" (its status), "stuck" (finished at chance, STUCK_BELOW) or
    "trained". A run *trains* only when it is neither."""
    diverged = runs[STATUS].eq(DIVERGED)
    stuck = ~diverged & (runs[column].astype(float) < STUCK_BELOW)
    out = pd.Series(TRAINED, index=runs.index, dtype=object)
    out[stuck] = STUCK
    out[diverged] = DIVERGED
    return out


def values_of(pts: pd.DataFrame, who: str, key: str, by: str = K.norm.kind) -> set[Any]:
    """The `key` values tried with `who` (a norm, or an arm label when `by` is "arm")."""
    return set(pts.loc[pts[by].eq(who), key].dropna())


def point(pts: pd.DataFrame, who: str, value: Any, key: str, by: str = K.norm.kind) -> pd.Series:
    """The point of `who` at `key` = `value`."""
    return pts[pts[by].eq(who) & pts[key].eq(value)].iloc[0]


def flag(runs: pd.DataFrame, key: str) -> pd.Series:
    """A boolean config switch per run (False where the key is missing)."""
    if key not in runs:
        return pd.Series(False, index=runs.index)
    return runs[key].map(lambda v: v is True or v == "True" or v == 1).astype(bool)


def aggregate_aligned(
    per_run: pd.DataFrame, keys: list[str], column: str, pts: pd.DataFrame, how: str = "mean"
) -> Any:
    """`column` aggregated (`how`: mean, sum, ...) per grid point, aligned with `pts`
    (same keys, same order)."""
    agg = per_run.groupby(keys, dropna=False)[column].agg(how).rename(column).reset_index()
    return pts[keys].merge(agg, on=keys, how="left")[column].to_numpy()


def comparison_numbers(name: str, comp: Comparison) -> dict[str, Any]:
    """A comparison as deciding numbers: the difference, its margin (pp), the outcome."""
    return {
        f"{name}_pp": pct(comp.diff),
        f"{name}_margin_pp": pct(comp.margin),
        f"{name}_outcome": comp.outcome,
    }


def pivot(
    pts: pd.DataFrame,
    key: str,
    label: str,
    by: str = K.norm.kind,
    order: Sequence[str] = NORM_ORDER,
) -> pd.DataFrame:
    """Norms (or arms: `by`) as rows, in `order` then by name; `key` values as columns;
    "mean [95% CI] (n=k)" cells (cells.ci_cell)."""

    def rank(name: str) -> tuple[int, str]:
        return (order.index(name) if name in order else len(order), name)

    rows = sorted(set(pts[by]), key=rank)
    table = pd.DataFrame({"norm" if by == K.norm.kind else by: rows})
    for value in sorted(set(pts[key])):
        sub = pts[pts[key].eq(value)].set_index(by)
        table[f"{label} {value:g} acc %"] = [
            ci_cell(sub.loc[n]) if n in sub.index else "–" for n in rows
        ]
    return table


def epochs_to(runs: pd.DataFrame, curves: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per run: the epoch its test accuracy first reaches `target`, linearly interpolated
    between epochs (epoch 0 counting as chance); planned epochs + 1 if it never does."""
    out = []
    for _, run in runs.iterrows():
        curve = curves[curves[RUN_ID].eq(run[RUN_ID])].sort_values(EPOCH)
        epochs = [0.0, *curve[EPOCH].astype(float)]
        accs = [CHANCE_ACC, *curve[TEST_ACC].astype(float)]
        first, reached = float(run[K.train.epochs]) + 1, False
        for i in range(1, len(epochs)):
            (e0, a0), (e1, a1) = (epochs[i - 1], accs[i - 1]), (epochs[i], accs[i])
            if a1 >= target:
                frac = 1.0 if a0 >= target or a1 == a0 else (target - a0) / (a1 - a0)
                first, reached = e0 + frac * (e1 - e0), True
                break
        out.append({RUN_ID: run[RUN_ID], "epochs": first, "reached": reached})
    return pd.DataFrame(out, columns=[RUN_ID, "epochs", "reached"])
