"""Training throughput of the noisy and ghost norms against BN (a benchmark, not a test).

ResNet-20 (model=resnet, 16 channels), one batch of real CIFAR-10 images already
on the device (the model-only step of scripts/bench_throughput.py: forward,
cross-entropy, backward, SGD step), channels_last, fp32, ``--threads`` CPU
threads. One variant per norm setting:

    bn             norm=bn (the reference)
    bn_noisy       norm=bn_noisy at its defaults (Santurkar et al.'s noise after BN)
    none_noisy     norm=none_noisy (the noise without BN)
    none           norm=none
    ghost_bn2/4    norm=ghost_bn norm.virtual_batch=2 / 4 (per-sub-batch statistics)
    bn_noisy_rev1  bn_noisy with model.revision 1's noise draw (per activation
                   U(-.5, .5) and N(0, 1) through plain autograd), for the before/after

Each variant trains `--steps` steps per measurement after `--warmup`; the
variants are interleaved (in a rotated order) in each of `--repeats` rounds, and
each variant's fastest round is kept (on a shared machine the fastest is the least
disturbed) next to its median; the load average before and after is recorded.
Prints a table and one JSON line (and writes it to --out).

    python scripts/bench_noise.py --out results/bench/cpu_noise_resnet20_b128.json
    python scripts/bench_noise.py --steps 2 --repeats 2 --variants bn,bn_noisy   # quick
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bnlab.build import build_model
from bnlab.compose import load_config
from bnlab.data import load_dataset
from bnlab.models import norms as norms_module

VARIANTS: dict[str, list[str]] = {
    "bn": ["norm=bn"],
    "bn_noisy": ["norm=bn_noisy"],
    "none_noisy": ["norm=none_noisy"],
    "none": ["norm=none"],
    "ghost_bn2": ["norm=ghost_bn", "norm.virtual_batch=2"],
    "ghost_bn4": ["norm=ghost_bn", "norm.virtual_batch=4"],
    "bn_noisy_rev1": ["norm=bn_noisy"],
}


def _revision1_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """ActivationNoise.forward as model.revision 1 drew it (for the comparison only)."""
    if not self.training:
        return x
    shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
    mu = x.new_empty(shape).uniform_(-self.noise_mean, self.noise_mean)
    sigma = x.new_empty(shape).uniform_(1.0, 1.0 + self.noise_scale)
    j = self.noise_jitter
    s = sigma * (1 + j * torch.empty_like(x).uniform_(-0.5, 0.5))
    m = mu + j * sigma * torch.randn_like(x)
    return x * s + m


@contextlib.contextmanager
def noise_of(variant: str) -> Iterator[None]:
    cls = norms_module.ActivationNoise
    current = cls.forward
    if variant.endswith("_rev1"):
        cls.forward = _revision1_forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        cls.forward = current  # type: ignore[method-assign]


class Bench:
    def __init__(self, variant: str, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        cfg = load_config(VARIANTS[variant])
        torch.manual_seed(0)
        self.variant = variant
        self.model = build_model(cfg.model, cfg.norm).to(memory_format=torch.channels_last)
        self.model.train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.x, self.y = batch

    def steps(self, n: int) -> tuple[float, float]:
        """Images per second over n training steps, by the wall clock and by the CPU
        time of this process (all its threads: at --threads 1 the work itself, hardly
        changed by other processes sharing the cores)."""
        with noise_of(self.variant):
            start, cpu = time.perf_counter(), time.process_time()
            for _ in range(n):
                loss = F.cross_entropy(self.model(self.x), self.y)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
        images = n * self.x.shape[0]
        return images / seconds, images / cpu_seconds


def real_batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `size` training images of the bundled CIFAR-10, normalised, channels_last."""
    data = load_dataset(load_config([]).data)
    x = data.train_x[:size].permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
    return x, data.train_y[:size]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5, help="training steps per measurement")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, of: "
                   + ", ".join(VARIANTS))  # fmt: skip
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")

    torch.set_num_threads(args.threads)
    batch = real_batch(args.batch)
    benches = {n: Bench(n, batch) for n in names}
    for bench in benches.values():
        bench.steps(args.warmup)
    rates: dict[str, list[float]] = {n: [] for n in names}
    cpu_rates: dict[str, list[float]] = {n: [] for n in names}
    load_before = os.getloadavg()
    for r in range(args.repeats):
        # Rotated each round: on a shared machine no variant is always the one measured
        # right after the same neighbour (or first).
        for name in names[r % len(names) :] + names[: r % len(names)]:
            wall, cpu = benches[name].steps(args.steps)
            rates[name].append(wall)
            cpu_rates[name].append(cpu)
    load_after = os.getloadavg()

    base = max(rates["bn"]) if "bn" in rates else None
    cpu_base = max(cpu_rates["bn"]) if "bn" in cpu_rates else None
    rows = []
    print(f"{'variant':<15} {'best img/s':>10} {'median':>8} {'bn / it':>8} {'img/cpu-s':>10} "
          f"{'bn / it':>8}")  # fmt: skip
    for name in names:
        best, cpu_best = max(rates[name]), max(cpu_rates[name])
        row = {
            "variant": name,
            "overrides": VARIANTS[name],
            "best_images_per_s": round(best, 1),
            "median_images_per_s": round(statistics.median(rates[name]), 1),
            "all_images_per_s": [round(r, 1) for r in rates[name]],
            "slowdown_vs_bn": round(base / best, 2) if base else None,
            "best_images_per_cpu_s": round(cpu_best, 1),
            "cpu_slowdown_vs_bn": round(cpu_base / cpu_best, 2) if cpu_base else None,
        }
        rows.append(row)
        slow = f"{row['slowdown_vs_bn']:.2f}" if base else "-"
        cpu_slow = f"{row['cpu_slowdown_vs_bn']:.2f}" if cpu_base else "-"
        print(f"{name:<15} {best:>10.1f} {row['median_images_per_s']:>8.1f} {slow:>8} "
              f"{cpu_best:>10.1f} {cpu_slow:>8}")  # fmt: skip
    result = {
        "benchmark": "bench_noise",
        "model": "ResNet-20, channels_last, fp32, one real CIFAR-10 batch on the device",
        "batch": args.batch,
        "threads": args.threads,
        "steps": args.steps,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "load_avg_1_5_15_before": [round(v, 2) for v in load_before],
        "load_avg_1_5_15_after": [round(v, 2) for v in load_after],
        "rows": rows,
    }
    line = json.dumps(result)
    print(line)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
