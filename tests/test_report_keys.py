"""The report's column names (bnlab.report.keys): config keys read off the schema, the
run's other fields checked against what the store and the trainer write, and no module
of the report naming a config key by a string of its own."""

from __future__ import annotations

import ast
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bnlab import config
from bnlab.report import keys
from bnlab.report.keys import K, Keys, section_prefix
from bnlab.report.load import flatten
from bnlab.store import FINISHED, METRIC_COLUMNS, PROBE_COLUMNS, RunDir
from tests.conftest import REPO

REPORT = REPO / "bnlab" / "report"
COMMITTED_RUNS = sorted((REPO / "results").glob("*/runs"))  # cpu, cpu-earlier, gpu


# ----------------------------------------------------------------------------- config keys


def test_keys_are_the_schemas_dotted_names():
    assert K.optim.lr == "optim.lr"
    assert K.model.depth == "model.depth"
    assert K.preset_name == "preset_name"
    assert K.probe.bn_eval_batch_sizes == "probe.bn_eval_batch_sizes"
    assert section_prefix(K.train) == "train."


@pytest.mark.parametrize(
    ("group", "schemas"),
    [
        ("model", config.MODEL_SCHEMAS.values()),
        ("norm", config.NORM_SCHEMAS.values()),
        ("logger", config.LOGGER_SCHEMAS.values()),
        ("optim", [config.OptimConfig]),
        ("data", [config.DataConfig]),
        ("train", [config.TrainConfig]),
        ("probe", [config.ProbeConfig]),
    ],
)
def test_a_group_has_the_keys_of_every_schema_it_can_be_composed_with(group, schemas):
    want = {f"{group}.{f.name}" for s in schemas for f in dataclasses.fields(s)}
    assert set(getattr(K, group)) == want
    # Ghost BN's, Batch Renorm's and the transformer's own keys are there too.
    assert {K.norm.virtual_batch, K.norm.warmup_steps, K.model.heads} <= set(K)


def test_a_key_the_schema_lacks_is_an_error_naming_it():
    with pytest.raises(AttributeError, match="no key optim.learning_rate"):
        _ = K.optim.learning_rate
    with pytest.raises(AttributeError, match="no key model.dept"):
        _ = K.model.dept


@dataclass
class RenamedOptim:
    learning_rate: float = 0.1  # was lr


@dataclass
class RenamedRoot:
    optim: RenamedOptim = field(default_factory=RenamedOptim)


def test_a_renamed_schema_key_is_gone_from_the_keys():
    renamed = keys._section("", (RenamedRoot,))
    assert isinstance(renamed.optim, Keys) and list(renamed) == ["optim.learning_rate"]
    with pytest.raises(AttributeError):
        _ = renamed.optim.lr


def _report_modules() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text())) for p in sorted(REPORT.glob("*.py"))]


def _chain(node: ast.Attribute) -> list[str] | None:
    """["optim", "lr"] for K.optim.lr; None when the chain does not start at K."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    return names[::-1] if isinstance(node, ast.Name) and node.id == "K" else None


def test_every_key_the_report_names_exists_in_the_schema():
    # Also in code no test happens to run: each K.a.b written anywhere in the report.
    for path, tree in _report_modules():
        for node in ast.walk(tree):
            chain = _chain(node) if isinstance(node, ast.Attribute) else None
            if not chain:
                continue
            target = K
            for name in chain:
                target = getattr(target, name)  # AttributeError names the missing key
            assert isinstance(target, str | Keys), f"{path.name}: K.{'.'.join(chain)}"


def test_no_report_module_spells_a_config_key_as_a_string():
    config_keys = set(K)
    for path, tree in _report_modules():
        if path.name == "keys.py":
            continue
        docstrings = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, ast.Module | ast.FunctionDef | ast.ClassDef)
            and n.body
            and isinstance(n.body[0], ast.Expr)
        }
        spelled = [
            n.value
            for n in ast.walk(tree)
            if isinstance(n, ast.Constant)
            and isinstance(n.value, str)
            and id(n) not in docstrings
            and n.value in config_keys
        ]
        assert not spelled, f"{path.name} writes {spelled}: use bnlab.report.keys.K"


# ----------------------------------------------------------------------------- run fields


def test_the_epoch_and_probe_columns_are_the_stores():
    assert set(keys.EPOCH_COLUMNS) <= set(METRIC_COLUMNS)
    assert {keys.STEP, keys.PROBE, keys.LAYER, keys.METRIC, keys.VALUE} <= set(PROBE_COLUMNS)
    assert (keys.COMPLETED, keys.DIVERGED) == FINISHED


def test_a_summary_without_a_status_is_the_stores_failed(tmp_path):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.config_file.write_text("norm: {kind: bn}\n")
    run.summary_file.write_text("{}")
    assert run.state() == keys.FAILED


def _committed_summaries() -> list[dict]:
    paths = [p for root in COMMITTED_RUNS for p in sorted(root.glob("*/summary.json"))]
    assert paths, "no committed run"
    return [flatten(json.loads(p.read_text())) for p in paths]


def test_the_summary_fields_are_what_the_trainer_wrote():
    # The committed runs' summaries were written by bnlab.recipe through the store.
    summaries = _committed_summaries()
    completed = [s for s in summaries if s[keys.STATUS] == keys.COMPLETED]
    assert completed and {s[keys.STATUS] for s in summaries} <= set(FINISHED)
    for summary in completed:
        missing = set(keys.SUMMARY_FIELDS) - set(summary)
        assert not missing, f"a committed summary.json lacks {missing}"
    fields = {k for s in summaries for k in s}
    assert keys.BN_EVAL_RUNNING in fields
    assert any(k.startswith(keys.BN_EVAL_BATCH) for k in fields)
    assert any(k.startswith(keys.BN_MODES) for k in fields)
