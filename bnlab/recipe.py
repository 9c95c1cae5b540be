"""One training run, read top to bottom: config -> data -> spec -> model -> fit -> summary.

The recipe is the one reader of the config on a run's path: ``train_spec`` turns
it into the narrow ``TrainSpec`` that training runs from. Everything that can be
wrong with the input is checked before the run directory is created, so bad input
never leaves a file behind.
"""

from __future__ import annotations

import os
import platform
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from bnlab import __version__
from bnlab.build import build_model
from bnlab.config import validate
from bnlab.data import DeviceLoader, load_dataset
from bnlab.data.load import curve_subset
from bnlab.errors import BnlabError
from bnlab.models import count_params
from bnlab.sinks import make_sink
from bnlab.store import RunBusy, RunStore, check_writable, git_commit, run_id
from bnlab.train.bn_modes import BN_MODE_KINDS, bn_modes
from bnlab.train.fit import FitResult, Loaders, fit
from bnlab.train.loop import Reporter, SilentReporter
from bnlab.train.probes import bn_eval
from bnlab.train.runtime import Runtime, resolve_runtime
from bnlab.train.schedule import Schedule, warmup_steps
from bnlab.train.spec import EvalSpec, OptimSpec, ProbeSpec, TrainSpec


@dataclass
class RunOutcome:
    status: str  # completed | diverged | failed | done (finished before) | busy (locked elsewhere)
    run_dir: Path
    summary: dict[str, Any] | None
    resumed_from: int = 0


