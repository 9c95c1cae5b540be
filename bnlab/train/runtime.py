"""Where and how a run executes: device, precision, memory format, compilation, threads.

One code path for CPU and GPU; these switches only pick sensible defaults
("auto") and check that what was asked for exists. What cannot be had on this
machine (CUDA graphs without CUDA, a compiler that fails) falls back to eager
mode with one warning line on stderr: a run never fails for lack of speed.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from bnlab.errors import BnlabError, warn

# train.compile: false (eager) | true (torch.compile) | "cuda_graphs" (torch.compile with
# mode="reduce-overhead": inductor captures the step in CUDA graphs, which removes the
# per-kernel launch cost that dominates a small ResNet at batch 128 on a GPU).
CUDA_GRAPHS = "cuda_graphs"

# Several runs sharing one GPU (set by the sweep job: joblib n_jobs > 1). Each process
# may then allocate at most this fraction of the GPU's memory, so one run cannot
# starve the others; None: no limit.
_gpu_memory_fraction: float | None = None


def share_gpu(jobs: int) -> None:
    """Declare that `jobs` runs share this machine's GPU (one per process).

    Each gets 90% / jobs of the GPU's memory through the caching allocator's
    per-process limit (the other 10% leaves room for the CUDA contexts, which
    the allocator does not count). Applied when a run resolves a CUDA runtime,
    so a CPU run never initialises CUDA.
    """
    global _gpu_memory_fraction
    _gpu_memory_fraction = 0.9 / jobs if jobs > 1 else None


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32
    channels_last: bool
    compile: bool  # torch.compile the model
    cuda_graphs: bool = False  # ... with mode="reduce-overhead" (CUDA only)

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
        mode = ", CUDA graphs" if self.cuda_graphs else ", compiled" if self.compile else ""
        return f"{name} ({self.precision}{mode})"


def check_device(device: str) -> None:
    """BnlabError (one line) for train.device=cuda on a machine without CUDA."""
    if device == "cuda" and not torch.cuda.is_available():
        raise BnlabError("train.device=cuda but no CUDA device is available (try train.device=cpu)")


class RuntimeRequest(Protocol):
    """What a run asks for; the train config's keys of the same names (cfg.train) are one."""

    device: str  # auto | cpu | cuda
    precision: str  # auto | fp32 | bf16
    channels_last: bool
    compile: Any  # False | True | CUDA_GRAPHS
    threads: int | None  # CPU intra-op threads; None: torch's default


def resolve_runtime(train: RuntimeRequest) -> Runtime:
    """Turn the requested device/precision/channels_last/compile/threads into concrete choices.

    Called once per run, by the recipe, before anything is put on a device; the
    result travels in the training spec (``TrainSpec.runtime``).
    """
    check_device(train.device)
    use_cuda = train.device == "cuda" or (train.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")

    if train.precision == "bf16":
        dtype: torch.dtype | None = torch.bfloat16
    elif train.precision == "auto" and use_cuda and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16
    else:
        dtype = None

    compiled, graphs = bool(train.compile), train.compile == CUDA_GRAPHS
    if graphs and not use_cuda:
        warn(f"train.compile={CUDA_GRAPHS} needs a CUDA device: running in eager mode")
        compiled = graphs = False

    if train.threads is not None:
        torch.set_num_threads(int(train.threads))
    if use_cuda:
        # Fixed shapes (the last partial training batch is dropped): let cuDNN pick kernels.
        torch.backends.cudnn.benchmark = True
        if _gpu_memory_fraction is not None:
            # An index, not torch.device("cuda"): torch 2.11 refuses a device without one.
            index = device.index if device.index is not None else torch.cuda.current_device()
            torch.cuda.set_per_process_memory_fraction(_gpu_memory_fraction, index)
    return Runtime(device, dtype, bool(train.channels_last), compiled, graphs)


Batch = tuple[torch.Tensor, torch.Tensor]


def compile_model(model: nn.Module, rt: Runtime, example: Callable[[], Batch]) -> nn.Module:
    """The module to train and evaluate with: `model` itself, or compiled as `rt` asks.

    torch.compile fails late (at the first forward, the backward at the first
    backward), so a compiled model first runs a trial -- two training steps'
    forward and backward and one evaluation forward on `example()` -- and any
    failure there means eager mode with one warning. The trial leaves no trace:
    weights, buffers (BN running statistics), gradients and every RNG are as before.
    """
    if not rt.compile:
        return model
    mode = "reduce-overhead" if rt.cuda_graphs else None
    # A sweep's worker process trains one run after another, each a new model: without a
    # reset, dynamo's per-function cache fills with guards on earlier models and, at its
    # recompile limit, silently runs the rest in eager mode. (Inductor's on-disk cache
    # stays, so recompiling the same network is quick.)
    torch._dynamo.reset()
    try:
        compiled: nn.Module = torch.compile(model, mode=mode)  # type: ignore[assignment]
        if rt.cuda_graphs:
            compiled = StepMarked(compiled)
        _trial(compiled, model, rt, example())
    except Exception as err:  # any compiler error: eager is correct, only slower
        text = str(err).strip().splitlines()
        warn(
            f"torch.compile failed ({type(err).__name__}: {text[0] if text else ''}): "
            "running in eager mode"
        )
        with contextlib.suppress(Exception):
            torch._dynamo.reset()  # drop half-built graphs and their guards
        return model
    return compiled  # type: ignore[return-value]


class StepMarked(nn.Module):
    """A CUDA-graphed forward that starts a new step at every call.

    CUDA-graph trees (mode="reduce-overhead") reuse the memory of a graph's outputs
    at its next replay; without being told where an iteration begins they treat the
    second training forward as part of the first one's step and refuse to overwrite
    its live outputs ("accessing tensor output of CUDAGraphs that has been overwritten
    by a subsequent run", seen on an H200). bnlab's loops use every output before the
    next call (the loss is backpropagated, the logits reduced), so each call is a step:
    torch.compiler.cudagraph_mark_step_begin says so, as PyTorch's docs advise.
    """

    def __init__(self, compiled: nn.Module) -> None:
        super().__init__()
        self.compiled = compiled  # a child: train()/eval() reach the model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(x)


def _trial(
    compiled: Callable[..., torch.Tensor], model: nn.Module, rt: Runtime, batch: Batch
) -> None:
    x, y = batch
    saved = copy.deepcopy(model.state_dict())
    was_training = model.training
    devices = [rt.device.index or 0] if rt.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            model.train()
            # Twice: CUDA-graph trees run the first call eagerly and record on the second.
            for _ in range(2):
                with rt.autocast():
                    loss = F.cross_entropy(compiled(x).float(), y)
                loss.backward()
            model.eval()
            with torch.no_grad(), rt.autocast():
                compiled(x)
            if rt.device.type == "cuda":
                torch.cuda.synchronize(rt.device)
    finally:
        model.load_state_dict(saved)
        for p in model.parameters():
            p.grad = None
        model.train(was_training)
