"""Expand a sweep into its jobs exactly as Hydra's basic sweeper would, and check each.

Expanding up front lets `bnlab sweep` reject bad input before any run starts
(an unknown experiment or launcher, a grid value of the wrong type) and list
the grid with `--dry-run`.

A claim's grid lives apart from its fixed settings (conf/experiment/NAME.yaml):
conf/grid/NAME.yaml lists its axes in Hydra's sweep syntax and, under a preset's
name, what that preset changes; values several grids share (the seeds, the lr
range) are written once in conf/grid/_shared.yaml. `experiment_grid` reads them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from bnlab.compose import CONFIG_DIR, VERSION_BASE, config_groups, one_line_errors
from bnlab.config import register_configs, validate
from bnlab.errors import BnlabError
from bnlab.sweep.adapters import split_grid
from bnlab.sweep.compose_grid import GridComposer

ALL = "all"
GRID_DIR = "grid"  # conf/grid/<experiment>.yaml: a claim's grid
SHARED = "_shared"  # conf/grid/_shared.yaml: values the grids share
SUITES = "_suites"  # conf/grid/_suites.yaml: what experiment=all sweeps at a preset
SEED_KEY = "train.seed"  # every claim's grid ends with it (the shared `seeds`)
# experiment_name names the sweep's folder, <paths.runs>/.sweeps/<name>-<stamp>: one
# path component, well under the file systems' 255 bytes with the stamp added.
MAX_NAME_BYTES = 100
# A grid file's key for a union of products (experiment_grids).
UNION = "union"
# A grid file's key saying why its values are not ready to run (e.g. a lr to be tuned
# from other runs first): `bnlab sweep` refuses to run it, --dry-run shows it. At the
# top level it covers the presets using the top-level union; a preset's section may
# hold its own.
UNTUNED = "untuned"


@dataclass
class Job:
    overrides: list[str]  # the task overrides Hydra gives this job
    cfg: DictConfig  # its composed, validated config


@dataclass
class Sweep:
    experiment: str | None
    task_overrides: list[str]  # what the user typed, minus hydra.* overrides
    hydra_overrides: list[str]  # hydra/launcher=..., hydra.launcher.n_jobs=...
    launcher: str
    launcher_params: dict[str, Any]  # hydra.launcher as composed (unresolved interpolations)
    jobs: list[Job]
    untuned: str = ""  # why the grid may not run yet (its file's `untuned`), "" when it may

    def varying_keys(self) -> list[str]:
        """The keys whose value differs between jobs (the table's columns)."""
        keys: dict[str, set[str]] = {}
        for job in self.jobs:
            for o in job.overrides:
                key, _, value = o.partition("=")
                keys.setdefault(key, set()).add(value)
        return [k for k, values in keys.items() if len(values) > 1]


def _is_hydra_override(text: str) -> bool:
    key = text.lstrip("+~").split("=", 1)[0]
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def experiments() -> list[str]:
    return config_groups().get("experiment", [])


def split_experiment_all(overrides: Sequence[str]) -> list[list[str]]:
    """`experiment=all` means one sweep per claim, in a fixed order; `experiment=a,b` one
    sweep per named claim, in that order (each claim's grid is its own)."""
    chosen = [o for o in overrides if o.startswith("experiment=")]
    if not chosen:
        return [list(overrides)]
    value = chosen[-1].partition("=")[2]
    if value != ALL and "," not in value:
        return [list(overrides)]
    names = suite(overrides) if value == ALL else [v.strip() for v in value.split(",")]
    rest = [o for o in overrides if not o.startswith("experiment=")]
    return [[f"experiment={name}", *rest] for name in names]


def suite(overrides: Sequence[str]) -> list[str]:
    """The claims `experiment=all` sweeps at the command line's preset, in order:
    conf/grid/_suites.yaml's list for it, else every experiment file."""
    presets = [o.partition("=")[2] for o in overrides if o.startswith("preset=")]
    path = CONFIG_DIR / GRID_DIR / f"{SUITES}.yaml"
    listed = OmegaConf.load(path) if path.is_file() else {}
    if not presets or presets[-1] not in listed:
        return experiments()
    names = [n.strip() for n in str(listed[presets[-1]]).split(",")]
    unknown = sorted(set(names) - set(experiments()))
    if unknown:
        raise BnlabError(f"{path}: {presets[-1]} names no experiment file {unknown}")
    return names


def expand(overrides: Sequence[str]) -> Sweep:
    """The jobs of one sweep; raises BnlabError naming the first bad input."""
    register_configs()
    hydra_overrides = [o for o in overrides if _is_hydra_override(o)]
    task_overrides = [o for o in overrides if not _is_hydra_override(o)]
    with one_line_errors():
        parser = OverridesParser.create()
        parsed = parser.parse_overrides(list(task_overrides))
        fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=VERSION_BASE):
            base = compose("config", overrides=[*fixed, *hydra_overrides], return_hydra_config=True)
        hydra_cfg = base.hydra
        choices = hydra_cfg.runtime.choices
        products, untuned = read_grid(choices.get("experiment"), str(choices.get("preset")))
        # A grid written the Hydra way (hydra.sweeper.params) still counts, after it.
        node = hydra_cfg.sweeper.get("params")
        hydra_params = OmegaConf.to_container(node, resolve=False) if node is not None else {}
        assert isinstance(hydra_params, dict)
        grid_jobs: list[list[str]] = []
        for params in products or [{}]:
            params.update({str(k): str(v) for k, v in hydra_params.items()})
            # Hydra's basic sweeper: the experiment's grid first, the command line after it.
            grid = [f"{k}={v}" for k, v in params.items()] + list(task_overrides)
            for job in split_grid(parser.parse_overrides(grid)):
                if job not in grid_jobs:  # a run in two products once
                    grid_jobs.append(job)
        launcher = str(hydra_cfg.runtime.choices.get("hydra/launcher", "basic"))
        launcher_params = OmegaConf.to_container(hydra_cfg.launcher, resolve=False)
        assert isinstance(launcher_params, dict)

    jobs = []
    composer = GridComposer()
    for job_overrides in grid_jobs:
        try:
            cfg = composer.load(job_overrides)
            validate(cfg)
        except BnlabError as err:
            raise BnlabError(f"grid point {' '.join(job_overrides)}: {err}") from None
        jobs.append(Job(job_overrides, cfg))
    experiment = (jobs[0].cfg.experiment_name or None) if jobs else None
    if experiment is not None:
        check_folder_name("experiment_name", experiment)
    return Sweep(
        experiment, list(task_overrides), hydra_overrides, launcher, launcher_params, jobs, untuned
    )


