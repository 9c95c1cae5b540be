"""Compose a config from conf/ and command-line overrides, with one-line errors.

Hydra's own exceptions are multi-line and aimed at Hydra developers; here they
become a single BnlabError naming the offending override.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from bnlab.config import register_configs
from bnlab.errors import BnlabError

CONFIG_DIR = Path(os.environ.get("BNLAB_CONF", Path(__file__).resolve().parents[1] / "conf"))
VERSION_BASE = "1.3"
# conf/ folders that are not user-facing groups: scale/ is picked by preset and
# experiment together; grid/ holds the claims' grids, read by bnlab sweep (not Hydra);
# hydra/ holds only launcher settings (hydra/launcher=...).
INTERNAL_GROUPS = ("scale", "grid", "hydra")


def config_groups() -> dict[str, list[str]]:
    """Selectable options per group of conf/ (the base_* schemas are internal)."""
    groups: dict[str, list[str]] = {}
    for d in sorted(
        p for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name not in INTERNAL_GROUPS
    ):
        groups[d.name] = sorted(f.stem for f in d.glob("*.yaml"))
    return groups


def group_options(group: str) -> list[str]:
    """Options of any group, Hydra's own (hydra/launcher: basic, joblib, ...) included."""
    if group in config_groups():
        return config_groups()[group]
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=VERSION_BASE):
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))


def hydra_error_line(err: BaseException) -> str:
    """A Hydra/OmegaConf composition error as one line that names the key or option."""
    text = str(err)
    if isinstance(err, OverrideParseException):
        return f"cannot parse override '{err.override}': {text.splitlines()[0]}"
    cause = err.__cause__ or err.__context__
    if m := re.search(r"Could not override '([^']+)'", text):
        return f"unknown config key '{m.group(1)}' (bnlab train --help lists the keys)"
    if m := re.search(r"Could not find '([^']+)/([^']+)'", text):
        group, option = m.groups()
        options = ", ".join(group_options(group))
        return f"unknown {group} '{option}' (choose one of: {options})"
    if m := re.search(r"Error merging override (\S+)", text):
        detail = str(cause).splitlines()[0] if cause else ""
        return f"bad value in '{m.group(1)}': {detail}".rstrip(": ")
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return first


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Within: a Hydra/OmegaConf composition error becomes a one-line BnlabError."""
    try:
        yield
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        raise BnlabError(hydra_error_line(err)) from None


def load_config(overrides: Sequence[str]) -> DictConfig:
    """The composed, typed config; raises BnlabError on any composition problem."""
    register_configs()
    with one_line_errors():
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=VERSION_BASE):
            cfg = compose("config", overrides=list(overrides))
        check_composed(cfg)
    return cfg


def check_composed(cfg: DictConfig) -> None:
    # Resolve interpolations now so that a bad ${...} is a config error, not a crash later.
    OmegaConf.resolve(cfg)
    _reject_unknown_keys(cfg, "")


def _reject_unknown_keys(node: DictConfig, prefix: str) -> None:
    """`+key=value` bypasses the schema; a key no code reads would be silently ignored."""
    schema = OmegaConf.get_type(node)
    fields = getattr(schema, "__dataclass_fields__", None)
    for key in node:
        name = f"{prefix}{key}"
        if fields is not None and key not in fields:
            raise BnlabError(f"unknown config key '{name}' (bnlab train --help lists the keys)")
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            _reject_unknown_keys(child, f"{name}.")
