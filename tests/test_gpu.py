"""On a CUDA device (`pytest -m gpu`; skipped elsewhere): the GPU path gives CPU-path answers.

Compiled and CUDA-graph evaluation equal eager evaluation; a resumed CUDA run equals
an uninterrupted one (its checkpoint carries the CUDA RNG, which bn_noisy draws
from); divergence is still detected under bf16 autocast; a pack's step captured in one
CUDA graph trains as the eager step does (fp32, and bf16 channels_last as preset=gpu
runs it). Run by scripts/gpu_check.sh.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from bnlab.build import build_model
from bnlab.compose import load_config
from bnlab.config import DataConfig, ModelConfig
from bnlab.data import DeviceLoader, load_dataset
from bnlab.norm_kinds import BatchNormConfig
from bnlab.recipe import train
from bnlab.train.loop import evaluate
from bnlab.train.runtime import compile_model, resolve_runtime

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
SMOKE = ["preset=smoke", "train.device=cuda"]


class StopAfter:
    """A reporter that interrupts the run (as Ctrl-C would) when epoch `epochs + 1` starts."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        if epoch > self.epochs:
            raise KeyboardInterrupt  # fit lets it through; the checkpoint stays

    def step(self) -> None:
        pass

    def epoch_end(self, row: dict[str, float]) -> None:
        pass


def metrics(run: Path) -> list[list[float]]:
    """metrics.csv without its header and timing columns (time_s, images_per_s, elapsed_s)."""
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    return [[float(v) for v in line.split(",")[:6]] for line in rows]


@pytest.fixture(autouse=True)
def deterministic(monkeypatch):
    # Same process, same shapes: cuDNN's autotuner cache picks the same kernels for
    # both runs; deterministic kernels make them bit-equal (no atomics in the backward).
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)


@pytest.mark.parametrize("mode", ["true", "cuda_graphs"])
def test_compiled_eval_equals_eager_eval(mode):
    cfg = load_config([*SMOKE, "train.precision=fp32", f"train.compile={mode}"])
    rt = resolve_runtime(cfg.train)
    assert rt.compile and rt.cuda_graphs == (mode == "cuda_graphs")
    data = load_dataset(DataConfig(name="cifar10_jpeg", train_size=512, test_size=1000))
    torch.manual_seed(0)
    model = build_model(ModelConfig(depth=20), BatchNormConfig()).to(rt.device)
    model = model.to(memory_format=torch.channels_last)
    # Non-trivial running statistics: a few training-mode passes.
    loader = DeviceLoader(
        data.train_x, data.train_y, 128, train=True, augment=True, mean=data.mean,
        std=data.std, device=rt.device, channels_last=True,
    )  # fmt: skip
    model.train()
    with torch.no_grad():
        for x, _ in loader.epoch(0):
            model(x)
    test = DeviceLoader(
        data.test_x, data.test_y, 256, train=False, augment=False, mean=data.mean,
        std=data.std, device=rt.device, channels_last=True,
    )  # fmt: skip
    eager_loss, eager_acc = evaluate(model, test, rt)
    forward = compile_model(model, rt, lambda: next(iter(loader.epoch(0))))
    assert forward is not model, "compilation fell back to eager mode"
    # Twice: CUDA graphs replay from the second call on; the last batch has another shape.
    for _ in range(2):
        loss, acc = evaluate(forward, test, rt)
        assert loss == pytest.approx(eager_loss, rel=1e-3)
        assert abs(acc - eager_acc) <= 2 / 1000  # an image or two may flip on a tie


@pytest.mark.parametrize("norm", ["bn", "bn_noisy"])
def test_resumed_cuda_run_equals_uninterrupted(tmp_path, norm):
    args = [*SMOKE, f"norm={norm}", "train.epochs=3", "train.precision=fp32"]
    straight = train(load_config([*args, f"paths.runs={tmp_path / 'a'}"]))
    assert straight.status == "completed"
    cut = load_config([*args, f"paths.runs={tmp_path / 'b'}"])
    with pytest.raises(KeyboardInterrupt):
        train(cut, StopAfter(1))
    resumed = train(cut)
    assert resumed.resumed_from == 1
    # Bit-equal where cuDNN is deterministic; the tolerance only absorbs rounding. Without
    # the CUDA RNG in the checkpoint, bn_noisy's epochs 2-3 would replay epoch 1's noise.
    for got, want in zip(metrics(resumed.run_dir), metrics(straight.run_dir), strict=True):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_checkpoint_carries_the_cuda_rng(tmp_path):
    outcome = train(load_config([*SMOKE, "train.epochs=1", f"paths.runs={tmp_path}"]))
    state = torch.load(outcome.run_dir / "checkpoint.pt", weights_only=True)
    assert isinstance(state["cuda_rng"], torch.Tensor) and state["cuda_rng"].dtype == torch.uint8


