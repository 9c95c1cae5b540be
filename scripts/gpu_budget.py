"""How long `bnlab sweep experiment=all preset=gpu` should take on one GPU: the yamls' arithmetic.

Every grid point of every experiment is expanded exactly as `bnlab sweep` does,
runs shared between experiments are counted once (the sweep skips them), and
each run's cost is counted in *steps of ResNet-20 at batch 128*: a small ResNet
on a GPU is launch-bound, so a step costs about the same at any batch up to 128
(batch 8 costs 16x per image) and a deeper net costs in proportion to its layers.

    steps = epochs x (train images // batch) x depth/20 x kind factor
            + evaluation (a forward costs a third of a step; data.eval_batch_size a step)
            + probes (results/bench/README.md: an ics step costs 1.7 training steps,
              a landscape step 4.9) + bn_eval (one forward per eval batch)
    seconds = steps x 128 / throughput

The throughput (aggregate images/s of n_jobs runs sharing the GPU) is read from
the one place it is written, conf/scale/gpu.yaml ("throughput: N img/s with
n_jobs=J"); an experiment lasts at least its longest run at throughput/J. Each
claim's grid file (conf/grid/NAME.yaml) shows its own arithmetic under preset=gpu.

    python scripts/gpu_budget.py                 # per-experiment table, then the total
    python scripts/gpu_budget.py --img-per-s 90000 --minutes 20
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnlab.compose import CONFIG_DIR
from bnlab.store import run_id
from bnlab.sweep.grid import expand, experiments

COMMON = CONFIG_DIR / "scale" / "gpu.yaml"  # how preset=gpu scales every claim's sweep
TEST_IMAGES = 10_000
CHUNK = 1024  # images per forward of the BN evaluation probes
# Per-step cost of a norm kind relative to BN, from its kernel launches per layer
# (estimates, not measurements): GroupNorm's and Ghost BN's reshapes, Batch Renorm's and
# the noisy norms' handful of extra element-wise ops per layer.
KIND_FACTOR = {
    "gn": 1.2, "ln": 1.2, "in": 1.2, "ghost_bn": 1.3, "batch_renorm": 3.0, "weight_norm": 1.5
}  # fmt: skip
NOISY_FACTOR = 2.0
PROBE_STEP_COST = {"ics": 1.7, "landscape": 4.9}
# Fixed costs (estimates): each experiment is one joblib pool whose n_jobs fresh processes
# import torch and start CUDA; each run moves its data to the GPU, builds its model, lets
# cuDNN pick kernels and writes a checkpoint per epoch.
POOL_START_S = 10.0
RUN_START_S = 3.0


@dataclass
class Throughput:
    img_per_s: float
    n_jobs: int


def read_throughput(path: Path = COMMON) -> Throughput:
    match = re.search(r"throughput:\s*([\d,]+)\s*img/s\s+with\s+n_jobs=(\d+)", path.read_text())
    if match is None:
        raise SystemExit(f"gpu_budget: no 'throughput: N img/s with n_jobs=J' line in {path}")
    return Throughput(float(match.group(1).replace(",", "")), int(match.group(2)))


def kind_factor(cfg: Any) -> float:
    kind = str(cfg.norm.kind)
    if kind.endswith("_noisy"):
        return NOISY_FACTOR
    return KIND_FACTOR.get(kind, 1.0)


def run_steps(cfg: Any) -> float:
    """The cost of one run, in ResNet-20 batch-128 training steps."""
    train_images = cfg.data.train_size or 50_000
    test_images = cfg.data.test_size or TEST_IMAGES
    depth = cfg.model.depth / 20
    steps_per_epoch = train_images // cfg.data.batch_size
    steps = cfg.train.epochs * steps_per_epoch * depth * kind_factor(cfg)
    steps += cfg.train.epochs * math.ceil(test_images / cfg.data.eval_batch_size) / 3 * depth
    total_steps = cfg.train.epochs * steps_per_epoch
    probed = sum(1 for s in cfg.probe.steps if s < total_steps)
    for probe, cost in PROBE_STEP_COST.items():
        if cfg.probe[probe]:
            steps += probed * cost * depth
    if cfg.probe.bn_stats:
        steps += cfg.train.epochs * test_images / cfg.data.batch_size / 3 * depth
    # bn_eval and bn_modes evaluate in chunks of ~1,024 images (bnlab.train.probes):
    # per size one pass over the test set; bn_modes 200 training batches (precise BN),
    # 3 shuffles of the test set and one pass over the training set.
    chunks = len(cfg.probe.bn_eval_batch_sizes) * test_images
    if cfg.probe.get("bn_modes", False):
        chunks += 200 * cfg.data.batch_size + 3 * test_images + train_images
    steps += math.ceil(chunks / CHUNK) / 3 * depth
    return steps


@dataclass
class Row:
    experiment: str
    grid_points: int
    new_runs: int
    seeds: int
    steps: float
    longest: float
    seconds: float


def budget(tp: Throughput, overrides: list[str] | None = None) -> list[Row]:
    seen: set[str] = set()
    rows = []
    steps_per_s = tp.img_per_s / 128
    for name in experiments():
        sweep = expand([f"experiment={name}", "preset=gpu", *(overrides or [])])
        costs = []
        for job in sweep.jobs:
            rid = run_id(job.cfg)
            if rid not in seen:
                seen.add(rid)
                costs.append(run_steps(job.cfg))
        seeds = len({job.cfg.train.seed for job in sweep.jobs})
        total, longest = sum(costs), max(costs, default=0.0)
        # Jobs run n_jobs at a time; an experiment lasts at least its longest run.
        seconds = max(total / steps_per_s, longest / (steps_per_s / tp.n_jobs))
        seconds += POOL_START_S + len(costs) * RUN_START_S / tp.n_jobs
        rows.append(Row(name, len(sweep.jobs), len(costs), seeds, total, longest, seconds))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--img-per-s", type=float, default=None, help="default: scale/gpu.yaml's")
    p.add_argument("--n-jobs", type=int, default=None, help="default: scale/gpu.yaml's")
    p.add_argument("--minutes", type=float, default=20.0, help="the budget to check against")
    p.add_argument("overrides", nargs="*", help="extra sweep overrides, e.g. train.epochs=5")
    args = p.parse_args()
    tp = read_throughput()
    tp = Throughput(args.img_per_s or tp.img_per_s, args.n_jobs or tp.n_jobs)
    rows = budget(tp, args.overrides)
    print(f"throughput {tp.img_per_s:,.0f} img/s aggregate, n_jobs={tp.n_jobs}")
    print(f"{'experiment':<15}{'points':>7}{'new runs':>9}{'seeds':>6}{'k steps':>9}{'min':>7}")
    for r in rows:
        line = f"{r.experiment:<15}{r.grid_points:>7}{r.new_runs:>9}{r.seeds:>6}"
        print(f"{line}{r.steps / 1000:>9.1f}{r.seconds / 60:>7.1f}")
    total = sum(r.seconds for r in rows) / 60
    print(f"{'total':<37}{sum(r.steps for r in rows) / 1000:>9.1f}{total:>7.1f}")
    verdict = "fits" if total <= args.minutes else "does NOT fit"
    print(f"{total:.1f} min {verdict} the {args.minutes:g}-minute budget")
    sys.exit(0 if total <= args.minutes else 1)


if __name__ == "__main__":
    main()
