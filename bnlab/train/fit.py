"""Epochs, checkpoints and resumption around the hot loop.

``fit`` gets the model, its loaders and a ``TrainSpec`` (``bnlab.train.spec``, built
once from the config by the recipe): it never sees the config.

The checkpoint is the source of truth: it is written first each epoch (atomic)
and carries the metric rows so far; metrics.csv is then rewritten from it. A
run killed between the two is repaired on resume.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from bnlab.data import DeviceLoader
from bnlab.models.norms import norm_affine_parameters
from bnlab.store import RunDir
from bnlab.train.loop import DivergenceGuard, Reporter, evaluate, train_epoch
from bnlab.train.probes import EpochProbes, write_probes
from bnlab.train.runtime import compile_model
from bnlab.train.schedule import set_lr
from bnlab.train.spec import OptimSpec, TrainSpec


@dataclass
class FitResult:
    status: str  # completed | diverged
    rows: list[dict[str, float]]
    diverged_epoch: int | None
    resumed_from: int  # epochs already done when this call started
    train_seconds: float  # cumulative over all calls


@dataclass(frozen=True)
class Loaders:
    """A run's batches: training, the final evaluation, and the optional extras.

    ``curve`` (data.curve_test_size) holds the test images of every epoch's evaluation
    but the last one (or a diverged one), which always uses the whole ``test``; None:
    ``test`` every epoch. ``bn_stats`` (shuffled batches at data.batch_size of the
    curve's images) is needed by probe.bn_stats only.
    """

    train: DeviceLoader
    test: DeviceLoader
    curve: DeviceLoader | None = None
    bn_stats: DeviceLoader | None = None


def build_optimizer(
    model: nn.Module, optim: OptimSpec, only_bn: bool = False, init: str = "kaiming"
) -> torch.optim.Optimizer:
    """SGD over every parameter, or (``only_bn``) only the norm layers' gamma/beta, at
    the base lr ``optim.lr``.

    He et al. apply weight decay to every parameter, BN's gamma/beta included.
    With only_bn (Frankle et al. 2020) the other parameters stay at their
    initial values simply because no optimizer updates them.

    Each param group carries ``lr_scale``, its lr relative to the schedule's
    (``bnlab.train.schedule.set_lr``, which the loop calls before every step). It is
    1, except with ``init="fixup"`` for the scalar biases and multipliers and the
    head's bias (every parameter named ``*bias*`` or ``scale``, as Zhang et al.'s
    reference code selects them): ``optim.fixup_scalar_lr``.
    """
    params = norm_affine_parameters(model) if only_bn else list(model.parameters())
    if not params:
        raise ValueError("train.only_bn=true but the model has no norm affine parameters")
    groups: list[dict[str, Any]] = [{"params": params, "lr_scale": 1.0}]
    if init == "fixup" and not only_bn:
        scalars = [
            p for n, p in model.named_parameters() if "bias" in n or n.rsplit(".")[-1] == "scale"
        ]
        ids = {id(p) for p in scalars}
        groups = [
            {"params": [p for p in params if id(p) not in ids], "lr_scale": 1.0},
            {"params": scalars, "lr_scale": float(optim.fixup_scalar_lr)},
        ]
    optimizer = torch.optim.SGD(
        groups,
        lr=optim.lr,
        momentum=optim.momentum,
        nesterov=optim.nesterov,
        weight_decay=optim.weight_decay,
    )
    set_lr(optimizer, optim.lr)  # each group at its own scale of the base lr
    return optimizer


def fit(
    model: nn.Module,
    spec: TrainSpec,
    loaders: Loaders,
    run: RunDir,
    reporter: Reporter,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> FitResult:
    """Train to spec.epochs (or divergence), resuming from the run's checkpoint.

    `on_epoch` receives each new metrics row after it is safely on disk (e.g. a
    wandb sink); rows from before a resume are not sent again. Each row's
    `test_images` says which test images it was evaluated on (``Loaders``).
    """
    if len(loaders.train) != spec.steps_per_epoch:
        raise ValueError(
            f"the training loader has {len(loaders.train)} batches an epoch, "
            f"the spec's schedule {spec.steps_per_epoch}"
        )
    rt, epochs, steps_per_epoch = spec.runtime, spec.epochs, spec.steps_per_epoch
    optimizer = build_optimizer(model, spec.optim, spec.only_bn, spec.init)
    guard = DivergenceGuard(spec.divergence_factor)
    probes: EpochProbes | None = None
    if spec.probes.enabled:
        trained_ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
        trained = {n for n, p in model.named_parameters() if id(p) in trained_ids}
        # Epoch 0's first batch: fixed (the loader is deterministic) and a real training input.
        fixed = next(iter(loaders.train.epoch(0))) if spec.probes.activations else None
        probes = EpochProbes(spec.probes, model, rt, trained, fixed, loaders.bn_stats)
    rows: list[dict[str, float]] = []
    start_epoch, step, elapsed = 0, 0, 0.0
    diverged_epoch: int | None = None
    state = run.load_checkpoint()
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and rt.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], rt.device)  # bn_noisy draws from it
        guard.initial_loss = state["initial_loss"]
        rows, start_epoch, step = state["rows"], state["epoch"], state["step"]
        elapsed, diverged_epoch = state["elapsed_s"], state["diverged_epoch"]
        run.write_metrics(rows)  # repair a CSV that lagged the checkpoint
        if probes is not None:
            # get: a checkpoint written before the probes existed has no probe rows.
            probes.rows = state.get("probe_rows", [])
            write_probes(run.path, probes.rows)  # likewise
    elif probes is not None:
        probes.at_init()
    resumed_from = start_epoch

    forward = compile_model(model, rt, lambda: next(iter(loaders.train.epoch(0))))
    # A run killed right after checkpointing its diverged epoch is already over.
    first_epoch = epochs if diverged_epoch is not None else start_epoch
    for epoch in range(first_epoch, epochs):
        epoch_start = time.perf_counter()
        reporter.epoch_start(epoch + 1, epochs, steps_per_epoch)
        # The probes label their rows with the (1-based) epoch being trained.
        before_step = partial(probes.before_step, epoch + 1) if probes is not None else None
        stats = train_epoch(
            forward, loaders.train, epoch, optimizer, spec.lr_at, step, rt, guard, reporter,
            before_step,
        )  # fmt: skip
        step += stats.steps
        curve = loaders.curve if loaders.curve is not None else loaders.test
        # The run's last row is its result (summary.json's test_acc): the whole test set.
        last = epoch + 1 == epochs or stats.diverged
        eval_loader = loaders.test if last else curve
        test_loss, test_acc = evaluate(forward, eval_loader, rt)
        if probes is not None:
            # bn_stats compares with batch statistics on the curve's images: its
            # running-statistics accuracy must be on those same images.
            same = eval_loader is curve or not spec.probes.bn_stats
            running_acc = test_acc if same else evaluate(forward, curve, rt)[1]
            probes.end_epoch(epoch + 1, step, running_acc)
        elapsed += stats.seconds
        row = {
            "epoch": epoch + 1,
            "train_loss": stats.train_loss,
            "train_acc": stats.train_acc,
            "test_loss": test_loss,
            "test_acc": test_acc,
            "test_images": eval_loader.num_images(),
            "lr": stats.lr,
            "time_s": time.perf_counter() - epoch_start,
            "images_per_s": stats.images / max(stats.seconds, 1e-9),
            "elapsed_s": elapsed,
        }
        rows.append(row)
        if stats.diverged:
            diverged_epoch = epoch + 1
        run.save_checkpoint(
            {
                "epoch": epoch + 1,
                "step": step,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(rt.device)
                if rt.device.type == "cuda"
                else None,
                "initial_loss": guard.initial_loss,
                "rows": rows,
                "elapsed_s": elapsed,
                "diverged_epoch": diverged_epoch,
                "probe_rows": probes.rows if probes is not None else [],
            }
        )
        run.write_metrics(rows)
        if probes is not None:
            write_probes(run.path, probes.rows)
        if on_epoch is not None:
            on_epoch(row)
        reporter.epoch_end(row)
        if stats.diverged:
            break

    status = "diverged" if diverged_epoch is not None else "completed"
    return FitResult(status, rows, diverged_epoch, resumed_from, elapsed)
