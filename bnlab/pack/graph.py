"""The whole pack step in one CUDA graph: forward, backward, masked SGD, divergence.

A ResNet-20 step at batch 128 is a few hundred small kernels; on an H200 launching
them costs more than running them (the 2026-12-04 probe: 12k img/s eager, 49k img/s
as one graph, K=1 fp32). ``PackTrainer``'s step has no host sync and keeps every
piece of state in tensors it updates in place (lr row, step counter, divergence
mask, statistics), so it can be recorded once and replayed every step: a schedule
change is a different table row, not a recapture.

Capture follows torch's whole-network recipe: a few warm-up steps on a side stream
(cuDNN/cuBLAS pick their kernels, the caching allocator settles), then one step
recorded with the gradients unset, so backward allocates them in the graph's pool.
The warm-up and the capture would change the training state (and the noise
generators' positions); ``PackTrainer.state``/``load_state`` put it back in place,
so the first replay is the real first step.

Untested on a GPU so far (written on a CPU-only machine): scripts/bench_pack.py
``--graph`` exercises it, and a lent GPU should run the member-equals-solo check
through it before runs depend on it.
"""

from __future__ import annotations

import torch

from bnlab.pack.step import PackTrainer


class GraphedStep:
    """``trainer``'s step captured in one CUDA graph; call it like the trainer.

    ``x``/``y`` are example batches of the training shape (packed images, (K, B)
    labels) on the CUDA device; each call copies its batch into static copies of
    them and replays the graph. Returns the static (K,) losses tensor.
    """

    def __init__(
        self, trainer: PackTrainer, x: torch.Tensor, y: torch.Tensor, warmup: int = 3
    ) -> None:
        if x.device.type != "cuda":
            raise ValueError(f"CUDA graphs need CUDA tensors, got {x.device}")
        self.trainer = trainer
        self.x = x.clone()
        self.y = y.clone()
        saved = trainer.state()
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                trainer(self.x, self.y)
        torch.cuda.current_stream(x.device).wait_stream(side)

        self.graph = torch.cuda.CUDAGraph()
        gens = trainer.net.generators or []
        if gens and not hasattr(self.graph, "register_generator_state"):
            raise RuntimeError("noise in a CUDA graph needs torch>=2.5 (register_generator_state)")
        for gen in gens:
            # Non-default generators must be registered, or each replay repeats one draw.
            self.graph.register_generator_state(gen)
        trainer.optimizer.zero_grad()
        with torch.cuda.graph(self.graph):
            self.losses = trainer(self.x, self.y)
        trainer.load_state(saved)
        torch.cuda.synchronize(x.device)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.x.copy_(x, non_blocking=True)
        self.y.copy_(y, non_blocking=True)
        self.graph.replay()
        return self.losses
