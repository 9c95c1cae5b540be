"""The sbatch script a SLURM sweep would submit, built the way hydra-submitit-launcher does.

Lets `bnlab sweep --dry-run hydra/launcher=slurm ...` show exactly what goes to
the cluster, and lets the tests check it without one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest.mock import patch

# Keys of submitit's shared BaseQueueConf (passed as-is); the rest get a "slurm_" prefix.
_BASE_KEYS = {
    "submitit_folder", "timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node",
    "mem_gb", "nodes", "name", "stderr_to_stdout",
}  # fmt: skip
_INIT_KEYS = {"max_num_timeout"}


def sbatch_script(launcher_params: dict[str, Any], folder: Path, job_name: str) -> str:
    """Mirror SlurmLauncher.launch(): AutoExecutor + update_parameters, then render.

    submitit refuses to build a SLURM executor where `srun` is missing; for a
    preview nothing is submitted, so that check is bypassed for this call only.
    """
    import submitit
    from submitit.slurm.slurm import SlurmExecutor

    params = {k: v for k, v in launcher_params.items() if k != "_target_"}
    params["submitit_folder"] = str(folder / ".submitit" / "%j")
    params["name"] = job_name
    with patch.object(SlurmExecutor, "affinity", classmethod(lambda cls: 1)):
        executor = submitit.AutoExecutor(
            cluster="slurm",
            folder=params["submitit_folder"],
            slurm_max_num_timeout=params.get("max_num_timeout", 0),
        )
    executor.update_parameters(
        **{
            (k if k in _BASE_KEYS else f"slurm_{k}"): v
            for k, v in params.items()
            if k not in _INIT_KEYS | {"submitit_folder"}
        }
    )
    slurm = executor._executor  # the SlurmExecutor behind AutoExecutor
    return slurm._make_submission_file_text("python -u -m submitit.core._submit", "0")
