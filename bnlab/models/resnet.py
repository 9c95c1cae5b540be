"""CIFAR ResNets of depth 6n+2 (He et al. 2016, section 4.2) and their plain twins.

conv3x3(in_channels -> w) + norm + ReLU; three stages ``layer1..3`` of n
BasicBlocks with w, 2w, 4w channels (w = ``model.width``, 16 in the paper),
the first block of stages 2 and 3 at stride 2; global average pooling; linear
head ``fc``. Shortcuts are option A (identity, or subsample + zero-pad), so
``residual=False`` gives a plain network with exactly the same parameters.
Adaptive pooling lets the same network take 28x28x1 (Fashion-MNIST) input.

``dropout`` > 0 (``model.dropout``) puts an ``nn.Dropout`` of that probability on
the pooled features, right before ``fc`` (after Fixup's head bias); eval mode turns
it off. At 0 (the default) there is no such module at all, so the module tree, the
state dict and every output are those of a net built before the switch existed.
Dropout has no parameters: the counts below hold either way.

Trainable parameters with BatchNorm (affine), width 16, 10 classes -- the
paper's and akamaster/pytorch_resnet_cifar10's numbers, checked in
tests/test_models.py:

    depth  n   parameters
    20     3     269,722  (0.27M)
    32     5     464,154  (0.46M)
    44     7     658,586  (0.66M)
    56     9     853,018  (0.85M)
    110   18   1,727,962  (1.7M)

GroupNorm/LayerNorm/InstanceNorm and the BN variants (bn_noisy, ghost_bn,
batch_renorm; all affine) have the same count; ``norm=none`` (and none_noisy)
drops the two affine parameters per channel of every norm layer and gains one
conv bias per output channel instead. ``norm=weight_norm`` has norm=none's
count plus one g per output channel of every conv and linear layer, i.e. BN's
count + num_classes (269,732 for depth 20).

``model.init=fixup`` (Zhang et al. 2019, as in their reference CIFAR code) has
no conv biases and no norm parameters: the conv weights, the head, and 5 scalars
per block plus 2 (a bias after the stem conv and one before the head). Its counts
equal those of the reference's ``fixup_resnet20`` ... ``fixup_resnet110``:

    depth   Fixup parameters
    20        268,393
    32        461,959
    44        655,525
    56        849,091
    110     1,720,138

``model.init=skipinit`` (De & Smith 2020) keeps norm=none's conv biases and adds
1 scalar per block.

Names are stable for probes and conv+norm folding: the stem is ``conv1``,
``norm1``, ``relu1``; every block has ``conv1``, ``norm1``, ``relu1``,
``conv2``, ``norm2``, ``relu2`` and ``shortcut``; the head's dropout (only when
``dropout`` > 0) is ``dropout``.

``cifar_resnet`` builds and initialises one from plain values (a ``norm_layer``
factory, the conv-bias rule, depth, width, init, ...); the config never reaches
this package: ``bnlab.build.build_model`` turns a config into those values.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from bnlab.models.blocks import BasicBlock, conv3x3, convs_have_bias
from bnlab.models.init import RESIDUAL_SCHEMES, initialize
from bnlab.models.norms import NormLayer, wrap_layers


def blocks_per_stage(depth: int) -> int:
    """n for depth 6n+2: each block has 2 layers, plus the stem conv and the head."""
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(
            f"ResNet depth {depth} is not of the form 6n+2 with n >= 1 (e.g. 20, 32, 44, 56, 110)"
        )
    return (depth - 2) // 6


class CifarResNet(nn.Module):
    def __init__(
        self,
        depth: int,
        norm_layer: NormLayer = nn.BatchNorm2d,
        conv_bias: bool = False,
        width: int = 16,
        residual: bool = True,
        num_classes: int = 10,
        in_channels: int = 3,
        branch_scalars: str | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        n = blocks_per_stage(depth)
        if width < 1:
            raise ValueError(f"ResNet width {width} must be a positive number of channels")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"ResNet dropout {dropout} must be a probability in [0, 1)")
        self.depth = depth
        self.residual = residual

        self.conv1 = conv3x3(in_channels, width, 1, convs_have_bias(conv_bias, branch_scalars))
        self.norm1 = norm_layer(width)
        self.relu1 = nn.ReLU()
        block = partial(
            BasicBlock,
            norm_layer=norm_layer,
            conv_bias=conv_bias,
            residual=residual,
            branch_scalars=branch_scalars,
        )
        self.layer1 = _stage(block, width, width, n, 1)
        self.layer2 = _stage(block, width, 2 * width, n, 2)
        self.layer3 = _stage(block, 2 * width, 4 * width, n, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        # Only when on: at 0 the tree (hence checkpoints, packs, probes) is unchanged.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.fc = nn.Linear(4 * width, num_classes)
        # Fixup's scalar biases outside the blocks: before the stem's ReLU and before the head.
        self.fixup = branch_scalars == "fixup"
        if self.fixup:
            self.stem_bias = nn.Parameter(torch.zeros(1))
            self.head_bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm1(self.conv1(x))
        if self.fixup:
            out = out + self.stem_bias
        out = self.layer3(self.layer2(self.layer1(self.relu1(out))))
        features = torch.flatten(self.pool(out), 1)
        if self.fixup:
            features = features + self.head_bias
        if self.dropout is not None:
            features = self.dropout(features)
        return self.fc(features)


def _stage(
    block: Callable[[int, int, int], BasicBlock],
    in_channels: int,
    out_channels: int,
    n: int,
    stride: int,
) -> nn.Sequential:
    # Only the first block changes the shape; the rest keep it.
    blocks = [block(in_channels, out_channels, stride)]
    blocks += [block(out_channels, out_channels, 1) for _ in range(n - 1)]
    return nn.Sequential(*blocks)


def cifar_resnet(
    depth: int,
    norm_layer: NormLayer = nn.BatchNorm2d,
    *,
    init: str = "kaiming",
    init_scale: float = 1.0,
    wrap_layer: Callable[[nn.Module], nn.Module] | None = None,
    **arch: Any,
) -> CifarResNet:
    """A ``CifarResNet`` initialised with ``init`` x ``init_scale``.

    ``arch``: the rest of ``CifarResNet``'s arguments (conv_bias, width, residual,
    num_classes, in_channels, dropout). Initialisation draws from torch's global RNG, so seed
    before calling. The residual inits (fixup, skipinit) build their branch scalars
    into the blocks. ``wrap_layer`` (a reparametrisation such as ``weight_norm``) is
    applied to every conv/linear *after* the initialisation, so it starts from the
    same function.
    """
    branch_scalars = init if init in RESIDUAL_SCHEMES else None
    net = CifarResNet(depth, norm_layer, branch_scalars=branch_scalars, **arch)
    initialize(net, init, init_scale)
    if wrap_layer is not None:
        wrap_layers(net, wrap_layer)
    return net


def count_params(module: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
