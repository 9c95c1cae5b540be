"""Launch a sweep: its composed runs, handed to its launcher once (bnlab.sweep.launchers).

Around the launcher, on every one: `preflight` finds once, before anything runs, what
every run would hit (a launcher bnlab cannot run, an unwritable runs folder; here, no
CUDA or a broken dataset), so it is one line and exit 2 with nothing created; a grid
whose runs are all finished launches nothing, and only unfinished runs are launched;
each sweep gets a folder of its own under <runs>/.sweeps, with sweep.yaml (what was
asked, and which run each job number trains); and each job records its outcome there
(bnlab.sweep.job), so the table counts a run that failed before its folder existed as
failed.

On SLURM (hydra/launcher=slurm or submitit_slurm) three more things are added
(bnlab.sweep.slurm says how each works):

- before (preflight): the cluster judges the job script (`sbatch --test-only`),
  so a request it can never accept is one line and exit 2 with no folder created.
- during: a watch on the queue, so a job that can never start is cancelled and
  reported instead of pending forever.
- after: a job that ended without a result (cancelled, killed, its node lost)
  does not stop the sweep; the other jobs are waited for, and its run is
  recorded as failed, so the table shows it and the exit code is 1. (The same for
  submitit_local's jobs.)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from bnlab.errors import BnlabError, warn
from bnlab.store import RunStore, atomic_write_text, check_writable, run_name
from bnlab.sweep import adapters, launchers, packs
from bnlab.sweep.grid import Job, Sweep
from bnlab.sweep.job import OUTCOMES_DIR, SWEEP_PID_ENV, SweepTask, job_share
from bnlab.sweep.launchers import launcher_kind, resolved_params
from bnlab.sweep.packs import Unit

# In the sweep's folder: the sweep as asked, and each job number's run.
SWEEP_RECORD = "sweep.yaml"


def sweep_dir(runs: Path, sweep: Sweep) -> Path:
    """The sweep's folder (sweep.yaml, submitit's logs, the jobs' outcomes).

    Only its name: make_sweep_dir creates it (the dry run shows it, creating nothing).
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return runs / ".sweeps" / f"{sweep.experiment or 'adhoc'}-{stamp}"


def make_sweep_dir(runs: Path, sweep: Sweep) -> Path:
    """Create the sweep's folder, one of its own (BnlabError if it cannot be created).

    Two sweeps started in the same second would otherwise share one folder, each
    overwriting the other's sweep.yaml and job records: the first free name of
    <name>-<stamp>, <name>-<stamp>-2, ... is taken with an exclusive mkdir.
    """
    base = sweep_dir(runs, sweep)
    folder, n = base, 1
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                folder.mkdir()
                return folder
            except FileExistsError:
                n += 1
                folder = base.with_name(f"{base.name}-{n}")
    except OSError as err:
        reason = err.strerror or err
        raise BnlabError(f"cannot create the sweep's folder {folder}: {reason}") from None


def on_slurm(sweep: Sweep) -> bool:
    return launcher_kind(sweep.launcher_params) == "slurm"


def _is_finished(job: Job) -> bool:
    return RunStore(job.cfg.paths.runs).run_dir(job.cfg).is_finished()


def preflight(sweeps: Sequence[Sweep]) -> None:
    """Find what every run would hit once, before anything of any sweep is launched.

    Raises BnlabError (one line; nothing created) for an unwritable runs folder; on
    SLURM, for a request the cluster refuses (`sbatch --test-only`); elsewhere, for
    train.device=cuda without CUDA or a missing or corrupt dataset (on SLURM a job's
    node has the device and the data, not this host). Finished runs need none of it:
    a rerun only lists them.
    """
    here: list[Job] = []
    for sweep in sweeps:
        launcher_kind(sweep.launcher_params)  # one bnlab can run
        todo = [j for j in sweep.jobs if not _is_finished(j)]
        for runs in sorted({str(j.cfg.paths.runs) for j in todo}):
            check_writable(Path(runs))
        if todo and on_slurm(sweep):
            from bnlab.sweep import slurm

            slurm.check_submission(sweep.launcher_params)
        else:
            here += todo
    if here:  # (both import torch)
        _check_device(here)
        _check_data(here)


def _check_device(jobs: Iterable[Job]) -> None:
    from bnlab.train.runtime import check_device  # imports torch: only when runs are due

    for device in {str(j.cfg.train.device) for j in jobs}:
        check_device(device)


def _check_data(jobs: Iterable[Job]) -> None:
    """Load each dataset the runs use, as a run does (verified, decoded or read from the
    cache), and drop it: a broken one fails here once, not in every run. A decode this
    does also fills the cache, so parallel jobs do not all decode at once."""
    from bnlab.data.load import load_full

    seen: set[tuple[Any, ...]] = set()
    for job in jobs:
        data = job.cfg.data
        key = (data.name, data.root, data.download)
        if key not in seen:
            seen.add(key)
            load_full(data)


