"""The figures' shared kit: styles per norm, axes helpers, and saving.

Figures are built with matplotlib's object API (Figure, not pyplot): no global
state, no display, and rendering goes through the Agg canvas, so this works on
a headless machine and never changes the backend for the rest of the process.
Every figure names the dataset variant and preset in its title (`finish`).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from bnlab.report.core import ClaimResult
from bnlab.report.intervals import MIN_SEEDS
from bnlab.report.keys import EPOCH, K
from bnlab.report.points import CHANCE_ACC

NORM_STYLE = {  # colour-blind-safe (Okabe-Ito), fixed per norm across all figures
    "bn": ("#0072B2", "BN"),
    "none": ("#D55E00", "no norm"),
    "gn": ("#009E73", "GroupNorm"),
    "ln": ("#CC79A7", "LayerNorm"),
    # The mechanism sections' arms (never more than four or five in one figure).
    "bn_noisy": ("#56B4E9", "BN + noise"),
    "none_noisy": ("#E69F00", "no norm + noise"),
    "batch_renorm": ("#000000", "Batch Renorm"),
    "fixup": ("#009E73", "Fixup (no norm)"),
    "skipinit": ("#CC79A7", "SkipInit (no norm)"),
}
# Claims that compare BN with the no-BN arms call the He-init net what it is.
ARM_LABELS = {"none": "no norm, He init (naive)"}
EXTRA_COLOURS = ("#E69F00", "#56B4E9", "#F0E442", "#000000")
SERIES_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
MARKERS = ("o", "s", "^", "D", "v")
MAX_LABELLED_BARS = 12
MAX_MARKED_EPOCHS = 30
PNG_DPI = 120
CI_YLABEL = (
    "final test accuracy (%), mean, 95% interval\n(diverged run = chance; hollow: < 3 seeds)"
)
ONE_PANEL, TWO_PANELS = (7.0, 4.6), (11.5, 4.6)


def norm_colour(norm: str) -> str:
    if norm.startswith("#"):  # a colour given directly (series that are not norms)
        return norm
    if norm in NORM_STYLE:
        return NORM_STYLE[norm][0]
    # crc32, not hash(): str hashes change per process, colours must not.
    return EXTRA_COLOURS[zlib.crc32(norm.encode()) % len(EXTRA_COLOURS)]


def norm_label(norm: str) -> str:
    if "_noisy/" in norm:  # a noisy norm with its magnitude
        kind, level = norm.split("/", 1)
        return f"{NORM_STYLE[kind][1]} ({level.replace('m', 'm=', 1)})"
    if norm.startswith("ghost_bn/"):  # an arm label: Ghost BN with its virtual batch
        return f"Ghost BN ({norm.split('/')[1]} samples)"
    if norm.startswith("batch_renorm/w"):  # ... or Batch Renorm with its warm-up
        return f"Batch Renorm ({norm.split('/w')[1]}-step warm-up)"
    return NORM_STYLE.get(norm, (None, norm))[1]


def arm_label(arm: str) -> str:
    return ARM_LABELS.get(arm, norm_label(arm))


def norms_in(pts: pd.DataFrame, by: str = K.norm.kind) -> list[str]:
    order = list(NORM_STYLE)
    found = set(pts[by])
    return [n for n in order if n in found] + sorted(found - set(order))


def save_figure(fig: Figure, folder: Path, key: str) -> tuple[Path, Path]:
    """PNG (for the HTML and quick viewing) and SVG (for papers), reproducibly."""
    png, svg = folder / f"{key}.png", folder / f"{key}.svg"
    fig.savefig(png, dpi=PNG_DPI, metadata={"Software": None})
    # A fixed hash salt and no date make the SVG byte-identical across reruns.
    with matplotlib.rc_context({"svg.hashsalt": "bnlab"}):
        fig.savefig(svg, metadata={"Date": None})
    return png, svg


# ----------------------------------------------------------------------------- helpers


def new_figure(size: tuple[float, float], ncols: int = 1) -> tuple[Figure, Axes | np.ndarray]:
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def finish(fig: Figure, result: ClaimResult, what: str) -> Figure:
    caption = result.setting.caption if result.setting else ""
    fig.suptitle(f"{result.title}: {what}\n{caption}", fontsize=11)
    return fig


def norm_line(ax: Axes, x: Any, y: Any, norm: str, ms: float = 4) -> None:
    """One norm's line with markers, in its colour and under its label."""
    ax.plot(x, y, color=norm_colour(norm), marker="o", ms=ms, label=norm_label(norm))


def errorbar(
    ax: Axes, x: pd.Series, mean: pd.Series, std: pd.Series, norm: str, label: str, ls: str = "-"
) -> None:
    ax.errorbar(
        x,
        100 * mean,
        yerr=100 * std.fillna(0),
        color=norm_colour(norm),
        ls=ls,
        marker="o",
        ms=5,
        capsize=3,
        label=label,
    )


