"""The networks: CIFAR ResNets (and plain twins) with a pluggable norm layer.

Everything here takes plain values (a ``norm_layer`` factory, ``conv_bias``, depth,
width, init names) and imports nothing else from bnlab: the config -> model step
is ``bnlab.build.build_model`` (tests/test_norm_registry.py checks the direction).
"""

from bnlab.models.blocks import BasicBlock, PadShortcut
from bnlab.models.init import initialize
from bnlab.models.norms import NormLayer
from bnlab.models.resnet import CifarResNet, cifar_resnet, count_params

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "NormLayer",
    "PadShortcut",
    "cifar_resnet",
    "count_params",
    "initialize",
]
