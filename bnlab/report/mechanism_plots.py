"""Figures of the mechanism sections (bnlab.report.mechanisms), drawn like the papers'.

- ics_mechanism: training accuracy over epochs, distribution shift per layer, and
  Santurkar's gradient ICS over steps (their Figs. 2 and 7, in numbers).
- landscape_bands: per lr, the band of losses along the gradient, the band of
  gradient changes (predictiveness) and beta-smoothness over training steps
  (Santurkar et al. 2018, Fig. 4).
- alternatives_accuracy, deep_no_norm_accuracy: accuracy per arm.
- batch_why_modes: the bn_modes evaluations per statistics batch, the seeds that
  failed to train counted below the axis.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator

from bnlab.report.core import ClaimResult, figure
from bnlab.report.figure_kit import (
    CI_YLABEL,
    ONE_PANEL,
    accuracy_vs,
    arm_label,
    band,
    chance_line,
    finish,
    legend,
    new_figure,
    norm_colour,
    norm_label,
    norm_line,
    norms_in,
    y_top,
)
from bnlab.report.intervals import MIN_SEEDS
from bnlab.report.keys import DIVERGED, EPOCH, LAYER, METRIC, RUN_ID, STEP, TRAIN_ACC, VALUE, K
from bnlab.report.points import STUCK

THREE_PANELS = (16.0, 4.8)


@figure("ics_mechanism")
def ics_mechanism(result: ClaimResult) -> Figure:
    lr = result.numbers.get("lr")
    fig, (acc_ax, shift_ax, ics_ax) = new_figure(THREE_PANELS, ncols=3)
    pts = result.data["points"]
    if lr is None:  # no lr shared by the norms: show the first lr with data
        lr = float(pts[K.optim.lr].min())
    curves = _at_lr(result.data["curves"], lr)
    for norm in norms_in(curves):
        band(acc_ax, curves[curves[K.norm.kind].eq(norm)], TRAIN_ACC, norm, norm_label(norm), 100)
    chance_line(acc_ax)
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel(
        "training accuracy (%), mean ± std over seeds\n(train mode: noisy nets with noise)"
    )
    acc_ax.xaxis.set_major_locator(FixedLocator(sorted(set(curves[EPOCH]))))
    legend(acc_ax, loc="best")

    shift = _at_lr(result.data["shift"], lr)
    for norm in norms_in(shift):
        rows = shift[shift[K.norm.kind].eq(norm)]
        layers = list(dict.fromkeys(rows[LAYER]))  # probes.csv order = forward order
        mean = rows.groupby(LAYER, sort=False)["shift"].mean().reindex(layers)
        norm_line(shift_ax, range(len(layers)), mean, norm, ms=3)
    shift_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    shift_ax.set_xlabel("layer (forward order: stem conv ... fc)")
    shift_ax.set_ylabel("distribution shift between probe points\n(|d mean| + |d std|) / std")
    shift_ax.set_yscale("log")
    shift_ax.grid(alpha=0.3)
    legend(shift_ax, loc="best")

    ics = _at_lr(result.data["ics"], lr)
    ics = ics[np.isfinite(ics[VALUE])]
    for norm in norms_in(ics):
        rows = ics[ics[K.norm.kind].eq(norm)]
        per_step = (1 - rows[VALUE]).groupby(rows[STEP]).mean()
        norm_line(ics_ax, per_step.index, per_step.to_numpy(), norm, ms=4)
    ics_ax.set_xlabel("training step")
    ics_ax.set_ylabel("ICS: 1 - cos(G, G'), mean over layers")
    ics_ax.grid(alpha=0.3)
    legend(ics_ax, loc="best")
    return finish(fig, result, f"accuracy, distribution shift and gradient ICS at lr {lr:g}")


@figure("landscape_bands")
def landscape_bands(result: ClaimResult) -> Figure:
    rows = result.data["landscape"]
    lrs = sorted(set(rows[K.optim.lr])) or [0.0]
    fig = Figure(figsize=(16.0, 4.2 * len(lrs)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(lrs), 3))
    for r, lr in enumerate(lrs):
        at = _at_lr(rows, lr)
        loss_ax, grad_ax, beta_ax = axes[r]
        for norm in norms_in(at):
            mine = at[at[K.norm.kind].eq(norm)]
            _range_band(loss_ax, mine, "loss@", norm)
            _range_band(grad_ax, mine, "grad_change@", norm)
            beta = _per_step(mine, "beta_smoothness")
            norm_line(beta_ax, beta.index, beta.to_numpy(), norm, ms=4)
        loss_ax.set_ylabel(f"lr {lr:g}\nloss along the gradient\n(band: min-max over step sizes)")
        grad_ax.set_ylabel("gradient change ||g - g'||\n(band: min-max over step sizes)")
        beta_ax.set_ylabel("effective beta-smoothness")
        for ax in axes[r]:
            ax.set_yscale("log")
            ax.set_xlabel("training step")
            ax.grid(alpha=0.3)
            legend(ax, loc="best")
    return finish(fig, result, "loss landscape along the gradient (Santurkar et al., Fig. 4)")


@figure("alternatives_accuracy")
def alternatives_accuracy(result: ClaimResult) -> Figure:
    pts = result.data["points"]
    fig, ax = new_figure(ONE_PANEL)
    arms = sorted(pts["arm"], key=_stat_order)
    for i, arm in enumerate(arms):
        row = pts[pts["arm"].eq(arm)].iloc[0]
        half = max(0.0, (row["high"] - row["mean"])) if row["n"] >= 2 else 0.0
        solid = row["n"] >= MIN_SEEDS
        ax.bar(
            i,
            100 * row["mean"],
            0.7,
            yerr=100 * half,
            capsize=3,
            color=norm_colour(arm) if solid else "white",
            edgecolor=norm_colour(arm),
        )
    ax.set_xticks(range(len(arms)), [arm_label(a) for a in arms], rotation=20, ha="right")
    chance_line(ax)
    ax.set_ylabel(CI_YLABEL)
    ax.set_ylim(0, y_top(pts["high"].fillna(pts["mean"])))
    return finish(fig, result, "BN with g-sample statistics vs GroupNorm and LayerNorm (batch 128)")


def _stat_order(arm: str) -> tuple[int, float]:
    """BN first, then Ghost BN from the largest statistics batch down, then the others."""
    if arm == "bn":
        return (0, 0.0)
    if arm.startswith("ghost_bn/"):
        return (1, -float(arm.split("/")[1]))
    return (2, 0.0)


@figure("deep_no_norm_accuracy")
def deep_no_norm_accuracy(result: ClaimResult) -> Figure:
    what = "accuracy vs depth, with and without BN"
    return accuracy_vs(result, K.model.depth, "depth (layers), residual", None, what=what)


@figure("batch_why_modes")
def batch_why_modes(result: ClaimResult) -> Figure:
    what = "five evaluations vs the statistics batch g\n(each arm at its own lr)"
    xlabel = "statistics batch g of the model (log2 scale)"
    fig = accuracy_vs(result, "stat_batch", xlabel, 2, by="mode", what=what)
    ax = fig.axes[0]
    # Not accuracy_vs's label: these are test and training accuracies, and a run that
    # failed to train is left out of them (counted below the axis), never chance.
    ax.set_ylabel(
        "accuracy (%), mean over the seeds that trained,\n95% interval; hollow: < 3 seeds"
    )
    _failed_strip(ax, result.data.get("outcomes"))
    return fig


def _failed_strip(ax: Axes, outcomes: pd.DataFrame | None) -> None:
    """The seeds whose run diverged or got stuck, counted in a strip below the accuracy
    axis at their g: they have no evaluations, and are no point at chance."""
    if outcomes is None:
        return
    failed = outcomes[(outcomes[DIVERGED] + outcomes[STUCK]) > 0]
    if failed.empty:
        return
    strip = {"textcoords": "offset points", "va": "top", "fontsize": 7, "color": "#D55E00"}
    ax.annotate("failed to train:", xy=(0.0, 0.0), xycoords="axes fraction", xytext=(-6, -30),
                ha="right", annotation_clip=False, **strip)  # fmt: skip
    for _, row in failed.iterrows():
        ax.annotate(
            f"diverged {int(row[DIVERGED])}\nstuck {int(row[STUCK])}",
            xy=(row["stat_batch"], 0.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, -30),
            ha="center",
            annotation_clip=False,
            **strip,
        )


# ----------------------------------------------------------------------------- helpers


def _at_lr(rows: pd.DataFrame, lr: float) -> pd.DataFrame:
    return rows[np.isclose(rows[K.optim.lr].astype(float), lr)]


def _per_step(rows: pd.DataFrame, metric: str) -> pd.Series:
    """Mean over seeds at each step of one metric; non-finite values dropped."""
    part = rows[rows[METRIC].eq(metric) & np.isfinite(rows[VALUE])]
    return part.groupby(STEP)[VALUE].mean()


def _range_band(ax: Axes, rows: pd.DataFrame, prefix: str, norm: str) -> None:
    """Shade min..max over the step sizes (metrics `prefix<m>`) at each step, seeds averaged.

    A step where some step size blew up (non-finite) keeps its finite part: the band
    is then drawn to the largest finite value.
    """
    part = rows[rows[METRIC].str.startswith(prefix) & np.isfinite(rows[VALUE])]
    if part.empty:
        return
    per_run = part.groupby([RUN_ID, STEP])[VALUE].agg(["min", "max"]).reset_index()
    band = per_run.groupby(STEP)[["min", "max"]].mean()
    colour = norm_colour(norm)
    ax.fill_between(
        band.index, band["min"], band["max"], color=colour, alpha=0.35, lw=0, label=norm_label(norm)
    )
    # Markers too: a run probed at one step only (it diverged) has no area to shade.
    ax.plot(band.index, band["min"], color=colour, lw=0.8, marker="o", ms=3)
    ax.plot(band.index, band["max"], color=colour, lw=0.8, marker="^", ms=3)
