"""Synthetic run folders for the current rules: BN against arms that train, with seeds.

`arm_runs` writes one grid point of one arm at several seeds, with a fixed, known
seed spread (offsets SPREAD, so every point's SD is 0.004 and its 95% interval is
about +-1 pp at 3 seeds). `make_arms_store` writes every experiment of the current
suite with effects chosen so that each rule's expected verdict is known.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.report_synth import (
    activation_rows,
    ics_rows,
    make_run,
    write_probe_rows,
)

SEEDS = (0, 1, 2)
SPREAD = (-0.004, 0.0, 0.004)  # per-seed offsets: SD 0.004
ARM_CONFIG: dict[str, tuple[str, dict[str, Any]]] = {  # arm -> (norm, config)
    "bn": ("bn", {}),
    "fixup": ("none", {"model.init": "fixup"}),
    "skipinit": ("none", {"model.init": "skipinit"}),
    "none": ("none", {}),
    "gn": ("gn", {}),
    "ln": ("ln", {}),
}


def arm_runs(
    runs: Path,
    arm: str,
    acc: float | None,
    seeds: tuple[int, ...] = SEEDS,
    train_acc: float | None = None,
    probes: list[tuple] | None = None,
    summary_extra: Any = None,
    speed: float = 0.6,
    **config: Any,
) -> list[Path]:
    """One grid point of `arm` (None: every seed diverges); returns the run folders."""
    norm, base = ARM_CONFIG.get(arm, (arm, {}))
    out = []
    for i, seed in enumerate(seeds):
        noise = SPREAD[i % len(SPREAD)]
        cfg = {**base, **config, "train.seed": seed}
        if acc is None:
            kw: dict[str, Any] = {"status": "diverged", "diverged_epoch": 1}
        else:
            kw = {
                "final": acc + noise,
                "train_acc": None if train_acc is None else train_acc + noise,
            }
        extra = summary_extra(i) if callable(summary_extra) else summary_extra
        run = make_run(runs, norm=norm, config=cfg, speed=speed, summary_extra=extra, **kw)
        if probes is not None:
            write_probe_rows(run, probes)
        out.append(run)
    return out


# ----------------------------------------------------------------------------- the suite

# arm -> lr -> final test accuracy (None: diverges). BN trains up to 1.0, Fixup and
# SkipInit up to 0.3 (factor 3.3: SUPPORTED), the He-init net never reaches 25%.
LR_ACC = {
    "bn": {0.03: 0.66, 0.1: 0.72, 0.3: 0.71, 1.0: 0.69, 3.0: None},
    "fixup": {0.03: 0.60, 0.1: 0.64, 0.3: 0.63, 1.0: None, 3.0: None},
    "skipinit": {0.03: 0.59, 0.1: 0.63, 0.3: 0.62, 1.0: None, 3.0: None},
    "none": {0.03: 0.18, 0.1: None, 0.3: None, 1.0: None, 3.0: None},
}
# (arm, residual) -> depth -> acc at lr 0.1. Fixup loses less with depth than BN
# (NOT SUPPORTED vs Fixup), SkipInit much more (SUPPORTED).
DEPTH_ACC = {
    ("bn", True): {20: 0.72, 56: 0.70},
    ("fixup", True): {20: 0.64, 56: 0.63},
    ("skipinit", True): {20: 0.63, 56: 0.50},
    ("none", True): {20: None, 56: None},
    ("bn", False): {20: 0.70, 56: 0.55},
    ("none", False): {20: 0.12, 56: 0.10},
}
INIT_ACC = {  # arm -> scale -> acc at lr 0.1
    "bn": {0.1: 0.71, 1.0: 0.72, 10.0: 0.70},
    "fixup": {0.1: 0.55, 1.0: 0.64, 10.0: 0.40},
    "skipinit": {0.1: 0.62, 1.0: 0.63, 10.0: 0.615},
}
REG = {  # arm -> (final train acc, final test acc), no augmentation
    "bn": (0.92, 0.70),
    "fixup": (0.80, 0.57),
}
STAT_ACC = {  # statistics batch experiment: arm -> acc (batch 128, lr 0.1)
    "bn": 0.72,
    "ghost_bn/32": 0.72,
    "ghost_bn/8": 0.71,
    "ghost_bn/2": 0.60,
    "gn": 0.66,
    "ln": 0.64,
}
# bn_modes per statistics batch g: (running, precise, test-group stats, train mode)
MODES = {
    128: (0.72, 0.72, 0.71, 0.80),
    32: (0.72, 0.72, 0.70, 0.80),
    8: (0.71, 0.715, 0.66, 0.79),
    2: (0.60, 0.66, 0.45, 0.70),
}
WU_HE = {"bn": {2: 0.50, 8: 0.66, 128: 0.72}, "gn": {2: 0.64, 8: 0.65, 128: 0.66}}
# ICS: arm -> (train acc, activation shift per probe interval)
ICS = {
    "bn": (0.72, 0.10),
    "fixup": (0.60, 0.30),
    "bn_noisy/m0.25": (0.71, 0.20),
    "bn_noisy/m0.5": (0.70, 0.35),
    "bn_noisy/m1": (0.55, 0.60),
}
# landscape: arm -> (loss variation, gradient change, beta) at every probed step
LANDSCAPE = {"bn": (0.05, 0.5, 4.0), "fixup": (0.30, 2.0, 20.0), "skipinit": (0.055, 0.52, 4.1)}


def noisy_config(m: float) -> dict[str, Any]:
    return {"norm.noise_mean": 0.5 * m, "norm.noise_scale": m, "norm.noise_jitter": 0.25 * m}


def landscape_probe_rows(variation: float, change: float, beta: float) -> list[tuple]:
    """The landscape probe every 20 steps, the batch loss (loss@0) falling 2.3 -> 1.3."""
    rows = []
    for s in range(0, 200, 20):
        e = 1 + s // 39
        loss = 2.3 - s / 200
        rows += [
            (e, s, "landscape", "all", "loss@0", loss),
            (e, s, "landscape", "all", "loss_variation", variation),
            (e, s, "landscape", "all", "grad_change_max", change),
            (e, s, "landscape", "all", "beta_smoothness", beta),
        ]
    return rows


def _lr_speed(arm: str) -> float:
    """How fast the lr grid's curves rise (BN converges faster), shared by its probe twins."""
    return 0.9 if arm == "bn" else 0.45


