"""Packed runs (bnlab.pack): a member of a pack equals the same run trained alone.

The reference is the solo code itself: the repo's model builder, its
``build_optimizer`` and its ``train_epoch`` (each called from one helper below, so
only that helper changes if its import moves). Members differ in seed (so weights,
data and noise), init scale, lr (on a cosine schedule: a new lr every step), weight
decay; SGD with momentum 0.9, nesterov.

Tolerances. float64: 1e-9 (grouped and dense convolutions sum in different orders;
measured: at most 7e-15 after 3 steps; the solo loop's float32 loss gives both the
same gradient, its value may differ in the last bit). float32: a member may differ
from its solo run by up to 10x that run's own float32 noise floor -- how far the same
solo run lands when every non-zero initial weight moves up by one ulp -- and at least
1e-6. Packing changes only the order of float32 sums (about 1e-6 on the logits at
init), which the training dynamics then amplify much as they amplify a one-ulp
change of the weights: measured over 5 seed sets x 12 cases, the pack's distance was
0.1-1.5x the floor (5.4x once: instance norm over 2x2 maps), while a fixed tolerance
would need 1e-3 for the worst case (in, none_noisy) and would be loose for all the
rest. The members themselves differ by > 100x it.
Every kind runs in float64 (ghost_bn and batch_renorm compute their statistics in
the input's precision for float64: norms.stats_dtype); their layers alone are also
compared in float32 below, where packing changes nothing (bit-identical).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import nn

from bnlab import norm_kinds as nk
from bnlab.config import ModelConfig, OptimConfig
from bnlab.models.norms import BatchRenorm2d, GhostBatchNorm2d
from bnlab.pack import (
    PackDivergence,
    PackedNet,
    PackError,
    PackSGD,
    PackTrainer,
    capture_generator,
    evaluate_pack,
    lr_table,
    pack_batch,
    pack_models,
    pack_state,
    unpack_state,
)
from bnlab.recipe import build_schedule

K = 3
SEEDS = (0, 1, 2)
LRS = (0.05, 0.1, 0.2)
WEIGHT_DECAYS = (0.0, 5e-4, 1e-3)
INIT_SCALES = (1.0, 0.8, 1.2)
BATCH, SIZE, STEPS = 4, 8, 3

# (norm config, init) for every norm kind and the two norm-free residual inits.
CASES: dict[str, tuple[nk.NormConfig, str]] = {
    "bn": (nk.BatchNormConfig(), "kaiming"),
    "none": (nk.NoNormConfig(), "kaiming"),
    "gn": (nk.GroupNormConfig(groups=2), "kaiming"),
    "ln": (nk.LayerNormConfig(), "kaiming"),
    "in": (nk.InstanceNormConfig(), "kaiming"),
    "ghost_bn": (nk.GhostBatchNormConfig(virtual_batch=2), "kaiming"),
    # warmup_steps=2: the r/d limits change during the test (per-member step counts).
    "batch_renorm": (nk.BatchRenormConfig(warmup_steps=2), "kaiming"),
    "bn_noisy": (nk.NoisyBatchNormConfig(), "kaiming"),
    "none_noisy": (nk.NoisyNoNormConfig(), "kaiming"),
    "weight_norm": (nk.WeightNormConfig(), "kaiming"),
    "fixup": (nk.NoNormConfig(), "fixup"),
    "skipinit": (nk.NoNormConfig(), "skipinit"),
}


# Tiny tensors: one torch thread for every test here (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- the solo code


def build(model: ModelConfig, norm: nk.NormConfig) -> nn.Module:
    """The repo's model builder (the one call to it in this file)."""
    from bnlab.build import build_model

    return build_model(model, norm)


def solo_optimizer(model: nn.Module, optim: OptimConfig, init: str) -> torch.optim.Optimizer:
    """The solo run's SGD, as bnlab.train.fit builds it (Fixup's scalar-lr group included)."""
    from bnlab.train.fit import build_optimizer

    return build_optimizer(model, optim, False, init)


