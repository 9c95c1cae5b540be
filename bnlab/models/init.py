"""Weight initialisation schemes for the conv/linear layers, plus an overall scale.

* ``kaiming`` (default): He et al. 2015, normal, ``mode="fan_in"``, ReLU gain,
  for convs and the linear head alike. This is what akamaster's CIFAR ResNet
  uses. fan_in (the forward condition) rather than torchvision's fan_out
  because it keeps the *activation* variance constant with depth, which is
  what matters for ``norm=none`` and the init-sensitivity studies: nothing
  else rescales the activations there. The head gets the ReLU gain too: the
  gain corrects for the ReLU in front of a layer's *input*, and the head's
  input is post-ReLU features.
* ``xavier``: Glorot & Bengio 2010, normal, gain 1 -- the original, ReLU-
  unaware scheme; its activations shrink with depth without a norm layer.
* ``orthogonal``: Saxe et al. 2014, weight flattened to (out, in*k*k), with
  the ReLU gain so its scale matches kaiming's and only the structure differs.

Afterwards every conv/linear weight is multiplied by ``scale``
(``model.init_scale``). Biases are 0; norm layers get weight 1, bias 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bnlab.models.norms import NORM_TYPES

_RELU_GAIN = nn.init.calculate_gain("relu")


def _kaiming(weight: torch.Tensor) -> None:
    nn.init.kaiming_normal_(weight, mode="fan_in", nonlinearity="relu")


def _xavier(weight: torch.Tensor) -> None:
    nn.init.xavier_normal_(weight, gain=1.0)


def _orthogonal(weight: torch.Tensor) -> None:
    nn.init.orthogonal_(weight, gain=_RELU_GAIN)


SCHEMES: dict[str, Callable[[torch.Tensor], None]] = {
    "kaiming": _kaiming,
    "xavier": _xavier,
    "orthogonal": _orthogonal,
}


@torch.no_grad()
def initialize(model: nn.Module, scheme: str, scale: float) -> None:
    """Re-initialise ``model`` in place; module order fixes the RNG use, so a seed reproduces it."""
    try:
        init_weight = SCHEMES[scheme]
    except KeyError:
        raise ValueError(
            f"unknown init scheme {scheme!r}; known schemes: {', '.join(SCHEMES)}"
        ) from None

    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            init_weight(module.weight)
            module.weight.mul_(scale)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, NORM_TYPES):
            if getattr(module, "weight", None) is not None:
                nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
