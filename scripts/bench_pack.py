"""Training throughput of packed runs (bnlab.pack), K runs as one module (a benchmark, not a test).

Every configuration trains a pack of K ResNet-20s (BN, width 16, 10 classes; members
seeded 0..K-1, SGD nesterov, lr 0.1, weight decay 5e-4 -- the solo optimizer, read by
PackSGD.from_solo) on random 32x32 images already on the device, through
bnlab.pack.PackTrainer's full step (forward, per-member loss and divergence, backward,
masked SGD, buffer restore). Reported: images/s over all K members. ``solo`` rows
are one unpacked model through the solo loop's step (torch.optim.SGD) at the same
batch, for reference.

Steps per configuration: ``--images`` images over all members (at least 2 steps, at
most ``--steps``), after one warm-up step, timed ``--repeats`` times (the fastest
round counts). On CUDA, ``--graph`` also times the step captured in one CUDA graph
(bnlab.pack.graph.GraphedStep), and ``--precision bf16`` runs under autocast.

    python scripts/bench_pack.py                                   # CPU: the full grid
    python scripts/bench_pack.py --ks 1,4,16 --batches 2,128 --out pack_cpu.json
    python scripts/bench_pack.py --device cuda --precision bf16 --graph --out pack_gpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnlab.config import ModelConfig, OptimConfig
from bnlab.norm_kinds import BatchNormConfig
from bnlab.pack import (
    PackDivergence,
    PackSGD,
    PackTrainer,
    lr_table,
    pack_models,
)
from bnlab.train.fit import build_optimizer

OPTIM = OptimConfig(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="constant")


def build(seed: int) -> nn.Module:
    """One member's solo ResNet-20 (the one call to the repo's builder in this script)."""
    from bnlab.build import build_model

    torch.manual_seed(seed)
    return build_model(ModelConfig(depth=20, width=16), BatchNormConfig())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], Any], steps: int, repeats: int, device: torch.device) -> float:
    """Seconds per step after one warm-up step: the fastest of ``repeats`` rounds.

    The fastest, not the mean: on a shared machine the other processes only ever
    slow a round down, so the fastest round is the closest to the code's own speed.
    """
    step()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def autocast_for(device: torch.device, precision: str) -> Callable[[], Any]:
    if precision == "bf16":
        # cache_enabled=False: a CUDA graph must not capture autocast's weight-cast cache.
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext


def pack_trainer(k: int, device: torch.device, channels_last: bool, precision: str) -> PackTrainer:
    models = [build(seed).to(device) for seed in range(k)]
    net = pack_models(models)  # BN draws no noise: no generators needed
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizers = [build_optimizer(m, OPTIM) for m in models]
    opt = PackSGD.from_solo(net, models, optimizers)
    # A factor no loss reaches: every member trains throughout, as in a healthy sweep.
    guard = PackDivergence(k, 1e30, device)
    table = lr_table([lambda step: OPTIM.lr] * k, 1, device)
    return PackTrainer(net, opt, guard, table, autocast_for(device, precision))


def batch(
    k: int, b: int, device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(b, 3 * k, 32, 32, device=device).contiguous(memory_format=fmt)
    return x, torch.randint(0, 10, (k, b), device=device)


def bench_pack(
    k: int, b: int, device: torch.device, channels_last: bool, precision: str, graph: bool, args
) -> dict[str, Any]:
    trainer = pack_trainer(k, device, channels_last, precision)
    trainer.net.train()
    x, y = batch(k, b, device, channels_last)
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = trainer
    if graph:
        from bnlab.pack.graph import GraphedStep

        step = GraphedStep(trainer, x, y)
    steps = max(2, min(args.steps, args.images // (k * b)))
    seconds = timed(lambda: step(x, y), steps, args.repeats, device)
    return {"mode": "graph" if graph else "eager", "steps": steps, "seconds_per_step": seconds}


def bench_solo(
    b: int, device: torch.device, channels_last: bool, precision: str, args
) -> dict[str, Any]:
    model = build(0).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, OPTIM)
    x, y = batch(1, b, device, channels_last)
    y = y[0]
    autocast = autocast_for(device, precision)

    def step() -> None:  # bnlab.train.loop.train_epoch's step
        with autocast():
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    steps = max(2, min(args.steps, args.images // b))
    seconds = timed(step, steps, args.repeats, device)
    return {"mode": "solo", "steps": steps, "seconds_per_step": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="1,4,8,16,32,64", help="members per pack")
    parser.add_argument("--batches", default="2,128", help="batch size per member")
    parser.add_argument("--formats", default="nchw,cl", help="nchw and/or cl (channels_last)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--graph", action="store_true", help="CUDA: also time the graphed step")
    parser.add_argument("--no-solo", action="store_true", help="skip the solo reference rows")
    parser.add_argument("--images", type=int, default=2048, help="images per timing, all members")
    parser.add_argument("--steps", type=int, default=20, help="at most this many timed steps")
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds; the fastest counts")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch default)")
    parser.add_argument("--out", type=Path, help="write the rows as a JSON file")
    args = parser.parse_args()

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    if use_cuda:
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if use_cuda else platform.processor() or "cpu"
    common = {
        "device": name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "precision": args.precision,
        "model": "resnet20-bn-w16",
    }
    rows: list[dict[str, Any]] = []

    def report(row: dict[str, Any]) -> None:
        row["img_per_s"] = round(row["k"] * row["batch"] / row["seconds_per_step"], 1)
        row["step_ms"] = round(1000 * row.pop("seconds_per_step"), 2)
        rows.append({**common, **row})
        print(
            f"{row['mode']:>5}  K={row['k']:<3} batch={row['batch']:<4} "
            f"{'channels_last' if row['channels_last'] else 'nchw':<13} "
            f"{row['step_ms']:>10.2f} ms/step  {row['img_per_s']:>10.1f} img/s  "
            f"({row['steps']} steps)",
            flush=True,
        )

    ks = [int(v) for v in args.ks.split(",")]
    for b in (int(v) for v in args.batches.split(",")):
        for fmt in args.formats.split(","):
            cl = fmt == "cl"
            if not args.no_solo:
                solo = bench_solo(b, device, cl, args.precision, args)
                report({"k": 1, "batch": b, "channels_last": cl, **solo})
            for k in ks:
                modes = [False, True] if args.graph and use_cuda else [False]
                for graph in modes:
                    result = bench_pack(k, b, device, cl, args.precision, graph, args)
                    report({"k": k, "batch": b, "channels_last": cl, **result})
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
