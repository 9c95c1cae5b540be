"""Inference latency of ResNet-20: BatchNorm vs BN folded into the convs vs no norm.

All three are eval-mode networks of the same shape; "folded" is the BN model
after ``bnlab.models.fold.fold_bn`` (BN layers gone, conv biases added), and
"none" is ``norm=none`` (conv biases, no norm layers), the floor folding can
reach. Each (model, batch) is warmed up, then timed ``--reps-small`` (batch 1)
or ``--reps-large`` times, interleaved across models, under
torch.inference_mode; the median wall time per forward in ms is reported.
Prints one JSON line (and writes it to --out).

    python scripts/bench_inference.py                       # CPU, batch 1 and 256
    python scripts/bench_inference.py --device cuda --reps-large 50
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from bnlab.build import build_model
from bnlab.config import ModelConfig
from bnlab.models.fold import fold_bn
from bnlab.norm_kinds import BatchNormConfig, NoNormConfig


def _sync(device: torch.device) -> None:
    # CUDA launches are asynchronous: without a sync we'd time the launch, not the work.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ms(model: nn.Module, x: torch.Tensor) -> float:
    _sync(x.device)
    start = time.perf_counter()
    model(x)
    _sync(x.device)
    return (time.perf_counter() - start) * 1e3


def median_ms(
    nets: dict[str, nn.Module], x: torch.Tensor, reps: int, warmup: int
) -> dict[str, float]:
    """Median ms per forward of each net; reps interleaved so that load from other
    processes on a shared machine hits every model alike rather than one of them."""
    times: dict[str, list[float]] = {name: [] for name in nets}
    with torch.inference_mode():
        for net in nets.values():
            for _ in range(warmup):
                net(x)
        for _ in range(reps):
            for name, net in nets.items():
                times[name].append(_time_ms(net, x))
    return {name: statistics.median(t) for name, t in times.items()}


def models(depth: int) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    bn = build_model(ModelConfig(depth=depth), BatchNormConfig())
    # Populate the running statistics so the folded weights are not a near no-op
    # rescale (timing does not depend on it, but the correctness check below does).
    with torch.no_grad():
        for _ in range(2):
            bn(torch.randn(32, 3, 32, 32))
    bn.eval()
    torch.manual_seed(0)
    none = build_model(ModelConfig(depth=depth), NoNormConfig()).eval()
    return {"bn": bn, "folded": fold_bn(bn).model, "none": none}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    p.add_argument("--reps-small", type=int, default=30, help="timed runs at batch 1")
    p.add_argument("--reps-large", type=int, default=5, help="timed runs at larger batches")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    nets = {name: m.to(device) for name, m in models(args.depth).items()}

    # A benchmark of a wrong model is meaningless: check the fold before timing it.
    with torch.inference_mode():
        x = torch.randn(4, 3, 32, 32, device=device)
        torch.testing.assert_close(nets["folded"](x), nets["bn"](x), rtol=1e-3, atol=1e-4)

    results: dict[str, dict[int, float]] = {name: {} for name in nets}
    for batch in args.batches:
        x = torch.randn(batch, 3, 32, 32, device=device)
        reps = args.reps_small if batch == 1 else args.reps_large
        for name, ms in median_ms(nets, x, reps, args.warmup).items():
            results[name][batch] = round(ms, 3)

    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    line = json.dumps(
        {
            "device": device_name,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "depth": args.depth,
            "results": results,
        }
    )
    print(line)
    if args.out:
        args.out.write_text(line + "\n")


if __name__ == "__main__":
    main()
