"""The narrow training spec (bnlab.train.spec): training never reads the config, the lr
is stated once, and the schedule-driven optimizer sees the lrs it saw before, bit for bit."""

from __future__ import annotations

import ast
import math
import typing
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from bnlab.build import build_model
from bnlab.compose import load_config
from bnlab.config import OptimConfig
from bnlab.data import DeviceLoader
from bnlab.pack import lr_table
from bnlab.recipe import train_spec
from bnlab.report.select import STANDARD
from bnlab.train.fit import Loaders, build_optimizer, fit
from bnlab.train.loop import DivergenceGuard, SilentReporter, train_epoch
from bnlab.train.runtime import Runtime, resolve_runtime
from bnlab.train.schedule import Schedule, set_lr
from bnlab.train.spec import OptimSpec, TrainSpec

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "bnlab" / "train"
CONFIG_MODULES = ("bnlab.config", "bnlab.compose", "omegaconf", "hydra")


# Tiny tensors: one torch thread for every test here (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- no config


def _train_modules() -> list[Path]:
    return sorted(TRAIN.glob("*.py"))


@pytest.mark.parametrize("path", _train_modules(), ids=lambda p: p.name)
def test_no_train_module_imports_or_reads_the_config(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            names = []
        for name in names:
            assert not name.startswith(CONFIG_MODULES), f"{path.name} imports {name}"
        # No `cfg` anywhere: not a parameter, a variable or an attribute.
        if isinstance(node, ast.arg | ast.Name | ast.Attribute):
            ident = {ast.arg: "arg", ast.Name: "id", ast.Attribute: "attr"}[type(node)]
            assert getattr(node, ident) != "cfg", f"{path.name}:{node.lineno} reads cfg"


def test_fit_and_the_loop_take_the_spec_and_plain_values() -> None:
    fit_hints = typing.get_type_hints(fit)
    assert fit_hints["spec"] is TrainSpec and fit_hints["loaders"] is Loaders
    loop_hints = typing.get_type_hints(train_epoch)
    assert loop_hints["rt"] is Runtime
    # The schedule is a plain step -> lr function (TrainSpec.lr_at).
    assert loop_hints["lr_at"] == Callable[[int], float]
    for hints in (fit_hints, loop_hints):
        assert not any("cfg" in name or "config" in name for name in hints)
        assert not any(hint is Any for hint in hints.values())


# ----------------------------------------------------------------------------- lr once


def test_the_default_lr_is_stated_once() -> None:
    sgd = yaml.safe_load((REPO / "conf" / "optim" / "sgd.yaml").read_text())
    assert "lr" not in sgd  # the schema's default (bnlab.config.OptimConfig) only
    assert load_config([]).optim.lr == OptimConfig.lr == STANDARD["optim.lr"] == 0.1


def _old_lr_factor(step: int, total_steps: int, steps_per_epoch: int, optim: Any) -> float:
    """bnlab.train.schedule.lr_factor as it was before the spec (commit bbbe93e), verbatim."""
    warmup = int(round(optim.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    progress = step / max(1, total_steps)
    if optim.schedule == "constant":
        return 1.0
    if optim.schedule == "multistep":
        passed = sum(progress >= m for m in optim.milestones)
        return optim.gamma**passed
    if optim.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if optim.schedule == "onecycle":
        if progress < optim.peak_at:
            return 0.1 + 0.9 * progress / optim.peak_at
        return max(0.0, (1.0 - progress) / (1.0 - optim.peak_at))
    raise ValueError(optim.schedule)


SCHEDULES = {
    "multistep": ["optim.schedule=multistep"],
    "multistep-gamma": [
        "optim.schedule=multistep",
        "optim.milestones=[0.3,0.6,0.9]",
        "optim.gamma=0.3",
        "optim.lr=0.37",
    ],
    "cosine": ["optim.schedule=cosine", "optim.lr=0.3"],
    "onecycle": ["optim.schedule=onecycle", "optim.peak_at=0.3"],
    "constant": ["optim.schedule=constant", "optim.lr=0.7"],
    "warmup-cosine": ["optim.schedule=cosine", "optim.warmup_epochs=1.5"],
    "warmup-multistep": ["optim.schedule=multistep", "optim.warmup_epochs=0.3"],
    "fixup-onecycle": ["arm=fixup", "optim.schedule=onecycle", "optim.warmup_epochs=0.5"],
    "fixup-constant": [
        "arm=fixup",
        "optim.schedule=constant",
        "optim.fixup_scalar_lr=0.3",
        "optim.lr=0.13",
    ],
}


@pytest.mark.parametrize("overrides", list(SCHEDULES.values()), ids=list(SCHEDULES))
def test_the_optimizer_sees_the_same_lr_each_step_as_before(overrides: list[str]) -> None:
    cfg = load_config(["model.depth=8", "model.width=4", "train.epochs=3", "train.device=cpu",
                       "train.channels_last=false", *overrides])  # fmt: skip
    x = torch.randint(0, 256, (28, 8, 8, 3), dtype=torch.uint8)
    loader = DeviceLoader(x, torch.arange(28) % 10, 4, train=True, augment=False,
                          mean=(0.5,) * 3, std=(0.25,) * 3)  # fmt: skip
    rt = resolve_runtime(cfg.train)
    spec = train_spec(cfg, rt, steps_per_epoch=len(loader))
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.norm)
    optimizer = build_optimizer(model, spec.optim, spec.only_bn, spec.init)
    seen: list[tuple[int, float, list[tuple[float, float]]]] = []

    def record(step: int, _x: Any, _y: Any, lr: float) -> None:
        seen.append((step, lr, [(g["lr_scale"], g["lr"]) for g in optimizer.param_groups]))

    step = 0
    for epoch in range(spec.epochs):
        stats = train_epoch(model, loader, epoch, optimizer, spec.lr_at, step, rt,
                            DivergenceGuard(1e30), SilentReporter(), record)  # fmt: skip
        step += stats.steps
    # Before: lr = optim.lr x lr_factor(...), each group's lr = lr x its lr_scale.
    o, total = cfg.optim, spec.epochs * len(loader)
    scales = [1.0, o.fixup_scalar_lr] if cfg.model.init == "fixup" else [1.0]
    expected = []
    for t in range(total):
        lr = o.lr * _old_lr_factor(t, total, len(loader), o)
        expected.append((t, lr, [(s, lr * s) for s in scales]))
    assert seen == expected  # exact: the same floats, not approximately


def test_a_checkpoint_without_lr_scale_resumes_at_the_schedules_lr() -> None:
    # Runs checkpointed before param groups carried lr_scale load groups without it.
    model = torch.nn.Linear(3, 2)
    spec = OptimSpec(lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4)
    old = build_optimizer(model, spec).state_dict()
    for group in old["param_groups"]:
        del group["lr_scale"]
    optimizer = build_optimizer(model, spec)
    optimizer.load_state_dict(old)
    set_lr(optimizer, 0.25)
    assert [g["lr"] for g in optimizer.param_groups] == [0.25]


def test_a_fresh_optimizer_is_at_the_base_lr_times_each_groups_scale() -> None:
    cfg = load_config(["arm=fixup", "model.depth=8", "optim.lr=0.2"])
    model = build_model(cfg.model, cfg.norm)
    optimizer = build_optimizer(model, cfg.optim, init="fixup")  # an OptimConfig works too
    assert [(g["lr_scale"], g["lr"]) for g in optimizer.param_groups] == [
        (1.0, 0.2), (0.1, 0.2 * 0.1)
    ]  # fmt: skip


# ----------------------------------------------------------------------------- the spec


def _spec(*overrides: str, steps_per_epoch: int = 5) -> TrainSpec:
    cfg = load_config(["train.device=cpu", *overrides])
    return train_spec(cfg, resolve_runtime(cfg.train), steps_per_epoch)


def test_train_spec_holds_what_training_uses() -> None:
    spec = _spec(
        "arm=fixup", "train.epochs=3", "train.seed=7", "optim.lr=0.3", "optim.weight_decay=5e-4",
        "optim.schedule=cosine", "optim.warmup_epochs=0.5", "train.divergence_factor=4",
        "probe.ics=true", "probe.steps=[0,2]", "probe.bn_eval_batch_sizes=[8]",
        "data.eval_batch_size=64",
    )  # fmt: skip
    assert (spec.epochs, spec.steps_per_epoch, spec.seed) == (3, 5, 7)
    assert spec.optim == OptimSpec(0.3, 0.9, False, 5e-4, fixup_scalar_lr=0.1)
    assert spec.schedule == Schedule("cosine", 15, 2, (0.5, 0.75), 0.1, 0.25)
    assert (spec.init, spec.only_bn, spec.divergence_factor) == ("fixup", False, 4.0)
    assert spec.probes.enabled and spec.probes.ics and spec.probes.steps == (0, 2)
    assert spec.evals.bn_eval_batch_sizes == (8,) and spec.evals.batch_size == 64
    assert spec.runtime.device.type == "cpu"
    assert spec.lr_at(0) == 0.3 * 1 / 2 and spec.lr_at(2) == 0.3 * spec.schedule.factor(2)
    with pytest.raises(ValueError, match="schedule of 15 steps for 3 epochs x 4 steps"):
        replace(spec, steps_per_epoch=4)


def test_no_probes_means_none_enabled() -> None:
    assert not _spec().probes.enabled


def test_pack_members_share_all_but_their_own_fields() -> None:
    solo = _spec("optim.schedule=cosine")
    members = [
        replace(solo, seed=k, optim=replace(solo.optim, lr=lr, weight_decay=wd))
        for k, (lr, wd) in enumerate([(0.05, 0.0), (0.1, 5e-4), (0.2, 1e-3)])
    ]
    assert all(m.packs_with(solo) for m in members)
    assert not replace(solo, epochs=solo.epochs + 1, schedule=replace(
        solo.schedule, total_steps=solo.schedule.total_steps + 5)).packs_with(solo)  # fmt: skip
    assert not replace(solo, optim=replace(solo.optim, nesterov=True)).packs_with(solo)
    # Each member's row of the pack's lr table is its own solo schedule, exactly.
    steps = solo.schedule.total_steps
    table = lr_table([m.lr_at for m in members], steps)
    for k, member in enumerate(members):
        assert table[:, k].tolist() == [member.lr_at(t) for t in range(steps)]
