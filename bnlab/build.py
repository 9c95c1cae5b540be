"""From a composed config to a model: each norm kind's layer factory, and ``build_model``.

The one place that reads the config to build a network. ``NORM_LAYERS`` maps each
norm kind to its factory, (norm node) -> ``norm_layer`` (channels -> layer: a class,
or a functools.partial of one with the node's settings bound), and, for weight_norm,
the reparametrisation applied to every conv/linear once the weights are initialised.
A kind that sits in sequence models has a factory per family too: ``recurrent``
(the layer a recurrent cell calls as ``norm(v, step)``) and ``tokens`` (a layer over
a transformer's (batch, tokens, features)). The kind's schema, conv-bias rule, checks
and the architectures it takes are its ``NormKind`` in ``bnlab.norm_kinds``: a new
kind is one entry there, one here, and one test (tests/test_norm_registry.py and
tests/test_sequence.py fail if the two tables disagree).

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
    EveryStep,
    GhostBatchNorm2d,
    NoisyBatchNorm2d,
    NormLayer,
    StepNormLayer,
    TimeBatchNorm,
    TokenBatchNorm,
    group_norm,
    weight_norm,
)
from bnlab.models.recurrent import row_rnn
from bnlab.models.sequence import row_features
from bnlab.models.transformer import row_transformer
from bnlab.norm_kinds import NOISE_KEYS, RECURRENT_ARCHS, NormConfig, norm_kind

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


# Cooijmans et al. 2016: BN's gain starts at 0.1 in a recurrent cell (at 1 the unit-
# variance pre-activations saturate the gates' sigmoids and tanhs and the gradient
# vanishes over time). Both recurrent BN kinds use it, so they differ only in their
# statistics; LN and RMSNorm start at 1, as Ba et al. and Zhang & Sennrich do.
RECURRENT_BN_GAIN = 0.1


def _recurrent_bn(n: Any, steps: int, shared: bool) -> StepNormLayer:
    return partial(
        TimeBatchNorm, steps=steps, shared=shared, gamma_init=RECURRENT_BN_GAIN, **_bn_kwargs(n)
    )


def _every_step(make: Callable[[int], nn.Module]) -> StepNormLayer:
    return lambda features: EveryStep(make(features))


@dataclass(frozen=True)
class NormFactory:
    # (norm node) -> channels -> layer, for the conv nets; None: no place in them.
    layer: Callable[[Any], NormLayer] | None
    # Applied to every Conv2d/Linear after initialisation (weight norm must see the
    # initialised weight: it sets g = ||w||, so the function is unchanged).
    wrap: Callable[[nn.Module], nn.Module] | None = None
    # (norm node, time steps trained on) -> features -> layer(v, step), for lstm/gru.
    recurrent: Callable[[Any, int], StepNormLayer] | None = None
    # (norm node) -> features -> layer over (batch, tokens, features), for the transformer.
    tokens: Callable[[Any], NormLayer] | None = None


NORM_LAYERS: dict[str, NormFactory] = {
    "bn": NormFactory(
        lambda n: partial(nn.BatchNorm2d, **_bn_kwargs(n)),
        recurrent=lambda n, steps: _recurrent_bn(n, steps, shared=True),
        tokens=lambda n: partial(TokenBatchNorm, **_bn_kwargs(n)),
    ),
    "none": NormFactory(
        _no_norm,
        recurrent=lambda n, steps: _every_step(lambda f: nn.Identity()),
        tokens=_no_norm,
    ),
    # GN, and LN (1 group) and IN (one per channel) as its special cases.
    "gn": NormFactory(lambda n: partial(group_norm, groups=n.groups, eps=n.eps, affine=n.affine)),
    # In the sequence models: over each step's / token's features (Ba et al. 2016).
    "ln": NormFactory(
        lambda n: partial(group_norm, groups=1, eps=n.eps, affine=n.affine),
        recurrent=lambda n, steps: _every_step(
            partial(nn.LayerNorm, eps=n.eps, elementwise_affine=n.affine)
        ),
        tokens=lambda n: partial(nn.LayerNorm, eps=n.eps, elementwise_affine=n.affine),
    ),
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
    "rmsnorm": NormFactory(
        None,
        recurrent=lambda n, steps: _every_step(
            partial(nn.RMSNorm, eps=n.eps, elementwise_affine=n.affine)
        ),
        tokens=lambda n: partial(nn.RMSNorm, eps=n.eps, elementwise_affine=n.affine),
    ),
    "step_bn": NormFactory(None, recurrent=lambda n, steps: _recurrent_bn(n, steps, shared=False)),
}

# The family of each architecture's norm places: which NormFactory field builds them.
FAMILY = {"resnet": "layer", "lstm": "recurrent", "gru": "recurrent", "transformer": "tokens"}


def norm_factory(kind: str) -> NormFactory:
    norm_kind(kind)  # an unknown kind: ValueError listing the known ones
    return NORM_LAYERS[kind]


def _family_factory(kind: str, arch: str) -> Callable[..., Any]:
    made = getattr(norm_factory(kind), FAMILY[arch])
    if made is None:
        raise ValueError(f"norm kind {kind!r} has no layer for model.arch={arch}")
    return made


def norm_layer(norm: NormConfig) -> NormLayer:
    """``norm.kind``'s ``norm_layer`` (channels -> layer) with ``norm``'s settings."""
    return _family_factory(norm.kind, "resnet")(norm)


# The image size of each of bnlab's datasets by channel count (Fashion-MNIST 28 x 28 x 1,
# CIFAR-10 32 x 32 x 3): what a sequence model reads when the caller names no size.
IMAGE_SIZES = {1: (28, 28), 3: (32, 32)}


# ----------------------------------------------------------------------------- the model


def build_model(
    model: ModelConfig,
    norm: NormConfig,
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: tuple[int, int] | None = None,
) -> nn.Module:
    """The network ``model`` describes, initialised with ``model.init`` x ``model.init_scale``.

    Initialisation draws from torch's global RNG, so seed before calling. The
    norm kind's layer reparametrisation (``weight_norm``) comes after the
    initialisation, so it starts from the same function. ``image_size`` (H, W):
    the sequence models' steps and features per step (None: ``IMAGE_SIZES`` by
    ``in_channels``); the conv nets take any size. ``model.dropout`` (the ResNet's,
    before its classifier; a stored config from before the key: 0) must be 0 for the
    sequence models, which have no dropout layer.
    """
    # getattr: a run's config.yaml stored before model.dropout existed has no such key.
    dropout = float(getattr(model, "dropout", 0.0) or 0.0)
    if model.arch in FAMILY and model.arch != "resnet":
        if dropout:
            raise ValueError(f"model.dropout={dropout}: model.arch={model.arch} has no dropout")
        return _sequence_model(model, norm, num_classes, in_channels, image_size)
    if model.arch != "resnet":
        raise ValueError(f"unknown model.arch {model.arch!r}; known: {', '.join(FAMILY)}")
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
        dropout=dropout,
    )


def _sequence_model(
    model: Any,
    norm: NormConfig,
    num_classes: int,
    in_channels: int,
    image_size: tuple[int, int] | None,
) -> nn.Module:
    if image_size is None:
        if in_channels not in IMAGE_SIZES:
            raise ValueError(
                f"model.arch={model.arch} needs the image size of {in_channels}-channel data"
            )
        image_size = IMAGE_SIZES[in_channels]
    steps, features = row_features(in_channels, image_size)
    make = _family_factory(norm.kind, model.arch)
    if model.arch in RECURRENT_ARCHS:
        # Per-step BN keeps a set of statistics per step trained on.
        trained = min(steps, model.train_steps) if model.train_steps is not None else steps
        return row_rnn(
            cell=model.arch,
            input_size=features,
            hidden_size=model.width,
            layers=model.depth,
            norm_layer=make(norm, trained),
            num_classes=num_classes,
            train_steps=model.train_steps,
            init_scale=model.init_scale,
        )
    return row_transformer(
        input_size=features,
        steps=steps,
        width=model.width,
        depth=model.depth,
        heads=model.heads,
        norm_layer=make(norm),
        num_classes=num_classes,
        init_scale=model.init_scale,
    )
