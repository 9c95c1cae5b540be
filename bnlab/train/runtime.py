"""Where and how a run executes: device, precision, memory format, threads.

One code path for CPU and GPU; these switches only pick sensible defaults
("auto") and check that what was asked for exists.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from bnlab.errors import BnlabError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32
    channels_last: bool
    compile: bool

    @property
    def precision(self) -> str:
        return "bf16" if self.autocast_dtype == torch.bfloat16 else "fp32"

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def describe(self) -> str:
        name = self.device.type
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
        return f"{name} ({self.precision}{', compiled' if self.compile else ''})"


def resolve_runtime(train: Any) -> Runtime:
    """Turn train.device/precision/channels_last/compile/threads into concrete choices."""
    if train.device == "cuda" and not torch.cuda.is_available():
        raise BnlabError("train.device=cuda but no CUDA device is available (try train.device=cpu)")
    use_cuda = train.device == "cuda" or (train.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")

    if train.precision == "bf16":
        dtype: torch.dtype | None = torch.bfloat16
    elif train.precision == "auto" and use_cuda and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16
    else:
        dtype = None

    if train.threads is not None:
        torch.set_num_threads(int(train.threads))
    if use_cuda:
        # Fixed shapes (the last partial training batch is dropped): let cuDNN pick kernels.
        torch.backends.cudnn.benchmark = True
    return Runtime(device, dtype, bool(train.channels_last), bool(train.compile))
