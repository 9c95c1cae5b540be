"""The end-of-sweep table: every grid point, its status, accuracy and time (read from the store)."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from bnlab.store import FINISHED, RunStore
from bnlab.sweep.grid import Sweep

STATUS_STYLE = {
    "completed": "green",
    "diverged": "yellow",
    "failed": "bold red",
    "partial": "cyan",
    "new": "dim",
}


@dataclass
class Row:
    settings: dict[str, str]
    status: str
    epochs: str
    test_acc: float | None
    wall_s: float | None
    run_dir: str
    pack: str = ""  # "p<first grid position>/<size>" for a run trained in a pack


def rows_for(
    sweep: Sweep, outcomes: dict[str, str] | None = None, packs: dict[int, str] | None = None
) -> list[Row]:
    """One row per job, its state read from the store.

    `outcomes`: after a launch, what the jobs recorded by run name (None: nothing was
    launched, as in a dry run). A launched run that is not finished failed, whether or
    not it recorded so: it may have failed before its folder or summary existed (no
    CUDA, an unwritable runs folder) -- unless it was busy: another sweep trains it.
    `packs`: grid position -> its pack's label (bnlab.sweep.packs.labels).
    """
    keys = sweep.varying_keys()
    rows = []
    for num, job in enumerate(sweep.jobs):
        run = RunStore(job.cfg.paths.runs).run_dir(job.cfg)
        summary = run.summary() or {}
        status = run.state()
        if outcomes is not None and status not in FINISHED:
            status = status if outcomes.get(run.path.name) == "busy" else "failed"
        settings = {}
        for o in job.overrides:
            key, _, value = o.partition("=")
            if key in keys:
                settings[key] = value
        planned = job.cfg.train.epochs
        rows.append(
            Row(
                settings=settings,
                status=status,
                epochs=f"{run.epochs_done()}/{planned}",
                test_acc=summary.get("test_acc"),
                wall_s=summary.get("wall_s"),
                run_dir=run.path.name.rsplit("-", 1)[-1],
                pack=(packs or {}).get(num, ""),
            )
        )
    return rows


def render(title: str, sweep: Sweep, rows: list[Row], console: Console) -> None:
    keys = sweep.varying_keys()
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    for key in keys:
        table.add_column(key, overflow="fold")
    with_packs = any(row.pack for row in rows)
    names = ("status", "epochs", "test acc", "time", "run id") + (("pack",) if with_packs else ())
    for name in names:
        table.add_column(name, justify="right" if name in ("test acc", "time") else "left")
    for i, row in enumerate(rows):
        style = STATUS_STYLE.get(row.status, "")
        acc = f"{100 * row.test_acc:.2f}%" if row.test_acc is not None else "-"
        wall = f"{row.wall_s:.0f}s" if row.wall_s is not None else "-"
        table.add_row(
            str(i),
            *(row.settings.get(k, "") for k in keys),
            f"[{style}]{row.status}[/]" if style else row.status,
            row.epochs,
            acc,
            wall,
            row.run_dir,
            *((row.pack,) if with_packs else ()),
        )
    console.print(table)
