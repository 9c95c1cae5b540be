"""Figures of the mechanism sections (bnlab.report.mechanisms), drawn like the papers'.

- ics_mechanism: training accuracy over epochs, distribution shift per layer, and
  Santurkar's gradient ICS over steps (their Figs. 2 and 7, in numbers).
- landscape_bands: per lr, the band of losses along the gradient, the band of
  gradient changes (predictiveness) and beta-smoothness over training steps
  (Santurkar et al. 2018, Fig. 4).
- alternatives_accuracy, deep_no_norm_accuracy: accuracy per arm.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator

from bnlab.report.claims import ClaimResult
from bnlab.report.plots import (
    ONE_PANEL,
    _band,
    _bars,
    _chance,
    _errorbar,
    _figure,
    _finish,
    _legend,
    _top,
    depth_axis,
    norm_colour,
    norm_label,
    norms_in,
)

THREE_PANELS = (16.0, 4.8)


def ics_mechanism(result: ClaimResult) -> Figure:
    lr = result.numbers.get("lr")
    fig, (acc_ax, shift_ax, ics_ax) = _figure(THREE_PANELS, ncols=3)
    pts = result.data["points"]
    if lr is None:  # no lr shared by the norms: show the first lr with data
        lr = float(pts["optim.lr"].min())
    curves = _at_lr(result.data["curves"], lr)
    for norm in norms_in(curves):
        _band(
            acc_ax, curves[curves["norm.kind"].eq(norm)], "train_acc", norm, norm_label(norm), 100
        )
    _chance(acc_ax)
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel(
        "training accuracy (%), mean ± std over seeds\n(train mode: noisy nets with noise)"
    )
    acc_ax.xaxis.set_major_locator(FixedLocator(sorted(set(curves["epoch"]))))
    _legend(acc_ax, loc="best")

    shift = _at_lr(result.data["shift"], lr)
    for norm in norms_in(shift):
        rows = shift[shift["norm.kind"].eq(norm)]
        layers = list(dict.fromkeys(rows["layer"]))  # probes.csv order = forward order
        mean = rows.groupby("layer", sort=False)["shift"].mean().reindex(layers)
        shift_ax.plot(range(len(layers)), mean, color=norm_colour(norm), marker="o", ms=3,
                      label=norm_label(norm))  # fmt: skip
    shift_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    shift_ax.set_xlabel("layer (forward order: stem conv ... fc)")
    shift_ax.set_ylabel("distribution shift between probe points\n(|d mean| + |d std|) / std")
    shift_ax.set_yscale("log")
    shift_ax.grid(alpha=0.3)
    _legend(shift_ax, loc="best")

    ics = _at_lr(result.data["ics"], lr)
    ics = ics[np.isfinite(ics["value"])]
    for norm in norms_in(ics):
        rows = ics[ics["norm.kind"].eq(norm)]
        per_step = (1 - rows["value"]).groupby(rows["step"]).mean()
        ics_ax.plot(per_step.index, per_step.to_numpy(), color=norm_colour(norm), marker="o",
                    ms=4, label=norm_label(norm))  # fmt: skip
    ics_ax.set_xlabel("training step")
    ics_ax.set_ylabel("ICS: 1 - cos(G, G'), mean over layers")
    ics_ax.grid(alpha=0.3)
    _legend(ics_ax, loc="best")
    return _finish(fig, result, f"accuracy, distribution shift and gradient ICS at lr {lr:g}")


def landscape_bands(result: ClaimResult) -> Figure:
    rows = result.data["landscape"]
    lrs = sorted(set(rows["optim.lr"])) or [0.0]
    fig = Figure(figsize=(16.0, 4.2 * len(lrs)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(lrs), 3))
    for r, lr in enumerate(lrs):
        at = _at_lr(rows, lr)
        loss_ax, grad_ax, beta_ax = axes[r]
        for norm in norms_in(at):
            mine = at[at["norm.kind"].eq(norm)]
            _range_band(loss_ax, mine, "loss@", norm)
            _range_band(grad_ax, mine, "grad_change@", norm)
            beta = _per_step(mine, "beta_smoothness")
            beta_ax.plot(beta.index, beta.to_numpy(), color=norm_colour(norm), marker="o", ms=4,
                         label=norm_label(norm))  # fmt: skip
        loss_ax.set_ylabel(f"lr {lr:g}\nloss along the gradient\n(band: min-max over step sizes)")
        grad_ax.set_ylabel("gradient change ||g - g'||\n(band: min-max over step sizes)")
        beta_ax.set_ylabel("effective beta-smoothness")
        for ax in axes[r]:
            ax.set_yscale("log")
            ax.set_xlabel("training step")
            ax.grid(alpha=0.3)
            _legend(ax, loc="best")
    return _finish(fig, result, "loss landscape along the gradient (Santurkar et al., Fig. 4)")


def alternatives_accuracy(result: ClaimResult) -> Figure:
    pts = result.data["points"].rename(columns={"arm": "norm.kind"})
    fig, ax = _figure(ONE_PANEL)
    batches = sorted(set(pts["data.batch_size"]))
    _bars(ax, pts, "data.batch_size", batches, [f"{int(b)}" for b in batches], "")
    _chance(ax)
    ax.set_xlabel("training batch size (lr = 0.1 x batch/128)")
    ax.set_ylabel("final test accuracy (%), mean ± std\n(diverged run = chance)")
    ax.set_ylim(0, min(100.0, _top(pts["mean"] + pts["std"].fillna(0)) + 8))
    _legend(ax, loc="upper center", ncols=3)
    return _finish(fig, result, "accuracy per normaliser at a small and a large batch")


def deep_no_norm_accuracy(result: ClaimResult) -> Figure:
    pts = result.data["points"].rename(columns={"arm": "norm.kind"})
    fig, ax = _figure(ONE_PANEL)
    for norm in norms_in(pts):
        sub = pts[pts["norm.kind"].eq(norm)].sort_values("model.depth")
        _errorbar(ax, sub["model.depth"], sub["mean"], sub["std"], norm, norm_label(norm))
    depth_axis(ax, pts["model.depth"])
    ax.set_xlabel("depth (layers), residual")
    ax.set_ylabel("final test accuracy (%), mean ± std\n(diverged run = chance)")
    ax.set_ylim(0, _top(pts["mean"] + pts["std"].fillna(0)))
    _legend(ax, loc="best")
    return _finish(fig, result, "accuracy vs depth, with and without BN")


MECHANISM_FIGURES: dict[str, Callable[[ClaimResult], Figure]] = {
    "ics_mechanism": ics_mechanism,
    "landscape_bands": landscape_bands,
    "alternatives_accuracy": alternatives_accuracy,
    "deep_no_norm_accuracy": deep_no_norm_accuracy,
}


# ----------------------------------------------------------------------------- helpers


def _at_lr(rows: pd.DataFrame, lr: float) -> pd.DataFrame:
    return rows[np.isclose(rows["optim.lr"].astype(float), lr)]


def _per_step(rows: pd.DataFrame, metric: str) -> pd.Series:
    """Mean over seeds at each step of one metric; non-finite values dropped."""
    part = rows[rows["metric"].eq(metric) & np.isfinite(rows["value"])]
    return part.groupby("step")["value"].mean()


def _range_band(ax: Axes, rows: pd.DataFrame, prefix: str, norm: str) -> None:
    """Shade min..max over the step sizes (metrics `prefix<m>`) at each step, seeds averaged.

    A step where some step size blew up (non-finite) keeps its finite part: the band
    is then drawn to the largest finite value.
    """
    part = rows[rows["metric"].str.startswith(prefix) & np.isfinite(rows["value"])]
    if part.empty:
        return
    per_run = part.groupby(["run_id", "step"])["value"].agg(["min", "max"]).reset_index()
    band = per_run.groupby("step")[["min", "max"]].mean()
    colour = norm_colour(norm)
    ax.fill_between(band.index, band["min"], band["max"], color=colour, alpha=0.35, lw=0,
                    label=norm_label(norm))  # fmt: skip
    # Markers too: a run probed at one step only (it diverged) has no area to shade.
    ax.plot(band.index, band["min"], color=colour, lw=0.8, marker="o", ms=3)
    ax.plot(band.index, band["max"], color=colour, lw=0.8, marker="^", ms=3)
