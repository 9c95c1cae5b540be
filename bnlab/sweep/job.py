"""What one Hydra multirun job does: train one run, and never let it stop the sweep.

Hydra's sweeper re-raises a job's exception and aborts the rest of the grid, so
every failure is caught here and returned as a status; the run's own
summary.json (status: failed) is the record. Only an interrupt propagates.

A run can fail before its folder exists (no CUDA, an unwritable runs folder), so
each job also records its outcome in the sweep's folder, <sweep dir>/jobs/, for
the sweep's table (bnlab.sweep.launch.job_outcomes).

A job in a worker process of this machine (joblib's loky workers, submitit_local's
jobs) stops when the sweep process dies: a SIGKILL of the sweep otherwise left its
workers running, idle or training, and holding their memory (watch_sweep).
"""

from __future__ import annotations

import _thread
import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

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

# Worker processes (joblib/loky, submitit) import this module to unpickle the
# task; the ${linear_lr:...} resolver must exist there before the config resolves.
register_configs()


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _launcher() -> DictConfig | None:
    try:
        return HydraConfig.get().launcher
    except ValueError:  # not inside Hydra
        return None


def _local_jobs() -> int:
    """How many jobs the joblib launcher runs at once on this machine (1 otherwise).

    n_jobs <= 0 means one per core; more jobs than cores are capped at the cores.
    """
    launcher = _launcher()
    if launcher is None or "n_jobs" not in launcher or launcher.get("cpus_per_task"):
        return 1
    n_jobs = int(launcher.n_jobs or 1)
    return _cores() if n_jobs <= 0 else min(n_jobs, _cores())


def _threads_per_job() -> int | None:
    """CPU threads for one job when jobs share the machine; None: torch's default.

    joblib runs n_jobs processes at once; submitit gives each job cpus_per_task
    cores when set.
    """
    launcher = _launcher()
    if launcher is not None and launcher.get("cpus_per_task"):
        return int(launcher.cpus_per_task)
    jobs = _local_jobs()
    return max(1, _cores() // jobs) if jobs > 1 else None


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


def _record_outcome(run: str, status: str, error: str | None) -> None:
    """Best effort: an unwritable runs folder cannot take the record either, and the
    table then counts the unfinished run as failed anyway."""
    from bnlab.store import atomic_write_text

    try:
        hydra = HydraConfig.get()
        folder = Path(hydra.sweep.dir) / OUTCOMES_DIR
        folder.mkdir(exist_ok=True)
        record = {"run": run, "status": status, "error": error}
        atomic_write_text(folder / f"{hydra.job.num}.json", json.dumps(record) + "\n")
    except (OSError, ValueError):  # ValueError: not inside Hydra
        pass


def run_job(cfg: DictConfig) -> str:
    watch_sweep()
    from bnlab.store import run_name

    label = run_name(cfg)
    status, error = _train(cfg, LineReporter(label))
    _record_outcome(label, status, error)
    return status


def _train(cfg: DictConfig, reporter: LineReporter) -> tuple[str, str | None]:
    """Train the job's run: (its status, the one-line error of a failure)."""
    from bnlab.recipe import RunFailed, train
    from bnlab.train.runtime import share_gpu

    OmegaConf.resolve(cfg)
    threads = _threads_per_job()
    # joblib's n_jobs processes share this machine's one GPU: each gets its share
    # of the GPU memory (applied only if the run uses CUDA).
    share_gpu(_local_jobs())
    if cfg.train.threads is None and threads is not None:
        # Processes sharing the cores must not each start a thread per core.
        with open_dict(cfg):
            cfg.train.threads = threads
    try:
        outcome = train(cfg, reporter)
    except RunFailed as err:
        reporter.line(f"failed: {err}")
        return "failed", first_line(err)
    except BnlabError as err:
        reporter.line(f"error: {err}")
        return "failed", first_line(err)
    except Exception as err:  # a crash before the run started: still not the sweep's end
        reporter.line(f"crashed: {type(err).__name__}: {err}")
        return "failed", f"{type(err).__name__}: {first_line(err)}"
    s = outcome.summary or {}
    acc = s.get("test_acc")
    reporter.line(f"{outcome.status}" + (f": test acc {100 * acc:.2f}%" if acc is not None else ""))
    sys.stdout.flush()
    return outcome.status, None