def test_bf16_divergence_is_detected(tmp_path):
    cfg = load_config(
        [*SMOKE, "norm=none", "optim.lr=50", "train.precision=bf16", f"paths.runs={tmp_path}"]
    )
    outcome = train(cfg)
    summary = json.loads((outcome.run_dir / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_epoch"] == 1
    assert "bf16" in summary["device"]


# ----------------------------------------------------------------------------- packs


def _cuda_pack(k: int, steps: int, sweep_like: bool = False):  # -> PackTrainer
    """K ResNet-8 members (width 8, BN) on the GPU, each from its own seed, SGD with
    momentum and weight decay at a per-member lr that changes every step (a schedule:
    a new row of the lr table each step; bnlab.pack, as scripts/bench_pack.py).
    sweep_like: as preset=gpu trains a pack, channels_last under bf16 autocast (casts
    not cached, as bnlab.pack.run does for a graph)."""
    from bnlab.config import OptimConfig
    from bnlab.pack import PackDivergence, PackSGD, PackTrainer, lr_table, pack_models
    from bnlab.train.fit import build_optimizer

    device = torch.device("cuda")
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        models.append(build_model(ModelConfig(depth=8, width=8), BatchNormConfig()).to(device))
    net = pack_models(models)
    if sweep_like:
        net = net.to(memory_format=torch.channels_last)
    optim = OptimConfig(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    opt = PackSGD.from_solo(net, models, [build_optimizer(m, optim) for m in models])
    rates = [lambda step, i=i: 0.05 * (i + 1) / (1 + step) for i in range(k)]
    autocast = (
        functools.partial(torch.autocast, "cuda", dtype=torch.bfloat16, cache_enabled=False)
        if sweep_like
        else None
    )
    guard = PackDivergence(k, 10.0, device)
    return PackTrainer(net, opt, guard, lr_table(rates, steps, device), autocast)


@pytest.mark.parametrize("sweep_like", [False, True], ids=["fp32", "bf16-channels-last"])
def test_a_pack_step_in_one_cuda_graph_equals_the_eager_step(sweep_like):
    """bnlab.pack.graph.GraphedStep (written on a CPU-only machine): replaying the captured
    step trains every member as the eager step does -- parameters, running statistics
    and losses within rounding (cuDNN may pick other kernels), over 5 steps of a
    changing lr. scripts/gpu_check.sh sweeps with sweep.pack_graph=true only after this
    passed on its machine."""
    from bnlab.pack import pack_batch, unpack_state
    from bnlab.pack.graph import GraphedStep

    k, steps = 4, 5
    gen = torch.Generator().manual_seed(0)
    data = [
        pack_batch(
            [
                (
                    torch.randn(16, 3, 32, 32, generator=gen),
                    torch.randint(0, 10, (16,), generator=gen),
                )
                for _ in range(k)
            ]
        )
        for _ in range(steps)
    ]
    layout = torch.channels_last if sweep_like else torch.contiguous_format
    data = [(x.cuda().contiguous(memory_format=layout), y.cuda()) for x, y in data]
    eager, graphed = _cuda_pack(k, steps, sweep_like), _cuda_pack(k, steps, sweep_like)
    eager.net.train()
    graphed.net.train()
    step = GraphedStep(graphed, *data[0])
    # bf16: the same casts either way, but kernels may differ: bf16's rounding, not fp32's.
    rtol, atol = (1e-2, 1e-3) if sweep_like else (1e-4, 1e-5)
    for x, y in data:
        want = eager(x, y).clone()
        got = step(x, y).clone()
        torch.testing.assert_close(got, want, rtol=rtol, atol=10 * atol)
    torch.testing.assert_close(graphed.lr, eager.lr)  # the schedule's last row, both
    for i in range(k):
        a, b = unpack_state(eager.net, i), unpack_state(graphed.net, i)
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=rtol, atol=atol, msg=name)
