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

* ``fixup`` (Zhang et al. 2019) and ``skipinit`` (De & Smith 2020), for
  residual nets without normalisation: kaiming as above, then each residual
  branch is made to output exactly 0 so every block starts as relu(x).
  Fixup, as in Zhang et al.'s reference CIFAR code: the last conv of each branch
  is 0; the first is He-normal with the *fan-out* (out_channels x 3 x 3, what the
  reference draws; it differs from the fan-in only in the two downsampling
  blocks, by 1/sqrt(2)) scaled by L^(-1/(2m-2)) = L^(-1/2) (L residual blocks,
  m = 2 layers per branch); the head's weight and bias are 0, the scalar biases 0
  and multipliers 1. (The reference leaves its stem conv at torch's default init,
  std 1/sqrt(3 fan_in); here it is He-normal like every other layer, as the paper's
  Sec. 3 says: "a standard method".) SkipInit: the branch multiplier alpha is 0.
  (The scalars live in ``BasicBlock``/``CifarResNet``, created only for these two
  inits.)

Afterwards every conv/linear weight is multiplied by ``scale``
(``model.init_scale``). Biases are 0; norm layers get weight 1, bias 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bnlab.models.blocks import BasicBlock
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
    # The residual inits draw their weights like kaiming, then zero the branches.
    "fixup": _kaiming,
    "skipinit": _kaiming,
}


def _blocks(model: nn.Module, scheme: str) -> list[BasicBlock]:
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    if not blocks or any(b.branch_scalars != scheme for b in blocks):
        raise ValueError(
            f"init {scheme!r} needs residual blocks built with branch_scalars={scheme!r}"
        )
    return blocks


def _fixup(model: nn.Module) -> None:
    blocks = _blocks(model, "fixup")
    depth_scale = len(blocks) ** -0.5  # L^(-1/(2m-2)) with m = 2 convs per branch
    for block in blocks:
        w = block.conv1.weight  # drawn He-normal with the fan-in; to the fan-out:
        w.mul_(depth_scale * (w.shape[1] / w.shape[0]) ** 0.5)
        nn.init.zeros_(block.conv2.weight)
        for name in ("bias1a", "bias1b", "bias2a", "bias2b"):
            nn.init.zeros_(getattr(block, name))
        nn.init.ones_(block.scale)
    for name, param in model.named_parameters():
        if name in ("stem_bias", "head_bias"):
            nn.init.zeros_(param)
    head = getattr(model, "fc", None)
    if isinstance(head, nn.Linear):
        nn.init.zeros_(head.weight)
        if head.bias is not None:
            nn.init.zeros_(head.bias)


def _skipinit(model: nn.Module) -> None:
    for block in _blocks(model, "skipinit"):
        nn.init.zeros_(block.alpha)


# Run after the weights are drawn: they need the blocks built with branch_scalars=scheme.
RESIDUAL_SCHEMES: dict[str, Callable[[nn.Module], None]] = {
    "fixup": _fixup,
    "skipinit": _skipinit,
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
    if scheme in RESIDUAL_SCHEMES:
        RESIDUAL_SCHEMES[scheme](model)
