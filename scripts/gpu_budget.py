"""How long `bnlab sweep experiment=all preset=gpu` should take on one GPU: the yamls' arithmetic.

Every grid point of every experiment is expanded exactly as `bnlab sweep` does, and
runs shared between experiments are counted once (the sweep skips them). Two ways to
cost them:

packs (the default): each experiment's distinct runs are grouped into units of work
exactly as `bnlab sweep sweep.pack=auto` plans them on a GPU (``bnlab.sweep.packs.plan``
on copies of the configs with train.device=cuda, so the plan is the GPU's even on a
CPU machine; ``--pack N`` as sweep.pack=N): a pack of K runs, or a run alone (K=1:
recipe.train). A unit's time alone on the GPU:

    epochs x steps/epoch x step_ms(mode, K, batch) x depth/20 x kind factor
      + evaluation: epochs x test batches x step_ms(eager, K, eval batch) / 3 x depth/20
        (one packed forward a test batch, a third of a step)
      + each member's work outside the unit's step, at the solo eager step time: the
        activations probe (a step at init and at each epoch's end), bn_eval/bn_modes,
        and for runs alone the ics/landscape/bn_stats probes (``run_parts``' extra)

so a pack's training time is its members' images / the pack's images/s. An experiment
lasts the sum of its units' times (``--n-jobs 1``, the default: one unit at a time,
the measured numbers only). With ``--n-jobs J``, J' = min(J, units) processes share the
GPU: max(sum / (J' x eff), longest / eff, the GPU's own time), where eff is each
process's share of its rate alone measured for J' solo runs on the H200
(results/bench/gpu_h200_scaling_b128.json: 4 processes give 2.65x one) and the GPU's
own time is every unit's steps at the whole-step CUDA graph's step time (no launch gaps
left to fill). That packs share the GPU as solo runs do is an ASSUMPTION: only solo
runs were measured sharing it. Plus the jobs mode's fixed costs (per experiment with
units, per unit / J').

MEASURED (one H200, torch 2.11, bf16 autocast, channels_last, ResNet-20;
../shared/gpu-runs/2026-12-04/README.md, results/gpu/README.md): a pack's images/s at
batch 128 per member, eager: K=1 12,164 (fp32), K=16 123,566, K=32 173,600; whole-step
CUDA graph: K=1 61,154, K=8 160,410, K=16 179,119, K=32 185,704, K=64 196,765; batch 2
per member (fp32), graph: K=1 1,942, K=64 42,283, eager: K=64 10,624; GroupNorm
against BN: 1.58x the step at K=1 and 2.70x at K=16 (graph), 1.99x at K=16 (eager);
bnlab's solo run with torch.compile 16,539 img/s (results/bench/gpu_h200_resnet20_b128.json);
solo runs sharing the GPU (gpu_h200_scaling_b128.json).

INTERPOLATED: step_ms = 1000 x K x batch / images/s at each measured K, piecewise
linear in K between them and beyond the last with the last segment's slope (a pack's
step is a fixed launch cost plus K members' work: the graph's five points lie within
3% of 1.5 + 0.63 K ms). Checked against a point it was not given: eager K=8 comes out
at 76.7k img/s, measured 85.9k in fp32 (conservative). Between batch 2 and 128 the step
time is linear in the batch at the same K; above 128 it is the batch-128 step of
K x batch/128 runs (measured: K=8 at batch 512 21.4 ms, K=32 at 128 22.1 ms). Eager is
never faster than the graph (beyond K=32 eager's extrapolation would be). The
GroupNorm factor is linear in K from 1 to 16, constant beyond.

ASSUMED: a pack trains in the whole-step CUDA graph when train.compile is on
(``bnlab.pack.run``), eager otherwise; preset=gpu leaves train.compile=false, so the
suite's packs are EAGER unless the sweep says sweep.pack_graph=true (it sets
train.compile on the packs' members only; pass it here to cost that, or
train.compile=true for packs and runs alone compiled); a run alone is
eager at the pack's K=1 rate (bnlab's own solo bf16 eager measured 11,793 img/s, 3%
below it) or torch.compile'd. bf16 throughout (train.precision=auto on an H200; the
batch-2 points and eager K=1 were fp32). Eager at batch 2, K=1: batch 128's step time
(launch-bound: eager K=64 at batch 2 took 12.0 ms against 10.5 ms for K=1 at 128).
Whether bnlab's packs (bnlab.pack) reach the prototype's rates: not yet measured
(scripts/bench_pack.py, gpu_check.sh's pack step, will). The other norm kinds' factors
(KIND_FACTOR: estimates; Ghost BN measured ~3.4x with a since-removed per-layer sync),
the fixed costs and evaluation's third of a step are the jobs mode's estimates; a CUDA
graph's capture is not counted. A model other than a ResNet (the sequence claims' LSTM
and transformer: never run on a GPU) costs one ResNet-20 step a step, its own
depth and norm ignored: a guess, printed apart.

jobs (``--mode jobs``, the first estimate): each run's cost in *steps of ResNet-20 at
batch 128*, with the runs spread over n_jobs processes sharing the GPU (a small ResNet
on a GPU is launch-bound, so a step costs about the same at any batch up to 128, batch
8 costs 16x per image, and a deeper net costs in proportion to its layers):

    steps = epochs x (train images // batch) x depth/20 x kind factor
            (a model other than a ResNet: 1 and 1, as in the packs mode)
            + evaluation (a forward costs a third of a step; data.eval_batch_size a step)
            + probes (results/bench/README.md: an ics step costs 1.7 training steps,
              a landscape step 4.9) + bn_eval (one forward per eval batch)
    seconds = steps x 128 / throughput

The throughput (aggregate images/s of n_jobs runs sharing the GPU) is read from
the one place it is written, conf/scale/gpu.yaml ("throughput: N img/s with
n_jobs=J"); an experiment lasts at least its longest run at throughput/J. Each
claim's grid file (conf/grid/NAME.yaml) shows its own arithmetic under preset=gpu.

    python scripts/gpu_budget.py                      # packs: per experiment, the total
    python scripts/gpu_budget.py --n-jobs 4           # 4 units sharing the GPU
    python scripts/gpu_budget.py sweep.pack_graph=true   # the packs' CUDA graphs
    python scripts/gpu_budget.py train.compile=true   # those, and runs alone compiled
    python scripts/gpu_budget.py --skip sequence      # the ResNet claims only
    python scripts/gpu_budget.py --mode jobs --img-per-s 48097 --minutes 20
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from bnlab.compose import CONFIG_DIR
from bnlab.store import run_id
from bnlab.sweep import packs
from bnlab.sweep.grid import expand, suite

COMMON = CONFIG_DIR / "scale" / "gpu.yaml"  # how preset=gpu scales every claim's sweep
SCALING = Path(__file__).resolve().parents[1] / "results" / "bench" / "gpu_h200_scaling_b128.json"
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

# ----------------------------------------------------------------------------- measured rates
# ResNet-20 on one H200 (torch 2.11, bf16 autocast, channels_last), images/s of the whole
# pack, by pack size K, at batch 128 and batch 2 per member (../shared/gpu-runs/
# 2026-12-04/README.md; results/gpu/README.md). A "solo" unit is one run alone, trained
# by recipe.train: eager at the pack's K=1 rate, or torch.compile'd.
EAGER, GRAPH, SOLO_COMPILED = "eager", "graph", "solo-compiled"
MEASURED: dict[str, dict[int, dict[int, float]]] = {
    EAGER: {
        128: {1: 12_164, 16: 123_566, 32: 173_600},  # K=1 in fp32
        2: {1: 2 / 0.010523, 64: 10_624},  # fp32; K=1 ASSUMED: batch 128's 10.5 ms step
    },
    GRAPH: {
        128: {1: 61_154, 8: 160_410, 16: 179_119, 32: 185_704, 64: 196_765},
        2: {1: 1_942, 64: 42_283},  # fp32
    },
    # results/bench/gpu_h200_resnet20_b128.json, bf16-cl-compile; at batch 2 ASSUMED
    # launch-bound (batch 128's step time).
    SOLO_COMPILED: {128: {1: 16_539}, 2: {1: 2 * 16_539 / 128}},
}
# GroupNorm's step against BN's, measured at K=1 and 16 (graph) and K=16 (eager; its
# K=1 is KIND_FACTOR's estimate). gn, ln and in are all nn.GroupNorm in bnlab.
GROUPNORM_FACTOR = {
    GRAPH: {1: 61_154 / 38_734, 16: 179_119 / 66_224},
    EAGER: {16: 123_566 / 62_147},
}
GROUPNORM_KINDS = ("gn", "ln", "in")


@dataclass
class Throughput:
    img_per_s: float
    n_jobs: int


def read_throughput(path: Path = COMMON) -> Throughput:
    match = re.search(r"throughput:\s*([\d,]+)\s*img/s\s+with\s+n_jobs=(\d+)", path.read_text())
    if match is None:
        raise SystemExit(f"gpu_budget: no 'throughput: N img/s with n_jobs=J' line in {path}")
    return Throughput(float(match.group(1).replace(",", "")), int(match.group(2)))


def depth_factor(cfg: Any) -> float:
    """A ResNet's step against ResNet-20's: its depth/20. Any other model (the sequence
    claims' LSTM and transformer: never measured on a GPU) ASSUMED one ResNet-20 step."""
    return cfg.model.depth / 20 if cfg.model.arch == "resnet" else 1.0


def kind_factor(cfg: Any) -> float:
    if cfg.model.arch != "resnet":
        return 1.0  # the ResNet norms' costs say nothing of a sequence model's
    kind = str(cfg.norm.kind)
    if kind.endswith("_noisy"):
        return NOISY_FACTOR
    return KIND_FACTOR.get(kind, 1.0)


@dataclass(frozen=True)
class Parts:
    """One run's cost in ResNet-20 batch-128 training steps, by what it is spent on."""

    train: float  # the training steps, x depth/20 x kind factor
    evaluation: float  # the per-epoch test evaluations, a forward a third of a step
    extra: float  # probes and post-training evaluations (bn_eval, bn_modes)

    @property
    def total(self) -> float:
        return self.train + self.evaluation + self.extra


def run_parts(cfg: Any) -> Parts:
    """The cost of one run, in ResNet-20 batch-128 training steps (the jobs mode's)."""
    train_images = cfg.data.train_size or 50_000
    test_images = cfg.data.test_size or TEST_IMAGES
    depth = depth_factor(cfg)
    steps_per_epoch = train_images // cfg.data.batch_size
    train = cfg.train.epochs * steps_per_epoch * depth * kind_factor(cfg)
    evaluation = cfg.train.epochs * math.ceil(test_images / cfg.data.eval_batch_size) / 3 * depth
    extra = 0.0
    total_steps = cfg.train.epochs * steps_per_epoch
    probed = sum(1 for s in cfg.probe.steps if s < total_steps)
    for probe, cost in PROBE_STEP_COST.items():
        if cfg.probe[probe]:
            extra += probed * cost * depth
    if cfg.probe.bn_stats:
        extra += cfg.train.epochs * test_images / cfg.data.batch_size / 3 * depth
    # bn_eval and bn_modes evaluate in chunks of ~1,024 images (bnlab.train.probes):
    # per size one pass over the test set; bn_modes 200 training batches (precise BN),
    # 3 shuffles of the test set and one pass over the training set.
    chunks = len(cfg.probe.bn_eval_batch_sizes) * test_images
    if cfg.probe.get("bn_modes", False):
        chunks += 200 * cfg.data.batch_size + 3 * test_images + train_images
    extra += math.ceil(chunks / CHUNK) / 3 * depth
    return Parts(train, evaluation, extra)


def run_steps(cfg: Any) -> float:
    """The cost of one run, in ResNet-20 batch-128 training steps."""
    return run_parts(cfg).total


@dataclass
class Row:
    experiment: str
    grid_points: int
    new_runs: int
    seeds: int
    steps: float
    longest: float
    seconds: float


def _new_runs(name: str, seen: set[str], overrides: Sequence[str]) -> tuple[Any, list[Any]]:
    """The experiment's sweep and its runs not counted by an earlier experiment."""
    sweep = expand([f"experiment={name}", "preset=gpu", *overrides])
    new = []
    for job in sweep.jobs:
        rid = run_id(job.cfg)
        if rid not in seen:
            seen.add(rid)
            new.append(job.cfg)
    return sweep, new


def _experiments(skip: Sequence[str] = ()) -> list[str]:
    """experiment=all's claims at preset=gpu (conf/grid/_suites.yaml), in its order, less
    ``skip`` (each must be one of them)."""
    names = suite(["experiment=all", "preset=gpu"])
    unknown = set(skip) - set(names)
    if unknown:
        raise SystemExit(f"gpu_budget: no experiment {', '.join(sorted(unknown))}")
    return [n for n in names if n not in skip]


def budget(
    tp: Throughput, overrides: list[str] | None = None, skip: Sequence[str] = ()
) -> list[Row]:
    """The jobs mode: every run alone, n_jobs of them sharing the GPU at tp."""
    seen: set[str] = set()
    rows = []
    steps_per_s = tp.img_per_s / 128
    for name in _experiments(skip):
        sweep, new = _new_runs(name, seen, overrides or [])
        costs = [run_steps(cfg) for cfg in new]
        seeds = len({job.cfg.train.seed for job in sweep.jobs})
        total, longest = sum(costs), max(costs, default=0.0)
        # Jobs run n_jobs at a time; an experiment lasts at least its longest run.
        seconds = max(total / steps_per_s, longest / (steps_per_s / tp.n_jobs))
        seconds += POOL_START_S + len(costs) * RUN_START_S / tp.n_jobs
        rows.append(Row(name, len(sweep.jobs), len(costs), seeds, total, longest, seconds))
    return rows


# ----------------------------------------------------------------------------- packs


def _interp(points: dict[int, float], k: float) -> float:
    """Piecewise linear through (K, value) points; beyond the last, the last segment's
    slope (one point: value proportional to K); below the first, the first value."""
    ks = sorted(points)
    if len(ks) == 1:
        return points[ks[0]] * max(1.0, k / ks[0])
    if k <= ks[0]:
        return points[ks[0]]
    i = min(bisect.bisect_left(ks, k), len(ks) - 1)
    a, b = ks[i - 1], ks[i]
    return points[a] + (points[b] - points[a]) * (k - a) / (b - a)


def _step_points(mode: str, batch: int) -> dict[int, float]:
    """The measured step times (ms) of ``mode`` at one measured batch, by K."""
    return {k: 1000 * k * batch / rate for k, rate in MEASURED[mode][batch].items()}


def step_ms(mode: str, k: int, batch: int) -> float:
    """One step of a unit of K runs at ``batch`` each (ResNet-20, BN), in ms: linear in
    K at a measured batch, linear in the batch between 2 and 128, above 128 the batch-128
    step of K x batch/128 runs; never below the whole-step graph's (eager only adds)."""
    if batch >= 128:
        ms = _interp(_step_points(mode, 128), k * batch / 128)
    else:
        small, large = _interp(_step_points(mode, 2), k), _interp(_step_points(mode, 128), k)
        ms = small + (large - small) * (max(batch, 2) - 2) / (128 - 2)
    return ms if mode == GRAPH else max(ms, step_ms(GRAPH, k, batch))


def pack_rate(mode: str, k: int, batch: int) -> float:
    """Images/s of the whole unit (``step_ms`` as a throughput)."""
    return 1000 * k * batch / step_ms(mode, k, batch)


def pack_kind_factor(cfg: Any, mode: str, k: int) -> float:
    """The norm's step against BN's in a unit of K: measured for GroupNorm, else KIND_FACTOR."""
    if cfg.model.arch != "resnet" or str(cfg.norm.kind) not in GROUPNORM_KINDS:
        return kind_factor(cfg)
    points = dict(GROUPNORM_FACTOR[GRAPH if mode == SOLO_COMPILED else mode])
    points.setdefault(1, kind_factor(cfg))
    return _interp(points, min(k, max(points)))


def share(n_jobs: int, path: Path = SCALING) -> float:
    """eff_J: each of J processes' rate against one alone (measured for solo runs, J=1..8,
    linear between; beyond the last, its total shared out)."""
    data = json.loads(path.read_text())
    total = {int(s["jobs"]): float(s["speedup_over_one_job"]) for s in data["scaling"]}
    top = max(total)
    return _interp(total, min(n_jobs, top)) / n_jobs


@dataclass
class Unit:
    """One unit of work: a pack of ``k`` runs, or a run alone (k=1)."""

    k: int
    mode: str
    images: int  # the members' training images, all together
    seconds: float  # alone on the GPU
    gpu_seconds: float  # the GPU's own time: the same steps at the graph's step time
    measured: bool  # a ResNet (its rates measured); False: a sequence model (assumed)


def unit_mode(cfg: Any, k: int) -> str:
    if k == 1:
        return SOLO_COMPILED if cfg.train.compile else EAGER
    return GRAPH if cfg.train.compile else EAGER


def unit_cost(cfgs: Sequence[Any]) -> Unit:
    """A unit's time alone on the GPU (the runs of one pack, or one run)."""
    k, cfg = len(cfgs), cfgs[0]
    mode = unit_mode(cfg, k)
    train_images = cfg.data.train_size or 50_000
    test_images = cfg.data.test_size or TEST_IMAGES
    batch, epochs, depth = cfg.data.batch_size, cfg.train.epochs, depth_factor(cfg)
    steps = epochs * (train_images // batch)
    evals = epochs * math.ceil(test_images / cfg.data.eval_batch_size)
    # Outside the unit's step, each member alone: probes, bn_eval/bn_modes (run_parts'
    # extra, already x depth), and the activations probe: a step at init and per epoch.
    solo_steps = 0.0
    for c in cfgs:
        solo_steps += run_parts(c).extra
        if c.probe.get("activations", False):
            solo_steps += (c.train.epochs + 1) * depth

    def seconds(train_mode: str, other_mode: str) -> float:
        """Training in train_mode; evaluation and the members' own work in other_mode."""
        train = steps * step_ms(train_mode, k, batch) * pack_kind_factor(cfg, train_mode, k)
        evaluation = evals * step_ms(other_mode, k, cfg.data.eval_batch_size) / 3
        alone = solo_steps * step_ms(other_mode, 1, 128)
        return ((train + evaluation) * depth + alone) / 1000

    images = k * steps * batch
    measured = cfg.model.arch == "resnet"
    # Evaluation and probes run eager (the graph is the training step's only); the GPU's
    # own time is everything at the graph's step times.
    return Unit(k, mode, images, seconds(mode, EAGER), seconds(GRAPH, GRAPH), measured)


def experiment_seconds(units: Sequence[Unit], n_jobs: int) -> float:
    """An experiment's units on n_jobs processes sharing the GPU (the module docstring)."""
    if not units:
        return 0.0  # the sweep launches nothing
    jobs = min(n_jobs, len(units))
    eff = share(jobs)
    alone = [u.seconds for u in units]
    gpu = sum(u.gpu_seconds for u in units)
    seconds = max(sum(alone) / (jobs * eff), max(alone) / eff, gpu)
    return seconds + POOL_START_S + len(units) * RUN_START_S / jobs


@dataclass
class PackRow:
    experiment: str
    grid_points: int
    new_runs: int
    seeds: int
    units: list[Unit]
    seconds: float  # at the n_jobs pack_budget was given

    @property
    def images(self) -> int:
        return sum(u.images for u in self.units)

    def sizes(self) -> str:
        """The units' sizes, e.g. "15x3 1x4" (three packs of 15, four runs alone)."""
        count: dict[int, int] = {}
        for u in self.units:
            count[u.k] = count.get(u.k, 0) + 1
        return " ".join(f"{k}x{n}" for k, n in sorted(count.items(), reverse=True))


def on_gpu(cfg: Any) -> Any:
    """A copy of ``cfg`` with train.device=cuda: the sweep's plan on a GPU, here too."""
    return OmegaConf.merge(cfg, {"train": {"device": "cuda"}})


def pack_budget(
    overrides: list[str] | None = None,
    setting: str = packs.AUTO,
    n_jobs: int = 1,
    skip: Sequence[str] = (),
) -> list[PackRow]:
    """The packs mode: each experiment's new runs planned as `bnlab sweep sweep.pack=
    <setting>` plans them on a GPU, each unit costed at the measured pack rates
    (sweep.pack_graph=true among the overrides: the packs' steps as CUDA graphs, as the
    sweep trains them)."""
    overrides, pack_graph = packs.split_pack_graph(overrides or [])
    seen: set[str] = set()
    rows = []
    for name in _experiments(skip):
        sweep, new = _new_runs(name, seen, overrides)
        cfgs = [on_gpu(cfg) for cfg in new]
        units = []
        for u in packs.plan(cfgs, setting):
            members = [cfgs[n] for n in u.nums]
            if pack_graph and u.is_pack:
                members = [packs.graphed(cfg) for cfg in members]
            units.append(unit_cost(members))
        seeds = len({job.cfg.train.seed for job in sweep.jobs})
        seconds = experiment_seconds(units, n_jobs)
        rows.append(PackRow(name, len(sweep.jobs), len(new), seeds, units, seconds))
    return rows


# ----------------------------------------------------------------------------- the CLI


def _print_jobs(tp: Throughput, rows: list[Row]) -> float:
    print(f"jobs: every run alone, {tp.img_per_s:,.0f} img/s aggregate, n_jobs={tp.n_jobs}")
    print(f"{'experiment':<15}{'points':>7}{'new runs':>9}{'seeds':>6}{'k steps':>9}{'min':>7}")
    for r in rows:
        line = f"{r.experiment:<15}{r.grid_points:>7}{r.new_runs:>9}{r.seeds:>6}"
        print(f"{line}{r.steps / 1000:>9.1f}{r.seconds / 60:>7.1f}")
    total = sum(r.seconds for r in rows) / 60
    print(f"{'total':<37}{sum(r.steps for r in rows) / 1000:>9.1f}{total:>7.1f}")
    return total


def _print_packs(rows: list[PackRow], setting: str, n_jobs: int) -> float:
    modes = sorted({u.mode for r in rows for u in r.units})
    print(
        f"packs: sweep.pack={setting} on a GPU, {n_jobs} unit(s) at a time, "
        f"measured H200 rates ({', '.join(modes)})"
    )
    print(
        f"{'experiment':<15}{'points':>7}{'new runs':>9}{'seeds':>6}{'M img':>7}{'min':>6}  units"
    )
    for r in rows:
        line = f"{r.experiment:<15}{r.grid_points:>7}{r.new_runs:>9}{r.seeds:>6}"
        print(f"{line}{r.images / 1e6:>7.1f}{r.seconds / 60:>6.1f}  {r.sizes()}")
    total = sum(r.seconds for r in rows) / 60
    images = sum(r.images for r in rows)
    runs = sum(r.new_runs for r in rows)
    print(f"{'total':<37}{images / 1e6:>7.1f}{total:>6.1f}")
    print(f"{runs} runs in {sum(len(r.units) for r in rows)} units: {images:,} training images")
    for jobs in sorted({1, 4} - {n_jobs}):
        other = sum(experiment_seconds(r.units, jobs) for r in rows) / 60
        print(f"  at n_jobs={jobs}: {other:.1f} min")
    guessed = [r for r in rows if any(not u.measured for u in r.units)]
    if guessed:
        names = ", ".join(r.experiment for r in guessed)
        minutes = sum(r.seconds for r in guessed) / 60
        print(
            f"  of the total, {minutes:.1f} min are {names}: models never measured on a GPU, "
            "costed as ResNet-20 steps"
        )
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--mode", choices=("packs", "jobs"), default="packs",
        help="packs (default): measured pack rates; jobs: every run alone at --img-per-s",
    )  # fmt: skip
    p.add_argument("--pack", default=packs.AUTO, help="packs: sweep.pack's setting (auto|N)")
    p.add_argument("--img-per-s", type=float, default=None, help="jobs: default scale/gpu.yaml's")
    p.add_argument(
        "--n-jobs", type=int, default=None,
        help="processes sharing the GPU (packs: default 1; jobs: default scale/gpu.yaml's)",
    )  # fmt: skip
    p.add_argument(
        "--minutes", type=float, default=None,
        help="the budget to check against (default: 8 for packs, 20 for jobs)",
    )  # fmt: skip
    p.add_argument(
        "--skip", default="", help="experiments to leave out, comma-separated (e.g. sequence)"
    )
    p.add_argument("overrides", nargs="*", help="extra sweep overrides, e.g. train.epochs=5")
    args = p.parse_args()
    skip = [name for name in args.skip.split(",") if name]
    if args.mode == "jobs":
        tp = read_throughput()
        tp = Throughput(args.img_per_s or tp.img_per_s, args.n_jobs or tp.n_jobs)
        overrides, _ = packs.split_pack_graph(args.overrides)  # every run alone here
        total = _print_jobs(tp, budget(tp, overrides, skip))
        minutes = args.minutes if args.minutes is not None else 20.0
    else:
        _, setting = packs.split_pack_setting([f"{packs.PACK_KEY}={args.pack}"])
        n_jobs = args.n_jobs or 1
        rows = pack_budget(args.overrides, setting, n_jobs, skip)
        total = _print_packs(rows, setting, n_jobs)
        minutes = args.minutes if args.minutes is not None else 8.0
    verdict = "fits" if total <= minutes else "does NOT fit"
    print(f"{total:.1f} min {verdict} the {minutes:g}-minute budget")
    sys.exit(0 if total <= minutes else 1)


if __name__ == "__main__":
    main()
