"""Synthetic run folders, written exactly as the trainer writes them, for the report tests.

`make_run` writes one run (config.yaml from the real composed config, metrics.csv
and summary.json through bnlab.store.RunDir). `make_realistic_store` writes a
whole CPU-scale claim suite with seeds and noise, shaped like real results.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from bnlab.compose import load_config
from bnlab.store import PROBE_COLUMNS, PROBES_FILE, RunDir, run_name

CHANCE = 0.1
DATASET = "CIFAR-10 (JPEG q75)"
_BASE: dict[tuple[str, str], DictConfig] = {}


def base_config(norm: str, preset: str) -> DictConfig:
    """Composing through Hydra costs ~0.1 s, so one composed config per (norm, preset)."""
    if (norm, preset) not in _BASE:
        _BASE[norm, preset] = load_config([f"norm={norm}", f"preset={preset}"])
    return copy.deepcopy(_BASE[norm, preset])


def make_run(
    runs: Path,
    *,
    norm: str = "bn",
    preset: str = "cpu",
    config: dict[str, Any] | None = None,
    final: float = 0.7,
    train_acc: float | None = None,
    status: str = "completed",
    diverged_epoch: int = 1,
    speed: float = 0.6,
    bn_eval: dict[str, Any] | None = None,
    summary: bool = True,
    summary_extra: dict[str, Any] | None = None,
    experiment: str | None = None,
) -> Path:
    """One run folder; `final` is the last test accuracy, `speed` how fast it gets there."""
    cfg = base_config(norm, preset)
    for key, value in (config or {}).items():
        OmegaConf.update(cfg, key, value)
    cfg.experiment_name = experiment
    run = RunDir(runs / run_name(cfg))
    if run.path.exists():  # the same config from another experiment: the run is shared
        return run.path
    run.path.mkdir(parents=True)
    run.write_config(cfg)
    epochs = int(cfg.train.epochs)
    train_final = final - 0.01 if train_acc is None else train_acc
    rows = _curve(epochs, final, train_final, speed, cfg.optim.lr)
    if status == "diverged":
        rows = rows[:diverged_epoch]
        rows[-1] |= {"train_loss": math.nan, "test_loss": math.nan, "test_acc": CHANCE}
    if status == "failed":
        rows = []
    run.write_metrics(rows)
    if not summary:
        return run.path
    images = cfg.data.train_size or 50_000
    record: dict[str, Any] = {
        "status": status,
        "run_id": run.path.name.rsplit("-", 1)[-1],
        "dataset": DATASET,
        "train_images": images,
        "test_images": 10_000,
        "params": 272_474,
        "device": "cpu (2 threads, fp32)",
        "host": "synthetic",
        "torch": "2.13.0",
        "bnlab_version": "0.1.0",
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "preset": cfg.preset_name,
    }
    if status == "failed":
        record |= {"error": "RuntimeError: out of memory", "traceback": "Traceback ...\n"}
    else:
        record |= {
            "epochs": len(rows),
            "epochs_planned": epochs,
            "diverged_epoch": diverged_epoch if status == "diverged" else None,
            "test_acc": rows[-1]["test_acc"],
            "best_test_acc": max(r["test_acc"] for r in rows),
            "train_acc": rows[-1]["train_acc"],
            "train_loss": rows[-1]["train_loss"],
            "test_loss": rows[-1]["test_loss"],
            "train_s": 30.0 * len(rows),
            "wall_s": 31.0 * len(rows),
            "images_per_s": 350.0,
            "resumed_from_epoch": 0,
        }
    if bn_eval is not None:
        record["bn_eval"] = bn_eval
    run.write_summary(record | (summary_extra or {}))
    return run.path


def _curve(epochs: int, final: float, train_final: float, speed: float, lr: float) -> list[dict]:
    """Accuracy rising from chance to `final` at the last epoch, fastest early on."""
    rows = []
    norm = 1 - math.exp(-speed * epochs)
    for e in range(1, epochs + 1):
        progress = (1 - math.exp(-speed * e)) / norm
        test = CHANCE + (final - CHANCE) * progress
        train = CHANCE + (train_final - CHANCE) * progress
        rows.append(
            {
                "epoch": e,
                "train_loss": 2.3 * (1 - 0.85 * (train - CHANCE) / (1 - CHANCE)),
                "train_acc": train,
                "test_loss": 2.3 * (1 - 0.8 * (test - CHANCE) / (1 - CHANCE)),
                "test_acc": test,
                "lr": lr,
                "time_s": 31.0,
                "images_per_s": 350.0,
                "elapsed_s": 30.0 * e,
            }
        )
    return rows


# ----------------------------------------------------------------------------- a full suite

# Final test accuracy (None: diverges) per grid point, shaped like CPU-scale results.
LR_ACC = {
    "bn": {0.01: 0.60, 0.03: 0.68, 0.1: 0.72, 0.3: 0.71, 1.0: 0.64, 3.0: None},
    "none": {0.01: 0.52, 0.03: 0.58, 0.1: 0.62, 0.3: 0.45, 1.0: None, 3.0: None},
}
DEPTH_ACC = {  # (norm, residual) -> depth -> acc
    ("bn", True): {20: 0.72, 56: 0.74, 110: 0.73},
    ("none", True): {20: 0.62, 56: 0.55, 110: None},
    ("bn", False): {20: 0.70, 56: 0.61, 110: 0.46},
    ("none", False): {20: 0.58, 56: 0.21, 110: 0.10},
}
BATCH_ACC = {
    "bn": {2: 0.40, 4: 0.55, 8: 0.65, 16: 0.69, 32: 0.71, 64: 0.72, 128: 0.72},
    "gn": {2: 0.63, 4: 0.64, 8: 0.65, 16: 0.66, 32: 0.66, 64: 0.66, 128: 0.66},
    "ln": {2: 0.61, 4: 0.62, 8: 0.62, 16: 0.63, 32: 0.63, 64: 0.63, 128: 0.63},
    "none": {8: 0.60, 128: 0.62},
}
INIT_ACC = {
    "bn": {0.1: 0.71, 0.3: 0.72, 1.0: 0.72, 3.0: 0.71, 10.0: 0.69},
    "none": {0.1: 0.35, 0.3: 0.55, 1.0: 0.62, 3.0: None, 10.0: None},
}
REG = {  # (norm, augment) -> (train acc, test acc)
    ("bn", True): (0.70, 0.72),
    ("none", True): (0.60, 0.62),
    ("bn", False): (0.92, 0.65),
    ("none", False): (0.80, 0.57),
}
BN_EVAL = {2: 0.35, 8: 0.62, 32: 0.70, 128: 0.715, 1000: 0.72}
SPEED = {"bn": 0.9, "none": 0.45, "gn": 0.6, "ln": 0.55}


def make_realistic_store(runs: Path, seeds: tuple[int, ...] = (0, 1, 2)) -> Path:
    """Every experiment grid at preset cpu, with seed noise, a failed and an unfinished run."""
    rng = np.random.default_rng(0)

    def one(
        norm: str,
        acc: float | None,
        experiment: str,
        train_acc: float | None = None,
        speed: float | None = None,
        **config: Any,
    ) -> None:
        for seed in seeds:
            noise = float(rng.normal(0, 0.006))
            kw: dict[str, Any] = {"status": "diverged", "diverged_epoch": 2}
            if acc is not None:
                train = None if train_acc is None else train_acc + noise
                kw = {"final": acc + noise, "train_acc": train}
            make_run(
                runs,
                norm=norm,
                config={**config, "train.seed": seed},
                experiment=experiment,
                speed=speed or SPEED[norm],
                **kw,
            )

    for norm, accs in LR_ACC.items():
        for lr, acc in accs.items():
            slow = 0.6 if lr < 0.05 else 1.0  # small lrs converge more slowly
            one(norm, acc, "lr", speed=SPEED[norm] * slow, **{"optim.lr": lr})
    for (norm, residual), accs in DEPTH_ACC.items():
        for depth, acc in accs.items():
            one(norm, acc, "depth", **{"model.depth": depth, "model.residual": residual})
    for norm, accs in BATCH_ACC.items():
        for batch, acc in accs.items():
            lr = 0.1 * batch / 128
            experiment = "norms" if norm == "none" else "batch"
            one(norm, acc, experiment, **{"data.batch_size": batch, "optim.lr": lr})
    for norm, accs in INIT_ACC.items():
        for scale, acc in accs.items():
            one(norm, acc, "init", **{"model.init_scale": scale})
    for (norm, augment), (train, test) in REG.items():
        one(norm, test, "regularization", train_acc=train, **{"data.augment": augment})
    for batch, relief in ((32, 0.5), (128, 0.0)):
        for seed in seeds:
            noise = float(rng.normal(0, 0.004))
            # A net trained on smaller batches is used to noisier statistics: it loses less.
            evals = {str(k): v + relief * (0.72 - v) + noise for k, v in BN_EVAL.items()}
            make_run(
                runs,
                norm="bn",
                final=0.72 + noise,
                experiment="inference",
                bn_eval={"running_stats_acc": 0.72 + noise, "batch_stats_acc": evals},
                config={
                    "data.batch_size": batch,
                    "optim.lr": 0.1 * batch / 128,
                    "probe.bn_eval_batch_sizes": [2, 8, 32, 128, 1000],
                    "train.seed": seed,
                },
            )
    make_run(runs, norm="bn", status="failed", config={"model.depth": 56, "train.seed": 7})
    make_run(runs, norm="none", summary=False, config={"model.depth": 56, "train.seed": 7})
    make_mechanism_store(runs, seeds, rng)
    return runs


# ----------------------------------------------------------------------------- mechanism runs

PROBED = {"probe.ics": True, "probe.activations": True, "probe.landscape": True}
# experiment=ics: plain nets, the ics and activations probes.
ICS_PROBED = {"probe.ics": True, "probe.activations": True, "model.residual": False}
LAYERS = ("conv1", "layer1.0.conv1", "layer2.0.conv1", "fc")
# norm -> (final acc at lr 0.1, activation shift per probe interval, ICS 1 - cos)
ICS_RUNS = {
    "bn": (0.72, 0.10, 0.20),
    "bn_noisy": (0.70, 0.60, 0.45),
    "none": (0.40, 0.30, 0.25),
    "none_noisy": (0.22, 0.80, 0.50),
}
# norm -> (loss variation, gradient change, beta-smoothness) at every probed step
LANDSCAPE_RUNS = {"bn": (0.05, 0.5, 4.0), "none": (0.6, 3.0, 40.0)}
ALTERNATIVE_ACC = {  # arm -> batch -> acc; BN gains 8 pp from 8 to 128, the others 1-3
    ("bn", None): {8: 0.64, 128: 0.72},
    ("gn", None): {8: 0.65, 128: 0.66},
    ("ln", None): {8: 0.61, 128: 0.63},
    ("batch_renorm", None): {8: 0.69, 128: 0.71},
    ("ghost_bn", 4): {8: 0.60, 128: 0.62},
}
DEEP_ACC = {  # arm -> depth -> acc (None: diverges)
    "fixup": {20: 0.68, 56: 0.66},
    "skipinit": {20: 0.67, 56: 0.64},
}


def write_probe_rows(run: Path, rows: list[tuple[int, int, str, str, str, float]]) -> None:
    """probes.csv as bnlab.train.probes writes it (repr'd floats, long format)."""
    lines = [",".join(PROBE_COLUMNS)]
    lines += [",".join(str(v) if not isinstance(v, float) else repr(v) for v in r) for r in rows]
    (run / PROBES_FILE).write_text("\n".join(lines) + "\n")


def activation_rows(shift: float, points: int = 6) -> list[tuple[int, int, str, str, str, float]]:
    """Per layer, a mean moving by `shift` per point at std 1: distribution shift = `shift`."""
    rows = []
    for p in range(points):
        for layer in LAYERS:
            rows += [(p, 39 * p, "activations", layer, "act_mean", p * shift),
                     (p, 39 * p, "activations", layer, "act_std", 1.0)]  # fmt: skip
    return rows


def ics_rows(one_minus_cos: float, steps: tuple[int, ...] = (0, 50, 150)) -> list[tuple]:
    return [
        (1 + s // 39, s, "ics", layer, "ics_cos", 1.0 - one_minus_cos)
        for s in steps
        for layer in LAYERS
    ]


def landscape_rows(
    variation: float, change: float, beta: float, steps: tuple[int, ...] = (0, 50, 150)
) -> list[tuple]:
    rows = []
    for s in steps:
        e = 1 + s // 39
        rows += [(e, s, "landscape", "all", "loss@0.5", 2.0), (e, s, "landscape", "all",
                 "loss@4", 2.0 + variation), (e, s, "landscape", "all", "grad_change@0.5",
                 change / 8), (e, s, "landscape", "all", "grad_change@4", change)]  # fmt: skip
        rows += [(e, s, "landscape", "all", "loss_variation", variation),
                 (e, s, "landscape", "all", "grad_change_max", change),
                 (e, s, "landscape", "all", "beta_smoothness", beta)]  # fmt: skip
    return rows


def make_mechanism_store(
    runs: Path, seeds: tuple[int, ...] = (0,), rng: np.random.Generator | None = None
) -> Path:
    """The ics/landscape, norms (alternatives) and deep_no_norm grids, with probes."""
    rng = rng or np.random.default_rng(1)
    for seed in seeds:
        for norm, (acc, shift, ics) in ICS_RUNS.items():
            for lr, scale in ((0.1, 1.0), (0.01, 0.9)):
                noise = float(rng.normal(0, 0.004))
                cfg = {**ICS_PROBED, "optim.lr": lr, "train.seed": seed}
                run = make_run(runs, norm=norm, final=acc * scale + noise, config=cfg,
                               experiment="ics")  # fmt: skip
                write_probe_rows(run, activation_rows(shift) + ics_rows(ics))
        for norm, values in LANDSCAPE_RUNS.items():
            for lr in (0.1, 0.01):
                noise = float(rng.normal(0, 0.004))
                cfg = {**PROBED, "optim.lr": lr, "train.seed": seed}
                # Twins of the lr grid's runs (they differ only in probes): same accuracy.
                final = LR_ACC[norm][lr] + noise
                run = make_run(runs, norm=norm, final=final, config=cfg, experiment="landscape")
                write_probe_rows(run, landscape_rows(*values) + activation_rows(0.1))
        for (norm, vb), accs in ALTERNATIVE_ACC.items():
            for batch, acc in accs.items():
                cfg = {"data.batch_size": batch, "optim.lr": 0.1 * batch / 128, "train.seed": seed}
                if vb is not None:
                    cfg["norm.virtual_batch"] = vb
                noise = float(rng.normal(0, 0.004))
                make_run(runs, norm=norm, final=acc + noise, config=cfg, experiment="norms")
        for arm, accs in DEEP_ACC.items():
            for depth, acc in accs.items():
                cfg = {"model.init": arm, "model.depth": depth, "train.seed": seed}
                noise = float(rng.normal(0, 0.004))
                make_run(runs, norm="none", final=acc + noise, config=cfg,
                         experiment="deep_no_norm")  # fmt: skip
    return runs


# ----------------------------------------------------------------------------- sequence runs

SEQUENCE_DATASET = "Fashion-MNIST"
SEQUENCE_SPREAD = (-0.004, 0.0, 0.004)  # per-seed offsets: SD 0.004, +-1 pp at 3 seeds


def make_sequence_run(runs: Path, *, model: str, norm: str, preset: str = "cpu", **kw: Any) -> Path:
    """One run of a sequence model (model=lstm|gru|transformer) on Fashion-MNIST rows,
    written as `make_run` writes one (its keywords: config, final, train_acc, status,
    speed, ...). The composed config is cached under a key of its own in `_BASE`."""
    key = f"{model}+{norm}"
    if (key, preset) not in _BASE:
        overrides = [f"model={model}", f"norm={norm}", "data=fashion_mnist", f"preset={preset}"]
        _BASE[key, preset] = load_config(overrides)
    extra = {"dataset": SEQUENCE_DATASET, **(kw.pop("summary_extra", None) or {})}
    return make_run(runs, norm=key, preset=preset, summary_extra=extra, **kw)


def sequence_runs(
    runs: Path,
    model: str,
    norm: str,
    accs: dict[float, float | None],
    seeds: tuple[int, ...] = (0, 1, 2),
    spread: tuple[float, ...] = SEQUENCE_SPREAD,
    train_acc: float | None = None,
    speed: float = 0.6,
    **config: Any,
) -> None:
    """One arm over an lr grid: `accs` maps lr -> final test accuracy (None: every seed
    diverges); seed i is offset by spread[i]. `train_acc` (default: just below the
    test accuracy) is the final training accuracy, offset the same way."""
    for lr, acc in accs.items():
        for i, seed in enumerate(seeds):
            noise = spread[i % len(spread)]
            cfg = {**config, "optim.lr": lr, "train.seed": seed}
            if acc is None:
                kw: dict[str, Any] = {"status": "diverged", "diverged_epoch": 1}
            else:
                train = None if train_acc is None else train_acc + noise
                kw = {"final": acc + noise, "train_acc": train}
            make_sequence_run(runs, model=model, norm=norm, config=cfg, speed=speed, **kw)
