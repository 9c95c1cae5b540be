"""What the per-epoch probes cost at the CPU experiment scale (a benchmark, not a test).

Each variant is one real run, ``bnlab.recipe.train(cfg)``, into a throw-away
runs folder, with the config of the CPU mechanism experiments (``preset=cpu
experiment=ics``: ResNet-20, 5,000 training images, 5 epochs, one-cycle lr, the
full test set, probes at the probe.steps that config composes) and only the
probe switches changed:

    none          no probes (the baseline)
    activations   probe.activations (at init and each epoch end, one fixed batch)
    ics           probe.ics (at each of probe.steps)
    landscape     probe.landscape (at each of probe.steps, probe.landscape_steps etas)
    bn_stats      probe.bn_stats (each epoch end, a pass over the test set)
    experiment    ics + landscape + activations, as experiment=ics/landscape run them

Timed: the train() call alone (config composition and process start excluded;
loading the cached dataset, building the model and the final writes included).
From each run's summary.json: train_s (the training loops, where ics/landscape
run) and wall_s (the epochs, evaluation and epoch-end probes included). Overhead
is a variant's median minus the baseline's. For the variants with ics and/or
landscape, their train_s overhead is divided by the number of steps actually
probed (read from probes.csv; with both on it is the two together), and also
given in baseline training steps. activations and bn_stats run outside train_s
(at epoch ends), so their train_s should equal the baseline's: the difference
is the measurement noise (run on a quiet machine). Variants are interleaved in each of
``--repeats`` rounds after a short warm-up run; medians are reported. Prints a
table and one JSON line (and writes the JSON to --out).

    python scripts/bench_probes.py                          # the full CPU scale (~10 min)
    python scripts/bench_probes.py --epochs 1 --train-size 512 --test-size 1000 \
        --steps 0 1 2 3 --out /tmp/probes.json                # a quick check
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bnlab.compose import load_config
from bnlab.recipe import train

# The switches each variant turns on; every other probe switch is off.
VARIANTS: dict[str, tuple[str, ...]] = {
    "none": (),
    "activations": ("activations",),
    "ics": ("ics",),
    "landscape": ("landscape",),
    "bn_stats": ("bn_stats",),
    "experiment": ("ics", "landscape", "activations"),
}
SWITCHES = ("activations", "ics", "landscape", "bn_stats")


def overrides(args: argparse.Namespace, variant: str, runs: Path) -> list[str]:
    out = [
        "preset=cpu",
        "experiment=ics",
        f"norm={args.norm}",
        f"data.train_size={args.train_size}",
        f"train.epochs={args.epochs}",
        f"train.threads={args.threads}",
        f"paths.runs={runs}",
    ]
    out += [f"probe.{k}={str(k in VARIANTS[variant]).lower()}" for k in SWITCHES]
    if args.test_size is not None:
        out.append(f"data.test_size={args.test_size}")
    if args.steps is not None:
        out.append(f"probe.steps=[{','.join(str(s) for s in args.steps)}]")
    return out


def probed_steps(run_dir: Path) -> int:
    """Distinct global steps at which ics and/or landscape ran (both run at probe.steps)."""
    path = run_dir / "probes.csv"
    if not path.exists():
        return 0
    with open(path) as f:
        rows = csv.DictReader(f)
        return len({r["step"] for r in rows if r["probe"] in ("ics", "landscape")})


def timed_run(over: list[str]) -> dict[str, Any]:
    cfg = load_config(over)
    start = time.perf_counter()
    outcome = train(cfg)
    total = time.perf_counter() - start
    summary = outcome.summary or {}
    if outcome.status != "completed":
        raise SystemExit(f"run {outcome.run_dir} ended {outcome.status}: {summary.get('error')}")
    return {
        "total_s": total,
        "train_s": float(summary["train_s"]),
        "wall_s": float(summary["wall_s"]),
        "steps": int(summary["train_images"]) // int(cfg.data.batch_size) * int(cfg.train.epochs),
        "probed_steps": probed_steps(outcome.run_dir),
        "probe_steps": list(cfg.probe.steps),
        "landscape_multiples": list(cfg.probe.landscape_steps),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=5, help="5: the CPU experiments' scale")
    p.add_argument("--train-size", type=int, default=5000, help="5000: the CPU experiments'")
    p.add_argument("--test-size", type=int, default=None, help="default: all 10k, as the runs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--norm", default="bn")
    p.add_argument(
        "--steps", type=int, nargs="+", default=None,
        help="probe.steps (default: the composed preset=cpu experiment=ics config's; "
        "steps past the run's end are never probed)",
    )  # fmt: skip
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("results/bench/probes_cpu.json"))
    args = p.parse_args()
    variants = ["none", *(v for v in args.variants if v != "none")]  # the baseline first

    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="bnlab-bench-probes-") as tmp:
        root = Path(tmp)
        # Warm-up: the dataset cache, the allocator, the kernels (a tiny run, not timed).
        warm = overrides(args, "none", root / "warmup")
        timed_run([*warm, "data.train_size=256", "data.test_size=500", "train.epochs=1"])
        for r in range(args.repeats):
            for v in variants:
                runs[v].append(timed_run(overrides(args, v, root / f"r{r}" / v)))
                print(f"repeat {r + 1}/{args.repeats} {v:12s} {runs[v][-1]['total_s']:8.1f} s",
                      flush=True)  # fmt: skip

    def med(v: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[v])

    base = {k: med("none", k) for k in ("total_s", "train_s", "wall_s")}
    steps = runs["none"][0]["steps"]
    step_s = base["train_s"] / max(1, steps)  # one baseline training step
    results: dict[str, dict[str, Any]] = {}
    for v in variants:
        row: dict[str, Any] = {k: round(med(v, k), 2) for k in ("total_s", "train_s", "wall_s")}
        over = med(v, "total_s") - base["total_s"]
        row["overhead_s"] = round(over, 2)
        row["overhead_pct"] = round(100 * over / base["total_s"], 1)
        n = runs[v][0]["probed_steps"]
        if n:
            # ics/landscape run inside the training loop, so their cost is in train_s
            # (the epoch-end probes' is not); with both on, this is the two together.
            per = (med(v, "train_s") - base["train_s"]) / n
            row["step_probes"] = "+".join(k for k in ("ics", "landscape") if k in VARIANTS[v])
            row["probed_steps"] = n
            row["per_probed_step_s"] = round(per, 3)
            row["per_probed_step_in_train_steps"] = round(per / step_s, 2)
        row["repeats_total_s"] = [round(run["total_s"], 2) for run in runs[v]]
        results[v] = row

    header = (
        f"{'variant':12s} {'total s':>8s} {'train_s':>8s} {'wall_s':>8s} {'over s':>8s} "
        f"{'over %':>7s}  per probed step (ics and/or landscape)"
    )
    print(header)
    print("-" * len(header))
    for v, row in results.items():
        per = ""
        if "per_probed_step_s" in row:
            per = (
                f"{row['step_probes']}: {row['per_probed_step_s']:.3f} s x {row['probed_steps']} "
                f"(= {row['per_probed_step_in_train_steps']:.1f} training steps)"
            )
        print(
            f"{v:12s} {row['total_s']:8.1f} {row['train_s']:8.1f} {row['wall_s']:8.1f} "
            f"{row['overhead_s']:8.1f} {row['overhead_pct']:7.1f}  {per}"
        )
    print(
        f"baseline training step: {step_s * 1e3:.0f} ms ({steps} steps). train_s of "
        "activations/bn_stats should equal the baseline's: their difference is the noise."
    )

    first = runs["none"][0]
    result = {
        "device": platform.processor() or platform.machine() or "cpu",
        "torch": torch.__version__,
        "threads": args.threads,
        "norm": args.norm,
        "epochs": args.epochs,
        "train_size": args.train_size,
        "test_size": args.test_size,
        "train_steps": steps,
        "probe_steps": first["probe_steps"],
        "landscape_multiples": first["landscape_multiples"],
        "repeats": args.repeats,
        "baseline_step_ms": round(step_s * 1e3, 1),
        "results": results,
    }
    line = json.dumps(result)
    print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(line + "\n")


if __name__ == "__main__":
    main()