def make_arms_store(runs: Path, seeds: tuple[int, ...] = SEEDS) -> Path:
    """Every experiment of the current suite, with known verdicts (see the tables above)."""
    probed = {"probe.activations": True}
    for arm, accs in LR_ACC.items():
        for lr, acc in accs.items():
            arm_runs(runs, arm, acc, seeds, speed=_lr_speed(arm), **{"optim.lr": lr})
    for (arm, residual), accs in DEPTH_ACC.items():
        for depth, acc in accs.items():
            if depth == 20 and residual:
                continue  # the lr grid's lr 0.1 points
            arm_runs(runs, arm, acc, seeds, **{"model.depth": depth, "model.residual": residual})
    for arm, accs in INIT_ACC.items():
        for scale, acc in accs.items():
            if scale != 1.0:
                arm_runs(runs, arm, acc, seeds, **{"model.init_scale": scale})
    for arm, (train, test) in REG.items():
        arm_runs(runs, arm, test, seeds, train_acc=train, **{"data.augment": False})
    for arm, acc in STAT_ACC.items():
        g = int(arm.split("/")[1]) if "/" in arm else 128
        cfg: dict[str, Any] = {"probe.bn_eval_batch_sizes": [2, 8, 128]}
        if arm.startswith("ghost_bn"):
            cfg["norm.virtual_batch"] = g
        extra = None
        if arm in ("bn",) or arm.startswith("ghost_bn"):
            cfg["probe.bn_modes"] = True
            run_acc, precise, groups, train_mode = MODES[g]
            extra = {
                "bn_modes": {
                    "g": g,
                    "running_acc": run_acc,
                    "precise_acc": precise,
                    "batch_stats_acc": groups,
                    "train_mode_acc": train_mode,
                    "train_mode_loss": 1.0,
                },
                "bn_eval": {
                    "running_stats_acc": run_acc,
                    "batch_stats_acc": {"2": run_acc - 0.2, "8": run_acc - 0.05, "128": run_acc},
                },
            }
        name = arm.split("/")[0]
        arm_runs(runs, name, acc, seeds, summary_extra=extra, **cfg)
    for norm, accs in WU_HE.items():
        for batch, acc in accs.items():
            if batch != 128:
                arm_runs(
                    runs,
                    norm,
                    acc,
                    (0,),
                    **{"data.batch_size": batch, "optim.lr": 0.1 * batch / 128},
                )
    for arm, (train, shift) in ICS.items():
        name = arm.split("/")[0]
        cfg = dict(probed)
        if "/m" in arm:
            cfg |= noisy_config(float(arm.split("/m")[1]))
        # BN's and Fixup's ICS runs are probe twins of the lr grid's lr 0.1 runs (the
        # same training, plus the activations probe): the same test accuracy and curve,
        # as real twins have. Otherwise which twin the report keeps (the first by folder name,
        # i.e. by config hash) would change the lr, depth and seed-noise numbers.
        twin = "/m" not in arm
        arm_runs(
            runs,
            name,
            LR_ACC[name][0.1] if twin else train,
            seeds,
            speed=_lr_speed(name) if twin else 0.6,
            train_acc=train,
            probes=activation_rows(shift) + ics_rows(shift),
            **cfg,
        )
    for arm, values in LANDSCAPE.items():
        cfg = {"probe.landscape": True, "probe.landscape_steps": [0.0, 0.5, 1.0, 2.0, 4.0]}
        arm_runs(
            runs,
            arm,
            LR_ACC[arm][0.1],  # probe twins of the lr grid's lr 0.1 runs, as in ICS
            seeds,
            speed=_lr_speed(arm),
            probes=landscape_probe_rows(*values),
            **cfg,
        )
    return runs
