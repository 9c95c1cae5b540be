"""The model layer: parameter counts, shortcuts, norm factories, init, and a training step."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

import bnlab.models.resnet as resnet_module
from bnlab.build import build_model, norm_layer
from bnlab.config import RESIDUAL_INITS, ModelConfig
from bnlab.models import (
    BasicBlock,
    CifarResNet,
    PadShortcut,
    cifar_resnet,
    count_params,
    initialize,
)
from bnlab.models.init import RESIDUAL_SCHEMES
from bnlab.norm_kinds import (
    BatchNormConfig,
    GroupNormConfig,
    LayerNormConfig,
    NoNormConfig,
    NormConfig,
    norm_kind,
)
from tests.training import sgd_losses

# He et al. 2016, Table 6 / akamaster/pytorch_resnet_cifar10, with BatchNorm.
BN_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}

NORM_CONFIGS: dict[str, NormConfig] = {
    "bn": BatchNormConfig(),
    "none": NoNormConfig(),
    "gn": GroupNormConfig(groups=8),
    "ln": LayerNormConfig(),
}
KINDS = list(NORM_CONFIGS)
SMALL = 8  # depth 8 (n=1): the smallest ResNet, enough for shape and gradient checks


def _build(depth: int = SMALL, kind: str = "bn", **model_kwargs: object) -> nn.Module:
    return build_model(ModelConfig(depth=depth, **model_kwargs), NORM_CONFIGS[kind])


def _norm_channels(depth: int, width: int = 16) -> int:
    """Channels summed over all norm layers: the stem, then 2 per block in each stage."""
    n = (depth - 2) // 6
    return width + 2 * n * (width + 2 * width + 4 * width)


# ----------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("depth", sorted(BN_PARAMS))
def test_bn_parameter_counts_match_the_paper(depth: int) -> None:
    assert count_params(_build(depth, "bn")) == BN_PARAMS[depth]


def test_docstring_states_the_tested_counts() -> None:
    doc = resnet_module.__doc__ or ""
    for depth, count in BN_PARAMS.items():
        assert f"{count:,}" in doc, depth


@pytest.mark.parametrize("depth", [20, 56])
def test_plain_twin_has_the_same_parameters(depth: int) -> None:
    residual, plain = _build(depth, residual=True), _build(depth, residual=False)
    assert count_params(plain) == count_params(residual) == BN_PARAMS[depth]
    assert {k: v.shape for k, v in plain.state_dict().items()} == {
        k: v.shape for k, v in residual.state_dict().items()
    }


@pytest.mark.parametrize("depth", [20, 110])
def test_no_norm_count_trades_affine_for_conv_bias(depth: int) -> None:
    # Every conv is followed by exactly one norm of its width: BN has 2 affine
    # parameters per channel there, norm=none has 1 conv bias per channel.
    channels = _norm_channels(depth)
    expected = BN_PARAMS[depth] - 2 * channels + channels
    assert count_params(_build(depth, "none")) == expected


@pytest.mark.parametrize("kind", ["gn", "ln"])
def test_affine_group_and_layer_norm_count_like_bn(kind: str) -> None:
    assert count_params(_build(20, kind)) == BN_PARAMS[20]


def test_count_params_skips_frozen_parameters() -> None:
    net = _build(20)
    net.fc.weight.requires_grad_(False)  # BN running stats are buffers and never counted
    assert count_params(net) == BN_PARAMS[20] - net.fc.weight.numel()


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)], ids=["cifar", "fashion"])
def test_forward_shape(kind: str, residual: bool, shape: tuple[int, int, int]) -> None:
    net = build_model(
        ModelConfig(depth=SMALL, residual=residual),
        NORM_CONFIGS[kind],
        num_classes=10,
        in_channels=shape[0],
    )
    assert net(torch.randn(2, *shape)).shape == (2, 10)


def test_channels_last_and_bf16_autocast() -> None:
    net = _build().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.shape == (2, 10)
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("depth", [0, 2, 7, 21, 22])
def test_depth_must_be_6n_plus_2(depth: int) -> None:
    with pytest.raises(ValueError, match="6n\\+2"):
        _build(depth)


def test_unknown_arch_raises() -> None:
    with pytest.raises(ValueError, match="arch"):
        build_model(ModelConfig(arch="vgg"), BatchNormConfig())


def test_layout_names_for_probes() -> None:
    net = _build(20)
    names = dict(net.named_modules())
    for name in ("conv1", "norm1", "layer1.0.conv1", "layer3.2.norm2", "fc"):
        assert name in names
    assert isinstance(names["layer2.0.norm1"], nn.BatchNorm2d)
    assert len(net.layer1) == len(net.layer2) == len(net.layer3) == 3


# ----------------------------------------------------------------------------- shortcuts


def _zero_second_norm(block: BasicBlock) -> BasicBlock:
    with torch.no_grad():
        block.norm2.weight.zero_()
        block.norm2.bias.zero_()
    return block


def test_plain_block_really_has_no_skip() -> None:
    # With norm2's affine zeroed the residual branch outputs exactly 0, so the
    # block is relu(shortcut(x)): relu(x) with a skip, 0 without one.
    x = torch.randn(2, 16, 8, 8)
    residual = _zero_second_norm(BasicBlock(16, 16, 1, nn.BatchNorm2d, residual=True))
    plain = _zero_second_norm(BasicBlock(16, 16, 1, nn.BatchNorm2d, residual=False))
    assert plain.shortcut is None
    torch.testing.assert_close(residual(x), F.relu(x), rtol=0, atol=0)
    assert torch.equal(plain(x), torch.zeros_like(x))


def test_downsampling_block_uses_the_padded_shortcut() -> None:
    x = torch.randn(2, 16, 8, 8)
    block = _zero_second_norm(BasicBlock(16, 32, 2, nn.BatchNorm2d, residual=True))
    assert isinstance(block.shortcut, PadShortcut)
    expected = F.relu(F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, 16)))
    torch.testing.assert_close(block(x), expected, rtol=0, atol=0)


def test_plain_network_differs_from_residual_with_the_same_weights() -> None:
    torch.manual_seed(0)
    residual = _build(residual=True).eval()
    plain = _build(residual=False).eval()
    plain.load_state_dict(residual.state_dict())  # strict: identical layout
    assert all(b.shortcut is None for b in plain.modules() if isinstance(b, BasicBlock))
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(residual(x), plain(x))


def test_pad_shortcut_is_parameter_free_and_zero_pads_channels() -> None:
    shortcut = PadShortcut(16, 32, stride=2)
    assert count_params(shortcut) == 0 and not list(shortcut.buffers())
    x = torch.randn(2, 16, 8, 7)  # odd width: subsampling keeps ceil(7/2) = 4 like the conv
    out = shortcut(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, :16], x[:, :, ::2, ::2])
    assert torch.equal(out[:, 16:], torch.zeros(2, 16, 4, 4))


def test_shortcut_shapes_match_the_conv_path() -> None:
    x = torch.randn(2, 16, 7, 7)
    block = BasicBlock(16, 32, 2, nn.BatchNorm2d, residual=True)
    assert block(x).shape == (2, 32, 4, 4)


# ----------------------------------------------------------------------------- norms


def test_norm_layer_bn_settings() -> None:
    cfg = BatchNormConfig(momentum=0.05, eps=1e-3, affine=False, track_running_stats=False)
    layer = norm_layer(cfg)(32)
    assert type(layer) is nn.BatchNorm2d
    assert (layer.num_features, layer.eps, layer.momentum) == (32, 1e-3, 0.05)
    assert not layer.affine and not layer.track_running_stats
    assert layer.weight is None and layer.running_mean is None


def test_norm_layer_other_kinds() -> None:
    assert type(norm_layer(NoNormConfig())(16)) is nn.Identity

    gn = norm_layer(GroupNormConfig(groups=4, eps=1e-4))(32)
    assert type(gn) is nn.GroupNorm
    assert (gn.num_groups, gn.num_channels, gn.eps, gn.affine) == (4, 32, 1e-4, True)

    ln = norm_layer(LayerNormConfig(affine=False))(64)
    assert type(ln) is nn.GroupNorm
    assert (ln.num_groups, ln.num_channels, ln.affine) == (1, 64, False)


def test_norm_layer_accepts_omegaconf_nodes() -> None:
    node = OmegaConf.structured(GroupNormConfig(groups=2))
    layer = norm_layer(node)(16)
    assert isinstance(layer, nn.GroupNorm) and layer.num_groups == 2
    assert norm_kind(OmegaConf.structured(NoNormConfig()).kind).conv_bias


def test_group_norm_groups_must_divide_channels() -> None:
    with pytest.raises(ValueError, match="groups=6 does not divide 16"):
        norm_layer(GroupNormConfig(groups=6))(16)


def test_unknown_norm_kind_lists_the_known_ones() -> None:
    cfg = NormConfig(kind="weird")
    with pytest.raises(ValueError, match="bn, none, gn, ln"):
        norm_layer(cfg)(16)
    with pytest.raises(ValueError, match="weird"):
        norm_kind(cfg.kind)


@pytest.mark.parametrize("kind", KINDS)
def test_conv_bias_iff_no_norm(kind: str) -> None:
    convs = [m for m in _build(kind=kind).modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == SMALL - 1  # every layer but the head is a conv
    assert norm_kind(kind).conv_bias == (kind == "none")
    assert all((c.bias is not None) == (kind == "none") for c in convs)


def test_models_take_a_norm_layer_and_no_config() -> None:
    # Any channels -> layer callable: the config is not needed to build a network.
    net = CifarResNet(8, norm_layer=partial(nn.GroupNorm, 4), conv_bias=False)
    assert isinstance(net.layer2[0].norm2, nn.GroupNorm) and net.layer2[0].norm2.num_groups == 4
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    block = BasicBlock(16, 16, 1)  # defaults: BN, no conv bias (torchvision's block)
    assert isinstance(block.norm1, nn.BatchNorm2d) and block.conv1.bias is None
    biased = BasicBlock(16, 16, 1, nn.Identity, conv_bias=True)
    assert isinstance(biased.norm1, nn.Identity) and biased.conv1.bias is not None


@pytest.mark.parametrize("init", ["kaiming", "fixup"])
def test_build_model_only_translates_the_config(init: str) -> None:
    # build_model reads the config and passes plain values on: same seed, same weights.
    kind = "none" if init == "fixup" else "bn"
    torch.manual_seed(0)
    built = build_model(ModelConfig(depth=SMALL, init=init), NORM_CONFIGS[kind])
    torch.manual_seed(0)
    layer = nn.Identity if kind == "none" else nn.BatchNorm2d
    direct = cifar_resnet(SMALL, layer, conv_bias=kind == "none", init=init)
    assert built.state_dict().keys() == direct.state_dict().keys()
    for key, value in built.state_dict().items():
        assert torch.equal(value, direct.state_dict()[key]), key


def test_residual_inits_agree_between_config_and_models() -> None:
    # config.py names them torch-free for validate(); models/init.py implements them.
    assert set(RESIDUAL_INITS) == set(RESIDUAL_SCHEMES)


# ----------------------------------------------------------------------------- init


def _weights(net: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.mark.parametrize("scheme", ["kaiming", "xavier", "orthogonal"])
def test_init_scale_multiplies_every_weight_exactly(scheme: str) -> None:
    torch.manual_seed(0)
    base = _build(init=scheme, init_scale=1.0)
    torch.manual_seed(0)
    doubled = _build(init=scheme, init_scale=2.0)
    for w1, w2 in zip(_weights(base), _weights(doubled), strict=True):
        assert torch.equal(w2, 2 * w1)
    w1, w2 = base.layer3[0].conv2.weight, doubled.layer3[0].conv2.weight
    torch.testing.assert_close(w2.std() / w1.std(), torch.tensor(2.0))


def test_init_sets_norm_affine_and_biases() -> None:
    net = _build(init_scale=3.0)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == SMALL - 1
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in norms)
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in norms)
    assert torch.equal(net.fc.bias, torch.zeros(10))
    biased = _build(kind="none")
    assert all(
        torch.equal(m.bias, torch.zeros_like(m.bias))
        for m in biased.modules()
        if isinstance(m, nn.Conv2d)
    )


def test_kaiming_uses_fan_in_with_relu_gain() -> None:
    torch.manual_seed(0)
    w = _build(20).layer3[1].conv1.weight  # 64 x 64 x 3 x 3: fan_in 576, 36,864 samples
    expected = (2.0 / 576) ** 0.5
    assert abs(w.std().item() / expected - 1) < 0.03


def test_schemes_give_different_weights() -> None:
    weights = {}
    for scheme in ("kaiming", "xavier", "orthogonal"):
        torch.manual_seed(0)
        weights[scheme] = _build(init=scheme).layer2[0].conv1.weight
    assert not torch.allclose(weights["kaiming"], weights["xavier"])
    assert not torch.allclose(weights["kaiming"], weights["orthogonal"])
    assert not torch.allclose(weights["xavier"], weights["orthogonal"])


def test_unknown_init_scheme_raises() -> None:
    with pytest.raises(ValueError, match="kaiming, xavier, orthogonal"):
        initialize(_build(), "lecun", 1.0)


# ----------------------------------------------------------------------------- training


def test_training_steps_decrease_the_loss_with_bn() -> None:
    torch.manual_seed(0)
    net = _build()
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    losses = sgd_losses(net, x, y, steps=6, lr=0.05)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("residual", [True, False])
def test_backward_reaches_every_parameter(kind: str, residual: bool) -> None:
    torch.manual_seed(0)
    net = _build(kind=kind, residual=residual)
    F.cross_entropy(net(torch.randn(4, 3, 32, 32)), torch.randint(0, 10, (4,))).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.slow
def test_torch_compile_matches_eager() -> None:
    torch.manual_seed(0)
    net = _build().eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(torch.compile(net)(x), net(x), rtol=1e-4, atol=1e-4)
