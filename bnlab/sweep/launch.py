"""Hand a sweep to Hydra's multirun: its sweeper expands the grid, its launcher runs it.

Around Hydra, on every launcher: `preflight` finds once, before anything runs, what
every run would hit (an unwritable runs folder; here, no CUDA or a broken dataset),
so it is one line and exit 2 with nothing created; a grid whose runs are all
finished launches nothing; each sweep gets a folder of its own under
<runs>/.sweeps; and each job records its outcome there (bnlab.sweep.job), so the
table counts a run that failed before its folder existed as failed.

On SLURM (hydra/launcher=slurm or submitit_slurm) three more things are added
around Hydra, none inside it (bnlab.sweep.slurm says how each works):

- before (preflight): the cluster judges the job script (`sbatch --test-only`),
  so a request it can never accept is one line and exit 2 with no folder created.
- during: a watch on the queue, so a job that can never start is cancelled and
  reported instead of pending forever.
- after: a job that ended without a result (cancelled, killed, its node lost)
  does not stop the sweep; the other jobs are waited for, and its run is
  recorded as failed, so the table shows it and the exit code is 1.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.override_parser.types import Quote, QuotedString

from bnlab.compose import CONFIG_DIR, VERSION_BASE
from bnlab.config import register_configs
from bnlab.errors import BnlabError, warn
from bnlab.store import RunStore, check_writable
from bnlab.sweep import adapters
from bnlab.sweep.grid import Job, Sweep
from bnlab.sweep.job import OUTCOMES_DIR, SWEEP_PID_ENV, run_job


def sweep_dir(runs: Path, sweep: Sweep) -> Path:
    """The sweep's folder (Hydra's multirun.yaml, launcher logs, the jobs' outcomes).

    Only its name: make_sweep_dir creates it (the dry run shows it, creating nothing).
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return runs / ".sweeps" / f"{sweep.experiment or 'adhoc'}-{stamp}"


def make_sweep_dir(runs: Path, sweep: Sweep) -> Path:
    """Create the sweep's folder, one of its own (BnlabError if it cannot be created).

    Two sweeps started in the same second would otherwise share one folder, each
    overwriting the other's multirun.yaml and job records: the first free name of
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


def hydra_quoted(text: str) -> str:
    r"""`text` as one Hydra override value, read literally: spaces, non-ASCII, quotes,
    backslashes and `${` included (a path such as '/tmp/a b/ünï runs').

    Two grammars read the value: Hydra's override grammar (QuotedString quotes it for
    that), then OmegaConf's, where `${` starts an interpolation unless written `\${`,
    and backslashes right before a `${` escape each other.
    """
    literal = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)
    return QuotedString(literal, Quote.single).with_quotes()


def on_slurm(sweep: Sweep) -> bool:
    return str(sweep.launcher_params.get("_target_", "")).endswith(".SlurmLauncher")


def _is_finished(job: Job) -> bool:
    return RunStore(job.cfg.paths.runs).run_dir(job.cfg).is_finished()


def all_finished(sweep: Sweep) -> bool:
    return all(_is_finished(j) for j in sweep.jobs)


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


def launch(sweep: Sweep, runs: Path) -> dict[str, str]:
    """Run the sweep through Hydra (blocking). Interrupts propagate; job failures don't.

    Call preflight first. Returns each job's outcome by run name, as the jobs
    recorded it (bnlab.sweep.job); a grid whose runs are all finished launches nothing
    and returns {}. Raises BnlabError (one line) for a SLURM job that can never start,
    or a sweep folder that cannot be written.
    """
    if all_finished(sweep):
        return {}  # jobs would only find their runs done
    register_configs()
    folder = make_sweep_dir(runs, sweep)
    argv = [
        "bnlab-sweep",
        "--multirun",
        f"hydra.sweep.dir={hydra_quoted(str(folder))}",
        # Hydra writes nothing per job (no <n>/.hydra/ folders; the run folder has the
        # config): a runs folder that turns unwritable mid-sweep (read-only, disk full)
        # then fails each remaining run with one line, where Hydra's own job setup
        # raised, stopping the sweep (with joblib: every worker) with a traceback.
        "hydra.sweep.subdir=.",
        "hydra.output_subdir=null",
        "hydra.job.chdir=false",
        "hydra/job_logging=none",
        *sweep.hydra_overrides,
        *sweep.task_overrides,
    ]
    # Worker processes (joblib, submitit_local) stop when this process dies (job.py).
    os.environ[SWEEP_PID_ENV] = str(os.getpid())
    main = hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base=VERSION_BASE)
    saved = sys.argv
    sys.argv = argv
    try:
        if on_slurm(sweep):
            _launch_on_slurm(sweep, folder, main(run_job))
        else:
            _launch_here(main(run_job), folder)
    finally:
        sys.argv = saved
    return job_outcomes(folder)


def _launch_here(hydra_main: Callable[[], Any], folder: Path) -> None:
    """Launch on this machine (basic, joblib, submitit_local): jobs never raise (job.py),
    so what reaches here is Hydra failing to write the sweep's own files."""
    try:
        with adapters.hydra_errors_raised():
            hydra_main()
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


def _launch_on_slurm(sweep: Sweep, folder: Path, hydra_main: Callable[[], Any]) -> None:
    from bnlab.sweep import slurm

    params = sweep.launcher_params  # the cluster accepted them (preflight)
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
