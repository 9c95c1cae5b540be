"""One factory for every normalisation layer the networks can use.

Each kind is one entry in ``NORMS``: how to build the layer for ``channels``
feature maps, and whether the convolution in front of it needs its own bias.
Adding a kind (bn_noisy, ghost_bn, batch_renorm, in, weight_norm, ...) is one
builder function plus one registry entry; nothing else in the model changes.

The configs arrive as ``bnlab.config`` dataclasses or as OmegaConf nodes with
the same fields, so builders only use attribute access (``cfg.eps``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from bnlab.config import NormConfig

NormBuilder = Callable[[NormConfig, int], nn.Module]


@dataclass(frozen=True)
class NormSpec:
    build: NormBuilder
    # A conv bias is wasted in front of a layer that subtracts a mean (and adds
    # its own learned shift); it is only needed when nothing follows the conv.
    conv_bias: bool


def _batch_norm(cfg: NormConfig, channels: int) -> nn.Module:
    return nn.BatchNorm2d(
        channels,
        eps=cfg.eps,
        momentum=cfg.momentum,
        affine=cfg.affine,
        track_running_stats=cfg.track_running_stats,
    )


def _no_norm(cfg: NormConfig, channels: int) -> nn.Module:
    # An Identity (not a missing attribute) keeps every block's layout and
    # module names the same across kinds, so probes and hooks need no cases.
    return nn.Identity()


def _group_norm(cfg: NormConfig, channels: int) -> nn.Module:
    if channels % cfg.groups != 0:
        raise ValueError(
            f"norm.groups={cfg.groups} does not divide {channels} channels; "
            "GroupNorm needs a group count that divides every layer's width"
        )
    return nn.GroupNorm(cfg.groups, channels, eps=cfg.eps, affine=cfg.affine)


def _layer_norm(cfg: NormConfig, channels: int) -> nn.Module:
    # LayerNorm for conv nets normalises each sample over (C, H, W): one group.
    # nn.LayerNorm would need the spatial size at build time and would learn a
    # per-pixel affine, which is not what the LayerNorm baseline in the BN/GN
    # literature (Wu & He 2018) means.
    return nn.GroupNorm(1, channels, eps=cfg.eps, affine=cfg.affine)


NORMS: dict[str, NormSpec] = {
    "bn": NormSpec(_batch_norm, conv_bias=False),
    "none": NormSpec(_no_norm, conv_bias=True),
    "gn": NormSpec(_group_norm, conv_bias=False),
    "ln": NormSpec(_layer_norm, conv_bias=False),
}

# The layer types ``initialize`` resets to weight 1, bias 0. A new kind whose
# layer is a custom module adds its class here.
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm2d, nn.GroupNorm)


def _spec(kind: str) -> NormSpec:
    try:
        return NORMS[kind]
    except KeyError:
        raise ValueError(f"unknown norm kind {kind!r}; known kinds: {', '.join(NORMS)}") from None


def make_norm(cfg: NormConfig, channels: int) -> nn.Module:
    """The normalisation layer ``cfg.kind`` for ``channels`` feature maps."""
    return _spec(cfg.kind).build(cfg, channels)


def conv_needs_bias(cfg: NormConfig) -> bool:
    """True only when the norm does not follow the conv with its own shift."""
    return _spec(cfg.kind).conv_bias
