"""From a composed config to a model: each norm kind's layer factory, and ``build_model``.

The one place that reads the config to build a network. ``NORM_LAYERS`` maps each
norm kind to its factory, (norm node) -> ``norm_layer`` (channels -> layer: a class,
or a functools.partial of one with the node's settings bound), and, for weight_norm,
the reparametrisation applied to every conv/linear once the weights are initialised.
The kind's schema, conv-bias rule and checks are its ``NormKind`` in
``bnlab.norm_kinds``: a new kind is one entry there, one here, and one test
(tests/test_norm_registry.py fails if the two tables disagree).

This module imports torch and the layers at the top; ``bnlab.config``, the CLI's help
and the sweep's grid checks never import it, so they stay torch-free. Import
direction: build -> models, norm_kinds, config; nothing imports back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import nn

from bnlab.config import ModelConfig
from bnlab.models import cifar_resnet
from bnlab.models.norms import (
    ActivationNoise,
    BatchRenorm2d,
    GhostBatchNorm2d,
    NoisyBatchNorm2d,
    NormLayer,
    group_norm,
    weight_norm,
)
from bnlab.norm_kinds import NOISE_KEYS, NormConfig, norm_kind

# ----------------------------------------------------------------------------- factories


def _bn_kwargs(n: Any) -> dict[str, Any]:
    # ghost_bn and batch_renorm have no track_running_stats key: they always track.
    tracked = getattr(n, "track_running_stats", True)
    return {
        "eps": n.eps,
        "momentum": n.momentum,
        "affine": n.affine,
        "track_running_stats": tracked,
    }


def _noise_kwargs(n: Any) -> dict[str, float]:
    return {k: float(getattr(n, k)) for k in NOISE_KEYS}


def _no_norm(n: Any) -> NormLayer:
    # An Identity (not a missing attribute) keeps every block's layout and module
    # names the same across kinds, so probes and hooks need no cases.
    return nn.Identity


def _noise_only(n: Any) -> NormLayer:
    noise = _noise_kwargs(n)

    def layer(channels: int) -> nn.Module:
        # The noise is drawn per channel at run time: it needs no channel count.
        return ActivationNoise(**noise)

    return layer


@dataclass(frozen=True)
class NormFactory:
    layer: Callable[[Any], NormLayer]  # (norm node) -> channels -> layer
    # Applied to every Conv2d/Linear after initialisation (weight norm must see the
    # initialised weight: it sets g = ||w||, so the function is unchanged).
    wrap: Callable[[nn.Module], nn.Module] | None = None


NORM_LAYERS: dict[str, NormFactory] = {
    "bn": NormFactory(lambda n: partial(nn.BatchNorm2d, **_bn_kwargs(n))),
    "none": NormFactory(_no_norm),
    # GN, and LN (1 group) and IN (one per channel) as its special cases.
    "gn": NormFactory(lambda n: partial(group_norm, groups=n.groups, eps=n.eps, affine=n.affine)),
    "ln": NormFactory(lambda n: partial(group_norm, groups=1, eps=n.eps, affine=n.affine)),
    "bn_noisy": NormFactory(
        lambda n: partial(NoisyBatchNorm2d, **_noise_kwargs(n), **_bn_kwargs(n))
    ),
    "none_noisy": NormFactory(_noise_only),
    "ghost_bn": NormFactory(
        lambda n: partial(GhostBatchNorm2d, virtual_batch=n.virtual_batch, **_bn_kwargs(n))
    ),
    "batch_renorm": NormFactory(
        lambda n: partial(
            BatchRenorm2d,
            r_max=n.r_max,
            d_max=n.d_max,
            warmup_steps=n.warmup_steps,
            eps=n.eps,
            momentum=n.momentum,
            affine=n.affine,
        )
    ),
    "in": NormFactory(lambda n: partial(group_norm, groups=None, eps=n.eps, affine=n.affine)),
    "weight_norm": NormFactory(_no_norm, wrap=weight_norm),
}


def norm_factory(kind: str) -> NormFactory:
    norm_kind(kind)  # an unknown kind: ValueError listing the known ones
    return NORM_LAYERS[kind]


def norm_layer(norm: NormConfig) -> NormLayer:
    """``norm.kind``'s ``norm_layer`` (channels -> layer) with ``norm``'s settings."""
    return norm_factory(norm.kind).layer(norm)


# ----------------------------------------------------------------------------- the model


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
    factory = norm_factory(norm.kind)
    return cifar_resnet(
        depth=model.depth,
        norm_layer=factory.layer(norm),
        conv_bias=norm_kind(norm.kind).conv_bias,
        width=model.width,
        residual=model.residual,
        num_classes=num_classes,
        in_channels=in_channels,
        init=model.init,
        init_scale=model.init_scale,
        wrap_layer=factory.wrap,
    )
