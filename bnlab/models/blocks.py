"""The building blocks of the CIFAR ResNet (He et al. 2016, section 4.2).

``BasicBlock`` is conv3x3-norm-ReLU-conv3x3-norm, plus the shortcut, then ReLU.
Its plain twin (``residual=False``) is the same block without the addition.
``PadShortcut`` is the paper's option A: parameter free, so the residual and
plain networks have exactly the same parameters.

The block's norms come from ``norm_layer`` (channels -> layer, e.g.
``nn.BatchNorm2d``) and its convs get a bias when ``conv_bias`` says so: plain
values, as in timm and torchvision, so the block knows nothing of the config
(``bnlab.build`` maps a norm kind to both).

``branch_scalars`` adds the scalar parameters of the normalisation-free
residual inits (only created when asked for, so other nets are unchanged):

* ``"fixup"`` (Zhang et al. 2019): scalar biases ``bias1a`` before conv1,
  ``bias1b`` before relu1, ``bias2a`` before conv2, ``bias2b`` after the branch's
  scalar multiplier ``scale``: branch = conv2(relu(conv1(x + a1) + b1) + a2) * scale + b2.
  As in Zhang et al.'s reference CIFAR code (``cifar/models/fixup_resnet_cifar.py``):
  the convs have no bias (the scalar biases replace the per-channel ones), and a
  downsampling block's shortcut also reads ``x + bias1a``.
* ``"skipinit"`` (De & Smith 2020): one scalar ``alpha``: out = relu(x + alpha * branch(x)).
  Its convs keep their per-channel biases (no norm layer shifts them, and SkipInit
  adds no scalar biases to replace them).

Their values (biases 0, scale 1, alpha 0) are set by ``bnlab.models.init.initialize``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bnlab.models.norms import NormLayer


def convs_have_bias(conv_bias: bool, branch_scalars: str | None) -> bool:
    """Whether the network's convs get a per-channel bias.

    Only when nothing after the conv shifts its output (``conv_bias``: the norm
    kind's rule), and not with Fixup, whose scalar biases take their place (its
    reference code builds every conv with bias=False).
    """
    return conv_bias and branch_scalars != "fixup"


def conv3x3(in_channels: int, out_channels: int, stride: int, bias: bool) -> nn.Conv2d:
    """3x3 convolution with padding 1: keeps the spatial size at stride 1, halves it at 2."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)


class PadShortcut(nn.Module):
    """Option A shortcut: subsample by ``stride`` and zero-pad the new channels.

    The identity part lands on the first ``in_channels`` channels and the
    added ones are zero. (akamaster pads both sides equally; where the zeros go
    is only a permutation of channels the next layer learns to read anyway.)
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"cannot pad {in_channels} channels down to {out_channels}")
        self.stride = stride
        self.extra_channels = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # F.pad's pairs run from the last dim backwards: (W, W, H, H, C_front, C_back).
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_channels={self.extra_channels}"


class BasicBlock(nn.Module):
    """conv1-norm1-relu1-conv2-norm2 (+ shortcut) -relu2.

    ``shortcut`` is None in the plain twin, so "no skip" is visible in the
    module tree rather than hidden in a flag.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        norm_layer: NormLayer = nn.BatchNorm2d,
        conv_bias: bool = False,
        residual: bool = True,
        branch_scalars: str | None = None,
    ) -> None:
        super().__init__()
        if branch_scalars is not None and not residual:
            raise ValueError(f"branch_scalars={branch_scalars!r} needs a residual block")
        self.branch_scalars = branch_scalars
        bias = convs_have_bias(conv_bias, branch_scalars)
        self.conv1 = conv3x3(in_channels, out_channels, stride, bias)
        self.norm1 = norm_layer(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(out_channels, out_channels, 1, bias)
        self.norm2 = norm_layer(out_channels)
        # Separate ReLU modules (not one shared, not in-place) so a forward
        # hook on each sees exactly one activation.
        self.relu2 = nn.ReLU()

        self.shortcut: nn.Module | None
        if not residual:
            self.shortcut = None
        elif stride != 1 or in_channels != out_channels:
            self.shortcut = PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Identity()

        if branch_scalars == "fixup":
            for name in ("bias1a", "bias1b", "bias2a", "bias2b"):
                self.register_parameter(name, nn.Parameter(torch.zeros(1)))
            self.scale = nn.Parameter(torch.ones(1))
        elif branch_scalars == "skipinit":
            self.alpha = nn.Parameter(torch.zeros(1))
        elif branch_scalars is not None:
            raise ValueError(f"unknown branch_scalars {branch_scalars!r}; known: fixup, skipinit")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip_in = x
        if self.branch_scalars == "fixup":
            biased = x + self.bias1a
            out = self.relu1(self.norm1(self.conv1(biased)) + self.bias1b)
            out = self.norm2(self.conv2(out + self.bias2a)) * self.scale + self.bias2b
            # The reference subsamples x + bias1a for a downsampling shortcut (an
            # identity shortcut gets x itself). Fixed at construction, like the rest.
            if isinstance(self.shortcut, PadShortcut):
                skip_in = biased
        else:
            out = self.relu1(self.norm1(self.conv1(x)))
            out = self.norm2(self.conv2(out))
            if self.branch_scalars == "skipinit":
                out = self.alpha * out
        # Fixed at construction, not data dependent: torch.compile specialises on it.
        if self.shortcut is not None:
            out = out + self.shortcut(skip_in)
        return self.relu2(out)
