"""Read a runs folder into two tidy tables: one row per run, one row per epoch.

Only what the store wrote is read (config.yaml, metrics.csv, summary.json), so
this works on a runs folder copied from another machine: no conf/, no absolute
paths, no torch. A folder whose files cannot be read -- or hold a value the store
never writes (an accuracy outside [0, 1], text where a number goes, a row cut
short) -- is skipped and named in a warning; the caller decides how to show
warnings (library code never prints).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bnlab.errors import BnlabError, first_line
from bnlab.report.keys import (
    BEST_TEST_ACC,
    EPOCH,
    EPOCH_COLUMNS,
    INCOMPLETE,
    LAYER,
    METRIC,
    PROBE,
    RUN_DIR,
    RUN_ID,
    RUN_NAME,
    STATUS,
    STEP,
    TEST_ACC,
    TEST_LOSS,
    TRAIN_ACC,
    TRAIN_IMAGES,
    TRAIN_LOSS,
    VALUE,
    K,
)
from bnlab.store import (
    FINISHED,
    IDENTITY_NEUTRAL,
    METRIC_COLUMNS,
    PROBE_COLUMNS,
    PROBES_FILE,
    RunDir,
    UnreadableConfig,
    read_config_file,
)

# A metrics.csv without these cannot be a bnlab one; the timing columns are optional.
REQUIRED_METRICS = EPOCH_COLUMNS
# Without these a run cannot be placed on any claim's grid.
REQUIRED_CONFIG = (K.norm.kind, K.model.depth, K.optim.lr, K.data.batch_size, K.train.epochs)
# Keys added to the schema after the first runs were made: runs that lack one ran
# with its default, so the claims' selections still find them.
BACKFILL: dict[str, Any] = {
    K.model.init_scale: 1.0,
    K.model.width: 16,
    K.model.residual: True,
    K.data.augment: True,
    K.experiment_name: None,
    K.model.init: "kaiming",
    # Keys the run identity leaves out at their neutral value (only_bn, the probe
    # switches, ...): a run stored before they existed trained with that value.
    **{k: v for k, v in IDENTITY_NEUTRAL.items() if not isinstance(v, list)},
}
# Training images per epoch when a summary predates its `train_images` field and
# data.train_size is null (the whole training set).
FULL_TRAIN_IMAGES = {"cifar10": 50_000, "cifar10_jpeg": 50_000, "fashion_mnist": 60_000}
SUMMARY_NUMERIC = (
    TEST_ACC,
    BEST_TEST_ACC,
    TRAIN_ACC,
    TRAIN_LOSS,
    TEST_LOSS,
    "epochs",
    "epochs_planned",
    "diverged_epoch",
    "params",
    "wall_s",
    "train_s",
    "images_per_s",
    TRAIN_IMAGES,
    "test_images",
)
# What the store writes into each numeric field. A value outside its range (or not a
# number) was not written by bnlab: the run is skipped, as when its file does not parse.
# null/NaN stays allowed (a diverged run's losses; an accuracy of a run with no epoch).
UNIT = (0.0, 1.0)
NON_NEGATIVE = (0.0, math.inf)
SUMMARY_RANGES = {k: UNIT if k.endswith("_acc") else NON_NEGATIVE for k in SUMMARY_NUMERIC}
METRIC_RANGES: dict[str, tuple[float, float]] = {
    EPOCH: (1.0, math.inf),
    TRAIN_ACC: UNIT,
    TEST_ACC: UNIT,
    **{k: NON_NEGATIVE for k in METRIC_COLUMNS if k not in (EPOCH, TRAIN_ACC, TEST_ACC)},
}
METRICS_NEVER_BLANK = (EPOCH, TRAIN_ACC, TEST_ACC)  # only losses are NaN (diverged)
PROBE_TABLE = [RUN_ID, *PROBE_COLUMNS]
# Folder names end in the run's 12-hex identity: <arch><depth>[plain]-<norm>-<id>.
FOLDER_ID = re.compile(r"-([0-9a-f]{12})$")


class CorruptRun(Exception):
    """One file of a run folder cannot be read; the message says which and why."""


@dataclass
class RunTables:
    runs: pd.DataFrame  # one row per run: dotted config keys, summary fields, run_dir, status
    epochs: pd.DataFrame  # one row per run and epoch: run_id + the metrics.csv columns
    # one row per probe measurement: run_id + the probes.csv columns (long format)
    probes: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PROBE_TABLE))
    warnings: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (folder name, reason)


def load_runs(root: Path) -> RunTables:
    """Every run folder under `root` (hidden folders such as .sweeps are not runs)."""
    root = Path(root)
    if not root.exists():
        raise BnlabError(f"runs folder {root} does not exist (train or sweep first)")
    if not root.is_dir():
        raise BnlabError(f"runs folder {root} is not a folder")
    rows: list[dict[str, Any]] = []
    curves: list[pd.DataFrame] = []
    probe_tables: list[pd.DataFrame] = []
    warnings: list[str] = []
    skipped: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            row, metrics = read_run(folder)
        except CorruptRun as err:  # includes a folder it may not read (chmod 000)
            skipped.append((folder.name, str(err)))
            warnings.append(f"skipped run folder {folder.name}: {err}")
            continue
        rid = row[RUN_ID]
        if rid in seen:  # e.g. the same run copied under two names: count it once
            reason = f"duplicate of {seen[rid]} (same run id {rid})"
            skipped.append((folder.name, reason))
            warnings.append(f"skipped run folder {folder.name}: {reason}")
            continue
        seen[rid] = folder.name
        if metrics is None and row[STATUS] in FINISHED:
            warnings.append(f"run folder {folder.name} has no metrics.csv: no per-epoch curve")
        if metrics is not None and not metrics.empty:
            curves.append(metrics.assign(run_id=rid))
        try:
            probes = read_probes(folder / PROBES_FILE)
        except CorruptRun as err:  # the run's accuracy still counts; only its probes are lost
            warnings.append(f"run folder {folder.name}: {err}; its probes are left out")
            probes = None
        if probes is not None and not probes.empty:
            probe_tables.append(probes.assign(run_id=rid))
        rows.append(row)
    if not rows:
        detail = f" ({len(skipped)} unreadable)" if skipped else ""
        raise BnlabError(f"no readable runs in {root}{detail} (train or sweep first)")
    runs = _tidy_runs(rows)
    columns = [RUN_ID, *METRIC_COLUMNS]
    epochs = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=columns)
    epochs = epochs.reindex(columns=columns)
    probes = pd.concat(probe_tables, ignore_index=True) if probe_tables else pd.DataFrame()
    probes = probes.reindex(columns=PROBE_TABLE)
    return RunTables(runs=runs, epochs=epochs, probes=probes, warnings=warnings, skipped=skipped)


def read_run(folder: Path) -> tuple[dict[str, Any], pd.DataFrame | None]:
    """One run's row and its metrics (None when it has no metrics.csv yet).

    Raises CorruptRun, one line, for anything that keeps the folder from counting,
    including an OSError such as a folder without read permission.
    """
    try:
        return _read_run(folder)
    except OSError as err:
        raise CorruptRun(f"cannot read it ({err.strerror or first_line(err)})") from None


def _read_run(folder: Path) -> tuple[dict[str, Any], pd.DataFrame | None]:
    run = RunDir(folder)
    if not run.config_file.exists() and run.summary_file.exists():
        # The store agrees (RunDir.is_finished): without its config the run is not done.
        raise CorruptRun(
            "no config.yaml beside its summary.json (deleted?): not counted; training "
            "it again (its sweep) rewrites it"
        )
    row = read_config(run.config_file)
    summary = read_summary(run.summary_file)
    metrics = read_metrics(run.metrics_file)
    match = FOLDER_ID.search(folder.name)
    row[RUN_ID] = match.group(1) if match else (summary or {}).get(RUN_ID) or folder.name
    row[RUN_NAME] = folder.name
    row[RUN_DIR] = str(folder)
    if summary is None:
        row[STATUS] = INCOMPLETE  # still training, or killed before it finished
    else:
        summary.pop(RUN_ID, None)  # the folder's id is the key; the same value anyway
        summary.pop("traceback", None)  # many lines; the one-line `error` is kept
        row.update(flatten(summary))
    if row.get(TRAIN_IMAGES) is None:
        size = row.get(K.data.train_size)
        row[TRAIN_IMAGES] = size if size else FULL_TRAIN_IMAGES.get(row.get(K.data.name))
    if metrics is not None and metrics["test_images"].isna().all():
        # A metrics.csv from before its test_images column: every epoch was evaluated
        # on the whole test set, which the summary names (NaN when it does not).
        images = row.get("test_images")
        metrics["test_images"] = float(images) if images is not None else float("nan")
    return row, metrics


def read_config(path: Path) -> dict[str, Any]:
    try:
        tree = read_config_file(path)  # the store's definition of a readable config
    except UnreadableConfig as err:
        raise CorruptRun(str(err)) from None
    flat = flatten(tree)
    missing = [k for k in REQUIRED_CONFIG if flat.get(k) is None]
    if missing:
        raise CorruptRun(f"config.yaml lacks {', '.join(missing)}")
    for key, default in BACKFILL.items():
        flat.setdefault(key, default)
    return flat


def read_summary(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CorruptRun(f"unreadable summary.json ({first_line(err)})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get(STATUS), str):
        raise CorruptRun("summary.json has no status")
    for key, value in flatten(summary).items():
        bounds = _summary_range(key)
        if bounds is not None:
            _check_number(f"summary.json {key}", value, bounds)
    return summary


def _summary_range(key: str) -> tuple[float, float] | None:
    """The range of a (flattened) summary field; None for text and lists."""
    if key in SUMMARY_RANGES:
        return SUMMARY_RANGES[key]
    # The probes' accuracies: bn_eval.batch_stats_acc.2, bn_modes.precise_acc, ...
    if any(part.endswith("_acc") for part in key.split(".")):
        return UNIT
    return None


def _check_number(where: str, value: Any, bounds: tuple[float, float]) -> None:
    """A JSON number in `bounds`, NaN or null; else CorruptRun naming the field."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CorruptRun(f"{where}={value!r} is not a number")
    low, high = bounds
    if not math.isnan(value) and not low <= value <= high:
        raise CorruptRun(f"{where}={value!r} is outside [{low:g}, {high:g}]")


