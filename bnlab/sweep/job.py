"""What one Hydra multirun job does: train one run, and never let it stop the sweep.

Hydra's sweeper re-raises a job's exception and aborts the rest of the grid, so
every failure is caught here and returned as a status; the run's own
summary.json (status: failed) is the record. Only an interrupt propagates.
"""

from __future__ import annotations

import os
import sys

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from bnlab.config import register_configs
from bnlab.errors import BnlabError
from bnlab.progress import LineReporter

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


def run_job(cfg: DictConfig) -> str:
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
    from bnlab.store import run_name

    label = run_name(cfg)
    reporter = LineReporter(label)
    try:
        outcome = train(cfg, reporter)
    except RunFailed as err:
        reporter.line(f"failed: {err}")
        return "failed"
    except BnlabError as err:
        reporter.line(f"error: {err}")
        return "failed"
    except Exception as err:  # a crash before the run started: still not the sweep's end
        reporter.line(f"crashed: {type(err).__name__}: {err}")
        return "failed"
    s = outcome.summary or {}
    acc = s.get("test_acc")
    reporter.line(f"{outcome.status}" + (f": test acc {100 * acc:.2f}%" if acc is not None else ""))
    sys.stdout.flush()
    return outcome.status
