"""Reading the training probes (probes.csv rows) into per-run quantities.

Shared by the mechanism sections of every rule version: the distribution shift of a
run's layers (activations probe), Santurkar's gradient ICS (ics probe), and the
landscape probe's values over steps.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bnlab.report.keys import BN_EVAL_BATCH, LAYER, METRIC, PROBE, RUN_ID, STEP, VALUE, K


def distribution_shift(acts: pd.DataFrame) -> float:
    """One run's activation shift, from its activations rows: for every layer, between
    consecutive probe points, |change of the mean| + |change of the std| in units of
    the std averaged over the two points; averaged over layers and points."""
    wide = acts.pivot_table(index=[LAYER, STEP], columns=METRIC, values=VALUE)
    if wide.empty or not {"act_mean", "act_std"} <= set(wide.columns):
        return math.nan
    shifts = []
    for _, layer in wide.groupby(level=LAYER):
        layer = layer.sort_index(level=STEP)
        mean, std = layer["act_mean"].to_numpy(), layer["act_std"].to_numpy()
        scale = (std[1:] + std[:-1]) / 2
        moved = np.abs(np.diff(mean)) + np.abs(np.diff(std))
        with np.errstate(divide="ignore", invalid="ignore"):
            shifts.extend(moved / scale)
    values = np.asarray(shifts, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


def shift_by_run(probes: pd.DataFrame) -> dict[str, float]:
    acts = probes[probes[PROBE].eq("activations")]
    return {rid: distribution_shift(rows) for rid, rows in acts.groupby(RUN_ID)}


def shift_rows(probes: pd.DataFrame, sel: pd.DataFrame) -> pd.DataFrame:
    """Per run and layer: its shift, for the figure (layer order as in probes.csv), with
    the runs' `norm.kind` and `optim.lr` columns from `sel`."""
    acts = probes[probes[PROBE].eq("activations")]
    out = []
    for rid, rows in acts.groupby(RUN_ID, sort=False):
        for layer, part in rows.groupby(LAYER, sort=False):
            out.append({RUN_ID: rid, LAYER: layer, "shift": distribution_shift(part)})
    frame = pd.DataFrame(out, columns=[RUN_ID, LAYER, "shift"])
    return frame.merge(sel[[RUN_ID, K.norm.kind, K.optim.lr]], on=RUN_ID)


def ics_by_run(probes: pd.DataFrame) -> dict[str, float]:
    cos = probes[probes[PROBE].eq("ics") & probes[METRIC].eq("ics_cos")]
    cos = cos[np.isfinite(cos[VALUE])]
    return {rid: float((1 - rows[VALUE]).mean()) for rid, rows in cos.groupby(RUN_ID)}


def common_steps(rows: pd.DataFrame, run_ids: pd.Series) -> list[int]:
    """Steps at which every one of `run_ids` has landscape rows."""
    per_run = [set(rows.loc[rows[RUN_ID].eq(r), STEP]) for r in run_ids]
    return sorted(set.intersection(*per_run)) if per_run else []


def mean_of_medians(rows: pd.DataFrame) -> float:
    """Mean over runs (seeds) of each run's median over steps; non-finite -> +inf."""
    if rows.empty:
        return math.nan
    values = rows[VALUE].where(np.isfinite(rows[VALUE]), np.inf)
    medians = values.groupby(rows[RUN_ID]).median()
    return float(medians.mean())


def bn_eval_long(sel: pd.DataFrame) -> pd.DataFrame:
    """The bn_eval probe's batch-statistics accuracies, one row per run and eval batch
    size (run_id, data.batch_size, eval_batch, acc)."""
    prefix = BN_EVAL_BATCH
    size_cols = [c for c in sel.columns if c.startswith(prefix)]
    long = sel.melt(
        id_vars=[RUN_ID, K.data.batch_size],
        value_vars=size_cols,
        var_name="eval_batch",
        value_name="acc",
    ).dropna(subset=["acc"])
    long["eval_batch"] = long["eval_batch"].str.removeprefix(prefix).astype(int)
    return long