def read_metrics(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        return None
    try:
        text = path.read_text()
        _check_rows_whole(text)
        # dtype=float: any non-numeric cell is corruption; "nan", "inf" and "" are numbers
        # (a diverged run's losses), so they parse.
        metrics = pd.read_csv(io.StringIO(text), dtype=float)
    except (OSError, ValueError) as err:  # ParserError, EmptyDataError, UnicodeDecodeError
        raise CorruptRun(f"unreadable metrics.csv ({first_line(err)})") from None
    missing = [c for c in REQUIRED_METRICS if c not in metrics.columns]
    if missing:
        raise CorruptRun(f"metrics.csv lacks column(s) {', '.join(missing)}")
    metrics = metrics.reindex(columns=list(METRIC_COLUMNS))
    _check_metric_values(metrics)
    metrics[EPOCH] = metrics[EPOCH].astype(int)
    return metrics


def _check_rows_whole(text: str) -> None:
    """Every row as wide as the header, the last one ended: the store writes whole rows.

    A row cut short (a copy or a disk that stopped mid-file) would otherwise parse, its
    missing cells as blanks.
    """
    if text and not text.endswith("\n"):
        raise CorruptRun("metrics.csv ends mid-row (cut short)")
    rows = [r for r in csv.reader(io.StringIO(text)) if r]
    for i, r in enumerate(rows[1:], start=1):
        if len(r) != len(rows[0]):
            raise CorruptRun(f"metrics.csv row {i} has {len(r)} of {len(rows[0])} fields")


def _check_metric_values(metrics: pd.DataFrame) -> None:
    """Each column within what the store writes (METRIC_RANGES); CorruptRun names the first."""
    for column, (low, high) in METRIC_RANGES.items():
        values = metrics[column]
        bad = values.notna() & ~values.between(low, high)
        if column == EPOCH:
            bad |= values.notna() & (values % 1 != 0)
        if column in METRICS_NEVER_BLANK:
            bad |= values.isna()
        if bad.any():
            i = int(bad.to_numpy().argmax())
            value = float(values.iloc[i])
            if math.isnan(value):
                problem = "is blank"
            elif low <= value <= high:
                problem = "is not a whole number"
            else:
                problem = f"is outside [{low:g}, {high:g}]"
            raise CorruptRun(f"metrics.csv row {i + 1} {column}={value:g} {problem}")


def read_probes(path: Path) -> pd.DataFrame | None:
    """probes.csv (long format: epoch, step, probe, layer, metric, value); None if absent."""
    dtypes = {EPOCH: int, STEP: int, PROBE: str, LAYER: str, METRIC: str, VALUE: float}
    try:
        if not path.exists():
            return None
        probes = pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values={VALUE: ["nan"]})
    except (OSError, ValueError) as err:
        raise CorruptRun(f"unreadable {PROBES_FILE} ({first_line(err)})") from None
    missing = [c for c in PROBE_COLUMNS if c not in probes.columns]
    if missing:
        raise CorruptRun(f"{PROBES_FILE} lacks column(s) {', '.join(missing)}")
    return probes[list(PROBE_COLUMNS)]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted keys ({"norm": {"kind": "bn"}} -> {"norm.kind": "bn"})."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _tidy_runs(rows: list[dict[str, Any]]) -> pd.DataFrame:
    runs = pd.DataFrame(rows)
    for column in SUMMARY_NUMERIC:
        if column in runs:
            runs[column] = pd.to_numeric(runs[column], errors="coerce")
    for column in [c for c in runs.columns if c.startswith("bn_eval.")]:
        runs[column] = pd.to_numeric(runs[column], errors="coerce")
    # Identity and location first; the rest alphabetically so runs.csv is easy to scan.
    first = [RUN_ID, RUN_NAME, STATUS, RUN_DIR]
    return runs[first + sorted(c for c in runs.columns if c not in first)]
