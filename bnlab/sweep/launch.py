"""Hand a sweep to Hydra's multirun: its sweeper expands the grid, its launcher runs it."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import hydra

from bnlab.compose import CONFIG_DIR, VERSION_BASE
from bnlab.config import register_configs
from bnlab.sweep.grid import Sweep
from bnlab.sweep.job import run_job


def sweep_dir(runs: Path, sweep: Sweep) -> Path:
    """Hydra's own per-sweep folder (job configs, launcher logs), beside the runs."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return runs / ".sweeps" / f"{sweep.experiment or 'adhoc'}-{stamp}"


def launch(sweep: Sweep, runs: Path) -> None:
    """Run the sweep through Hydra (blocking). Interrupts propagate; job failures don't."""
    register_configs()
    argv = [
        "bnlab-sweep",
        "--multirun",
        f"hydra.sweep.dir={sweep_dir(runs, sweep)}",
        "hydra.job.chdir=false",
        "hydra/job_logging=none",
        *sweep.hydra_overrides,
        *sweep.task_overrides,
    ]
    main = hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base=VERSION_BASE)
    saved = sys.argv
    sys.argv = argv
    try:
        main(run_job)()
    finally:
        sys.argv = saved
