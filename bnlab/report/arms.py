"""The arms a claim compares, and how their runs are selected and measured.

An arm is what bnlab.report.select.arm_labels names a run: bn, and the no-BN arms
that BN is compared with -- fixup and skipinit (Zhang et al. 2019; De & Smith 2020:
each residual branch starts at zero, and the net trains) and none (He init, the
"naive" line) -- plus the other normalisers (ghost_bn/g, gn, ln, bn_noisy/m...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bnlab.report.intervals import Effect, Estimate, estimate
from bnlab.report.keys import DIVERGED, STATUS, K
from bnlab.report.points import with_acc
from bnlab.report.select import Setting, arm_labels, recipe_without, select

BN = "bn"
NO_BN_ARMS = ("fixup", "skipinit", "none")  # compared with BN, in this order
AGAINST = {"fixup": "vs Fixup", "skipinit": "vs SkipInit", "none": "vs naive He init"}
TRAINS_AT = 0.25  # an arm "trains" when its best mean final test accuracy reaches 25%
STATISTICS_BATCH = 128  # the optimisation batch of the statistics-batch experiment


def select_arms(
    runs: pd.DataFrame, vary: Sequence[str], arms: Sequence[str], extra: pd.Series | None = None
) -> tuple[pd.DataFrame, Setting | None, list[str]]:
    """Finished runs of the standard recipe except the `vary` keys, in one of `arms`,
    with an `arm` column, the accuracy `acc` (a diverged run counts as chance) and a
    `diverged` flag."""
    fixed = recipe_without(*vary, K.model.init)
    labels = arm_labels(runs)
    mask = labels.isin(list(arms))
    if extra is not None:
        mask &= extra
    sel, setting, notes = select(runs, fixed, None, mask, vary=(K.model.init,))
    sel = with_acc(sel.assign(arm=labels[sel.index]))
    return sel.assign(diverged=sel[STATUS].eq(DIVERGED)), setting, notes


def statistics_batch_runs(
    runs: pd.DataFrame, extra: pd.Series | None = None
) -> tuple[pd.DataFrame, Setting | None, list[str]]:
    """The statistics-batch experiment: optimisation batch 128, lr 0.1; arms bn, ghost_bn/g,
    gn, ln (and `extra`). `stat_batch` is g for the BN arms (128 for bn), NaN for GN/LN.
    Empty without a BN arm: every section that reads it compares with BN."""
    kinds = runs[K.norm.kind].isin(["bn", "ghost_bn", "gn", "ln"])
    arms = arm_labels(runs[kinds]).unique().tolist()
    sel, setting, notes = select_arms(runs, [], arms, extra)
    if sel.empty or BN not in set(sel["arm"]):
        sel = sel.iloc[:0]
    vb = sel.get(K.norm.virtual_batch, pd.Series(np.nan, index=sel.index)).astype(float)
    batch = sel[K.data.batch_size].astype(float)
    stat = np.where(
        sel[K.norm.kind].eq("bn"), batch, np.where(sel[K.norm.kind].eq("ghost_bn"), vb, np.nan)
    )
    return sel.assign(stat_batch=stat), setting, notes


def estimate_at(sel: pd.DataFrame, where: Mapping[str, Any], column: str = "acc") -> Estimate:
    """The Estimate of `column` over the runs whose columns equal `where`, e.g.
    {"arm": "bn", K.model.depth: 56} (floats compared within rounding)."""
    mask = pd.Series(True, index=sel.index)
    for key, value in where.items():
        col = sel[key]
        mask &= np.isclose(col.astype(float), value) if isinstance(value, float) else col.eq(value)
    return estimate(sel.loc[mask, column])


def never_trains(best: float) -> str:
    """Why a comparison against an arm that does not learn says nothing."""
    return f"the arm never trains (best mean {100 * best:.1f}% < {100 * TRAINS_AT:g}%)"


def in_pp(effect: Effect) -> Effect:
    """An accuracy effect (fractions) in percentage points."""
    return effect.scaled(100.0)


def at_own_lr(sel: pd.DataFrame, notes: list[str]) -> pd.DataFrame:
    """Each (architecture, arm) at its best depth-20 lr among the lrs tried at depth 20
    and at its deepest depth (all of its runs where it has no such lr)."""
    keep = []
    for (residual, arm), part in sel.groupby([K.model.residual, "arm"]):
        deepest = part[K.model.depth].max()
        lrs = set(part.loc[part[K.model.depth].eq(20), K.optim.lr]) & set(
            part.loc[part[K.model.depth].eq(deepest), K.optim.lr]
        )
        if not lrs:
            keep.append(part)
            continue
        at20 = part[part[K.model.depth].eq(20) & part[K.optim.lr].isin(lrs)]
        lr = at20.groupby(K.optim.lr)["acc"].mean().idxmax()
        if len(lrs) > 1:
            arch = "residual" if residual else "plain"
            notes.append(f"{arch} {arm}: compared at lr {lr:g}, its best at depth 20")
        keep.append(part[part[K.optim.lr].eq(lr)])
    return pd.concat(keep) if keep else sel