def ci_errorbar(
    ax: Axes, pts: pd.DataFrame, x: str, series: str, label: str, ls: str = "-"
) -> None:
    """Means with their 95% interval (`low`/`high`); points with fewer than 3 seeds are
    hollow (exploratory: they never decide a verdict)."""
    pts = pts.sort_values(x)
    colour = norm_colour(series)
    half = (pts["high"] - pts["mean"]).fillna(0).clip(lower=0)
    ax.errorbar(
        pts[x],
        100 * pts["mean"],
        yerr=100 * half,
        color=colour,
        ls=ls,
        marker=None,
        capsize=3,
        label=label,
    )
    solid = pts["n"] >= MIN_SEEDS
    ax.plot(pts.loc[solid, x], 100 * pts.loc[solid, "mean"], "o", color=colour, ms=5, ls="none")
    ax.plot(
        pts.loc[~solid, x],
        100 * pts.loc[~solid, "mean"],
        "o",
        mfc="white",
        color=colour,
        ms=5,
        ls="none",
    )


def band(
    ax: Axes, curves: pd.DataFrame, column: str, norm: str, label: str, scale: float = 1.0
) -> None:
    """Mean over seeds per epoch, with a ±std band; non-finite values (divergence) dropped."""
    finite = curves[np.isfinite(curves[column])]
    stats = finite.groupby(EPOCH)[column].agg(["mean", "std"]).reset_index()
    mean, std = scale * stats["mean"], scale * stats["std"].fillna(0)
    colour = norm_colour(norm)
    marker = "o" if len(stats) <= MAX_MARKED_EPOCHS else None  # dots would merge into a bar
    ax.plot(stats[EPOCH], mean, color=colour, marker=marker, ms=4, label=label)
    ax.fill_between(stats[EPOCH], mean - std, mean + std, color=colour, alpha=0.2, lw=0)


def depth_axis(ax: Axes, depths: pd.Series) -> None:
    """Ticks at the depths tried, some room either side, and the chance line."""
    ticks = sorted(set(depths))
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.set_xlim(min(ticks) - 8, max(ticks) + 8)
    chance_line(ax)


def accuracy_vs(
    result: ClaimResult,
    key: str,
    xlabel: str,
    base: int | None,
    by: str = "arm",
    what: str | None = None,
) -> Figure:
    """Accuracy against `key`, one line per `by` value (arms get their colours, other
    series the series colours), means with 95% intervals; `base` None is a linear
    depth axis, else a log axis of that base."""
    pts = result.data["points"]
    fig, ax = new_figure(ONE_PANEL)
    for i, name in enumerate(norms_in(pts, by)):
        colour = name if by == "arm" else SERIES_COLOURS[i % len(SERIES_COLOURS)]
        label = arm_label(name) if by == "arm" else name
        ci_errorbar(ax, pts[pts[by].eq(name)], key, colour, label)
    if base is None:
        depth_axis(ax, pts[key])
    else:
        log_x(ax, pts[key], base)
        chance_line(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(CI_YLABEL)
    ax.set_ylim(0, y_top(pts["high"].fillna(pts["mean"])))
    legend(ax, loc="best")
    return finish(fig, result, what or f"accuracy vs {xlabel.split(' (')[0]}")


def bars(
    ax: Axes,
    pts: pd.DataFrame,
    key: str,
    groups: Sequence[object],
    names: Sequence[str],
    suffix: str,
) -> None:
    """Grouped bars: one group per `key` value, one bar per norm, values in % or pp."""
    norms = norms_in(pts)
    width = 0.8 / max(1, len(norms))
    for i, norm in enumerate(norms):
        xs, ys, es = [], [], []
        for j, group in enumerate(groups):
            row = pts[pts[K.norm.kind].eq(norm) & pts[key].eq(group)]
            if not row.empty:
                xs.append(j + (i - (len(norms) - 1) / 2) * width)
                ys.append(100 * row[f"mean{suffix}"].iloc[0])
                es.append(100 * np.nan_to_num(row[f"std{suffix}"].iloc[0]))
        bars = ax.bar(
            xs, ys, width, yerr=es, capsize=3, color=norm_colour(norm), label=norm_label(norm)
        )
        if len(norms) * len(groups) <= MAX_LABELLED_BARS:  # more would overlap
            ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_xticks(range(len(groups)), names)


def log_x(ax: Axes, values: pd.Series, base: int = 10) -> None:
    """Log x axis ticked exactly at the grid values (a log axis alone labels 10^k only)."""
    ticks = sorted(set(float(v) for v in values.dropna()))
    ax.set_xscale("log", base=base)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    if len(ticks) > 1:
        span = math.log(ticks[-1] / ticks[0])
        pad = math.exp(0.06 * span)
        ax.set_xlim(ticks[0] / pad, ticks[-1] * pad)


def legend(ax: Axes, **kw: object) -> None:
    """Data series first, reference marks (chance, targets, divergence) after them.

    matplotlib orders legend entries by artist type (lines before error bars), which
    would put the chance line above the series it is a reference for.
    """
    handles, labels = ax.get_legend_handles_labels()
    reference = ("chance", "diverged", "target", "largest lr")
    order = sorted(range(len(labels)), key=lambda i: any(r in labels[i] for r in reference))
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8, **kw)


def chance_line(ax: Axes) -> None:
    ax.axhline(100 * CHANCE_ACC, color="0.5", ls=":", lw=1, label="chance (10%)")
    ax.grid(alpha=0.3)


def y_top(values: pd.Series) -> float:
    """An upper y limit with room for the legend above the highest point."""
    finite = values[np.isfinite(values)]
    top = 100 * float(finite.max()) if not finite.empty else 100.0
    return min(100.0, top + 12.0) if top < 95 else 102.0