class _Batches:
    """A stand-in for DeviceLoader: the same batches every epoch."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.batches)


def solo_train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    optim: OptimConfig,
    factor: float = 10.0,
) -> Any:
    """One epoch of the solo loop (bnlab.train.loop.train_epoch) over ``batches``."""
    from bnlab.train.loop import DivergenceGuard, SilentReporter, train_epoch
    from bnlab.train.runtime import Runtime

    rt = Runtime(torch.device("cpu"), None, channels_last=False, compile=False)
    return train_epoch(
        model, _Batches(batches), 0, optimizer, lr_at(optim), 0, rt,
        DivergenceGuard(factor), SilentReporter(),
    )  # fmt: skip


def lr_at(optim: OptimConfig, steps: int = STEPS) -> Any:
    """The solo run's lr (TrainSpec.lr_at), for a run of ``steps`` steps in one epoch."""
    schedule = build_schedule(optim, epochs=1, steps_per_epoch=steps)
    return lambda step: optim.lr * schedule.factor(step)


# ----------------------------------------------------------------------------- fixtures


def optim_config(i: int, lr: float | None = None, case: str = "") -> OptimConfig:
    # Noise without a norm layer compounds over depth: smaller steps, or it diverges.
    scale = 0.1 if case == "none_noisy" else 1.0
    return OptimConfig(
        lr=LRS[i] * scale if lr is None else lr,
        momentum=0.9,
        nesterov=True,
        weight_decay=WEIGHT_DECAYS[i],
        schedule="cosine",
    )


