"""The learning-rate schedule, a pure function of the step (nothing to checkpoint), and
the one function that writes an optimizer's lr.

``Schedule`` is the schedule's shape: the factor that multiplies the base lr at each
optimizer step. Milestones and peaks are fractions of training, so a preset that
shortens training keeps the shape (the science) unchanged. The base lr is stated once,
in ``bnlab.train.spec.OptimSpec.lr``; ``TrainSpec.lr_at`` is their product, which
``set_lr`` puts on the optimizer before every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("multistep", "cosine", "onecycle", "constant")


@dataclass(frozen=True)
class Schedule:
    """The lr multiplier at each optimizer step of a run of ``total_steps`` steps.

    A linear warm-up from 0 over ``warmup_steps`` steps comes first, then ``kind``:
    ``constant``; ``multistep`` (x ``gamma`` at each milestone, a fraction of
    training; He et al. 2016: /10 at 32k and 48k of 64k iterations, 50% and 75%);
    ``cosine`` (to 0 at the end); ``onecycle`` (linear up from 0.1 to 1 at
    ``peak_at``, then linear down to 0 at the end).
    """

    kind: str
    total_steps: int
    warmup_steps: int = 0
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    peak_at: float = 0.25

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.kind!r}; known: {', '.join(SCHEDULES)}")

    def factor(self, step: int) -> float:
        """The lr multiplier at `step` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = step / max(1, self.total_steps)
        if self.kind == "constant":
            return 1.0
        if self.kind == "multistep":
            passed = sum(progress >= m for m in self.milestones)
            return self.gamma**passed
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        # onecycle
        if progress < self.peak_at:
            return 0.1 + 0.9 * progress / self.peak_at
        return max(0.0, (1.0 - progress) / (1.0 - self.peak_at))


def warmup_steps(warmup_epochs: float, steps_per_epoch: int) -> int:
    """Warm-up epochs (a float: optim.warmup_epochs) as whole optimizer steps."""
    return int(round(warmup_epochs * steps_per_epoch))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every param group's lr = ``lr`` x its ``lr_scale`` (Fixup's scalar group: its factor).

    The one place an optimizer's lr is written: by ``build_optimizer`` (the base lr)
    and by the loop before each step (the schedule's lr). ``lr_scale`` defaults to 1:
    a checkpoint saved before groups carried it loads groups without the key, and a
    run resumed from one trains every group at the schedule's lr, as it did then.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
