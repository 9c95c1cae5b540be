"""The norm registry is the one home of a norm kind: schema, layer, conv bias and checks."""

from __future__ import annotations

from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import yaml

from bnlab.compose import CONFIG_DIR, load_config
from bnlab.config import NORM_SCHEMAS, validate
from bnlab.errors import BnlabError
from bnlab.models import build_model, conv_needs_bias, make_norm
from bnlab.norm_kinds import NORM_FREE_KINDS, NORM_KINDS


def test_registry_schemas_and_yamls_are_the_same_set() -> None:
    yamls = {p.stem for p in (CONFIG_DIR / "norm").glob("*.yaml")}
    assert set(NORM_KINDS) == set(NORM_SCHEMAS) == yamls
    for kind, entry in NORM_KINDS.items():
        assert entry.schema().kind == kind  # the schema's own kind matches its key


@pytest.mark.parametrize("kind", sorted(NORM_KINDS))
def test_yaml_holds_only_what_differs_from_the_dataclass(kind: str) -> None:
    text = (CONFIG_DIR / "norm" / f"{kind}.yaml").read_text()
    body = {k: v for k, v in (yaml.safe_load(text) or {}).items() if k != "defaults"}
    defaults = {
        f.name: f.default for f in fields(NORM_KINDS[kind].schema) if f.default is not MISSING
    }
    repeated = {k: v for k, v in body.items() if k in defaults and defaults[k] == v}
    assert not repeated, f"conf/norm/{kind}.yaml repeats dataclass defaults: {repeated}"
    # And composing the group gives exactly the dataclass defaults, nothing else.
    composed = load_config([f"norm={kind}"]).norm
    assert dict(composed) == {**defaults, **body}


@pytest.mark.parametrize("kind", sorted(NORM_KINDS))
def test_each_kind_builds_and_reports_its_conv_bias(kind: str) -> None:
    cfg = load_config([f"norm={kind}", "model.depth=8"])
    validate(cfg)
    entry = NORM_KINDS[kind]
    assert conv_needs_bias(cfg.norm) is entry.conv_bias
    make_norm(cfg.norm, 16)  # builds from the composed node
    net = build_model(cfg.model, cfg.norm)
    has_bias = net.conv1.bias is not None
    assert has_bias is entry.conv_bias


def test_norm_free_kinds_are_the_ones_fixup_accepts() -> None:
    assert NORM_FREE_KINDS == ("none", "none_noisy")
    for kind in NORM_KINDS:
        cfg = load_config([f"norm={kind}", "model.init=fixup"])
        if kind in NORM_FREE_KINDS:
            validate(cfg)
        else:
            with pytest.raises(BnlabError, match="use norm=none"):
                validate(cfg)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("norm.eps=0", "norm.eps"),
        ("norm.momentum=1.5", "norm.momentum"),
    ],
)
@pytest.mark.parametrize("kind", ["bn", "ghost_bn", "batch_renorm", "bn_noisy"])
def test_running_stats_checks_apply_to_every_bn_kind(kind: str, override: str, key: str) -> None:
    with pytest.raises(BnlabError, match=key):
        validate(load_config([f"norm={kind}", override]))


def test_kind_specific_checks() -> None:
    bad = {
        "gn": ["norm.groups=3"],
        "ghost_bn": ["norm.virtual_batch=3"],
        "batch_renorm": ["norm.r_max=0.5"],
        "none_noisy": ["norm.noise_jitter=-1"],
        "ln": ["norm.eps=-1"],
    }
    for kind, overrides in bad.items():
        with pytest.raises(BnlabError, match="norm."):
            validate(load_config([f"norm={kind}", *overrides]))


def test_help_lists_every_kind_with_its_keys() -> None:
    from bnlab.cli import _config_reference

    text = _config_reference()
    for kind, entry in NORM_KINDS.items():
        line = next(x for x in text.splitlines() if x.strip().startswith(f"norm={kind} "))
        for key in entry.keys:
            assert f"norm.{key}" in line


def test_yaml_files_are_not_empty_of_meaning() -> None:
    # Each yaml says what the kind is (a comment), so a reader of conf/ is not lost.
    for path in Path(CONFIG_DIR / "norm").glob("*.yaml"):
        assert path.read_text().startswith("#"), path
