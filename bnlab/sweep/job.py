"""What one launched job does: train its run, and never let it stop the sweep.

bnlab composes every run of a sweep itself (bnlab.sweep.grid) and hands each
launcher a list of `SweepTask`s: the run's finished config plus what the job needs
to know about its neighbours (its share of the cores and of the GPU) and where to
record its outcome. Nothing is composed again in the worker.

Every failure is caught here and returned as a status; the run's own summary.json
(status: failed) is the record. Only an interrupt propagates. A run can fail before
its folder exists (no CUDA, an unwritable runs folder), so each job also records its
outcome in the sweep's folder, <sweep dir>/jobs/<num>.json, for the sweep's table
(bnlab.sweep.launch.job_outcomes).

A job in a worker process of this machine (joblib's loky workers, submitit_local's
jobs) stops when the sweep process dies: a SIGKILL of the sweep otherwise left its
workers running, idle or training, and holding their memory (watch_sweep).
"""

from __future__ import annotations

import _thread
import contextlib
import copy
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from bnlab.config import register_configs
from bnlab.errors import BnlabError, first_line
from bnlab.progress import LineReporter

# The sweep process's pid, set by bnlab.sweep.launch for the processes it starts.
SWEEP_PID_ENV = "BNLAB_SWEEP_PID"
# Under the sweep's folder: one <job num>.json per job, {"run", "status", "error"}.
OUTCOMES_DIR = "jobs"
# How often a worker looks for its sweep, and how long an orphan's run gets to stop.
WATCH_INTERVAL_S = 1.0
ORPHAN_GRACE_S = 10.0
ORPHAN_EXIT_CODE = 130  # as an interrupted sweep (bnlab.cli.EXIT_INTERRUPTED)

# Worker processes (joblib/loky, submitit) import this module to unpickle the task;
# the ${linear_lr:...} resolver must exist there for the config's schema.
register_configs()


@dataclass(frozen=True)
class SweepTask:
    """One job of a sweep: one run, or the runs of one pack; all its worker needs, picklable."""

    nums: tuple[int, ...]  # the runs' positions in the sweep's grid
    cfgs: tuple[DictConfig, ...]  # their composed, validated, resolved configs
    sweep_dir: str  # where each run records its outcome (jobs/<num>.json)
    threads: int | None = None  # CPU threads for the job (None: torch's default)
    gpu_jobs: int = 1  # jobs sharing this machine's GPU at once


@dataclass(frozen=True)
class JobShare:
    """What each job of a launcher gets of the machine it runs on."""

    threads: int | None  # None: torch's default (one thread per core)
    gpu_jobs: int


def cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def job_share(launcher_params: dict[str, Any], machine_cores: int | None = None) -> JobShare:
    """Cores and GPU share of each job, from the launcher's settings.

    joblib runs n_jobs processes at once on this machine (n_jobs <= 0: one per core;
    more than the cores are capped at the cores), sharing its cores and its one GPU;
    a submitit job gets cpus_per_task cores of its own when that is set.
    """
    n_cores = machine_cores if machine_cores is not None else cores()
    if launcher_params.get("cpus_per_task"):
        return JobShare(int(launcher_params["cpus_per_task"]), 1)
    if "n_jobs" not in launcher_params:
        return JobShare(None, 1)
    n_jobs = int(launcher_params.get("n_jobs") or 1)
    jobs = n_cores if n_jobs <= 0 else min(n_jobs, n_cores)
    return JobShare(max(1, n_cores // jobs) if jobs > 1 else None, jobs)


_watching = False


def watch_sweep() -> None:
    """In a process the sweep started: stop this process once the sweep is gone.

    The sweep's pid is this process's parent while the sweep lives; once it dies
    (SIGKILL, a crash) the process is re-parented, and a thread that polls for that
    interrupts the run (as Ctrl-C would: its checkpoint stays and a rerun resumes),
    then ends the process: an idle worker, blocked reading its next task, never
    sees the interrupt. Elsewhere (the sweep process itself, a SLURM node) nothing.
    """
    global _watching
    sweep = os.environ.get(SWEEP_PID_ENV, "")
    if _watching or not sweep.isdigit() or int(sweep) != os.getppid():
        return
    _watching = True
    threading.Thread(
        target=_stop_when_orphaned, args=(int(sweep),), name="bnlab-watch-sweep", daemon=True
    ).start()


def _stop_when_orphaned(sweep_pid: int) -> None:
    while os.getppid() == sweep_pid:
        time.sleep(WATCH_INTERVAL_S)
    # Nobody reads this process's output any more, and a terminal would show the
    # worker's dying words after the user's prompt.
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    _thread.interrupt_main()
    time.sleep(ORPHAN_GRACE_S)
    os._exit(ORPHAN_EXIT_CODE)


def _record_outcome(sweep_dir: str, num: int, run: str, status: str, error: str | None) -> None:
    """Best effort: an unwritable runs folder cannot take the record either, and the
    table then counts the unfinished run as failed anyway."""
    from bnlab.store import atomic_write_text

    try:
        folder = Path(sweep_dir) / OUTCOMES_DIR
        folder.mkdir(exist_ok=True)
        record = {"run": run, "status": status, "error": error}
        atomic_write_text(folder / f"{num}.json", json.dumps(record) + "\n")
    except OSError:
        pass


def run_task(task: SweepTask) -> list[str]:
    """Train the task's run(s); each one's status ("completed", "diverged", "failed", ...)."""
    watch_sweep()
    from bnlab.store import run_name
    from bnlab.train.runtime import share_gpu

    # joblib's n_jobs processes share this machine's one GPU: each gets its share
    # of the GPU memory (applied only if the run uses CUDA).
    share_gpu(task.gpu_jobs)
    cfgs = [_job_config(cfg, task) for cfg in task.cfgs]
    labels = [run_name(cfg) for cfg in cfgs]
    reporters = [LineReporter(label) for label in labels]
    results = _train_pack(cfgs, reporters) if len(cfgs) > 1 else [_train(cfgs[0], reporters[0])]
    for num, label, (status, error) in zip(task.nums, labels, results, strict=True):
        _record_outcome(task.sweep_dir, num, label, status, error)
    return [status for status, _ in results]


def _job_config(cfg: DictConfig, task: SweepTask) -> DictConfig:
    """The run's config as this job trains it: its share of the cores applied."""
    cfg = copy.deepcopy(cfg)  # in-process (basic launcher) the sweep keeps its own
    if cfg.train.threads is None and task.threads is not None:
        # Processes sharing the cores must not each start a thread per core.
        with open_dict(cfg):
            cfg.train.threads = task.threads
    return cfg


def _failure(reporter: LineReporter, err: Exception) -> tuple[str, str]:
    from bnlab.recipe import RunFailed

    if isinstance(err, RunFailed):
        reporter.line(f"failed: {err}")
        return "failed", first_line(err)
    if isinstance(err, BnlabError):
        reporter.line(f"error: {err}")
        return "failed", first_line(err)
    # A crash before the run started: still not the sweep's end.
    reporter.line(f"crashed: {type(err).__name__}: {err}")
    return "failed", f"{type(err).__name__}: {first_line(err)}"


def _finished(reporter: LineReporter, status: str, summary: dict[str, Any] | None) -> None:
    acc = (summary or {}).get("test_acc")
    reporter.line(status + (f": test acc {100 * acc:.2f}%" if acc is not None else ""))
    sys.stdout.flush()


def _train(cfg: DictConfig, reporter: LineReporter) -> tuple[str, str | None]:
    """Train one run alone: (its status, the one-line error of a failure)."""
    from bnlab.recipe import train

    try:
        outcome = train(cfg, reporter)
    except Exception as err:
        return _failure(reporter, err)
    _finished(reporter, outcome.status, outcome.summary)
    return outcome.status, None


def _train_pack(
    cfgs: list[DictConfig], reporters: list[LineReporter]
) -> list[tuple[str, str | None]]:
    """Train runs as one pack: each one's (status, error). A failure of the pack as a
    whole fails each of its runs (their checkpoints stay: a rerun resumes them)."""
    from bnlab.pack.run import PackFailed, train_pack

    try:
        outcomes = train_pack(cfgs, reporters)
    except PackFailed as err:  # the members it did not reach are done, busy or trained
        return [
            _failure(reporter, err) if outcome.status == "failed" else (outcome.status, None)
            for reporter, outcome in zip(reporters, err.outcomes, strict=True)
        ]
    except Exception as err:
        return [_failure(reporter, err) for reporter in reporters]
    for reporter, outcome in zip(reporters, outcomes, strict=True):
        _finished(reporter, outcome.status, outcome.summary)
    return [(outcome.status, None) for outcome in outcomes]
