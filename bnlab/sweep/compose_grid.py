"""`load_config` for the many points of a grid, composing each group choice once."""

from __future__ import annotations

import copy
from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from bnlab.compose import CONFIG_DIR, VERSION_BASE, check_composed, one_line_errors
from bnlab.config import register_configs
from bnlab.sweep.adapters import apply_value_overrides, split_group_choices


class GridComposer:
    """`load_config` for the many points of a grid, composing each group choice once.

    Hydra composes a config in two halves: the defaults tree picked by the config-group
    choices (norm=bn, preset=cpu: YAML loading, ~0.2-0.4 s), then the value overrides
    (optim.lr=0.1) applied to it. Grid points that share their group choices share the
    first half here; the second is Hydra's own code (bnlab.sweep.adapters), so each
    point's config is the one `load_config` composes (tests/test_sweep.py checks it).
    """

    def __init__(self) -> None:
        self._bases: dict[tuple[str, ...], DictConfig] = {}

    def load(self, overrides: Sequence[str]) -> DictConfig:
        """As load_config(overrides), with the same one-line errors."""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        register_configs()
        with one_line_errors():
            with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=VERSION_BASE):
                parsed = OverridesParser.create().parse_overrides(list(overrides))
                groups, values = split_group_choices(parsed)
                choices = tuple(str(o.input_line) for o in groups)
                if choices not in self._bases:
                    self._bases[choices] = compose("config", overrides=list(choices))
            cfg = copy.deepcopy(self._bases[choices])
            apply_value_overrides(values, cfg)
            check_composed(cfg)
        return cfg

    @property
    def compositions(self) -> int:
        """How many defaults trees were composed (one per distinct set of group choices)."""
        return len(self._bases)
