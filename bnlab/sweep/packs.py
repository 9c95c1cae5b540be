"""Which runs of a sweep train together as one pack (bnlab.pack), decided before launch.

`sweep.pack=auto|1|N` on the sweep's command line (not a run's config key: a run's
id and folder are the same however it was trained):

- ``1``: every run alone, as before packs existed.
- ``N``: runs that can share a pack (equal ``bnlab.pack.run.pack_key``: the same
  architecture, norm, batch, epochs, data, precision; they differ in seed, lr, weight
  decay, ...) train in packs of at most N, in grid order.
- ``auto`` (the default): N chosen where packing pays, from measurements
  (results/bench): on a CPU only at small batches (batch 2: 2.3x at K=16, batch 8:
  1.6x; batch 128: 0.65x at K=4, slower); on a GPU, up to 64 runs at batch <= 8 and
  32 otherwise (an H200 gave 123k img/s at K=16 and 174k at K=32 against 12k solo at
  batch 128), fewer when a CUDA device here has not the memory for them.

A run that cannot pack (``bnlab.pack.run.solo_reason``: the bn_stats, ics or landscape
probe on, dropout, a sequence model, ...) trains alone whatever the setting.

`sweep.pack_graph=true|false` (default false), also on the sweep's command line: each
pack's whole step in one CUDA graph on a GPU (``bnlab.pack.graph``; eager elsewhere, and
eager with a warning where the capture fails). It sets train.compile=true on the packs'
members only -- what a pack reads as "graph the step" -- so the runs that train alone
stay eager instead of each paying a torch.compile (measured: 23 s, no faster at batch
128). train.compile is not part of a run's id: a run keeps its folder either way.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from omegaconf import OmegaConf

from bnlab.errors import BnlabError

PACK_KEY = "sweep.pack"
GRAPH_KEY = "sweep.pack_graph"
T = TypeVar("T")
AUTO = "auto"
# auto's pack sizes (see the module docstring for the measurements behind them).
CPU_SMALL_BATCH = 8  # at most this batch: packs pay on a CPU
CPU_PACK = 16
GPU_SMALL_BATCH = 8
GPU_PACK_SMALL = 64
GPU_PACK = 32
# A member's GPU memory, rough and on the safe side: ResNet-20 (width 16) keeps about
# 2.2 MB of fp32 activations an image for the backward pass; depth and width scale it.
ACTIVATION_BYTES_PER_IMAGE = 2.2e6
MEMORY_SHARE = 0.5  # of the device's free memory, for all the members together


def split_pack_setting(overrides: Sequence[str]) -> tuple[list[str], str]:
    """(the overrides without sweep.pack=..., the setting: "auto", or a size as text)."""

    def size(value: str | None) -> str:
        if value is None or not (value == AUTO or (value.isdigit() and int(value) >= 1)):
            raise BnlabError(f"{PACK_KEY}={value or ''}: must be auto or a pack size >= 1")
        return value

    return _split(overrides, PACK_KEY, size, AUTO)


def split_pack_graph(overrides: Sequence[str]) -> tuple[list[str], bool]:
    """(the overrides without sweep.pack_graph=..., whether packs train as CUDA graphs)."""

    def flag(value: str | None) -> bool:
        if value is None or value.lower() not in ("true", "false"):
            raise BnlabError(f"{GRAPH_KEY}={value or ''}: must be true or false")
        return value.lower() == "true"

    return _split(overrides, GRAPH_KEY, flag, False)


def _split(
    overrides: Sequence[str], key: str, parse: Callable[[str | None], T], default: T
) -> tuple[list[str], T]:
    """(the overrides without key=..., the last one's value as `parse` reads it, or the
    default): a sweep-level setting, not a run's config key. `parse` gets None for a
    bare key (no '=')."""
    rest, setting = [], default
    for text in overrides:
        name, eq, value = text.partition("=")
        if name.lstrip("+") != key:
            rest.append(text)
            continue
        setting = parse(value if eq else None)
    return rest, setting


def graphed(cfg: Any) -> Any:
    """A copy of a pack member's config that asks for the pack's step in one CUDA graph."""
    return OmegaConf.merge(cfg, {"train": {"compile": True}})


@dataclass(frozen=True)
class Unit:
    """What one launched job trains: one run, or the runs of one pack (grid positions)."""

    nums: tuple[int, ...]

    @property
    def is_pack(self) -> bool:
        return len(self.nums) > 1


def _on_gpu(cfg: Any) -> bool:
    device = str(cfg.train.device)
    if device == "cuda":
        return True
    if device != "auto":
        return False
    import torch

    return torch.cuda.is_available()


def auto_size(cfg: Any) -> int:
    """The largest pack that pays for runs like `cfg` on the device they will use."""
    batch = int(cfg.data.batch_size)
    if not _on_gpu(cfg):
        return CPU_PACK if batch <= CPU_SMALL_BATCH else 1
    size = GPU_PACK_SMALL if batch <= GPU_SMALL_BATCH else GPU_PACK
    import torch

    if torch.cuda.is_available():  # here, not on a SLURM node: its memory is known
        free, _ = torch.cuda.mem_get_info()
        scale = (int(cfg.model.depth) / 20) * (int(cfg.model.width) / 16) ** 2
        member = ACTIVATION_BYTES_PER_IMAGE * scale * batch
        size = max(1, min(size, int(free * MEMORY_SHARE / member)))
    return size


def plan(cfgs: Sequence[Any], setting: str) -> list[Unit]:
    """The units of work for these runs (grid positions 0..n-1), in grid order.

    Runs with the same pack key are packed in grid order, at most the size the setting
    allows; a pack of one is a solo run.
    """
    if setting == "1" or not cfgs:
        return [Unit((n,)) for n in range(len(cfgs))]
    from bnlab.pack.run import pack_key, solo_reason  # imports torch

    groups: dict[Hashable, list[int]] = {}
    order: list[Hashable] = []
    for n, cfg in enumerate(cfgs):
        key = pack_key(cfg) if solo_reason(cfg) is None else None
        slot: Hashable = ("solo", n) if key is None else key
        if slot not in groups:
            groups[slot] = []
            order.append(slot)
        groups[slot].append(n)
    units = []
    for slot in order:
        nums = groups[slot]
        size = int(setting) if setting != AUTO else auto_size(cfgs[nums[0]])
        units += [Unit(tuple(nums[i : i + size])) for i in range(0, len(nums), size)]
    return sorted(units, key=lambda u: u.nums[0])


def labels(units: Sequence[Unit]) -> dict[int, str]:
    """Grid position -> its pack's label ("p<first position>/<size>") for runs in packs."""
    return {n: f"p{u.nums[0]}/{len(u.nums)}" for u in units if u.is_pack for n in u.nums}