def member_model(
    case: str, i: int, dtype: torch.dtype, channels_last: bool = False
) -> tuple[nn.Module, torch.Generator]:
    """Member i's solo model, seeded as the solo run seeds it, and its noise generator."""
    norm, init = CASES[case]
    torch.manual_seed(SEEDS[i])
    model = build(ModelConfig(depth=8, width=4, init=init, init_scale=INIT_SCALES[i]), norm)
    model = model.to(dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, capture_generator("cpu")


def member_batches(
    i: int, dtype: torch.dtype, channels_last: bool = False
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Member i's own data: different images and labels for every member."""
    gen = torch.Generator().manual_seed(100 + i)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return [
        (
            torch.randn(BATCH, 3, SIZE, SIZE, generator=gen, dtype=dtype).contiguous(
                memory_format=fmt
            ),
            torch.randint(0, 10, (BATCH,), generator=gen),
        )
        for _ in range(STEPS)
    ]


def make_pack(
    case: str,
    dtype: torch.dtype,
    optims: list[OptimConfig],
    channels_last: bool = False,
    members: tuple[int, ...] = tuple(range(K)),
) -> PackTrainer:
    """A trainer for the pack of ``members``, built from their solo models and optimizers."""
    built = [member_model(case, i, dtype, channels_last) for i in members]
    models = [m for m, _ in built]
    net = pack_models(models, [g for _, g in built])
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    init = CASES[case][1]
    opt = PackSGD.from_solo(
        net, models, [solo_optimizer(m, o, init) for m, o in zip(models, optims, strict=True)]
    )
    guard = PackDivergence(len(members), 10.0)
    return PackTrainer(net, opt, guard, lr_table([lr_at(o) for o in optims], STEPS))


def train_pack(trainer: PackTrainer, data: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> None:
    trainer.net.train()
    for t in range(len(data[0])):
        trainer(*pack_batch([d[t] for d in data]))


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert list(a) == list(b)
    return max((a[n].double() - b[n].double()).abs().max().item() for n in a)


def momentum(opt_state: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {str(i): s["momentum_buffer"] for i, s in sorted(opt_state["state"].items())}


# ----------------------------------------------------------------------------- member == solo


def solo_run(
    case: str,
    i: int,
    dtype: torch.dtype,
    optim: OptimConfig,
    data: list[tuple[torch.Tensor, torch.Tensor]],
    channels_last: bool = False,
    nudge: bool = False,
) -> tuple[nn.Module, dict[str, torch.Tensor], Any]:
    """Member i trained alone: (model, its state with its momentum, the epoch's stats).

    ``nudge``: every non-zero initial weight one ulp up -- the float32 noise floor.
    """
    model, _ = member_model(case, i, dtype, channels_last)  # re-seeds the global RNG
    if nudge:
        with torch.no_grad():
            for p in model.parameters():
                up = torch.nextafter(p, torch.full_like(p, float("inf")))
                p.copy_(torch.where(p != 0, up, p))  # zeros (Fixup's) stay exact zeros
    optimizer = solo_optimizer(model, optim, CASES[case][1])
    stats = solo_train(model, optimizer, data, optim)
    assert not stats.diverged and stats.steps == STEPS
    return model, {**model.state_dict(), **momentum(optimizer.state_dict())}, stats


def pack_member_state(trainer: PackTrainer, i: int) -> dict[str, torch.Tensor]:
    return {**unpack_state(trainer.net, i), **momentum(trainer.optimizer.member_state_dict(i))}


def compare_with_solo(
    case: str, dtype: torch.dtype, tol: float | None, channels_last: bool = False
) -> None:
    """Train K members packed and each alone; their states, stats and losses must agree.

    ``tol`` None (float32): 10x the float32 noise floor of that member's solo run, i.e.
    how far the same run lands when its initial weights move by one ulp.
    """
    optims = [optim_config(i, case=case) for i in range(K)]
    data = [member_batches(i, dtype, channels_last) for i in range(K)]
    trainer = make_pack(case, dtype, optims, channels_last)
    train_pack(trainer, data)
    probe = member_batches(9, dtype, channels_last)[:1]  # a common evaluation batch
    pack_loss, _ = evaluate_pack(trainer.net, probe)
    means = trainer.stats.means()
    solo_states, tols = [], []
    for i in range(K):
        model, solo, stats = solo_run(case, i, dtype, optims[i], data[i], channels_last)
        if tol is None:
            _, nudged, _ = solo_run(case, i, dtype, optims[i], data[i], channels_last, True)
            tols.append(max(1e-6, 10 * max_diff(nudged, solo)))
        else:
            tols.append(tol)
        assert max_diff(pack_member_state(trainer, i), solo) <= tols[i], "weights/stats/momentum"

        loss, acc, images = means[i]
        # fp32 losses in both loops (logits.float()), summed in another order: a few ulps.
        assert loss == pytest.approx(stats.train_loss, rel=max(tols[i], 1e-6))
        assert images == stats.images
        assert acc == pytest.approx(stats.train_acc, abs=1.0 / BATCH / STEPS)
        assert float(trainer.lr[i]) == stats.lr  # the last step's lr, the same number

        model.eval()
        with torch.no_grad():
            logits = model(probe[0][0])
        ce = nn.functional.cross_entropy(logits.float(), probe[0][1]).item()
        assert abs(float(pack_loss[i]) - ce) <= max(tols[i], 1e-6)  # fp32, as the solo's
        solo_states.append(solo)
    # The comparison can tell members apart: members differ by far more than the tolerance.
    assert max_diff(pack_member_state(trainer, 0), solo_states[1]) > 100 * max(tols)


@pytest.mark.parametrize("case", CASES)
def test_member_equals_solo_float64(case: str) -> None:
    compare_with_solo(case, torch.float64, 1e-9)


@pytest.mark.parametrize("case", list(CASES))
def test_member_equals_solo_float32(case: str) -> None:
    compare_with_solo(case, torch.float32, None)


@pytest.mark.parametrize("case", ["bn", "bn_noisy", "none_noisy", "fixup"])
def test_member_equals_solo_channels_last(case: str) -> None:
    # Noise is drawn in the activation's memory format: channels_last fills differently.
    compare_with_solo(case, torch.float64, 1e-9, channels_last=True)


@pytest.mark.parametrize(
    "layer",
    [
        lambda: nn.BatchNorm2d(4),
        lambda: GhostBatchNorm2d(4, virtual_batch=2),
        lambda: BatchRenorm2d(4, r_max=3.0, d_max=5.0, warmup_steps=2),
        lambda: nn.GroupNorm(2, 4),
    ],
    ids=["bn", "ghost_bn", "batch_renorm", "gn"],
)
def test_norm_layers_pack_bit_identically_in_float32(layer) -> None:
    """Each channel's statistics see the same numbers in the same order, packed or not."""
    torch.manual_seed(0)
    solos = [layer() for _ in range(K)]
    for i, s in enumerate(solos):  # distinct affines, running statistics, step counts
        for t in s.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.rand_like(t))
            else:
                t.fill_(i)  # batch renorm's warm-up: each member at its own point
    net = pack_models(solos)
    xs = [torch.randn(8, 4, 5, 5) for _ in range(K)]
    for _ in range(3):
        out = net(torch.cat(xs, dim=1)).unflatten(1, (K, 4))
        for i, s in enumerate(solos):
            assert torch.equal(out[:, i], s(xs[i]))
    for i, s in enumerate(solos):
        for name, t in unpack_state(net, i).items():
            assert torch.equal(t, s.state_dict()[name]), name


# ----------------------------------------------------------------------------- divergence


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for n in a:
        assert torch.equal(a[n], b[n]), n


@pytest.mark.parametrize("case", ["bn", "batch_renorm"])
def test_diverging_member_leaves_the_others_bit_identical(case: str) -> None:
    dtype = torch.float64
    data = [member_batches(i, dtype) for i in range(K)]
    healthy = make_pack(case, dtype, [optim_config(i) for i in range(K)])
    wild = [optim_config(0), optim_config(1, lr=1e4), optim_config(2)]
    diverging = make_pack(case, dtype, wild)

    train_pack(healthy, data)
    diverging.net.train()
    before = pack_member_state(diverging, 1)
    stopped_at = None
    for t in range(STEPS):
        diverging(*pack_batch([d[t] for d in data]))
        if stopped_at is None and not bool(diverging.guard.active[1]):
            stopped_at = t
        if stopped_at is None:
            before = pack_member_state(diverging, 1)
    assert stopped_at is not None, "lr 1e4 should diverge within 3 steps"
    # The stopped member: everything as it was before the step whose loss diverged.
    assert_identical(pack_member_state(diverging, 1), before)
    assert int(diverging.optimizer.steps[1]) == stopped_at
    for i in (0, 2):
        assert bool(diverging.guard.active[i])
        assert_identical(pack_member_state(diverging, i), pack_member_state(healthy, i))
        assert diverging.stats.means()[i] == healthy.stats.means()[i]

    # ... and equal to a pack without it (K=2: other kernel shapes, so to rounding).
    alone = make_pack(case, dtype, [optim_config(0), optim_config(2)], members=(0, 2))
    train_pack(alone, [data[0], data[2]])
    tol = 1e-9
    for j, i in enumerate((0, 2)):
        assert max_diff(pack_member_state(alone, j), pack_member_state(diverging, i)) <= tol


def test_divergence_step_and_records_match_the_solo_run() -> None:
    wild = optim_config(1, lr=1e4)
    data = member_batches(1, torch.float64)
    model, _ = member_model("bn", 1, torch.float64)
    solo = solo_train(model, solo_optimizer(model, wild, "kaiming"), data, wild)
    assert solo.diverged

    trainer = make_pack("bn", torch.float64, [optim_config(0), wild, optim_config(2)])
    train_pack(trainer, [member_batches(i, torch.float64) for i in range(K)])
    loss, _, images = trainer.stats.means()[1]
    assert not bool(trainer.guard.active[1])
    # Same steps counted (the diverging one included), same mean loss (inf/NaN alike).
    assert images == solo.images
    assert loss == pytest.approx(solo.train_loss, rel=1e-9, nan_ok=True)


def test_nan_member_is_stopped_and_untouched() -> None:
    trainer = make_pack("bn", torch.float64, [optim_config(i) for i in range(K)])
    with torch.no_grad():
        trainer.net.body.conv1.weight[4:8].fill_(float("nan"))  # member 1's stem (width 4)
    before = pack_member_state(trainer, 1)
    train_pack(trainer, [member_batches(i, torch.float64) for i in range(K)])
    assert trainer.guard.active.tolist() == [True, False, True]
    after = pack_member_state(trainer, 1)
    for n in before:  # NaN stays NaN, everything else as it was (running stats included)
        torch.testing.assert_close(after[n], before[n], rtol=0, atol=0, equal_nan=True)
    assert trainer.stats.means()[1][2] == BATCH  # the first step counted, as in the solo loop


# ----------------------------------------------------------------------------- state


@pytest.mark.parametrize("case", ["bn", "weight_norm", "fixup", "bn_noisy"])
def test_unpack_loads_into_a_solo_model_and_pack_state_round_trips(case: str) -> None:
    trainer = make_pack(case, torch.float64, [optim_config(i) for i in range(K)])
    train_pack(trainer, [member_batches(i, torch.float64) for i in range(K)])
    trainer.net.eval()
    x = member_batches(7, torch.float64)[0][0]
    with torch.no_grad():
        packed_out = trainer.net(torch.cat([x] * K, dim=1))
    member_states = []
    for i in range(K):
        solo, _ = member_model(case, i, torch.float64)
        solo.load_state_dict(unpack_state(trainer.net, i))  # strict: exactly its keys
        solo.eval()
        with torch.no_grad():
            assert (solo(x) - packed_out[i]).abs().max().item() <= 1e-12
        member_states.append(solo.state_dict())

    fresh = make_pack(case, torch.float64, [optim_config(i) for i in range(K)])
    pack_state(fresh.net, member_states)
    assert_identical(fresh.net.state_dict(), trainer.net.state_dict())


def test_resume_from_member_checkpoints_equals_training_straight_through() -> None:
    case, dtype = "bn_noisy", torch.float64
    optims = [optim_config(i) for i in range(K)]
    data = [member_batches(i, dtype) for i in range(K)]
    straight = make_pack(case, dtype, optims)
    train_pack(straight, data)

    first = make_pack(case, dtype, optims)
    train_pack(first, [d[:2] for d in data])
    ckpts = [
        {
            "model": unpack_state(first.net, i),
            "optimizer": first.optimizer.member_state_dict(i),
            "rng": first.net.generators[i].get_state(),  # the solo checkpoint's "rng"
            "initial_loss": first.guard.initial_loss(i),
        }
        for i in range(K)
    ]
    resumed = make_pack(case, dtype, optims)
    pack_state(resumed.net, [c["model"] for c in ckpts])
    for i, c in enumerate(ckpts):
        resumed.optimizer.load_member_state_dict(i, c["optimizer"], steps=2)
        resumed.net.generators[i].set_state(c["rng"])
        resumed.guard.load(i, c["initial_loss"], active=True)
    resumed.set_step(2)
    resumed.net.train()
    resumed(*pack_batch([d[2] for d in data]))
    for i in range(K):
        assert_identical(pack_member_state(resumed, i), pack_member_state(straight, i))


def test_member_optimizer_state_loads_into_the_solo_optimizer() -> None:
    optims = [optim_config(i) for i in range(K)]
    trainer = make_pack("fixup", torch.float64, optims)
    train_pack(trainer, [member_batches(i, torch.float64) for i in range(K)])
    model, _ = member_model("fixup", 1, torch.float64)
    optimizer = solo_optimizer(model, optims[1], "fixup")
    optimizer.load_state_dict(trainer.optimizer.member_state_dict(1))
    assert [g["lr_scale"] for g in optimizer.param_groups] == [1.0, 0.1]  # Fixup's scalars
    assert len(optimizer.state_dict()["state"]) == sum(1 for _ in model.parameters())


def test_trainer_state_round_trip_replays_the_same_steps() -> None:
    # What graph capture relies on: a trial run leaves no trace once load_state is called.
    trainer = make_pack("bn_noisy", torch.float64, [optim_config(i) for i in range(K)])
    data = [member_batches(i, torch.float64) for i in range(K)]
    trainer.net.train()
    trainer(*pack_batch([d[0] for d in data]))
    saved = trainer.state()
    for t in (1, 2):
        trainer(*pack_batch([d[t] for d in data]))
    first = [pack_member_state(trainer, i) for i in range(K)]
    trainer.load_state(saved)
    for t in (1, 2):
        trainer(*pack_batch([d[t] for d in data]))
    for i in range(K):
        assert_identical(pack_member_state(trainer, i), first[i])


# ----------------------------------------------------------------------------- errors


def test_an_unknown_module_is_a_clear_error() -> None:
    model, _ = member_model("bn", 0, torch.float32)
    models = [model, copy.deepcopy(model)]
    for m in models:
        m.layer1[0].relu1 = nn.Dropout(0.1)  # random per call: no packing rule
    with pytest.raises(PackError, match=r"layer1\.0\.relu1: no packing rule for .*Dropout"):
        pack_models(models)

    class MyBatchNorm(nn.BatchNorm2d):  # a subclass may compute differently: no rule either
        pass

    for m in models:
        m.layer1[0].relu1 = nn.ReLU()
        m.norm1 = MyBatchNorm(4)
    with pytest.raises(PackError, match=r"norm1: no packing rule for .*MyBatchNorm"):
        pack_models(models)


def test_members_of_different_architectures_do_not_pack() -> None:
    narrow, _ = member_model("bn", 0, torch.float32)
    norm, _ = CASES["bn"]
    wide = build(ModelConfig(depth=8, width=8), norm)
    with pytest.raises(PackError, match="differ"):
        pack_models([narrow, wide])
    with pytest.raises(PackError, match="differ"):
        pack_models([narrow, build(ModelConfig(depth=8, width=4), replace(norm, eps=1e-3))])


def test_noisy_members_need_their_generators() -> None:
    model, _ = member_model("none_noisy", 0, torch.float32)
    with pytest.raises(PackError, match="generator"):
        pack_models([model, copy.deepcopy(model)])


def test_packing_leaves_the_global_rng_alone() -> None:
    models = [member_model("bn", i, torch.float32)[0] for i in range(K)]
    state = torch.get_rng_state()
    net = pack_models(models)
    assert torch.equal(torch.get_rng_state(), state)
    assert isinstance(net, PackedNet) and net.k == K


def test_dropout_members_are_refused_with_the_reason() -> None:
    # model.dropout > 0: torch's dropout kernel draws its masks from the device's global
    # generator (on CUDA with no generator argument at all), so no member could draw
    # its solo run's masks; such runs train solo.
    norm, _ = CASES["bn"]
    models = [build(ModelConfig(depth=8, width=4, dropout=0.2), norm) for _ in range(2)]
    with pytest.raises(PackError, match=r"^dropout: .*Dropout.* solo run.*dropout > 0 solo$"):
        pack_models(models)
    # At 0 the model has no dropout module: it packs as before the switch.
    plain = [build(ModelConfig(depth=8, width=4, dropout=0.0), norm) for _ in range(2)]
    assert pack_models(plain).k == 2
    # The refusal is not advertised as a known rule when another module lacks one.
    for m in models:
        m.dropout = nn.Dropout2d(0.2)
    with pytest.raises(PackError, match="no packing rule for .*Dropout2d") as err:
        pack_models(models)
    assert "Dropout," not in str(err.value) and "Dropout." not in str(err.value)
