"""One figure per claim, drawn from the ClaimResult's numeric points.

Figures are built with matplotlib's object API (Figure, not pyplot): no global
state, no display, and rendering goes through the Agg canvas, so this works on
a headless machine and never changes the backend for the rest of the process.
Every figure names the dataset variant and preset in its title.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, MaxNLocator, NullLocator

from bnlab.report.claims import CHANCE_ACC, ClaimResult

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
EXTRA_COLOURS = ("#E69F00", "#56B4E9", "#F0E442", "#000000")
SERIES_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
MARKERS = ("o", "s", "^", "D", "v")
MAX_LABELLED_BARS = 12
MAX_MARKED_EPOCHS = 30
PNG_DPI = 120
ONE_PANEL, TWO_PANELS = (7.0, 4.6), (11.5, 4.6)


def norm_colour(norm: str) -> str:
    if norm in NORM_STYLE:
        return NORM_STYLE[norm][0]
    # crc32, not hash(): str hashes change per process, colours must not.
    return EXTRA_COLOURS[zlib.crc32(norm.encode()) % len(EXTRA_COLOURS)]


def norm_label(norm: str) -> str:
    if norm.startswith("ghost_bn/"):  # an arm label: Ghost BN with its virtual batch
        return f"Ghost BN ({norm.split('/')[1]} samples)"
    if norm.startswith("batch_renorm/w"):  # ... or Batch Renorm with its warm-up
        return f"Batch Renorm ({norm.split('/w')[1]}-step warm-up)"
    return NORM_STYLE.get(norm, (None, norm))[1]


def norms_in(pts: pd.DataFrame) -> list[str]:
    order = list(NORM_STYLE)
    found = set(pts["norm.kind"])
    return [n for n in order if n in found] + sorted(found - set(order))


# ----------------------------------------------------------------------------- figures


def lr_accuracy(result: ClaimResult) -> Figure:
    pts = result.data["points"]
    fig, ax = _figure(ONE_PANEL)
    norms = norms_in(pts)
    for i, norm in enumerate(norms):
        sub = pts[pts["norm.kind"].eq(norm)].sort_values("optim.lr")
        ok = sub.dropna(subset=["mean"])
        _errorbar(ax, ok["optim.lr"], ok["mean"], ok["std"], norm, label=norm_label(norm))
        # Diverged seeds: an x on a row of its own at the bottom, annotated k/n.
        bad = sub[sub["diverged"] > 0]
        y = 3.0 + 5.0 * i
        ax.plot(
            bad["optim.lr"],
            [y] * len(bad),
            "x",
            color=norm_colour(norm),
            ms=9,
            mew=2,
            label=f"{norm_label(norm)} diverged (k of n seeds)" if len(bad) else None,
        )
        for lr, d, n in zip(bad["optim.lr"], bad["diverged"], bad["runs"], strict=True):
            ax.annotate(
                f"{int(d)}/{int(n)}",
                (lr, y),
                xytext=(7, -3),
                textcoords="offset points",
                fontsize=8,
                color=norm_colour(norm),
            )
    _log_x(ax, pts["optim.lr"])
    _chance(ax)
    ax.set_xlabel("peak learning rate (log scale)")
    ax.set_ylabel("final test accuracy (%), mean ± std over seeds")
    for norm in norms:
        largest = result.numbers.get(f"{norm}_largest_trainable_lr")
        if largest is not None:
            ax.axvline(
                largest,
                color=norm_colour(norm),
                ls=(0, (1, 3)),
                lw=1.5,
                label=f"{norm_label(norm)}: largest lr that trains ({largest:g})",
            )
    ax.set_ylim(0, _top(pts["mean"] + pts["std"].fillna(0)))
    _legend(ax, loc="best")
    return _finish(fig, result, "accuracy vs learning rate")


def training_curves(result: ClaimResult) -> Figure:
    curves = result.data["curves"]
    fig, (acc_ax, loss_ax) = _figure(TWO_PANELS, ncols=2)
    for norm in norms_in(curves):
        sub = curves[curves["norm.kind"].eq(norm)]
        n = sub["run_id"].nunique()
        label = f"{norm_label(norm)} ({n} seed{'s' if n > 1 else ''})"
        _band(acc_ax, sub, "test_acc", norm, label, scale=100)
        _band(loss_ax, sub, "train_loss", norm, label)
    target = result.numbers.get("curve_target_acc_pct")
    if target is not None:
        acc_ax.axhline(target, color="0.3", ls="--", lw=1, label=f"target {target:.1f}%")
    acc_ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    loss_ax.set_ylabel("training loss (cross-entropy, log scale), mean ± std")
    # Log scale: a diverging run's loss (hundreds or more) must not flatten the others.
    loss = curves["train_loss"].replace([np.inf, -np.inf], np.nan).dropna()
    if not loss.empty and (loss > 0).all():
        loss_ax.set_yscale("log")
    else:
        loss_ax.set_ylim(bottom=0)
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _legend(ax, loc="best")
        ax.grid(alpha=0.3)
    lr = result.numbers.get("curve_lr")
    return _finish(fig, result, f"training curves at lr {lr:g}")


def depth_accuracy(result: ClaimResult) -> Figure:
    pts = result.data["points"]
    fig, ax = _figure(ONE_PANEL)
    for norm in norms_in(pts):
        for residual, ls, arch in ((True, "-", "residual"), (False, "--", "plain")):
            sub = pts[pts["norm.kind"].eq(norm) & pts["model.residual"].eq(residual)]
            sub = sub.sort_values("model.depth")
            if not sub.empty:
                label = f"{norm_label(norm)}, {arch}"
                _errorbar(ax, sub["model.depth"], sub["mean"], sub["std"], norm, label, ls=ls)
    depth_axis(ax, pts["model.depth"])
    ax.set_xlabel("depth (layers)")
    ax.set_ylabel("final test accuracy (%), mean ± std\n(diverged run = chance)")
    ax.set_ylim(0, _top(pts["mean"] + pts["std"].fillna(0)))
    _legend(ax, loc="best")
    return _finish(fig, result, "accuracy vs depth (solid residual, dashed plain)")


def batch_accuracy(result: ClaimResult) -> Figure:
    return _accuracy_vs(result, "data.batch_size", "training batch size (log2 scale)", 2)


def init_accuracy(result: ClaimResult) -> Figure:
    return _accuracy_vs(result, "model.init_scale", "weight scale at init (log scale)", 10)


def regularization_gap(result: ClaimResult) -> Figure:
    pts = result.data["points"]
    fig, (gap_ax, acc_ax) = _figure(TWO_PANELS, ncols=2)
    groups = [a for a in (False, True) if a in set(pts["data.augment"])]
    names = ["no augmentation" if not a else "augmentation" for a in groups]
    _bars(gap_ax, pts, "data.augment", groups, names, "")
    _bars(acc_ax, pts, "data.augment", groups, names, "_test_acc")
    gap_ax.axhline(0, color="0.3", lw=0.8)
    gap_ax.set_ylabel("train acc - test acc (pp), mean ± std")
    acc_ax.set_ylabel("final test accuracy (%), mean ± std")
    acc_ax.set_ylim(0, _top(pts["mean_test_acc"] + pts["std_test_acc"].fillna(0)))
    for ax in (gap_ax, acc_ax):
        ax.set_xlabel("training data")
        ax.grid(alpha=0.3, axis="y")
        _legend(ax, loc="best")
    return _finish(fig, result, "generalisation gap (left) and test accuracy (right)")


def inference_accuracy(result: ClaimResult) -> Figure:
    pts, running = result.data["points"], result.data["running"]
    fig, ax = _figure(ONE_PANEL)
    for i, (batch, sub) in enumerate(pts.groupby("data.batch_size")):
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
        run = running[running["data.batch_size"].eq(batch)].iloc[0]
        ax.axhline(
            100 * run["mean"],
            color=colour,
            ls=("--", ":")[i % 2],
            lw=1.3,
            label=f"trained at batch {int(batch)}: running statistics",
        )
    _log_x(ax, pts["eval_batch"])
    _chance(ax)
    ax.set_xlabel("eval batch size (log scale)")
    ax.set_ylabel("test accuracy (%), mean ± std over seeds")
    ax.set_ylim(0, _top(pd.concat([pts["mean"], running["mean"]])))
    _legend(ax, loc="lower right")
    return _finish(fig, result, "batch vs running statistics")


def norms_accuracy(result: ClaimResult) -> Figure:
    pts = result.data["points"]
    fig, ax = _figure(ONE_PANEL)
    batches = sorted(set(pts["data.batch_size"]))
    _bars(ax, pts, "data.batch_size", batches, [f"{int(b)}" for b in batches], "")
    _chance(ax)
    ax.set_xlabel("training batch size (lr = 0.1 x batch/128)")
    ax.set_ylabel("final test accuracy (%), mean ± std\n(diverged run = chance)")
    # Headroom for a legend of one or two rows above the bars.
    entries = len(norms_in(pts)) + 1
    ncols = entries if entries <= 5 else (entries + 1) // 2
    headroom = 8 if entries <= 5 else 16
    ax.set_ylim(0, min(100.0, _top(pts["mean"] + pts["std"].fillna(0)) + headroom))
    _legend(ax, loc="upper center", ncols=ncols)
    return _finish(fig, result, "accuracy per normaliser and batch size")


FIGURES: dict[str, Callable[[ClaimResult], Figure]] = {
    "lr_accuracy": lr_accuracy,
    "training_curves": training_curves,
    "depth_accuracy": depth_accuracy,
    "batch_accuracy": batch_accuracy,
    "init_accuracy": init_accuracy,
    "regularization_gap": regularization_gap,
    "inference_accuracy": inference_accuracy,
    "norms_accuracy": norms_accuracy,
}


def save_figure(fig: Figure, folder: Path, key: str) -> tuple[Path, Path]:
    """PNG (for the HTML and quick viewing) and SVG (for papers), reproducibly."""
    png, svg = folder / f"{key}.png", folder / f"{key}.svg"
    fig.savefig(png, dpi=PNG_DPI, metadata={"Software": None})
    # A fixed hash salt and no date make the SVG byte-identical across reruns.
    with matplotlib.rc_context({"svg.hashsalt": "bnlab"}):
        fig.savefig(svg, metadata={"Date": None})
    return png, svg


# ----------------------------------------------------------------------------- helpers


def _figure(size: tuple[float, float], ncols: int = 1) -> tuple[Figure, Axes | np.ndarray]:
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def _finish(fig: Figure, result: ClaimResult, what: str) -> Figure:
    caption = result.setting.caption if result.setting else ""
    fig.suptitle(f"{result.title}: {what}\n{caption}", fontsize=11)
    return fig


def _errorbar(
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


def _band(
    ax: Axes, curves: pd.DataFrame, column: str, norm: str, label: str, scale: float = 1.0
) -> None:
    """Mean over seeds per epoch, with a ±std band; non-finite values (divergence) dropped."""
    finite = curves[np.isfinite(curves[column])]
    stats = finite.groupby("epoch")[column].agg(["mean", "std"]).reset_index()
    mean, std = scale * stats["mean"], scale * stats["std"].fillna(0)
    colour = norm_colour(norm)
    marker = "o" if len(stats) <= MAX_MARKED_EPOCHS else None  # dots would merge into a bar
    ax.plot(stats["epoch"], mean, color=colour, marker=marker, ms=4, label=label)
    ax.fill_between(stats["epoch"], mean - std, mean + std, color=colour, alpha=0.2, lw=0)


def depth_axis(ax: Axes, depths: pd.Series) -> None:
    """Ticks at the depths tried, some room either side, and the chance line."""
    ticks = sorted(set(depths))
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.set_xlim(min(ticks) - 8, max(ticks) + 8)
    _chance(ax)


def _accuracy_vs(result: ClaimResult, key: str, xlabel: str, base: int) -> Figure:
    pts = result.data["points"]
    fig, ax = _figure(ONE_PANEL)
    for norm in norms_in(pts):
        sub = pts[pts["norm.kind"].eq(norm)].sort_values(key)
        _errorbar(ax, sub[key], sub["mean"], sub["std"], norm, norm_label(norm))
    _log_x(ax, pts[key], base)
    _chance(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("final test accuracy (%), mean ± std\n(diverged run = chance)")
    ax.set_ylim(0, _top(pts["mean"] + pts["std"].fillna(0)))
    _legend(ax, loc="best")
    return _finish(fig, result, f"accuracy vs {xlabel.split(' (')[0]}")


def _bars(
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
            row = pts[pts["norm.kind"].eq(norm) & pts[key].eq(group)]
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


def _log_x(ax: Axes, values: pd.Series, base: int = 10) -> None:
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


def _legend(ax: Axes, **kw: object) -> None:
    """Data series first, reference marks (chance, targets, divergence) after them.

    matplotlib orders legend entries by artist type (lines before error bars), which
    would put the chance line above the series it is a reference for.
    """
    handles, labels = ax.get_legend_handles_labels()
    reference = ("chance", "diverged", "target", "largest lr")
    order = sorted(range(len(labels)), key=lambda i: any(r in labels[i] for r in reference))
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=8, **kw)


def _chance(ax: Axes) -> None:
    ax.axhline(100 * CHANCE_ACC, color="0.5", ls=":", lw=1, label="chance (10%)")
    ax.grid(alpha=0.3)


def _top(values: pd.Series) -> float:
    """An upper y limit with room for the legend above the highest point."""
    finite = values[np.isfinite(values)]
    top = 100 * float(finite.max()) if not finite.empty else 100.0
    return min(100.0, top + 12.0) if top < 95 else 102.0
