"""Learning-rate schedules as pure functions of the step: nothing to checkpoint.

Each returns the factor that multiplies ``optim.lr`` at a given optimizer step.
Milestones and peaks are fractions of training, so a preset that shortens
training keeps the shape of the schedule (the science) unchanged.
"""

from __future__ import annotations

import math
from typing import Any


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, optim: Any) -> float:
    """The lr multiplier at `step` (0-based) of `total_steps`."""
    warmup = int(round(optim.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    progress = step / max(1, total_steps)
    if optim.schedule == "constant":
        return 1.0
    if optim.schedule == "multistep":
        # He et al. 2016: divide by 10 at 32k and 48k of 64k iterations (50% and 75%).
        passed = sum(progress >= m for m in optim.milestones)
        return optim.gamma**passed
    if optim.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if optim.schedule == "onecycle":
        # Linear up from lr/10 to lr at `peak_at`, then linear down to 0 at the end.
        if progress < optim.peak_at:
            return 0.1 + 0.9 * progress / optim.peak_at
        return max(0.0, (1.0 - progress) / (1.0 - optim.peak_at))
    raise ValueError(f"unknown schedule {optim.schedule!r}")
