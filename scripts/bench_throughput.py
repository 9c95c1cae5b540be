"""Training throughput: bnlab's pipeline, its limit and a reference (a benchmark, not a test).

Three pipelines, each through bnlab.train.loop.train_epoch with the same model,
batch size and optimizer:

(a) bnlab: DeviceLoader (crop+flip+normalise as batch ops on the device) + the train step
(b) model-only: the same step over one batch already on the device (the upper limit)
(c) reference: a torch DataLoader with per-sample transforms -- torchvision's
    RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize when
    torchvision is importable, else the same with PIL and numpy -- batches moved
    to the device.

Each pipeline runs under every *variant*: precision (fp32, bf16 autocast), memory
format (cl = channels_last, nchw) and mode (eager, compile = torch.compile,
cuda_graphs = torch.compile mode="reduce-overhead"), as bnlab.train.runtime
builds them (a compile that fails falls back to eager and says so in `mode_used`).
Each is measured `--repeats` times, interleaved, and the median images/s kept.

`--scaling 1,2,4,8` measures instead several training processes sharing one
device, as `bnlab sweep hydra/launcher=joblib hydra.launcher.n_jobs=N` runs them:
each process gets cores/N CPU threads and (on a GPU) 90%/N of its memory, trains
with bnlab's loader, and the aggregate images/s of all N is reported.

    python scripts/bench_throughput.py                          # ResNet-20, batch 128, CPU
    python scripts/bench_throughput.py --variants auto --out bench.json   # on a GPU: all
    python scripts/bench_throughput.py --scaling 1,2,4,8 --out scaling.json
    python scripts/bench_throughput.py --profile --variants bf16-cl-eager --steps 50
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue
import random
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader

from bnlab.build import build_model
from bnlab.config import DataConfig, ModelConfig, OptimConfig
from bnlab.data import DeviceLoader, load_dataset
from bnlab.norm_kinds import BatchNormConfig
from bnlab.train.fit import build_optimizer
from bnlab.train.loop import DivergenceGuard, SilentReporter, train_epoch
from bnlab.train.runtime import Runtime, compile_model, resolve_runtime, share_gpu

PAD = 4
Save = Callable[[dict[str, Any]], None]
PRECISIONS, FORMATS, MODES = ("fp32", "bf16"), ("cl", "nchw"), ("eager", "compile", "cuda_graphs")


def reference_transform(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[Any, str]:
    """torchvision's standard CIFAR training transform, or its PIL re-implementation."""
    try:
        from torchvision import transforms as T
    except ImportError:
        return _PilTransform(mean, std), "PIL re-implementation (torchvision not importable)"
    pipeline = T.Compose(
        [
            T.RandomCrop(32, padding=PAD),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
    return pipeline, "torchvision"


class _PilTransform:
    """RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize with PIL/numpy."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        img = ImageOps.expand(img, border=PAD, fill=0)
        top, left = random.randint(0, 2 * PAD), random.randint(0, 2 * PAD)
        img = img.crop((left, top, left + 32, top + 32))
        if random.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        tensor = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return (tensor.float().div(255) - self.mean) / self.std


class PerSampleDataset(torch.utils.data.Dataset):
    """The conventional pipeline: one PIL image at a time through `transform`."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Any) -> None:
        self.x, self.y, self.transform = x.numpy(), y.tolist(), transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(Image.fromarray(self.x[i])), self.y[i]


class ReferenceLoader:
    """Adapts a DataLoader to the `epoch(e)` interface train_epoch expects."""

    def __init__(self, loader: DataLoader, rt: Runtime, steps: int) -> None:
        self.loader, self.rt, self.steps = loader, rt, steps
        self.fmt = torch.channels_last if rt.channels_last else torch.contiguous_format

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = self.rt.device
        for i, (x, y) in enumerate(self.loader):
            if i >= self.steps:
                return
            x = x.to(device, non_blocking=True).contiguous(memory_format=self.fmt)
            yield x, y.to(device, non_blocking=True)


class RepeatBatch:
    """One batch, already on the device, yielded `steps` times: no data cost at all."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
        self.x, self.y, self.steps = x, y, steps

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.steps):
            yield self.x, self.y


class FirstSteps:
    """The first `steps` batches of a DeviceLoader epoch (a full epoch is too long to repeat)."""

    def __init__(self, loader: DeviceLoader, steps: int) -> None:
        self.loader, self.steps = loader, steps

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, batch in enumerate(self.loader.epoch(epoch)):
            if i >= self.steps:
                return
            yield batch


def variants(spec: str, device: torch.device) -> list[tuple[str, str, str]]:
    """'auto' or a comma list of precision-format-mode, e.g. bf16-cl-cuda_graphs."""
    if spec == "auto":
        if device.type != "cuda":
            return [("fp32", "cl", "eager")]
        eager = [(p, f, "eager") for p in PRECISIONS for f in FORMATS]
        return [*eager, ("bf16", "cl", "compile"), ("bf16", "cl", "cuda_graphs")]
    out = []
    for item in spec.split(","):
        parts = tuple(item.split("-"))
        if len(parts) != 3 or parts[0] not in PRECISIONS or parts[1] not in FORMATS:
            raise SystemExit(f"bench_throughput: bad variant {item!r} (e.g. bf16-cl-eager)")
        if parts[2] not in MODES:
            raise SystemExit(f"bench_throughput: bad mode in {item!r} ({', '.join(MODES)})")
        out.append(parts)
    return out  # type: ignore[return-value]


def runtime_for(device: torch.device, precision: str, fmt: str, mode: str) -> Runtime:
    """The Runtime bnlab would resolve for these train.* settings (with its fallbacks)."""
    compile_value: bool | str = {"eager": False, "compile": True, "cuda_graphs": "cuda_graphs"}[
        mode
    ]
    train = SimpleNamespace(
        device=device.type, precision=precision, channels_last=fmt == "cl", compile=compile_value,
        threads=None,
    )  # fmt: skip
    return resolve_runtime(train)


def build(rt: Runtime, depth: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = build_model(ModelConfig(depth=depth), BatchNormConfig()).to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, build_optimizer(model, OptimConfig(lr=0.05))


def timed(forward: Any, loader: Any, optimizer: Any, rt: Runtime, epoch: int) -> float:
    """Images/s of one pass of train_epoch over `loader` (wall clock, device synced)."""
    guard = DivergenceGuard(factor=1e9)
    start = time.perf_counter()
    stats = train_epoch(
        forward, loader, epoch, optimizer, lambda s: 0.05, 0, rt, guard, SilentReporter()
    )
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    return stats.images / (time.perf_counter() - start)


def train_loader(
    data: Any, batch: int, device: torch.device, channels_last: bool, seed: int = 0
) -> DeviceLoader:
    """bnlab's training loader (crop, flip, normalise as batch ops on `device`)."""
    return DeviceLoader(
        data.train_x, data.train_y, batch, train=True, augment=True, mean=data.mean,
        std=data.std, device=device, seed=seed, channels_last=channels_last,
    )  # fmt: skip


def warmed_up(
    args: argparse.Namespace, rt: Runtime, loader: DeviceLoader
) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    """The model, its optimizer and the (compiled) forward, after a few warm-up steps."""
    model, optimizer = build(rt, args.depth)
    forward = compile_model(model, rt, lambda: next(iter(loader.epoch(0))))
    timed(forward, FirstSteps(loader, max(3, args.steps // 5)), optimizer, rt, 0)
    return model, optimizer, forward


def bench_variants(args: argparse.Namespace, device: torch.device, save: Save) -> dict[str, Any]:
    data = load_dataset(DataConfig(name="cifar10_jpeg", train_size=args.train_size))
    transform, transform_name = reference_transform(data.mean, data.std)
    reference = DataLoader(
        PerSampleDataset(data.train_x, data.train_y, transform),
        batch_size=args.batch, shuffle=True, drop_last=True, num_workers=args.workers,
        pin_memory=device.type == "cuda", persistent_workers=args.workers > 0,
    )  # fmt: skip
    rows = []
    for precision, fmt, mode in variants(args.variants, device):
        rt = runtime_for(device, precision, fmt, mode)
        model, optimizer = build(rt, args.depth)
        loader = train_loader(data, args.batch, device, rt.channels_last)
        x0, y0 = next(loader.epoch(0))
        start = time.perf_counter()
        forward = compile_model(model, rt, lambda x0=x0, y0=y0: (x0, y0))
        compile_s = time.perf_counter() - start
        used = mode if forward is not model else "eager"
        pipelines = {
            "a_bnlab": FirstSteps(loader, args.steps),
            "b_model_only": RepeatBatch(x0, y0, args.steps),
            "c_reference": ReferenceLoader(reference, rt, args.steps),
        }
        for pipe in pipelines.values():  # warm-up: allocator, kernels, graphs, workers
            timed(forward, pipe, optimizer, rt, 0)
        rates: dict[str, list[float]] = {name: [] for name in pipelines}
        for r in range(args.repeats):
            for name, pipe in pipelines.items():
                rates[name].append(timed(forward, pipe, optimizer, rt, r + 1))
        median = {name: statistics.median(v) for name, v in rates.items()}
        row = {
            "variant": f"{precision}-{fmt}-{mode}",
            "precision": rt.precision,
            "channels_last": rt.channels_last,
            "mode_used": used,
            "compile_s": round(compile_s, 2),
            **{f"{k}_images_per_s": round(v, 1) for k, v in median.items()},
            "a_over_b": round(median["a_bnlab"] / median["b_model_only"], 3),
            "a_over_c": round(median["a_bnlab"] / median["c_reference"], 3),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        result = {
            "steps": args.steps,
            "repeats": args.repeats,
            "workers": args.workers,
            "reference_transforms": transform_name,
            "train_images": int(data.train_x.shape[0]),
            "variants": rows,
            # The first variant's numbers at the top level, as earlier versions wrote them.
            **{k: v for k, v in rows[0].items() if k.endswith(("_per_s", "_over_b", "_over_c"))},
        }
        save(result)  # after every variant: a time limit keeps what was measured
    return result


def _scaling_worker(args: argparse.Namespace, jobs: int, rank: int, barrier: Any, out: Any) -> None:
    """One of `jobs` processes: set up as a sweep job would, train, report its timing."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, (cores or 1) // jobs))  # as bnlab.sweep.job does
    share_gpu(jobs)
    precision, fmt, mode = variants(args.scaling_variant, torch.device(args.device))[0]
    rt = runtime_for(torch.device(args.device), precision, fmt, mode)
    data = load_dataset(DataConfig(name="cifar10_jpeg", train_size=args.train_size))
    loader = train_loader(data, args.batch, rt.device, rt.channels_last, seed=rank)
    _, optimizer, forward = warmed_up(args, rt, loader)
    barrier.wait()
    start = time.monotonic()  # system-wide clock: comparable across the processes
    rate = timed(forward, FirstSteps(loader, args.steps), optimizer, rt, 1)
    end = time.monotonic()
    peak = torch.cuda.max_memory_allocated(rt.device) if rt.device.type == "cuda" else 0
    images, threads = args.steps * args.batch, torch.get_num_threads()
    out.put(
        {"rank": rank, "start": start, "end": end, "images": images, "images_per_s": rate,
         "threads": threads, "peak_mem_bytes": peak}
    )  # fmt: skip


def _self_time(evt: Any, kind: str) -> float:
    """An op's self time in microseconds ("cpu" or "device"); torch renamed cuda -> device."""
    if kind == "cpu":
        return float(evt.self_cpu_time_total)
    return float(getattr(evt, "self_device_time_total", getattr(evt, "self_cuda_time_total", 0)))


def bench_profile(args: argparse.Namespace, device: torch.device, save: Save) -> dict[str, Any]:
    """Where a training step's time goes: torch.profiler over `--steps` steps of bnlab's
    pipeline (first variant), after a warm-up.

    Kernel launches per step and the device's busy share of the wall time tell a
    launch-bound step (many small kernels, device mostly idle) from a compute-bound one.
    """
    from torch.profiler import ProfilerActivity, profile

    data = load_dataset(DataConfig(name="cifar10_jpeg", train_size=args.train_size))
    precision, fmt, mode = variants(args.variants, device)[0]
    rt = runtime_for(device, precision, fmt, mode)
    loader = train_loader(data, args.batch, device, rt.channels_last)
    model, optimizer, forward = warmed_up(args, rt, loader)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        timed(forward, FirstSteps(loader, args.steps), optimizer, rt, 1)
    wall_us = (time.perf_counter() - start) * 1e6
    averages = prof.key_averages()
    # The runtime/driver API calls that launch kernels; names vary with the CUDA version.
    launch_calls = {
        "cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
        "cudaGraphLaunch",
    }  # fmt: skip
    launches = sum(e.count for e in averages if e.key in launch_calls)
    device_us = sum(_self_time(e, "device") for e in averages)

    def top(kind: str) -> list[dict[str, Any]]:
        ranked = sorted(averages, key=lambda e: _self_time(e, kind), reverse=True)[: args.top]
        return [
            {"op": e.key, "calls_per_step": round(e.count / args.steps, 1),
             "self_us_per_step": round(_self_time(e, kind) / args.steps, 1)}
            for e in ranked if _self_time(e, kind) > 0
        ]  # fmt: skip

    result = {
        "variant": f"{precision}-{fmt}-{mode}",
        "mode_used": mode if forward is not model else "eager",
        "profiled_steps": args.steps,
        "wall_ms_per_step": round(wall_us / args.steps / 1000, 3),
        "device_busy_ms_per_step": round(device_us / args.steps / 1000, 3),
        "device_busy_share": round(device_us / wall_us, 3) if device.type == "cuda" else None,
        "kernel_launches_per_step": round(launches / args.steps, 1),
        "top_cpu_ops": top("cpu"),
        "top_device_ops": top("device") if device.type == "cuda" else [],
    }
    save(result)
    return result


def _collect(procs: list[Any], out: Any, timeout: float) -> list[dict[str, Any]]:
    """Every worker's result; stop all of them as soon as one fails.

    A worker that dies (e.g. an exception before the barrier) would otherwise leave
    the parent waiting on the queue, and the others on the barrier, until the timeout.
    """
    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(results) < len(procs):
        try:
            results.append(out.get(timeout=1.0))
            continue
        except queue.Empty:
            pass
        failed = [p for p in procs if p.exitcode not in (None, 0)]
        if failed or time.monotonic() > deadline:
            for p in procs:
                p.terminate()
            why = f"exit code {failed[0].exitcode}" if failed else f"no result in {timeout:g} s"
            raise SystemExit(f"bench_throughput: a scaling worker failed ({why}); see above")
    for p in procs:
        p.join()
    return results


def bench_scaling(args: argparse.Namespace, save: Save) -> dict[str, Any]:
    load_dataset(DataConfig(name="cifar10_jpeg"))  # decode/cache once, not in every process
    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
    rows = []
    for jobs in [int(n) for n in args.scaling.split(",")]:
        barrier, out = ctx.Barrier(jobs), ctx.Queue()
        procs = [
            ctx.Process(target=_scaling_worker, args=(args, jobs, rank, barrier, out))
            for rank in range(jobs)
        ]
        for p in procs:
            p.start()
        results = _collect(procs, out, args.timeout)
        span = max(r["end"] for r in results) - min(r["start"] for r in results)
        row = {
            "jobs": jobs,
            "aggregate_images_per_s": round(sum(r["images"] for r in results) / span, 1),
            "per_job_images_per_s": [round(r["images_per_s"], 1) for r in results],
            "threads_per_job": results[0]["threads"],
            "peak_mem_mib_per_job": round(max(r["peak_mem_bytes"] for r in results) / 2**20, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        base = rows[0]["aggregate_images_per_s"] / rows[0]["jobs"]
        for r in rows:
            r["speedup_over_one_job"] = round(r["aggregate_images_per_s"] / base, 2)
        result = {"variant": args.scaling_variant, "steps_per_job": args.steps, "scaling": rows}
        save(result)  # after every job count: a time limit keeps what was measured
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="train steps per measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for (c)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--variants", default="fp32-cl-eager", help="'auto' or e.g. bf16-cl-eager,...")
    p.add_argument("--train-size", type=int, default=None, help="a class-balanced subset")
    p.add_argument("--scaling", default=None, help="e.g. 1,2,4,8: processes sharing the device")
    p.add_argument("--scaling-variant", default="auto", help="auto: bf16-cl-eager on a GPU")
    p.add_argument("--timeout", type=float, default=600, help="scaling: seconds per process")
    p.add_argument(
        "--profile", action="store_true", help="torch.profiler: where a step's time goes"
    )
    p.add_argument("--top", type=int, default=12, help="profile: ops listed per table")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    device = torch.device(args.device)
    if args.scaling_variant == "auto":  # what a sweep's runs use: bf16 autocast on a GPU
        args.scaling_variant = "bf16-cl-eager" if device.type == "cuda" else "fp32-cl-eager"
    result: dict[str, Any] = {
        "model": f"resnet{args.depth}",
        "batch": args.batch,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }

    def save(part: dict[str, Any]) -> None:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result | part) + "\n")

    if args.scaling:
        result |= bench_scaling(args, save)
    elif args.profile:
        result |= bench_profile(args, device, save)
    else:
        result |= bench_variants(args, device, save)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
