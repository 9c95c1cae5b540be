"""Fold BatchNorm into the convolution in front of it, for inference.

In eval mode BatchNorm is a fixed per-channel affine map of its input,

    y = (x - mean) * gamma / sqrt(var + eps) + beta,

with ``mean``/``var`` the running statistics. A conv followed by it is
therefore one conv with

    w' = w * gamma / sqrt(var + eps)
    b' = (b - mean) * gamma / sqrt(var + eps) + beta

(b = 0 when the conv has no bias, gamma = 1 and beta = 0 when the BN is not
affine). The folded network computes the *eval-mode* function of the original
one: in train mode BN normalises with the batch's own statistics, which no
fixed conv can reproduce, so ``fold_bn`` returns its copy in eval mode.

Only BatchNorm folds. GroupNorm/LayerNorm normalise with statistics of each
sample computed at run time, so they stay as they are; ``norm=none`` layers are
already ``nn.Identity``.

Subclasses of ``nn.BatchNorm2d`` fold too: bnlab's BN variants (noisy, ghost,
batch renorm) differ from BN only in training and are plain BN in eval mode;
a subclass whose eval forward is not plain BN must not subclass it.

Pairs are found by the model's naming convention (``convX`` followed by
``normX`` in the same module, see ``bnlab.models.resnet``) and, for
``nn.Sequential`` containers, by position (a Conv2d directly followed by a
BatchNorm2d), since there registration order is the forward order.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize


@dataclass
class FoldResult:
    model: nn.Module  # a folded deep copy, in eval mode; the input model is untouched
    folded: int  # how many conv+BN pairs were merged
    names: list[str] = field(default_factory=list)  # the BN layers folded, by qualified name


def fold_bn(model: nn.Module) -> FoldResult:
    """A deep copy of ``model`` with every conv+BatchNorm2d pair merged into one conv.

    The BN layers become ``nn.Identity`` so module names (and hooks/probes keyed
    on them) stay valid. Raises ValueError for a BN without running statistics
    (``track_running_stats=False``): it always normalises with batch statistics
    and has no fixed affine form to fold.
    """
    folded = copy.deepcopy(model).eval()
    names: list[str] = []
    # A list first: the loop replaces children of modules it is walking.
    for prefix, module in list(folded.named_modules()):
        for conv_name, bn_name in _pairs(module):
            conv = getattr(module, conv_name)
            bn = getattr(module, bn_name)
            qualified = f"{prefix}.{bn_name}" if prefix else bn_name
            _fold_into(conv, bn, qualified)
            setattr(module, bn_name, nn.Identity())
            names.append(qualified)
    return FoldResult(folded, len(names), names)


def _pairs(module: nn.Module) -> list[tuple[str, str]]:
    """(conv, bn) child names in ``module`` that are a Conv2d directly followed by a BN."""
    children = dict(module.named_children())
    pairs: list[tuple[str, str]] = []
    if isinstance(module, nn.Sequential):
        names = list(children)
        pairs += [
            (a, b)
            for a, b in zip(names, names[1:], strict=False)
            if isinstance(children[a], nn.Conv2d) and isinstance(children[b], nn.BatchNorm2d)
        ]
    else:
        for name, child in children.items():
            if not (name.startswith("conv") and isinstance(child, nn.Conv2d)):
                continue
            bn_name = "norm" + name[len("conv") :]
            if isinstance(children.get(bn_name), nn.BatchNorm2d):
                pairs.append((name, bn_name))
    return pairs


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d, name: str) -> None:
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            f"cannot fold {name}: BatchNorm2d without running statistics "
            "(track_running_stats=False) normalises with batch statistics even in eval mode"
        )
    if parametrize.is_parametrized(conv, "weight"):
        # e.g. weight_norm: the weight is computed from g and v, not a tensor we can scale.
        raise ValueError(f"cannot fold {name}: the conv in front of it has a parametrized weight")
    if bn.num_features != conv.out_channels:
        raise ValueError(
            f"cannot fold {name}: {bn.num_features} BN channels after a conv with "
            f"{conv.out_channels} output channels"
        )
    # float64 so the folded weights are the exact product rounded once, not a
    # chain of float32 roundings (keeps folded outputs within ~1e-6 of the original).
    w = conv.weight.double()
    mean = bn.running_mean.double()
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.affine:
        scale = scale * bn.weight.double()
    shift = bn.bias.double() if bn.affine else torch.zeros_like(mean)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(mean)

    dtype = conv.weight.dtype
    # Elementwise ops keep w's strides, so a channels_last conv stays channels_last.
    conv.weight = nn.Parameter((w * scale.view(-1, 1, 1, 1)).to(dtype))
    conv.bias = nn.Parameter(((bias - mean) * scale + shift).to(dtype))