class RunFailed(Exception):
    """The run crashed; its summary.json says so and rerunning resumes it."""

    def __init__(self, outcome: RunOutcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


def train_spec(cfg: DictConfig, runtime: Runtime, steps_per_epoch: int) -> TrainSpec:
    """What training uses of a validated config: the one place it is read for training.

    ``runtime`` is ``resolve_runtime(cfg.train)`` (resolved first: the loaders need
    its device) and ``steps_per_epoch`` the training loader's length (known once the
    data is loaded): the schedule's shape is fixed here, once.
    """
    o, t, p, d = cfg.optim, cfg.train, cfg.probe, cfg.data
    return TrainSpec(
        epochs=t.epochs,
        steps_per_epoch=steps_per_epoch,
        seed=t.seed,
        optim=OptimSpec(
            lr=o.lr,
            momentum=o.momentum,
            nesterov=o.nesterov,
            weight_decay=o.weight_decay,
            fixup_scalar_lr=o.fixup_scalar_lr,
        ),
        schedule=build_schedule(o, t.epochs, steps_per_epoch),
        only_bn=t.only_bn,
        init=cfg.model.init,
        divergence_factor=t.divergence_factor,
        runtime=runtime,
        probes=ProbeSpec(
            bn_stats=p.bn_stats,
            activations=p.activations,
            ics=p.ics,
            landscape=p.landscape,
            steps=tuple(p.steps),
            landscape_steps=tuple(p.landscape_steps),
        ),
        evals=EvalSpec(
            batch_size=d.eval_batch_size,
            train_batch_size=d.batch_size,
            augment=d.augment,
            bn_eval_batch_sizes=tuple(p.bn_eval_batch_sizes),
            bn_modes=p.bn_modes and cfg.norm.kind in BN_MODE_KINDS,
        ),
    )


def build_schedule(optim: Any, epochs: int, steps_per_epoch: int) -> Schedule:
    """The schedule's shape from the optim config (``train_spec``'s; tests that build an
    optimizer from an ``OptimConfig`` alone use it too)."""
    return Schedule(
        kind=optim.schedule,
        total_steps=epochs * steps_per_epoch,
        warmup_steps=warmup_steps(optim.warmup_epochs, steps_per_epoch),
        milestones=tuple(optim.milestones),
        gamma=optim.gamma,
        peak_at=optim.peak_at,
    )


def train(cfg: DictConfig, reporter: Reporter | None = None) -> RunOutcome:
    reporter = reporter or SilentReporter()
    validate(cfg)
    rt = resolve_runtime(cfg.train)
    store = RunStore(cfg.paths.runs)
    run = store.run_dir(cfg)
    if run.is_finished():
        return RunOutcome("done", run.path, run.summary())
    check_writable(store.root)

    data = load_dataset(cfg.data)  # missing or corrupt data fails here, before any write
    # The per-epoch curves' test images (data.curve_test_size); None: the whole test set.
    curve = curve_subset(data, cfg.data)
    curve_x, curve_y = curve if curve is not None else (data.test_x, data.test_y)
    train_loader = DeviceLoader(
        data.train_x, data.train_y, cfg.data.batch_size, train=True, augment=cfg.data.augment,
        mean=data.mean, std=data.std, device=rt.device, seed=cfg.train.seed,
        channels_last=rt.channels_last,
    )  # fmt: skip
    test_loader = DeviceLoader(
        data.test_x, data.test_y, cfg.data.eval_batch_size, train=False, augment=False,
        mean=data.mean, std=data.std, device=rt.device, channels_last=rt.channels_last,
    )  # fmt: skip
    curve_loader = None
    if curve is not None:
        curve_loader = DeviceLoader(
            curve_x, curve_y, cfg.data.eval_batch_size, train=False, augment=False,
            mean=data.mean, std=data.std, device=rt.device, channels_last=rt.channels_last,
        )  # fmt: skip

    bn_stats_loader = None
    if cfg.probe.bn_stats:
        # Shuffled (the test set is stored class by class), at the training batch size,
        # on the curve's images (the running-statistics accuracy it compares with).
        bn_stats_loader = DeviceLoader(
            curve_x, curve_y, cfg.data.batch_size, train=True, augment=False,
            mean=data.mean, std=data.std, device=rt.device, seed=cfg.train.seed,
            channels_last=rt.channels_last,
        )  # fmt: skip

    spec = train_spec(cfg, rt, steps_per_epoch=len(train_loader))
    loaders = Loaders(train_loader, test_loader, curve_loader, bn_stats_loader)

    torch.manual_seed(spec.seed)  # build_model initialises the weights from this seed
    model = build_model(
        cfg.model, cfg.norm, num_classes=len(data.classes), in_channels=data.train_x.shape[-1]
    )
    model = model.to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)

    summary: dict[str, Any] = {
        "run_id": run_id(cfg),
        "dataset": data.variant,
        "train_images": int(data.train_x.shape[0]),
        "test_images": int(data.test_x.shape[0]),
        "curve_test_images": int(curve_x.shape[0]),  # per-epoch rows but the last
        "params": count_params(model),
        "device": rt.describe(),
        "host": platform.node(),
        "pid": os.getpid(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "bnlab_version": __version__,
        "git_commit": git_commit(),
        "preset": cfg.preset_name,
    }
    try:
        with run.lock():
            run.clear_summary()  # a previously failed run is running again
            run.write_config(cfg)
            sink = make_sink(cfg, run.path, summary["run_id"])
            started = time.perf_counter()
            try:
                result = fit(model, spec, loaders, run, reporter, sink.log_epoch)
            except (KeyboardInterrupt, SystemExit):
                raise  # interrupted: the checkpoint stays, rerunning resumes
            except BnlabError:
                # Bad input found late (e.g. a checkpoint that would run code) or a write
                # the folder refused (StoreWriteError): exit 2, the files written so far kept.
                raise
            except Exception as err:
                summary |= {
                    "status": "failed",
                    "error": f"{type(err).__name__}: {err}",
                    "traceback": traceback.format_exc(),
                    "wall_s": time.perf_counter() - started,
                }
                run.write_summary(summary)
                sink.finish(summary)
                outcome = RunOutcome("failed", run.path, summary)
                raise RunFailed(outcome, summary["error"]) from err
            summary |= result_summary(result, spec.epochs)
            summary |= final_measurements(model, data, spec, result.status, result.rows)
            run.write_summary(summary)
            sink.finish(summary)
    except RunBusy:
        return RunOutcome("busy", run.path, None)
    return RunOutcome(result.status, run.path, summary, result.resumed_from)


def result_summary(result: FitResult, epochs_planned: int) -> dict[str, Any]:
    """summary.json's outcome fields for a finished fit (a solo run's or a pack member's)."""
    rows = result.rows
    return {
        "status": result.status,
        "epochs": len(rows),
        "epochs_planned": epochs_planned,
        "diverged_epoch": result.diverged_epoch,
        "test_acc": rows[-1]["test_acc"] if rows else None,
        "best_test_acc": max(r["test_acc"] for r in rows) if rows else None,
        "train_acc": rows[-1]["train_acc"] if rows else None,
        "train_loss": rows[-1]["train_loss"] if rows else None,
        "test_loss": rows[-1]["test_loss"] if rows else None,
        "train_s": result.train_seconds,
        "wall_s": sum(r["time_s"] for r in rows),
        "images_per_s": _mean([r["images_per_s"] for r in rows]),
        "resumed_from_epoch": result.resumed_from,
    }


def final_measurements(
    model: torch.nn.Module, data: Any, spec: TrainSpec, status: str, rows: list[dict[str, float]]
) -> dict[str, Any]:
    """The end-of-run BN measurements the spec asks for (bn_eval, bn_modes), on `model` in
    its final state; none for a diverged run."""
    out: dict[str, Any] = {}
    if status != "completed":
        return out
    sizes = list(spec.evals.bn_eval_batch_sizes)
    if sizes:
        out["bn_eval"] = bn_eval(
            model, data.test_x, data.test_y, sizes, data.mean, data.std, spec.runtime,
            spec.seed, running_acc=rows[-1]["test_acc"],
        )  # fmt: skip
    if spec.evals.bn_modes:
        out["bn_modes"] = bn_modes(model, data, spec, rows[-1]["test_acc"])
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
