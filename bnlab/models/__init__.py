"""The networks: CIFAR ResNets (and plain twins) with a pluggable norm layer."""

from bnlab.models.blocks import BasicBlock, PadShortcut
from bnlab.models.init import initialize
from bnlab.models.norms import conv_needs_bias, make_norm
from bnlab.models.resnet import CifarResNet, build_model, count_params

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "PadShortcut",
    "build_model",
    "conv_needs_bias",
    "count_params",
    "initialize",
    "make_norm",
]
