"""Throughput of the grouped batch-statistics pass by chunk size (a benchmark, not a test).

``bnlab.train.probes.grouped_pass`` (the bn_eval and bn_modes probes) concatenates
batches into chunks and normalises each group of g samples by its own statistics in
one forward per chunk. This times it on a ResNet-20 (BN, channels_last, fp32, random
images) at several chunk sizes and group sizes, next to plain eval and train-mode
forwards at the same batch sizes, on the CPU with ``--threads`` threads.

    python scripts/bench_grouped.py                    # prints a table and one JSON line
    python scripts/bench_grouped.py --out results/bench/cpu_grouped_pass.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import torch

import bnlab.train.probes as probes
from bnlab.build import build_model
from bnlab.compose import load_config
from bnlab.train.runtime import resolve_runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunks", default="1024,256,128")
    parser.add_argument("--groups", default="128,2")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(["preset=smoke"])
    rt = resolve_runtime(cfg.train)
    model = build_model(cfg.model, cfg.norm).to(memory_format=torch.channels_last)
    x = torch.randn(args.images, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.images,))

    def batches(size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, args.images, size):
            yield x[i : i + size], y[i : i + size]

    def rate(fn: object) -> float:
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        return round(args.images / (time.perf_counter() - start), 1)

    rows: list[dict[str, object]] = []
    with torch.no_grad():
        for size in sorted({int(c) for c in args.chunks.split(",")}):
            model.eval()
            rows.append({"what": "eval forward", "batch": size, "img_s": rate(
                lambda s=size: [model(xb) for xb, _ in batches(s)])})  # fmt: skip
    for chunk in [int(c) for c in args.chunks.split(",")]:
        probes.CHUNK_IMAGES[rt.device.type] = chunk
        for g in [int(v) for v in args.groups.split(",")]:

            def grouped(g: int = g) -> None:
                probes.grouped_pass(copy.deepcopy(model), batches(128), g, rt)

            rows.append({"what": "grouped", "chunk": chunk, "group": g, "img_s": rate(grouped)})
    for row in rows:
        print(row)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "threads": args.threads,
        "images": args.images,
        "load_average": os.getloadavg(),
        "rows": rows,
    }
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
