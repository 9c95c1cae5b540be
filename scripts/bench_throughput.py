"""Training throughput, three pipelines side by side in one process (a benchmark, not a test).

(a) bnlab: DeviceLoader (crop+flip+normalise on the device) + the real train loop
(b) model-only: the same train loop over one batch already in memory (the upper limit)
(c) reference: a torch DataLoader with per-sample transforms (pad-4 crop, flip,
    to-float, normalise, as torchvision's RandomCrop/RandomHorizontalFlip/ToTensor/
    Normalize do), batches moved to the device, the same train loop.

All three run through bnlab.train.loop.train_epoch with the same model, batch
size and optimizer; each is measured `--repeats` times, interleaved, and the
median images/s is reported. Prints one JSON line (and writes it to --out).

    python scripts/bench_throughput.py                       # ResNet-20, batch 128, CPU
    python scripts/bench_throughput.py --device cuda --workers 8
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader

from bnlab.config import BatchNormConfig, DataConfig, ModelConfig, OptimConfig
from bnlab.data import DeviceLoader, load_dataset
from bnlab.models import build_model
from bnlab.train.fit import build_optimizer
from bnlab.train.loop import DivergenceGuard, SilentReporter, train_epoch
from bnlab.train.runtime import Runtime

PAD = 4


class PerSampleDataset(torch.utils.data.Dataset):
    """The conventional pipeline, one PIL image at a time, as torchvision's CIFAR10 +
    RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize do it
    (re-implemented with PIL and numpy because torchvision is not importable here)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean, std) -> None:
        self.x, self.y = x.numpy(), y.tolist()
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.x[i])
        img = ImageOps.expand(img, border=PAD, fill=0)
        top, left = random.randint(0, 2 * PAD), random.randint(0, 2 * PAD)
        img = img.crop((left, top, left + 32, top + 32))
        if random.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        tensor = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return (tensor.float().div(255) - self.mean) / self.std, self.y[i]


class ReferenceLoader:
    """Adapts a DataLoader to the `epoch(e)` interface train_epoch expects."""

    def __init__(self, loader: DataLoader, device: torch.device, steps: int) -> None:
        self.loader, self.device, self.steps = loader, device, steps

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, (x, y) in enumerate(self.loader):
            if i >= self.steps:
                return
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="train steps per measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for (c)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()

    device = torch.device(args.device)
    # The model runs as in a real bnlab run (channels_last), for all three pipelines.
    rt = Runtime(device=device, autocast_dtype=None, channels_last=True, compile=False)
    data = load_dataset(DataConfig(name="cifar10_jpeg"))
    torch.manual_seed(0)
    model = build_model(ModelConfig(depth=args.depth), BatchNormConfig()).to(device)
    model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, OptimConfig(lr=0.05))
    guard = DivergenceGuard(factor=1e9)

    def lr_at(step: int) -> float:
        return 0.05

    device_loader = DeviceLoader(
        data.train_x, data.train_y, args.batch, train=True, augment=True,
        mean=data.mean, std=data.std, device=device, channels_last=True,
    )  # fmt: skip
    x0, y0 = next(device_loader.epoch(0))
    reference = DataLoader(
        PerSampleDataset(data.train_x, data.train_y, data.mean, data.std),
        batch_size=args.batch, shuffle=True, drop_last=True, num_workers=args.workers,
        pin_memory=device.type == "cuda", persistent_workers=args.workers > 0,
    )  # fmt: skip
    pipelines = {
        "a_bnlab": FirstSteps(device_loader, args.steps),
        "b_model_only": RepeatBatch(x0, y0, args.steps),
        "c_reference": ReferenceLoader(reference, device, args.steps),
    }
    # Warm-up: allocator, kernels, the reference pipeline's worker processes.
    for loader in pipelines.values():
        train_epoch(model, loader, 0, optimizer, lr_at, 0, rt, guard, SilentReporter())

    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    for r in range(args.repeats):
        for name, loader in pipelines.items():
            start = time.perf_counter()
            stats = train_epoch(
                model, loader, r + 1, optimizer, lr_at, 0, rt, guard, SilentReporter()
            )
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates[name].append(stats.images / (time.perf_counter() - start))

    median = {name: statistics.median(v) for name, v in rates.items()}
    result = {
        "model": f"resnet{args.depth}",
        "batch": args.batch,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "steps": args.steps,
        "repeats": args.repeats,
        "workers": args.workers,
        **{f"{k}_images_per_s": round(v, 1) for k, v in median.items()},
        "a_over_b": round(median["a_bnlab"] / median["b_model_only"], 3),
        "a_over_c": round(median["a_bnlab"] / median["c_reference"], 3),
    }
    line = json.dumps(result)
    print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")


if __name__ == "__main__":
    main()
