"""CIFAR ResNets of depth 6n+2 (He et al. 2016, section 4.2) and their plain twins.

conv3x3(in_channels -> w) + norm + ReLU; three stages ``layer1..3`` of n
BasicBlocks with w, 2w, 4w channels (w = ``model.width``, 16 in the paper),
the first block of stages 2 and 3 at stride 2; global average pooling; linear
head ``fc``. Shortcuts are option A (identity, or subsample + zero-pad), so
``residual=False`` gives a plain network with exactly the same parameters.
Adaptive pooling lets the same network take 28x28x1 (Fashion-MNIST) input.

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
``conv2``, ``norm2``, ``relu2`` and ``shortcut``.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from bnlab.config import RESIDUAL_INITS, ModelConfig, NormConfig
from bnlab.models.blocks import BasicBlock, conv3x3, conv_bias
from bnlab.models.init import initialize
from bnlab.models.norms import make_norm, wrap_layers


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
        norm: NormConfig,
        width: int = 16,
        residual: bool = True,
        num_classes: int = 10,
        in_channels: int = 3,
        branch_scalars: str | None = None,
    ) -> None:
        super().__init__()
        n = blocks_per_stage(depth)
        if width < 1:
            raise ValueError(f"ResNet width {width} must be a positive number of channels")
        self.depth = depth
        self.residual = residual

        self.conv1 = conv3x3(in_channels, width, 1, conv_bias(norm, branch_scalars))
        self.norm1 = make_norm(norm, width)
        self.relu1 = nn.ReLU()
        stage = partial(self._stage, norm=norm, residual=residual, branch_scalars=branch_scalars)
        self.layer1 = stage(width, width, n, 1)
        self.layer2 = stage(width, 2 * width, n, 2)
        self.layer3 = stage(2 * width, 4 * width, n, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        # Fixup's scalar biases outside the blocks: before the stem's ReLU and before the head.
        self.fixup = branch_scalars == "fixup"
        if self.fixup:
            self.stem_bias = nn.Parameter(torch.zeros(1))
            self.head_bias = nn.Parameter(torch.zeros(1))

    @staticmethod
    def _stage(
        in_channels: int,
        out_channels: int,
        n: int,
        stride: int,
        norm: NormConfig,
        residual: bool,
        branch_scalars: str | None,
    ) -> nn.Sequential:
        # Only the first block changes the shape; the rest keep it.
        block = partial(BasicBlock, norm=norm, residual=residual, branch_scalars=branch_scalars)
        blocks = [block(in_channels, out_channels, stride)]
        blocks += [block(out_channels, out_channels, 1) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm1(self.conv1(x))
        if self.fixup:
            out = out + self.stem_bias
        out = self.layer3(self.layer2(self.layer1(self.relu1(out))))
        features = torch.flatten(self.pool(out), 1)
        if self.fixup:
            features = features + self.head_bias
        return self.fc(features)


def build_model(
    model: ModelConfig,
    norm: NormConfig,
    num_classes: int = 10,
    in_channels: int = 3,
) -> nn.Module:
    """The network ``model`` describes, initialised with ``model.init`` x ``model.init_scale``.

    Initialisation draws from torch's global RNG, so seed before calling. The
    norm kind's layer reparametrisation (``weight_norm``) comes after the
    initialisation, so it starts from the same function.
    """
    if model.arch != "resnet":
        raise ValueError(f"unknown model.arch {model.arch!r}; known: resnet")
    net = CifarResNet(
        depth=model.depth,
        norm=norm,
        width=model.width,
        residual=model.residual,
        num_classes=num_classes,
        in_channels=in_channels,
        branch_scalars=model.init if model.init in RESIDUAL_INITS else None,
    )
    initialize(net, model.init, model.init_scale)
    return wrap_layers(norm, net)


def count_params(module: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
