"""Every use of a private Hydra or submitit API in bnlab, in one place.

Tested on hydra-core 1.3.8, hydra-joblib-launcher 1.2.0, hydra-submitit-launcher
1.2.0 and submitit 1.5.4; TESTED_VERSIONS holds the ranges, pyproject.toml pins
the same ones, and tests/test_sweep.py fails, naming the package, when an
installed version leaves its range. To move a range: install the new version,
run tests/test_sweep.py and the real-SLURM tests (make test-slurm), then
widen it here and in pyproject.toml together.

What is private here, and why bnlab needs it:

- ``BasicSweeper.split_arguments`` (hydra._internal): the grid expansion
  Hydra's own sweeper performs, so `bnlab sweep` can check every grid point
  (and list them with --dry-run) before Hydra launches anything.
- submitit's SlurmExecutor parameter conversion and
  ``_make_submission_file_text``: the exact sbatch script a SLURM sweep submits,
  rendered where SLURM is not installed (the dry run) and for `sbatch --test-only`.
- submitit's on-disk layout (one ``<job id>`` folder per submitted job under
  the submitit folder) and its exception types: which jobs a sweep submitted,
  whether sbatch refused a job, whether a job ended without a result.
- ``ConfigLoaderImpl._apply_overrides_to_config`` and the config repository's
  ``group_exists``: the second half of Hydra's own composition (value overrides
  applied to the composed config), so a grid's points that share their config-group
  choices are composed once and differ only in values (``bnlab.compose.GridComposer``).
- HYDRA_FULL_ERROR: Hydra's entry point prints any exception as a traceback
  and exits 1; with it set the exception reaches bnlab, which says it in one line.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

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
    """Every job's overrides, in the order Hydra's basic sweeper launches them.

    `overrides` are parsed Hydra overrides (OverridesParser.parse_overrides).
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    batches = BasicSweeper.split_arguments(list(overrides), None)
    return [list(job) for batch in batches for job in batch]


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


@contextlib.contextmanager
def hydra_errors_raised() -> Iterator[None]:
    """Within: an exception inside Hydra's multirun reaches the caller instead of a traceback."""
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved


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


def submitted_job_ids(submitit_folder: Path) -> list[str]:
    """SLURM job ids (array tasks as 12_0) submitit has submitted into this folder."""
    try:
        names = [p.name for p in submitit_folder.iterdir() if p.is_dir()]
    except OSError:
        return []
    return sorted(n for n in names if re.fullmatch(r"\d+(_\d+)?", n))


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


def is_lost_job(err: BaseException) -> bool:
    """`err` is submitit saying a job ended without a result (cancelled, killed, node lost)."""
    from submitit.core.utils import UncompletedJobError

    return isinstance(err, UncompletedJobError) and sbatch_refusal(err) is None
