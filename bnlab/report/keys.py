"""The columns of the report's tables, each named once.

Config keys come from the schema: `K.optim.lr == "optim.lr"`, `K.norm.virtual_batch ==
"norm.virtual_batch"`. They are read off bnlab.config's dataclasses when this module is
imported -- for a group whose schema is picked when a run is composed (model, norm,
logger), the keys of all its schemas -- so a key renamed or removed there is an
AttributeError naming it (at import where a module names it at its top level; every
K.... the report writes is resolved by tests/test_report_keys.py), never a column that
is silently empty in a report.

The other columns are what a run writes besides its config -- summary.json (bnlab.recipe
through bnlab.store.RunDir) and metrics.csv (bnlab.store.METRIC_COLUMNS) -- and what
bnlab.report.load adds. They are the constants below; tests/test_report_keys.py checks
them against the store's names and against the summaries of the committed runs.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Iterator
from typing import Any

from bnlab import config
from bnlab.store import FINISHED

# ----------------------------------------------------------------------------- config keys


class Keys:
    """One section of the config schema: its keys as attributes (dotted names), its
    sub-sections as Keys. Iterating gives every dotted key below it, in schema order."""

    def __init__(self, prefix: str, names: dict[str, str | Keys]) -> None:
        self._prefix = prefix
        self._names = names
        self.__dict__.update(names)

    def __getattr__(self, name: str) -> Any:  # called only for a name the schema lacks
        if name.startswith("_"):
            raise AttributeError(name)
        raise AttributeError(f"the config schema has no key {self._prefix}{name}")

    def __iter__(self) -> Iterator[str]:
        for value in self._names.values():
            yield from (value if isinstance(value, Keys) else [value])

    def __repr__(self) -> str:
        return f"<config keys {self._prefix or '(root)'}: {len(list(self))}>"


# The groups whose schema conf/<group>/*.yaml picks: a run has the keys of one of them.
VARIANTS: dict[str, Iterable[type]] = {
    "model": config.MODEL_SCHEMAS.values(),
    "norm": config.NORM_SCHEMAS.values(),
    "logger": config.LOGGER_SCHEMAS.values(),
}


def _section(prefix: str, schemas: Iterable[type]) -> Keys:
    names: dict[str, str | Keys] = {}
    for schema in schemas:
        types = typing.get_type_hints(schema)
        for f in dataclasses.fields(schema):
            dotted = f"{prefix}{f.name}"
            kind = types[f.name]
            if isinstance(kind, type) and dataclasses.is_dataclass(kind):
                names[f.name] = _section(f"{dotted}.", VARIANTS.get(dotted, (kind,)))
            else:
                names.setdefault(f.name, dotted)
    return Keys(prefix, names)


K = _section("", (config.Config,))


def section_prefix(section: Keys) -> str:
    """The dotted prefix of a section's keys: section_prefix(K.optim) == "optim."."""
    return section._prefix


# ----------------------------------------------------------------------------- run fields

# summary.json, flattened as the config is (bn_eval.running_stats_acc).
STATUS = "status"
TEST_ACC = "test_acc"  # the final epoch's, on the whole test set
BEST_TEST_ACC = "best_test_acc"
TRAIN_ACC = "train_acc"  # the final epoch's running mean, in train mode
TRAIN_LOSS = "train_loss"
DATASET = "dataset"  # the variant's label, e.g. "CIFAR-10 (JPEG q75)"
TRAIN_IMAGES = "train_images"
DEVICE, BNLAB_VERSION, GIT_COMMIT = "device", "bnlab_version", "git_commit"  # what ran it
BN_EVAL_RUNNING = "bn_eval.running_stats_acc"  # probe.bn_eval_batch_sizes
BN_EVAL_BATCH = "bn_eval.batch_stats_acc."  # + the eval batch size
BN_MODES = "bn_modes."  # + the evaluation (probe.bn_modes)
# The fields every completed run's summary.json has that the report reads.
SUMMARY_FIELDS = (
    STATUS,
    TEST_ACC,
    BEST_TEST_ACC,
    TRAIN_ACC,
    TRAIN_LOSS,
    DATASET,
    TRAIN_IMAGES,
    DEVICE,
    BNLAB_VERSION,
    GIT_COMMIT,
)

# A run's status: bnlab.store.FINISHED, a failure, or no summary.json yet (the report's).
COMPLETED, DIVERGED = FINISHED
FAILED, INCOMPLETE = "failed", "incomplete"

# metrics.csv: one row per epoch (the same accuracy and loss names as the summary).
EPOCH = "epoch"
TEST_LOSS = "test_loss"
EPOCH_COLUMNS = (EPOCH, TRAIN_LOSS, TRAIN_ACC, TEST_LOSS, TEST_ACC)  # in METRIC_COLUMNS

# probes.csv (long format): the columns the report reads.
STEP, PROBE, LAYER, METRIC, VALUE = "step", "probe", "layer", "metric", "value"  # PROBE_COLUMNS

# What bnlab.report.load adds to each run's row.
RUN_ID = "run_id"  # the 12-hex identity at the end of the folder's name
RUN_NAME = "run_name"  # the folder's name
RUN_DIR = "run_dir"  # the folder's path
