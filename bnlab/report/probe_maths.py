"""Reading the training probes (probes.csv rows) into per-run quantities.

Shared by the mechanism sections of every rule version: the distribution shift of a
run's layers (activations probe), Santurkar's gradient ICS (ics probe), and the
landscape probe's values over steps.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def distribution_shift(acts: pd.DataFrame) -> float:
    """One run's activation shift, from its activations rows: for every layer, between
    consecutive probe points, |change of the mean| + |change of the std| in units of
    the std averaged over the two points; averaged over layers and points."""
    wide = acts.pivot_table(index=["layer", "step"], columns="metric", values="value")
    if wide.empty or not {"act_mean", "act_std"} <= set(wide.columns):
        return math.nan
    shifts = []
    for _, layer in wide.groupby(level="layer"):
        layer = layer.sort_index(level="step")
        mean, std = layer["act_mean"].to_numpy(), layer["act_std"].to_numpy()
        scale = (std[1:] + std[:-1]) / 2
        moved = np.abs(np.diff(mean)) + np.abs(np.diff(std))
        with np.errstate(divide="ignore", invalid="ignore"):
            shifts.extend(moved / scale)
    values = np.asarray(shifts, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


def shift_by_run(probes: pd.DataFrame) -> dict[str, float]:
    acts = probes[probes["probe"].eq("activations")]
    return {rid: distribution_shift(rows) for rid, rows in acts.groupby("run_id")}


def shift_rows(probes: pd.DataFrame, sel: pd.DataFrame) -> pd.DataFrame:
    """Per run and layer: its shift, for the figure (layer order as in probes.csv), with
    the runs' `norm.kind` and `optim.lr` columns from `sel`."""
    acts = probes[probes["probe"].eq("activations")]
    out = []
    for rid, rows in acts.groupby("run_id", sort=False):
        for layer, part in rows.groupby("layer", sort=False):
            out.append({"run_id": rid, "layer": layer, "shift": distribution_shift(part)})
    frame = pd.DataFrame(out, columns=["run_id", "layer", "shift"])
    return frame.merge(sel[["run_id", "norm.kind", "optim.lr"]], on="run_id")


def ics_by_run(probes: pd.DataFrame) -> dict[str, float]:
    cos = probes[probes["probe"].eq("ics") & probes["metric"].eq("ics_cos")]
    cos = cos[np.isfinite(cos["value"])]
    return {rid: float((1 - rows["value"]).mean()) for rid, rows in cos.groupby("run_id")}


def probe_rows(probes: pd.DataFrame, sel: pd.DataFrame, probe: str, metric: str) -> pd.DataFrame:
    rows = probes[probes["probe"].eq(probe) & probes["metric"].eq(metric)]
    return rows.merge(sel[["run_id", "norm.kind", "optim.lr"]], on="run_id")


def common_steps(rows: pd.DataFrame, run_ids: pd.Series) -> list[int]:
    """Steps at which every one of `run_ids` has landscape rows."""
    per_run = [set(rows.loc[rows["run_id"].eq(r), "step"]) for r in run_ids]
    return sorted(set.intersection(*per_run)) if per_run else []


def mean_of_medians(rows: pd.DataFrame) -> float:
    """Mean over runs (seeds) of each run's median over steps; non-finite -> +inf."""
    if rows.empty:
        return math.nan
    values = rows["value"].where(np.isfinite(rows["value"]), np.inf)
    medians = values.groupby(rows["run_id"]).median()
    return float(medians.mean())


def bn_eval_long(sel: pd.DataFrame) -> pd.DataFrame:
    """The bn_eval probe's batch-statistics accuracies, one row per run and eval batch
    size (run_id, data.batch_size, eval_batch, acc)."""
    prefix = "bn_eval.batch_stats_acc."
    size_cols = [c for c in sel.columns if c.startswith(prefix)]
    long = sel.melt(
        id_vars=["run_id", "data.batch_size"],
        value_vars=size_cols,
        var_name="eval_batch",
        value_name="acc",
    ).dropna(subset=["acc"])
    long["eval_batch"] = long["eval_batch"].str.removeprefix(prefix).astype(int)
    return long
