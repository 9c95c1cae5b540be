"""Run a sweep's tasks: in this process, on joblib's workers, or as submitit jobs.

bnlab expands and composes every run itself (bnlab.sweep.grid) and hands the finished
configs to the launcher library: nothing is composed twice, and no Hydra launcher
plugin runs. Their config groups stay the way a user picks a launcher and its
settings (hydra/launcher=joblib hydra.launcher.n_jobs=4, submitit_local,
submitit_slurm, bnlab's slurm): `expand` reads them, and this module passes them on
as the plugins themselves do (joblib.Parallel's keywords; submitit's AutoExecutor
with its generic parameters plain and the cluster's own prefixed), through public
joblib and submitit calls only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from submitit.helpers import Checkpointable

from bnlab.errors import BnlabError, first_line
from bnlab.sweep.job import SweepTask, run_task

# The launcher class named by hydra.launcher._target_ -> how bnlab runs it.
KINDS = {
    "BasicLauncher": "basic",
    "JoblibLauncher": "joblib",
    "LocalLauncher": "local",  # hydra/launcher=submitit_local
    "SlurmLauncher": "slurm",  # hydra/launcher=submitit_slurm or slurm
}
CHOICES = "basic, joblib, submitit_local, submitit_slurm or slurm"
# What `${hydra.job.name}` (a submitit job's name) stands for.
JOB_NAME = "bnlab"


def launcher_kind(params: dict[str, Any]) -> str:
    """basic, joblib, local or slurm; BnlabError for a launcher bnlab does not run."""
    target = str(params.get("_target_", "")).rsplit(".", 1)[-1]
    if target not in KINDS:
        raise BnlabError(f"bnlab cannot run the launcher {target or '?'}: use {CHOICES}")
    return KINDS[target]


def resolved_params(params: dict[str, Any], sweep_dir: Path) -> dict[str, Any]:
    """The launcher's settings with Hydra's two interpolations filled in, `_target_` dropped.

    The plugins' defaults name ${hydra.sweep.dir} (the submitit folder) and
    ${hydra.job.name} (the job's name); nothing else of Hydra's runtime exists here,
    so any other interpolation is refused in one line.
    """
    values = {"${hydra.sweep.dir}": str(sweep_dir), "${hydra.job.name}": JOB_NAME}

    def fill(key: str, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fill(f"{key}.{k}", v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(key, v) for v in value]
        if not isinstance(value, str):
            return value
        for name, text in values.items():
            value = value.replace(name, text)
        if "${" in value:
            raise BnlabError(
                f"hydra.launcher.{key}: only ${{hydra.sweep.dir}} and ${{hydra.job.name}} "
                f"can be interpolated there, not {value!r}"
            )
        return value

    return {k: fill(k, v) for k, v in params.items() if k != "_target_"}


# ----------------------------------------------------------------------------- here


def run_basic(tasks: Sequence[SweepTask]) -> None:
    """One after another in this process (Hydra's basic launcher did the same)."""
    for task in tasks:
        run_task(task)


def run_joblib(tasks: Sequence[SweepTask], params: dict[str, Any]) -> None:
    """On joblib's loky worker processes, hydra.launcher.* as joblib.Parallel's keywords."""
    from joblib import Parallel, delayed

    kwargs = dict(params)
    # As hydra-joblib-launcher: processes (each run has its own torch threads and
    # RNG state), and its string-typed numbers as numbers.
    kwargs["backend"] = "loky"
    for key in ("pre_dispatch", "batch_size", "max_nbytes"):
        value = kwargs.get(key)
        if isinstance(value, str) and value.isdigit():
            kwargs[key] = int(value)
    try:
        parallel = Parallel(**kwargs)
    except (TypeError, ValueError) as err:
        raise BnlabError(f"joblib refused the hydra.launcher settings: {first_line(err)}") from None
    parallel(delayed(run_task)(task) for task in tasks)


# ----------------------------------------------------------------------------- submitit


class SubmititJob(Checkpointable):
    """A task as a submitit job. Checkpointable: at a SLURM time limit or preemption
    submitit requeues the same task (up to max_num_timeout times), and the run
    resumes from its last epoch's checkpoint."""

    def __call__(self, task: SweepTask) -> str:
        return run_task(task)


@dataclass
class Lost:
    """A submitted job that ended without a result (cancelled, killed, its node lost)."""

    task: SweepTask
    job_id: str
    error: str


def _queue_keys() -> set[str]:
    """submitit's generic parameter names (the rest are prefixed with the cluster's name)."""
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    return {f.name for f in fields(BaseQueueConf)}


def submit(tasks: Sequence[SweepTask], params: dict[str, Any], cluster: str) -> list[Any]:
    """Submit every task as one job array on `cluster` (local or slurm); the submitit jobs.

    `params` are resolved (resolved_params). Raises submitit's own error for a refused
    submission (bnlab.sweep.adapters.sbatch_refusal tells it apart).
    """
    import submitit

    init_keys = {"submitit_folder", "max_num_timeout"}
    init: dict[str, Any] = {"folder": params["submitit_folder"]}
    if "max_num_timeout" in params:
        init[f"{cluster}_max_num_timeout"] = params["max_num_timeout"]
    generic = _queue_keys()
    settings = {
        key if key in generic else f"{cluster}_{key}": value
        for key, value in params.items()
        if key not in init_keys
    }
    try:
        executor = submitit.AutoExecutor(cluster=cluster, **init)
        executor.update_parameters(**settings)
    except (TypeError, ValueError, NameError) as err:
        reason = first_line(err)
        raise BnlabError(f"submitit refused the hydra.launcher settings: {reason}") from None
    return list(executor.map_array(SubmititJob(), list(tasks)))


def wait(
    tasks: Sequence[SweepTask], jobs: Sequence[Any], stop: Callable[[], bool] = lambda: False
) -> list[Lost]:
    """Wait for every job; those that ended without a result. `stop()` true: stop waiting."""
    lost = []
    for task, job in zip(tasks, jobs, strict=True):
        if stop():
            break
        try:
            job.result()
        except Exception as err:  # noqa: BLE001 -- any job without a result is lost, not fatal
            lost.append(Lost(task, str(job.job_id), first_line(err)))
    return lost
