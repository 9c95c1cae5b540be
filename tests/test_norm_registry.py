"""The norm registry: each kind's schema, conv bias and checks (``bnlab.norm_kinds``,
torch-free) and its layer factory (``bnlab.build``); the models see neither."""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import yaml

import bnlab
from bnlab.build import NORM_LAYERS, build_model, norm_layer
from bnlab.compose import CONFIG_DIR, load_config
from bnlab.config import NORM_SCHEMAS, validate
from bnlab.errors import BnlabError
from bnlab.norm_kinds import NORM_FREE_KINDS, NORM_KINDS, kinds_for

PACKAGE = Path(bnlab.__file__).parent


def test_registry_schemas_factories_and_yamls_are_the_same_set() -> None:
    yamls = {p.stem for p in (CONFIG_DIR / "norm").glob("*.yaml")}
    assert set(NORM_KINDS) == set(NORM_SCHEMAS) == set(NORM_LAYERS) == yamls
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


@pytest.mark.parametrize("kind", sorted(kinds_for("resnet")))
def test_each_kind_builds_and_reports_its_conv_bias(kind: str) -> None:
    # The conv-net kinds; the sequence-only ones (rmsnorm, step_bn): tests/test_sequence.py.
    cfg = load_config([f"norm={kind}", "model.depth=8"])
    validate(cfg)
    entry = NORM_KINDS[kind]
    norm_layer(cfg.norm)(16)  # builds from the composed node
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


# ----------------------------------------------------------------------------- import direction


def _imports(tree: ast.Module) -> list[tuple[ast.stmt, str]]:
    """(node, absolute module name) of every import statement anywhere in ``tree``."""
    found: list[tuple[ast.stmt, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"line {node.lineno}: use an absolute import"
            found.append((node, node.module or ""))
    return found


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


@pytest.mark.parametrize("path", sorted((PACKAGE / "models").glob("*.py")), ids=lambda p: p.name)
def test_models_import_nothing_from_bnlab_outside_models(path: Path) -> None:
    # Models take a norm_layer and plain values; the config -> model step is bnlab.build.
    for node, module in _imports(_parse(path)):
        if module == "bnlab" or module.startswith("bnlab."):
            assert module.startswith("bnlab.models"), f"{path.name}:{node.lineno} imports {module}"


@pytest.mark.parametrize("name", ["norm_kinds.py", "build.py"])
def test_registry_imports_only_at_the_top(name: str) -> None:
    # No import inside a function (the old way round an import cycle, or round torch).
    tree = _parse(PACKAGE / name)
    for node, module in _imports(tree):
        assert node in tree.body, f"{name}:{node.lineno} imports {module} inside a block"


def test_schemas_import_neither_torch_nor_the_models() -> None:
    for node, module in _imports(_parse(PACKAGE / "norm_kinds.py")):
        assert not module.startswith(("torch", "bnlab.models", "bnlab.build")), node.lineno


def test_config_cli_and_grid_checks_do_not_import_torch() -> None:
    # The CLI's --help, the sweep's grid checks and the report must stay fast.
    code = (
        "import sys, bnlab.config, bnlab.norm_kinds, bnlab.cli, bnlab.sweep.grid; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
