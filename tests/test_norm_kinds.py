"""The extra norm kinds (bn_noisy, none_noisy, ghost_bn, batch_renorm, in, weight_norm),
the normalisation-free residual inits (fixup, skipinit) and train.only_bn."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from bnlab.build import build_model, norm_layer
from bnlab.compose import load_config
from bnlab.config import ModelConfig, OptimConfig, validate
from bnlab.data import DeviceLoader
from bnlab.errors import BnlabError
from bnlab.models import BasicBlock, count_params
from bnlab.models.norms import (
    ActivationNoise,
    BatchRenorm2d,
    GhostBatchNorm2d,
    NoisyBatchNorm2d,
    norm_affine_parameters,
)
from bnlab.norm_kinds import (
    BatchNormConfig,
    BatchRenormConfig,
    GhostBatchNormConfig,
    InstanceNormConfig,
    NoisyBatchNormConfig,
    NoisyNoNormConfig,
    NoNormConfig,
    WeightNormConfig,
)
from bnlab.store import run_id
from bnlab.train.fit import build_optimizer
from bnlab.train.loop import DivergenceGuard, SilentReporter, train_epoch
from bnlab.train.runtime import resolve_runtime
from tests.training import sgd_losses

NEW_KINDS = ["bn_noisy", "none_noisy", "ghost_bn", "batch_renorm", "in", "weight_norm"]
BN_PARAMS_20 = 269_722


def _batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,))


def _copy_bn(src: nn.BatchNorm2d, dst: nn.BatchNorm2d) -> None:
    dst.load_state_dict(src.state_dict())  # the BN variants keep BN's names


def _randomise_affine(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn


# ----------------------------------------------------------------------------- every kind


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_kind_composes_validates_builds_and_trains(kind: str) -> None:
    cfg = load_config([f"norm={kind}", "model.depth=8"])
    validate(cfg)
    assert cfg.norm.kind == kind
    torch.manual_seed(0)
    net = build_model(cfg.model, cfg.norm)
    x, y = _batch()
    out = net(x)
    assert out.shape == (8, 10) and torch.isfinite(out).all()
    F.cross_entropy(out, y).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert net.eval()(x[:2]).shape == (2, 10)


@pytest.mark.parametrize("kind", NEW_KINDS)
def test_kind_has_its_own_keys(kind: str) -> None:
    with pytest.raises(BnlabError, match="unknown config key"):
        load_config([f"norm={kind}", "norm.groups=4"])


# ----------------------------------------------------------------------------- noise


def test_noise_only_in_training_and_fresh_each_step() -> None:
    torch.manual_seed(0)
    noisy = _randomise_affine(norm_layer(NoisyBatchNormConfig())(16))
    assert isinstance(noisy, NoisyBatchNorm2d)
    plain = nn.BatchNorm2d(16)
    _copy_bn(noisy, plain)
    x = torch.randn(8, 16, 8, 8)
    a, b = noisy.train()(x), noisy(x)
    assert not torch.allclose(a, b)  # new noise every forward step
    assert not torch.allclose(a, plain.train()(x))
    # Same running statistics as BN after the same steps; eval is plain BN.
    plain(x)
    torch.testing.assert_close(noisy.running_mean, plain.running_mean)
    torch.testing.assert_close(noisy.eval()(x), plain.eval()(x), rtol=0, atol=0)
    assert torch.equal(noisy(x), noisy(x))


def test_noise_distribution_has_shifted_mean_and_scale() -> None:
    torch.manual_seed(0)
    x = torch.ones(64, 4, 16, 16)
    for j in (1.0, 0.25):  # mu = 0, sigma = 1: s ~ 1 + j U(-.5, .5), m ~ j N(0, 1)
        out = ActivationNoise(noise_mean=0.0, noise_scale=0.0, noise_jitter=j).train()(x)
        assert abs(out.mean().item() - 1.0) < 0.02
        assert out.var().item() == pytest.approx(j * j * (1 + 1 / 12), rel=0.03)
    # jitter 0: only the per-step, per-channel shift and scale (one value per channel).
    flat = ActivationNoise(noise_mean=0.5, noise_scale=1.0, noise_jitter=0.0).train()(x)
    assert torch.equal(flat.amax(dim=(0, 2, 3)), flat.amin(dim=(0, 2, 3)))
    assert flat[0, :, 0, 0].unique().numel() == 4
    default_jitter = NoisyNoNormConfig().noise_jitter
    shifted = ActivationNoise(noise_mean=0.5, noise_scale=1.0, noise_jitter=default_jitter)
    shifted = shifted.train()(x)
    per_channel = shifted.mean(dim=(0, 2, 3))
    assert per_channel.std() > 0.05  # each channel gets its own mean shift this step


def test_noise_additive_part_is_bounded_uniform_with_unit_variance() -> None:
    # model.revision 2: Z ~ U(-sqrt 3, sqrt 3) (was N(0, 1): the same mean and variance).
    torch.manual_seed(0)
    zero = torch.zeros(64, 4, 16, 16)
    z = ActivationNoise(noise_mean=0.0, noise_scale=0.0, noise_jitter=1.0).train()(zero)
    assert z.abs().max().item() <= 3**0.5
    assert z.abs().max().item() > 0.99 * 3**0.5  # it does reach the bounds
    assert z.var().item() == pytest.approx(1.0, rel=0.02)
    # Uniform, not normal: the fourth moment is 9/5 (normal: 3).
    assert (z.pow(4).mean() / z.var() ** 2).item() == pytest.approx(1.8, rel=0.03)


def test_noise_gradient_is_the_multiplier_and_the_draws_follow_the_seed() -> None:
    layer = ActivationNoise(noise_mean=0.5, noise_scale=1.0, noise_jitter=0.25).train()
    x = torch.randn(4, 8, 5, 5, requires_grad=True)
    torch.manual_seed(3)
    out = layer(x)
    out.sum().backward()
    torch.manual_seed(3)
    shifted = layer(x.detach() + 1.0)  # same draws: out(x + 1) - out(x) = s
    torch.testing.assert_close(x.grad, shifted - out.detach())
    torch.manual_seed(3)
    assert torch.equal(layer(x.detach()), out.detach())
    assert not torch.equal(layer(x.detach()), out.detach())  # the generator moved on


def test_none_noisy_is_noise_without_bn() -> None:
    layer = norm_layer(NoisyNoNormConfig())(16)
    assert type(layer) is ActivationNoise and not list(layer.parameters())
    x = torch.randn(4, 16, 4, 4)
    assert torch.equal(layer.eval()(x), x)
    assert not torch.equal(layer.train()(x), x)


# ----------------------------------------------------------------------------- ghost BN


def test_ghost_bn_with_the_whole_batch_is_bn() -> None:
    torch.manual_seed(0)
    ghost = _randomise_affine(norm_layer(GhostBatchNormConfig(virtual_batch=8))(16))
    assert isinstance(ghost, GhostBatchNorm2d)
    bn = nn.BatchNorm2d(16)
    _copy_bn(ghost, bn)
    x = torch.randn(8, 16, 8, 8)
    torch.testing.assert_close(ghost.train()(x), bn.train()(x), rtol=0, atol=0)
    torch.testing.assert_close(ghost.running_var, bn.running_var, rtol=0, atol=0)


@pytest.mark.parametrize("virtual_batch", [2, 4])
@pytest.mark.parametrize("channels_last", [False, True])
def test_ghost_bn_normalises_each_chunk_on_its_own(virtual_batch: int, channels_last: bool):
    torch.manual_seed(0)
    ghost = _randomise_affine(norm_layer(GhostBatchNormConfig(virtual_batch=virtual_batch))(16))
    bn = nn.BatchNorm2d(16)
    _copy_bn(ghost, bn)
    x = torch.randn(8, 16, 8, 8) * torch.linspace(0.5, 2, 8).view(8, 1, 1, 1)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    out = ghost.train()(x)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert not torch.allclose(out, bn.train()(x), atol=1e-3)
    per_chunk = []
    for chunk in x.split(virtual_batch):  # at 2: each channel's variance over 2 x 8 x 8 values
        ref = nn.BatchNorm2d(16)
        _copy_bn(ghost, ref)
        per_chunk.append(ref.train()(chunk))
    expected = torch.cat(per_chunk)
    torch.testing.assert_close(out, expected)
    # The same gradients as separate BN layers, one per chunk.
    weights = torch.randn_like(out)
    (grad_x,) = torch.autograd.grad((out * weights).sum(), x)
    (ref_x,) = torch.autograd.grad((expected * weights).sum(), x)
    torch.testing.assert_close(grad_x, ref_x)
    # Running stats: the average of the chunks' statistics, momentum 0.1 from (0, 1).
    chunks = x.detach().split(virtual_batch)
    means = torch.stack([c.mean(dim=(0, 2, 3)) for c in chunks]).mean(0)
    variances = torch.stack([c.var(dim=(0, 2, 3)) for c in chunks]).mean(0)
    torch.testing.assert_close(ghost.running_mean, 0.1 * means)
    torch.testing.assert_close(ghost.running_var, 0.9 + 0.1 * variances)
    # Eval uses the running statistics, like BN.
    bn.load_state_dict(ghost.state_dict())
    torch.testing.assert_close(ghost.eval()(x), bn.eval()(x), rtol=0, atol=0)


def test_ghost_bn_uneven_last_chunk() -> None:
    ghost = norm_layer(GhostBatchNormConfig(virtual_batch=4))(8).train()
    x = torch.randn(6, 8, 4, 4)  # chunks of 4 and 2
    ref = nn.BatchNorm2d(8).train()
    torch.testing.assert_close(ghost(x)[4:], ref(x[4:]))


def test_ghost_bn_uneven_chunks_weight_the_running_stats_by_size() -> None:
    ghost = norm_layer(GhostBatchNormConfig(virtual_batch=4, momentum=1.0))(8).train()
    x = torch.randn(6, 8, 4, 4)  # chunks of 4 and 2
    ghost(x)
    a, b = x[:4], x[4:]
    mean = (4 * a.mean(dim=(0, 2, 3)) + 2 * b.mean(dim=(0, 2, 3))) / 6
    var = (4 * a.var(dim=(0, 2, 3)) + 2 * b.var(dim=(0, 2, 3))) / 6
    torch.testing.assert_close(ghost.running_mean, mean)
    torch.testing.assert_close(ghost.running_var, var)


def test_ghost_bn_training_step_makes_no_tensor_from_host_data(monkeypatch) -> None:
    # On a GPU, torch.tensor(list, device=cuda) copies from host memory and waits for
    # every queued kernel: one such call per layer turned a launch-bound Ghost BN step
    # into ~3.4x a BN step on an H200. The training forward must not make one.
    ghost = norm_layer(GhostBatchNormConfig(virtual_batch=4))(8).train()
    x = torch.randn(8, 8, 4, 4, requires_grad=True)

    def no_host_tensors(*args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError("torch.tensor called in Ghost BN's training forward")

    monkeypatch.setattr(torch, "tensor", no_host_tensors)
    ghost(x).sum().backward()
    ghost(x[:6])  # the uneven last chunk too


def test_ghost_bn_virtual_batch_must_divide_batch_size() -> None:
    validate(load_config(["norm=ghost_bn", "norm.virtual_batch=32", "data.batch_size=128"]))
    with pytest.raises(BnlabError, match="virtual_batch=48 must divide data.batch_size=128"):
        validate(load_config(["norm=ghost_bn", "norm.virtual_batch=48", "data.batch_size=128"]))


# ----------------------------------------------------------------------------- batch renorm


def _renorm(**kwargs: object) -> BatchRenorm2d:
    layer = norm_layer(BatchRenormConfig(**kwargs))(16)  # type: ignore[arg-type]
    assert isinstance(layer, BatchRenorm2d)
    return _randomise_affine(layer)


def test_batch_renorm_with_unit_limits_is_bn() -> None:
    torch.manual_seed(0)
    renorm = _renorm(r_max=1.0, d_max=0.0, warmup_steps=0)
    bn = nn.BatchNorm2d(16)
    _copy_bn(renorm, bn)
    for _ in range(3):
        x = torch.randn(8, 16, 8, 8) * 3 + 1
        torch.testing.assert_close(renorm.train()(x), bn.train()(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(renorm.running_mean, bn.running_mean)
    torch.testing.assert_close(renorm.running_var, bn.running_var)
    bn.load_state_dict(renorm.state_dict())  # eval is BN with the running statistics
    torch.testing.assert_close(renorm.eval()(x), bn.eval()(x), rtol=0, atol=0)


def test_batch_renorm_corrects_towards_running_stats() -> None:
    torch.manual_seed(0)
    renorm = _renorm(r_max=3.0, d_max=5.0, warmup_steps=0)
    with torch.no_grad():
        renorm.weight.fill_(1.0)
        renorm.bias.zero_()
    x = torch.randn(8, 16, 8, 8) * 2 + 1  # running stats (0, 1): r = 2, d = 1 (unclipped)
    out = renorm.train()(x)
    torch.testing.assert_close(out, x, rtol=2e-2, atol=2e-2)  # renormalised to running stats
    out.sum().backward()  # r, d are constants: still a gradient through the batch stats
    assert torch.isfinite(renorm.weight.grad).all()


def test_batch_renorm_warmup_relaxes_limits_linearly() -> None:
    renorm = _renorm(r_max=3.0, d_max=5.0, warmup_steps=10).train()
    assert renorm.limits() == (1.0, 0.0)
    for _ in range(5):
        renorm(torch.randn(4, 16, 2, 2))
    assert renorm.limits() == (2.0, 2.5) and int(renorm.num_batches_tracked) == 5
    # A loaded state dict (a resumed run) brings its own step count.
    later = _renorm(r_max=3.0, d_max=5.0, warmup_steps=10)
    later.num_batches_tracked.fill_(50)
    renorm.load_state_dict(later.state_dict())
    assert renorm.limits() == (3.0, 5.0)
    later.load_state_dict(_renorm(r_max=3.0, d_max=5.0, warmup_steps=10).state_dict())
    assert later.limits() == (1.0, 0.0)


def test_batch_renorm_training_step_reads_nothing_back_from_the_device(monkeypatch) -> None:
    # On a GPU, int(buffer) or .item() waits for every queued kernel: once per layer per
    # step would serialise a launch-bound step. The warm-up limits stay tensors.
    renorm = _renorm(r_max=3.0, d_max=5.0, warmup_steps=10).train()
    x = torch.randn(4, 16, 2, 2)

    def no_reads(self: torch.Tensor) -> int:
        raise AssertionError("a tensor was read back to the host in Batch Renorm's forward")

    with monkeypatch.context() as patch:
        for name in ("__int__", "__float__", "__bool__", "item", "tolist"):
            patch.setattr(torch.Tensor, name, no_reads)
        for _ in range(4):
            renorm(x)
    assert renorm.limits() == pytest.approx((1.8, 2.0))


def test_batch_renorm_value_checks() -> None:
    with pytest.raises(BnlabError, match="norm.r_max=0.5 must be >= 1"):
        validate(load_config(["norm=batch_renorm", "norm.r_max=0.5"]))


# ----------------------------------------------------------------------------- in, weight norm


def test_in_is_group_norm_with_one_group_per_channel() -> None:
    layer = norm_layer(InstanceNormConfig())(32)
    assert type(layer) is nn.GroupNorm
    assert (layer.num_groups, layer.num_channels, layer.affine) == (32, 32, True)
    x = torch.randn(4, 32, 6, 6)
    ref = nn.InstanceNorm2d(32, affine=False)
    torch.testing.assert_close(layer(x), ref(x), rtol=1e-4, atol=1e-4)


def test_weight_norm_parametrizes_every_conv_and_linear() -> None:
    torch.manual_seed(0)
    net = build_model(ModelConfig(depth=20), WeightNormConfig())
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert layers and all(hasattr(m, "parametrizations") for m in layers)
    assert all(m.parametrizations.weight.original0.shape[0] == m.weight.shape[0] for m in layers)
    assert all(m.bias is not None for m in layers)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) for m in net.modules())
    # Documented count: BN's + one g per output unit of the head.
    assert count_params(net) == BN_PARAMS_20 + 10


def test_weight_norm_starts_from_the_same_function() -> None:
    torch.manual_seed(0)
    plain = build_model(ModelConfig(depth=8), NoNormConfig())
    torch.manual_seed(0)
    wn = build_model(ModelConfig(depth=8), WeightNormConfig())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(wn(x), plain(x), rtol=1e-4, atol=1e-4)


def test_bn_variants_have_bn_parameter_count() -> None:
    for cfg in (NoisyBatchNormConfig(), GhostBatchNormConfig(), BatchRenormConfig()):
        assert count_params(build_model(ModelConfig(depth=20), cfg)) == BN_PARAMS_20
    assert count_params(build_model(ModelConfig(depth=20), InstanceNormConfig())) == BN_PARAMS_20


def test_affine_and_running_stats_switches() -> None:
    cfg = load_config(["norm=bn_noisy", "norm.affine=false", "norm.track_running_stats=false"])
    validate(cfg)
    layer = norm_layer(cfg.norm)(16)
    assert layer.weight is None and layer.running_mean is None
    for kind in ("ghost_bn", "batch_renorm", "in"):
        cfg = load_config([f"norm={kind}", "norm.affine=false"])
        assert not list(norm_layer(cfg.norm)(16).parameters())


# ----------------------------------------------------------------------------- fixup, skipinit


@pytest.mark.parametrize("init", ["fixup", "skipinit"])
def test_residual_init_blocks_start_as_relu(init: str) -> None:
    torch.manual_seed(0)
    net = build_model(ModelConfig(depth=20, init=init), NoNormConfig())
    x = torch.randn(2, 16, 32, 32)
    torch.testing.assert_close(net.layer1[1](x), F.relu(x), rtol=0, atol=0)
    block = net.layer2[0]  # downsampling: relu(padded shortcut)
    expected = F.relu(F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, 16)))
    torch.testing.assert_close(block(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("init", ["fixup", "skipinit"])
def test_residual_init_deep_net_is_well_scaled(init: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 32, 32)
    net = build_model(ModelConfig(depth=56, init=init), NoNormConfig())
    out = net(x)
    assert torch.isfinite(out).all() and out.abs().max() < 10
    if init == "fixup":
        assert torch.equal(out, torch.zeros_like(out))  # zero head
        assert net.layer1[0].conv1.weight.std() < net.conv1.weight.std()  # L^-1/2 scaling
    # Without the zeroed branches the same net explodes (variance doubles per block).
    torch.manual_seed(0)
    kaiming = build_model(ModelConfig(depth=56), NoNormConfig())
    assert kaiming(x).abs().max() > 100 * max(out.abs().max().item(), 1.0)


@pytest.mark.parametrize("init", ["fixup", "skipinit"])
def test_residual_init_trains(init: str) -> None:
    torch.manual_seed(0)
    net = build_model(ModelConfig(depth=8, init=init), NoNormConfig())
    x, y = _batch(16)
    losses = sgd_losses(net, x, y, steps=5, lr=0.1)
    assert losses[-1] < losses[0]
    scalars = [n for n, _ in net.named_parameters() if n.endswith(("alpha", "scale", "bias1a"))]
    assert len(scalars) == (3 if init == "skipinit" else 6)  # 3 blocks at depth 8


def _fixup_reference_params(depth: int, width: int = 16, classes: int = 10) -> int:
    """Zhang et al.'s fixup_resnet<depth> (cifar/models/fixup_resnet_cifar.py), counted by
    hand: every conv bias-free (3x3 weights only), fc with its bias, and per block the
    scalars bias1a, bias1b, bias2a, bias2b, scale; plus the stem's bias1 and head's bias2."""
    n = (depth - 2) // 6
    convs = 3 * width * 9  # the stem
    for c_in, c_out in ((width, width), (width, 2 * width), (2 * width, 4 * width)):
        convs += 9 * (c_in * c_out + c_out * c_out) + 9 * 2 * c_out * c_out * (n - 1)
    return convs + (4 * width * classes + classes) + 5 * 3 * n + 2


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_fixup_parameter_count_is_the_reference_one(depth: int) -> None:
    net = build_model(ModelConfig(depth=depth, init="fixup"), NoNormConfig())
    assert count_params(net) == _fixup_reference_params(depth)
    if depth == 20:
        assert count_params(net) == 268_393  # the count resnet.py's docstring states


def test_fixup_convs_have_no_bias_skipinit_convs_keep_theirs() -> None:
    fixup = build_model(ModelConfig(depth=8, init="fixup"), NoNormConfig())
    skip = build_model(ModelConfig(depth=8, init="skipinit"), NoNormConfig())
    for net, biased in ((fixup, False), (skip, True)):
        convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == 7 and all((c.bias is not None) == biased for c in convs)
    # The head keeps its (zero-initialised) bias; so does none_noisy's Fixup.
    assert torch.equal(fixup.fc.bias, torch.zeros(10))
    noisy = build_model(ModelConfig(depth=8, init="fixup"), NoisyNoNormConfig())
    assert not any(m.bias is not None for m in noisy.modules() if isinstance(m, nn.Conv2d))
    base = count_params(build_model(ModelConfig(depth=20), NoNormConfig()))
    assert count_params(build_model(ModelConfig(depth=20, init="skipinit"), NoNormConfig())) == (
        base + 9
    )


def test_fixup_downsampling_shortcut_reads_the_biased_input() -> None:
    # As in the reference: identity = downsample(x + bias1a) where the block subsamples.
    torch.manual_seed(0)
    net = build_model(ModelConfig(depth=20, init="fixup"), NoNormConfig())
    x = torch.randn(2, 16, 8, 8)
    down, same = net.layer2[0], net.layer1[1]
    with torch.no_grad():
        down.bias1a.fill_(0.5)
        same.bias1a.fill_(0.5)
    # The branches still output 0 (conv2 is zero): only the shortcut's input shows.
    shifted = F.pad((x + 0.5)[:, :, ::2, ::2], (0, 0, 0, 0, 0, 16))
    torch.testing.assert_close(down(x), F.relu(shifted), rtol=0, atol=0)
    torch.testing.assert_close(same(x), F.relu(x), rtol=0, atol=0)


def test_fixup_first_branch_conv_is_he_fan_out_scaled_by_depth() -> None:
    # The reference draws N(0, 2 / (out_channels * 9)) * L^-1/2; it differs from the
    # fan-in only where the channels double (layer2.0, layer3.0: fan-out = 2 fan-in).
    torch.manual_seed(0)
    net = build_model(ModelConfig(depth=110, init="fixup"), NoNormConfig())  # L = 54
    for name in ("layer2.0", "layer3.0", "layer3.5"):
        w = net.get_submodule(name).conv1.weight
        expected = (2.0 / (w.shape[0] * 9)) ** 0.5 * 54**-0.5
        assert w.std().item() == pytest.approx(expected, rel=0.05), name
    kaiming = build_model(ModelConfig(depth=110), NoNormConfig())
    ratio = net.layer3[0].conv1.weight.std() / kaiming.layer3[0].conv1.weight.std()
    assert ratio.item() == pytest.approx(0.5**0.5 * 54**-0.5, rel=0.05)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.init=fixup", "model.residual=false", "norm=none"], "needs model.residual=true"),
        (["model.init=skipinit", "model.residual=false", "norm=none"], "model.residual=true"),
        (["model.init=fixup", "norm=bn"], "use norm=none"),
        (["train.only_bn=true", "norm=none"], "train.only_bn"),
        (["train.only_bn=true", "norm=bn", "norm.affine=false"], "train.only_bn"),
        (["norm=bn_noisy", "norm.noise_mean=-1"], "norm.noise_mean"),
    ],
)
def test_bad_combinations_are_rejected(overrides: list[str], message: str) -> None:
    with pytest.raises(BnlabError, match=message):
        validate(load_config(overrides))


def test_model_revision_is_the_current_one_and_in_the_run_id() -> None:
    # Revision 2 builds Fixup and the noisy norms differently from revision 1, with no
    # other key changing: its value enters every run id, and revision 1 is refused.
    cfg = load_config(["arm=fixup"])
    assert cfg.model.revision == 2
    validate(cfg)
    with pytest.raises(BnlabError, match="model.revision=1"):
        validate(load_config(["arm=fixup", "model.revision=1"]))
    assert run_id(cfg) != run_id(load_config(["arm=fixup", "model.revision=1"]))


def test_good_residual_inits_validate() -> None:
    for init in ("fixup", "skipinit"):
        validate(load_config([f"model.init={init}", "norm=none"]))
        validate(load_config([f"model.init={init}", "norm=none_noisy"]))


def test_block_rejects_scalars_without_residual() -> None:
    with pytest.raises(ValueError, match="residual"):
        BasicBlock(16, 16, 1, nn.Identity, conv_bias=True, residual=False, branch_scalars="fixup")


# ----------------------------------------------------------------------------- only_bn


@pytest.mark.parametrize("kind", ["bn", "gn", "ghost_bn", "batch_renorm", "in"])
def test_only_bn_optimizer_has_exactly_the_norm_params(kind: str) -> None:
    cfg = load_config([f"norm={kind}", "train.only_bn=true", "model.depth=8"])
    validate(cfg)
    net = build_model(cfg.model, cfg.norm)
    opt = build_optimizer(net, cfg.optim, cfg.train.only_bn)
    chosen = {id(p) for g in opt.param_groups for p in g["params"]}
    expected = {
        id(p) for name, p in net.named_parameters() if name.split(".")[-2].startswith("norm")
    }
    assert chosen == expected and len(chosen) == 2 * 7  # 7 norm layers, gamma and beta
    full = build_optimizer(net, cfg.optim)
    assert sum(len(g["params"]) for g in full.param_groups) == len(list(net.parameters()))


def test_only_bn_step_leaves_convs_untouched() -> None:
    torch.manual_seed(0)
    net = build_model(ModelConfig(depth=8), BatchNormConfig())
    opt = build_optimizer(net, OmegaConf.structured(OptimConfig()), only_bn=True)
    conv_before = net.layer1[0].conv1.weight.clone()
    x, y = _batch()
    F.cross_entropy(net(x), y).backward()
    opt.step()
    assert torch.equal(net.layer1[0].conv1.weight, conv_before)
    assert not torch.equal(net.norm1.weight, torch.ones(16))
    assert len(norm_affine_parameters(net)) == 14


# ----------------------------------------------------------------------------- fixup's lr


def test_fixup_scalars_train_at_a_tenth_of_the_lr() -> None:
    # Zhang et al.'s reference CIFAR code: every "bias" and "scale" parameter at
    # base_lr / 10. Without conv biases that is exactly the scalars and the head's bias.
    cfg = load_config(["arm=fixup", "model.depth=8"])
    validate(cfg)
    net = build_model(cfg.model, cfg.norm)
    opt = build_optimizer(net, cfg.optim, init="fixup")
    slow = {id(p) for g in opt.param_groups if g["lr_scale"] == 0.1 for p in g["params"]}
    names = {n for n, p in net.named_parameters() if id(p) in slow}
    blocks = ("layer1.0", "layer2.0", "layer3.0")
    scalars = {
        f"{b}.{s}" for b in blocks for s in ("bias1a", "bias1b", "bias2a", "bias2b", "scale")
    }
    assert names == scalars | {"stem_bias", "head_bias", "fc.bias"}
    assert all(p.numel() == 1 for n, p in net.named_parameters() if n in scalars)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))
    # The loop sets each group's lr to the schedule's lr x lr_scale, before each step.
    seen: list[dict[float, float]] = []

    def record(*_: object) -> None:
        seen.append({g["lr_scale"]: g["lr"] for g in opt.param_groups})

    x = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
    loader = DeviceLoader(x, torch.arange(8) % 10, 4, train=True, augment=False,
                          mean=(0.5,) * 3, std=(0.25,) * 3)  # fmt: skip
    rt = resolve_runtime(cfg.train)
    train_epoch(net, loader, 0, opt, lambda step: 0.2, 0, rt, DivergenceGuard(10.0),
                SilentReporter(), record)  # fmt: skip
    assert seen == [{1.0: 0.2, 0.1: pytest.approx(0.02)}] * 2
    # Other inits: one group at the full lr; fixup_scalar_lr at its default keeps run ids.
    plain = build_optimizer(net, cfg.optim, init="kaiming")
    assert [g["lr_scale"] for g in plain.param_groups] == [1.0]
    base = load_config(["arm=fixup"])
    assert run_id(base) == run_id(load_config(["arm=fixup", "optim.fixup_scalar_lr=0.1"]))
    assert run_id(base) != run_id(load_config(["arm=fixup", "optim.fixup_scalar_lr=1.0"]))