def pack_plan(sweep: Sweep, setting: str) -> list[Unit]:
    """The sweep's units of work (bnlab.sweep.packs) over its unfinished runs, whose
    positions in the grid they name; finished runs are in none."""
    todo = [num for num, job in enumerate(sweep.jobs) if not _is_finished(job)]
    units = packs.plan([sweep.jobs[num].cfg for num in todo], setting)
    return [Unit(tuple(todo[i] for i in unit.nums)) for unit in units]


def launch(
    sweep: Sweep, runs: Path, units: Sequence[Unit] | None = None, pack_graph: bool = False
) -> dict[str, str]:
    """Run the sweep's units (pack_plan; None: each unfinished run alone) on its launcher,
    one job a unit (blocking). Interrupts propagate; job failures don't. `pack_graph`:
    each pack's step in one CUDA graph (``packs.graphed``; runs alone unchanged).

    Call preflight first. Returns each run's outcome by run name, as the jobs
    recorded it (bnlab.sweep.job); a grid whose runs are all finished launches nothing
    and returns {}. Raises BnlabError (one line) for a SLURM job that can never start,
    a sweep folder that cannot be written, or launcher settings the library refuses.
    """
    if units is None:
        units = pack_plan(sweep, "1")
    if not units:
        return {}  # jobs would only find their runs done
    kind = launcher_kind(sweep.launcher_params)
    folder = make_sweep_dir(runs, sweep)
    _write_record(folder, sweep, units, pack_graph)
    params = resolved_params(sweep.launcher_params, folder)
    share = job_share(params)

    def configs(unit: Unit) -> tuple[Any, ...]:
        cfgs = tuple(sweep.jobs[num].cfg for num in unit.nums)
        return tuple(map(packs.graphed, cfgs)) if pack_graph and unit.is_pack else cfgs

    tasks = [
        SweepTask(
            unit.nums,
            configs(unit),
            str(folder),
            threads=share.threads,
            gpu_jobs=share.gpu_jobs,
        )
        for unit in units
    ]
    # Worker processes (joblib, submitit_local) stop when this process dies (job.py).
    os.environ[SWEEP_PID_ENV] = str(os.getpid())
    if kind == "basic":
        launchers.run_basic(tasks)
    elif kind == "joblib":
        launchers.run_joblib(tasks, params)
    elif kind == "local":
        for line in _mark_lost(launchers.wait(tasks, launchers.submit(tasks, params, "local"))):
            warn(line)
    else:
        _launch_on_slurm(tasks, params)
    return job_outcomes(folder)


def _write_record(folder: Path, sweep: Sweep, units: Sequence[Unit], pack_graph: bool) -> None:
    """<sweep dir>/sweep.yaml: what was asked, which run each grid position trains, and
    which of them were launched together (a pack, its step a CUDA graph or not) or alone."""
    record = {
        "experiment": sweep.experiment,
        "overrides": [*sweep.task_overrides, *sweep.hydra_overrides],
        "launcher": sweep.launcher,
        "jobs": [
            {"num": num, "run": run_name(job.cfg), "overrides": list(job.overrides)}
            for num, job in enumerate(sweep.jobs)
        ],
        "launched": [list(unit.nums) for unit in units],
        "pack_graph": pack_graph,
    }
    try:
        atomic_write_text(folder / SWEEP_RECORD, OmegaConf.to_yaml(OmegaConf.create(record)))
    except OSError as err:
        raise BnlabError(f"cannot write the sweep's files in {folder}: {err}") from None


def job_outcomes(folder: Path) -> dict[str, str]:
    """The outcome each job of the sweep in `folder` recorded, by run name.

    A job that could not record one (an unwritable runs folder) is simply absent.
    """
    outcomes: dict[str, str] = {}
    for record in sorted((folder / OUTCOMES_DIR).glob("*.json")):
        try:
            data = json.loads(record.read_text())
            outcomes[str(data["run"])] = str(data["status"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return outcomes


def _mark_lost(lost: list[launchers.Lost], states: dict[str, str] | None = None) -> list[str]:
    from bnlab.sweep.slurm import mark_lost_runs

    return mark_lost_runs(lost, states or {})


def _launch_on_slurm(tasks: list[SweepTask], params: dict[str, Any]) -> None:
    """Submit the tasks as one SLURM job array, watch the queue while waiting for them,
    and mark the runs whose jobs ended without a result as failed."""
    from bnlab.sweep import slurm

    try:
        jobs = launchers.submit(tasks, params, "slurm")
    except Exception as err:
        refusal = adapters.sbatch_refusal(err)
        if refusal is None:
            raise
        raise BnlabError(slurm.explain_refusal(refusal, params)) from None
    watch = slurm.JobWatch([str(job.job_id) for job in jobs], params)
    watch.start()
    try:
        lost = launchers.wait(tasks, jobs, stop=lambda: watch.fatal is not None)
    finally:
        watch.stop()
    if watch.fatal is not None:  # its jobs never started: no run to mark
        raise BnlabError(watch.fatal)
    if lost:
        for line in _mark_lost(lost, watch.final_states()):
            warn(line)
