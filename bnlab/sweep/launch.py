"""Hand a sweep to Hydra's multirun: its sweeper expands the grid, its launcher runs it.

On SLURM (hydra/launcher=slurm or submitit_slurm) three things are added around
Hydra, none inside it (bnlab.sweep.slurm says how each works):

- before: the cluster judges the job script (`sbatch --test-only`), so a request
  it can never accept is one line and exit 2 with no folder created; and a grid
  whose runs are all finished submits nothing.
- during: a watch on the queue, so a job that can never start is cancelled and
  reported instead of pending forever.
- after: a job that ended without a result (cancelled, killed, its node lost)
  does not stop the sweep; the other jobs are waited for, and its run is
  recorded as failed, so the table shows it and the exit code is 1.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra

from bnlab.compose import CONFIG_DIR, VERSION_BASE
from bnlab.config import register_configs
from bnlab.errors import BnlabError, warn
from bnlab.store import RunStore
from bnlab.sweep import adapters
from bnlab.sweep.grid import Sweep
from bnlab.sweep.job import run_job


def sweep_dir(runs: Path, sweep: Sweep) -> Path:
    """Hydra's own per-sweep folder (job configs, launcher logs), beside the runs."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return runs / ".sweeps" / f"{sweep.experiment or 'adhoc'}-{stamp}"


def on_slurm(sweep: Sweep) -> bool:
    return str(sweep.launcher_params.get("_target_", "")).endswith(".SlurmLauncher")


def all_finished(sweep: Sweep) -> bool:
    return all(RunStore(j.cfg.paths.runs).run_dir(j.cfg).is_finished() for j in sweep.jobs)


def launch(sweep: Sweep, runs: Path) -> None:
    """Run the sweep through Hydra (blocking). Interrupts propagate; job failures don't.

    Raises BnlabError (one line) for a SLURM request the cluster refuses.
    """
    register_configs()
    folder = sweep_dir(runs, sweep)
    argv = [
        "bnlab-sweep",
        "--multirun",
        f"hydra.sweep.dir={folder}",
        "hydra.job.chdir=false",
        "hydra/job_logging=none",
        *sweep.hydra_overrides,
        *sweep.task_overrides,
    ]
    main = hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base=VERSION_BASE)
    saved = sys.argv
    sys.argv = argv
    try:
        if on_slurm(sweep):
            _launch_on_slurm(sweep, folder, main(run_job))
        else:
            main(run_job)()
    finally:
        sys.argv = saved


def _launch_on_slurm(sweep: Sweep, folder: Path, hydra_main: Callable[[], Any]) -> None:
    from bnlab.sweep import slurm

    params = sweep.launcher_params
    if all_finished(sweep):
        return  # nothing to submit: jobs would only find their runs done
    slurm.check_submission(params)
    submitit_folder = str(params.get("submitit_folder", "${hydra.sweep.dir}/.submitit/%j"))
    watch = slurm.JobWatch(
        Path(submitit_folder.replace("${hydra.sweep.dir}", str(folder)).removesuffix("/%j")),
        params,
    )
    watch.start()
    lost = False
    try:
        with adapters.hydra_errors_raised():
            hydra_main()
    except Exception as err:
        refusal = adapters.sbatch_refusal(err)
        if refusal is not None:
            raise BnlabError(slurm.explain_refusal(refusal, params)) from None
        if watch.fatal is not None:
            raise BnlabError(watch.fatal) from None
        if not adapters.is_lost_job(err):
            raise
        lost = True  # Hydra stops at the first lost job; the others still run
    finally:
        watch.stop()
    if lost:
        watch.wait_until_gone()
    if watch.fatal is not None:  # its jobs never started: no run to mark
        raise BnlabError(watch.fatal)
    if lost:
        for line in slurm.mark_lost_runs(sweep, watch.final_states()):
            warn(line)