def experiment_grid(experiment: str | None, preset: str) -> dict[str, str]:
    """The grid of `experiment` at `preset`, as Hydra sweep overrides by key, in order.

    conf/grid/<experiment>.yaml's axes, then train.seed over the shared seeds (unless
    the grid names train.seed), then what the file's section for `preset` changes: a
    key already there keeps its place and takes the section's value, a new key comes
    last (as Hydra merges configs). `${name}` is a value of conf/grid/_shared.yaml.
    No experiment, or one without a grid file: an empty grid. A grid that is a union
    of products (`UNION`): see experiment_grids.
    """
    grids = experiment_grids(experiment, preset)
    if len(grids) != 1:
        raise BnlabError(f"the grid of {experiment} is a union of {len(grids)} products")
    return grids[0]


def experiment_grids(experiment: str | None, preset: str) -> list[dict[str, str]]:
    """The grid of `experiment` at `preset` as a union of products (usually one).

    A grid file may hold `union:`, a list of mappings: each is one product, its axes
    added after the file's own (so each arm can have its own lr ladder); the preset's
    section may replace the union. The sweep is the products' runs in order, a run in
    two products counted once.
    """
    return read_grid(experiment, preset)[0]


def read_grid(experiment: str | None, preset: str) -> tuple[list[dict[str, str]], str]:
    """experiment_grids' products, and why they may not run yet ("" when they may)."""
    folder = CONFIG_DIR / GRID_DIR
    path = folder / f"{experiment}.yaml"
    if experiment is None or not path.is_file():
        return [], ""
    with one_line_errors():
        shared = OmegaConf.load(folder / f"{SHARED}.yaml")
        own = OmegaConf.load(path)
        clash = sorted(set(shared) & set(own))
        if clash:
            raise BnlabError(f"{path}: {clash} name values of {SHARED}.yaml")
        tree = OmegaConf.to_container(OmegaConf.merge(shared, own), resolve=True)
    assert isinstance(tree, dict)
    presets = config_groups().get("preset", [])
    axes: dict[str, str] = {}
    sections: dict[str, Mapping[str, Any]] = {}
    union: list[Any] = [{}]
    untuned = ""
    for key in own:
        value = tree[key]
        if key == UNION:
            union = _union(path, UNION, value)
        elif key == UNTUNED:
            untuned = _untuned(path, UNTUNED, value)
        elif isinstance(value, Mapping):
            if key not in presets:
                raise BnlabError(
                    f"{path}: '{key}' holds settings but is no preset "
                    f"(choose one of: {', '.join(presets)})"
                )
            sections[str(key)] = value
        else:
            axes[str(key)] = _axis_value(path, key, value)
    axes.setdefault(SEED_KEY, _axis_value(path, "seeds", tree["seeds"]))
    section = sections.get(preset, {})
    if UNION in section:  # the top level's note was about the union this one replaces
        untuned = ""
    for key, value in section.items():
        if key == UNION:
            union = _union(path, f"{preset}.{UNION}", value)
        elif key == UNTUNED:
            untuned = _untuned(path, f"{preset}.{UNTUNED}", value)
        else:
            axes[str(key)] = _axis_value(path, f"{preset}.{key}", value)
    products = []
    for i, product in enumerate(union):
        grid = dict(axes)
        for key, value in product.items():
            grid[str(key)] = _axis_value(path, f"{UNION}[{i}].{key}", value)
        products.append(grid)
    return products, untuned


def _union(path: Any, key: str, value: Any) -> list[Any]:
    if not isinstance(value, list) or not value or not all(isinstance(v, Mapping) for v in value):
        raise BnlabError(f"{path}: {key} should be a list of mappings of sweep values")
    return value


def _untuned(path: Any, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BnlabError(f"{path}: {key} should say why the grid may not run yet")
    return value.strip()


def _axis_value(path: Any, key: Any, value: Any) -> str:
    if isinstance(value, list | Mapping) or value is None:
        raise BnlabError(f"{path}: {key} should be a sweep value such as a,b,c (got {value!r})")
    return str(value)


def check_folder_name(key: str, name: str) -> None:
    """Raise BnlabError unless `name` can name one folder of its own.

    `experiment_name=../../x` would put the sweep's folder outside <runs>/.sweeps,
    and a 300-character name fails deep inside Hydra (file name too long).
    """
    shown = name if len(name) <= 40 else f"{name[:40]}..."
    if "/" in name or name.startswith(".") or any(ord(c) < 32 for c in name):
        raise BnlabError(
            f"{key}={shown!r} cannot name the sweep's folder: no '/', no leading '.', "
            "no control characters"
        )
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > MAX_NAME_BYTES:
        raise BnlabError(
            f"{key}={shown!r} is too long to name the sweep's folder "
            f"({size} bytes, at most {MAX_NAME_BYTES})"
        )
