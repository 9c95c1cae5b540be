"""The claims' figures, one registered function each (bnlab.report.core.figure)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bnlab.report.core import ClaimResult, figure
from bnlab.report.figure_kit import (
    MARKERS,
    ONE_PANEL,
    SERIES_COLOURS,
    TWO_PANELS,
    accuracy_vs,
    arm_label,
    band,
    bars,
    chance_line,
    finish,
    legend,
    log_x,
    new_figure,
    norm_colour,
    norms_in,
    y_top,
)
from bnlab.report.keys import RUN_ID, TEST_ACC, TRAIN_LOSS, K

# ----------------------------------------------------------------------------- figures


@figure("training_curves")
def training_curves(result: ClaimResult) -> Figure:
    curves = result.data["curves"]
    fig, (acc_ax, loss_ax) = new_figure(TWO_PANELS, ncols=2)
    for norm in norms_in(curves):
        sub = curves[curves[K.norm.kind].eq(norm)]
        n = sub[RUN_ID].nunique()
        label = f"{arm_label(norm)} ({n} seed{'s' if n > 1 else ''})"
        band(acc_ax, sub, TEST_ACC, norm, label, scale=100)
        band(loss_ax, sub, TRAIN_LOSS, norm, label)
    target = result.numbers.get("curve_target_acc_pct")
    if target is not None:
        acc_ax.axhline(target, color="0.3", ls="--", lw=1, label=f"target {target:.1f}%")
    acc_ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    loss_ax.set_ylabel("training loss (cross-entropy, log scale), mean ± std")
    # Log scale: a diverging run's loss (hundreds or more) must not flatten the others.
    loss = curves[TRAIN_LOSS].replace([np.inf, -np.inf], np.nan).dropna()
    if not loss.empty and (loss > 0).all():
        loss_ax.set_yscale("log")
    else:
        loss_ax.set_ylim(bottom=0)
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        legend(ax, loc="best")
        ax.grid(alpha=0.3)
    lr = result.numbers.get("curve_lr")
    at = f"at lr {lr:g}" if isinstance(lr, int | float) else "each arm at its best lr"
    return finish(fig, result, f"training curves {at}")


@figure("init_accuracy")
def init_accuracy(result: ClaimResult) -> Figure:
    return accuracy_vs(result, K.model.init_scale, "weight scale at init (log scale)", 10)


@figure("regularization_gap")
def regularization_gap(result: ClaimResult) -> Figure:
    pts = result.data["points"]
    fig, ax = new_figure(ONE_PANEL)
    groups = list(dict.fromkeys(pts["against"]))
    width = 0.38
    for j, against in enumerate(groups):
        sub = pts[pts["against"].eq(against)].reset_index(drop=True)
        for i, row in sub.iterrows():
            ax.bar(
                j + (i - 0.5) * width,
                100 * row["mean"],
                width,
                color=norm_colour(row["arm"]),
                label=arm_label(row["arm"]) if j == 0 or row["arm"] != "bn" else None,
            )
    ax.set_xticks(
        range(len(groups)),
        [
            f"{g}\n(train loss {pts.loc[pts['against'].eq(g), 'train loss'].iloc[0]:g})"
            for g in groups
        ],
    )
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_ylabel("train acc - test acc (pp) at matched training loss\n(no augmentation)")
    ax.grid(alpha=0.3, axis="y")
    legend(ax, loc="best")
    return finish(fig, result, "generalisation gap at matched training loss")


@figure("inference_accuracy")
def inference_accuracy(result: ClaimResult) -> Figure:
    pts, running = result.data["points"], result.data["running"]
    fig, ax = new_figure(ONE_PANEL)
    for i, (batch, sub) in enumerate(pts.groupby(K.data.batch_size)):
        colour = SERIES_COLOURS[i % len(SERIES_COLOURS)]
        marker = MARKERS[i % len(MARKERS)]  # curves of several batch sizes may coincide
        sub = sub.sort_values("eval_batch")
        ax.errorbar(
            sub["eval_batch"],
            100 * sub["mean"],
            yerr=100 * sub["std"].fillna(0),
            color=colour,
            marker=marker,
            ms=7 - 2 * (i % 2),
            capsize=3,
            label=f"trained at batch {int(batch)}: batch statistics",
        )
        run = running[running[K.data.batch_size].eq(batch)].iloc[0]
        ax.axhline(
            100 * run["mean"],
            color=colour,
            ls=("--", ":")[i % 2],
            lw=1.3,
            label=f"trained at batch {int(batch)}: running statistics",
        )
    log_x(ax, pts["eval_batch"])
    chance_line(ax)
    ax.set_xlabel("eval batch size (log scale)")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_ylim(0, y_top(pd.concat([pts["mean"], running["mean"]])))
    legend(ax, loc="lower right")
    return finish(fig, result, "batch vs running statistics")


@figure("norms_accuracy")
def norms_accuracy(result: ClaimResult) -> Figure:
    pts = result.data["points"]
    fig, ax = new_figure(ONE_PANEL)
    batches = sorted(set(pts[K.data.batch_size]))
    bars(ax, pts, K.data.batch_size, batches, [f"{int(b)}" for b in batches], "")
    chance_line(ax)
    ax.set_xlabel("training batch size (lr = 0.1 x batch/128)")
    ax.set_ylabel("final test accuracy (%), mean ± std\n(diverged run = chance)")
    # Headroom for a legend of one or two rows above the bars.
    entries = len(norms_in(pts)) + 1
    ncols = entries if entries <= 5 else (entries + 1) // 2
    headroom = 8 if entries <= 5 else 16
    ax.set_ylim(0, min(100.0, y_top(pts["mean"] + pts["std"].fillna(0)) + headroom))
    legend(ax, loc="upper center", ncols=ncols)
    return finish(fig, result, "accuracy per normaliser and batch size")
