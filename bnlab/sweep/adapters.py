"""Every use of a private Hydra or submitit API in bnlab, in one place.

Tested on hydra-core 1.3.8, hydra-joblib-launcher 1.2.0, hydra-submitit-launcher
1.2.0 and submitit 1.5.4; TESTED_VERSIONS holds the ranges, pyproject.toml pins
the same ones, and tests/test_sweep.py fails, naming the package, when an
installed version leaves its range. To move a range: install the new version,
run tests/test_sweep.py and the real-SLURM tests (make test-slurm), then
widen it here and in pyproject.toml together.

What is private here, and why bnlab needs it:

- submitit's SlurmExecutor parameter conversion and
  ``_make_submission_file_text``: the exact sbatch script a SLURM sweep submits,
  rendered where SLURM is not installed (the dry run) and for `sbatch --test-only`.
- submitit's exception types (submitit.core.utils): whether sbatch refused a job.
- ``ConfigLoaderImpl._apply_overrides_to_config`` and the config repository's
  ``group_exists``: the second half of Hydra's own composition (value overrides
  applied to the composed config), so a grid's points that share their config-group
  choices are composed once and differ only in values (``bnlab.sweep.compose_grid.GridComposer``).

The grid's expansion (``split_grid``) uses only Hydra's public override parser; the
launchers (bnlab.sweep.launchers) only joblib's and submitit's public calls.
"""

from __future__ import annotations

import itertools
import re
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from bnlab.errors import BnlabError

# package -> (lowest tested version, first version not covered), as in pyproject.toml.
TESTED_VERSIONS: dict[str, tuple[str, str]] = {
    "hydra-core": ("1.3.8", "1.4"),
    "hydra-joblib-launcher": ("1.2.0", "1.3"),
    "hydra-submitit-launcher": ("1.2.0", "1.3"),
    "submitit": ("1.5.4", "1.6"),
}


def _version_tuple(text: str) -> tuple[int, ...]:
    # "1.3.8", "1.5.4.dev0", "1.3.8+local": the leading numeric parts are what we compare.
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


def untested_versions() -> list[str]:
    """One line per installed package outside its TESTED_VERSIONS range (empty: all fine)."""
    problems = []
    for name, (low, high) in TESTED_VERSIONS.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name} is not installed (bnlab is tested with >={low},<{high})")
            continue
        if not _version_tuple(low) <= _version_tuple(installed) < _version_tuple(high):
            problems.append(
                f"{name} {installed} is outside the range bnlab.sweep.adapters is tested on "
                f"(>={low},<{high})"
            )
    return problems


# ----------------------------------------------------------------------------- Hydra


def split_grid(overrides: Sequence[Any]) -> list[list[str]]:
    """Every job's overrides, in the order Hydra's basic sweeper would launch them.

    `overrides` are parsed Hydra overrides (OverridesParser.parse_overrides). As the
    basic sweeper: a key keeps the position of its first mention and takes the value
    of its last; the grid is the cartesian product in that order, the last key fastest.
    Only discrete sweeps (a,b,c; choice(); range()) make a grid.
    """
    axes: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            axes[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            axes[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise BnlabError(f"{key}: only lists, choice() and range() can sweep, not intervals")
    return [list(job) for job in itertools.product(*axes.values())]


def split_group_choices(overrides: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """Parsed overrides split as Hydra's defaults list splits them: (group choices, values).

    Call inside ``initialize_config_dir``. A value override is one whose key is not a
    config group, or whose value is a dict (hydra._internal.defaults_list.Overrides).
    """
    from hydra.core.global_hydra import GlobalHydra

    repo = GlobalHydra.instance().config_loader().repository  # type: ignore[attr-defined]
    groups, values = [], []
    for override in overrides:
        is_group = repo.group_exists(override.key_or_group)
        is_value = isinstance(override.value(), dict) or not is_group
        (values if is_value else groups).append(override)
    return groups, values


def apply_value_overrides(overrides: Sequence[Any], cfg: Any) -> None:
    """Apply parsed value overrides to a composed config exactly as Hydra's compose does."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    ConfigLoaderImpl._apply_overrides_to_config(list(overrides), cfg)


# ----------------------------------------------------------------------------- submitit

# hydra-submitit-launcher's BaseQueueConf keys are submitit's generic parameters;
# the others are SlurmExecutor's own (the launcher prefixes them "slurm_").
_INIT_KEYS = {"max_num_timeout", "submitit_folder", "_target_"}
SUBMIT_COMMAND = "python -u -m submitit.core._submit"


def sbatch_text(launcher_params: dict[str, Any], folder: Path, job_name: str) -> str:
    """The sbatch script hydra-submitit-launcher's SlurmLauncher submits for one job.

    Built by SlurmExecutor itself (the same parameter conversion and checks as
    the launcher's AutoExecutor), so the preview cannot drift from the real
    thing. Nothing is submitted, so SLURM need not be installed.
    """
    from submitit.slurm.slurm import SlurmExecutor

    class _RenderOnly(SlurmExecutor):
        @classmethod
        def affinity(cls) -> int:
            # SlurmExecutor refuses to exist where `srun` is missing; rendering needs no srun.
            return 1

    submitit_folder = folder / ".submitit" / "%j"
    executor = _RenderOnly(
        folder=submitit_folder, max_num_timeout=launcher_params.get("max_num_timeout", 0)
    )
    # As AutoExecutor does: unset (None) values are left out, generic names are converted.
    params = {k: v for k, v in launcher_params.items() if k not in _INIT_KEYS and v is not None}
    params["name"] = job_name
    executor.update_parameters(**executor._convert_parameters(params))
    return executor._make_submission_file_text(SUBMIT_COMMAND, "0")


def sbatch_refusal(err: BaseException) -> str | None:
    """sbatch's own error text if `err` is submitit reporting a refused submission."""
    from submitit.core.utils import FailedJobError

    cause = err.__cause__
    if (
        isinstance(err, FailedJobError)
        and isinstance(cause, subprocess.CalledProcessError)
        and Path(str(cause.cmd[0])).name == "sbatch"
    ):
        return str(cause.stderr or err)
    return None
