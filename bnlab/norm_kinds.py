"""Every normalisation kind as the config sees it: its schema, conv-bias rule and checks.

A norm kind has two halves, split so that the config never pays a torch import:

- here (torch-free): its ``NormKind`` entry in ``NORM_KINDS`` -- the schema
  dataclass, whether convolutions in front of it keep a bias, the value checks,
  whether it normalises at all, and the architectures it has a layer for
  (``archs``: the one place that rule lives; ``bnlab.config.validate`` refuses
  any other pair);
- ``bnlab.build`` (imports torch and the layers): its factory in ``NORM_LAYERS``,
  (norm node) -> ``norm_layer`` (channels -> layer: a class or a functools.partial),
  one per architecture family it sits in (conv nets, recurrent cells, transformers).

A new norm kind is one entry in each table (plus, if it has settings, its dataclass
here and a ``conf/norm/<kind>.yaml`` holding only what differs from the dataclass
defaults) and one test; tests/test_norm_registry.py fails if a kind is in one
table and not the other. Everything else reads these tables:

- ``bnlab.config`` registers each schema in Hydra's ConfigStore (so
  ``norm=bn norm.groups=4`` is an unknown-key error) and runs each kind's checks;
- ``bnlab.build.build_model`` hands the models a ``norm_layer`` and ``conv_bias``;
- ``bnlab train --help`` lists each kind's keys.

This module imports neither torch nor ``bnlab.models`` (the CLI's help, the sweep's
grid checks and the report must stay fast); the models import nothing from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from bnlab.errors import BnlabError

# ----------------------------------------------------------------------------- schemas


@dataclass
class NormConfig:
    kind: str = MISSING


@dataclass
class AffineFields:
    eps: float = 1e-5
    affine: bool = True


@dataclass
class RunningStatsFields(AffineFields):
    momentum: float = 0.1


@dataclass
class NoiseFields:
    """Santurkar et al.'s (2018) shifting noise; see bnlab.models.norms.ActivationNoise.

    Each step and channel: mu ~ U(-noise_mean, noise_mean), sigma ~ U(1, 1 + noise_scale);
    each activation: out = x * s + m, s ~ sigma * (1 + j U(-0.5, 0.5)),
    m ~ mu + j sigma Z, Z ~ U(-sqrt 3, sqrt 3) (mean 0, variance 1; model.revision 1
    drew Z ~ N(0, 1)), j = noise_jitter (1: as large as the signal).
    """

    noise_mean: float = 0.5
    noise_scale: float = 1.0
    noise_jitter: float = 0.25


@dataclass
class BatchNormConfig(RunningStatsFields, NormConfig):
    """BatchNorm (Ioffe & Szegedy 2015); eval uses the running statistics."""

    kind: str = "bn"
    track_running_stats: bool = True


@dataclass
class NoNormConfig(NormConfig):
    """No normalisation; convolutions keep their biases."""

    kind: str = "none"


@dataclass
class GroupNormConfig(AffineFields, NormConfig):
    """GroupNorm (Wu & He 2018); 8 groups, since the first stage has only 16 channels."""

    kind: str = "gn"
    groups: int = 8  # must divide model.width (channels of the first stage)


@dataclass
class LayerNormConfig(AffineFields, NormConfig):
    """LayerNorm for conv nets: each sample normalised over (C, H, W), i.e. GroupNorm(1, C)."""

    kind: str = "ln"


@dataclass
class InstanceNormConfig(AffineFields, NormConfig):
    """InstanceNorm: each sample and channel normalised over (H, W), i.e. GroupNorm(C, C)."""

    kind: str = "in"


@dataclass
class NoisyBatchNormConfig(NoiseFields, BatchNormConfig):
    """BN followed, in training only, by Santurkar et al.'s noise. Eval: plain BN."""

    kind: str = "bn_noisy"


@dataclass
class NoisyNoNormConfig(NoiseFields, NormConfig):
    """The noise of bn_noisy with no BN in front of it. Eval: no noise."""

    kind: str = "none_noisy"


@dataclass
class GhostBatchNormConfig(RunningStatsFields, NormConfig):
    """Ghost BN (Hoffer et al. 2017): training statistics over sub-batches of virtual_batch."""

    kind: str = "ghost_bn"
    virtual_batch: int = 32  # must divide data.batch_size


@dataclass
class BatchRenormConfig(RunningStatsFields, NormConfig):
    """Batch Renormalization (Ioffe 2017): r, d clipped to r_max, d_max, relaxed linearly
    from 1 and 0 over warmup_steps training steps. Eval: running statistics."""

    kind: str = "batch_renorm"
    r_max: float = 3.0
    d_max: float = 5.0
    warmup_steps: int = 5000  # Ioffe's: plain BN for the first 5k steps, then relaxed


@dataclass
class WeightNormConfig(NormConfig):
    """Weight normalisation (Salimans & Kingma 2016): no norm layer; every conv/linear
    weight is g * v / ||v|| (one g per output channel). Convolutions keep their biases."""

    kind: str = "weight_norm"


@dataclass
class RMSNormConfig(AffineFields, NormConfig):
    """RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * g over the features,
    no mean subtracted, no shift. Sequence models only (recurrent cells, transformers)."""

    kind: str = "rmsnorm"
    eps: float = 1e-8  # Zhang & Sennrich's reference code (bzhangGo/rmsnorm)


@dataclass
class StepBatchNormConfig(RunningStatsFields, NormConfig):
    """BN in recurrent cells with one set of running statistics per time step
    (Cooijmans et al. 2016); beyond the last trained step, eval uses the last set.
    ``norm=bn`` in a recurrent cell is the same layer with one set shared over time."""

    kind: str = "step_bn"


# ----------------------------------------------------------------------------- checks

Check = Callable[[Any, Any], None]  # (norm node, whole config) -> raise BnlabError


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise BnlabError(message)


def check_eps(n: Any, cfg: Any) -> None:
    _require(math.isfinite(n.eps) and n.eps > 0, f"norm.eps={n.eps} must be a positive number")


def check_momentum(n: Any, cfg: Any) -> None:
    _require(0.0 <= n.momentum <= 1.0, f"norm.momentum={n.momentum} must be in [0, 1]")


def check_groups(n: Any, cfg: Any) -> None:
    _require(n.groups > 0, f"norm.groups={n.groups} must be a positive number")
    width = cfg.model.width
    _require(
        width % n.groups == 0,
        f"norm.groups={n.groups} must divide model.width={width} (channels per stage)",
    )


NOISE_KEYS = ("noise_mean", "noise_scale", "noise_jitter")


def check_noise(n: Any, cfg: Any) -> None:
    for key in NOISE_KEYS:
        value = float(getattr(n, key))
        _require(value >= 0.0, f"norm.{key}={value} must be >= 0")


def check_virtual_batch(n: Any, cfg: Any) -> None:
    _require(n.virtual_batch > 0, f"norm.virtual_batch={n.virtual_batch} must be a positive number")
    # Equal ghost batches only: a smaller last one would be normalised more noisily.
    batch = cfg.data.batch_size
    _require(
        batch % n.virtual_batch == 0,
        f"norm.virtual_batch={n.virtual_batch} must divide data.batch_size={batch}",
    )


def check_renorm(n: Any, cfg: Any) -> None:
    _require(n.r_max >= 1.0, f"norm.r_max={n.r_max} must be >= 1")
    _require(n.d_max >= 0.0, f"norm.d_max={n.d_max} must be >= 0")
    _require(n.warmup_steps >= 0, f"norm.warmup_steps={n.warmup_steps} must be >= 0")


# ----------------------------------------------------------------------------- the table

# The architectures (model.arch) bnlab builds; the config's model group picks one.
ARCHS = ("resnet", "lstm", "gru", "transformer")
RECURRENT_ARCHS = ("lstm", "gru")  # one recurrent cell family: the same norm places
SEQUENCE_ARCHS = (*RECURRENT_ARCHS, "transformer")  # read an image as a sequence of rows


@dataclass(frozen=True)
class NormKind:
    schema: type[NormConfig]
    # A conv bias is wasted in front of a layer that subtracts a mean (and adds its
    # own learned shift); it is only needed when nothing follows the conv.
    conv_bias: bool
    checks: Sequence[Check] = ()
    # No normalisation at all: what Fixup/SkipInit replace. (weight_norm is not:
    # Fixup's zero-initialised convs have no direction v / ||v||.)
    norm_free: bool = False
    # The architectures this kind has a layer for (bnlab.build holds one factory per
    # family; tests/test_sequence.py checks the two agree). validate() refuses others.
    archs: tuple[str, ...] = ("resnet",)
    keys: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        names = tuple(f for f in self.schema.__dataclass_fields__ if f != "kind")
        object.__setattr__(self, "keys", names)

    @property
    def affine(self) -> bool:
        """Has learnable gamma/beta (train.only_bn needs them)."""
        return "affine" in self.keys


_BN_CHECKS = (check_eps, check_momentum)

NORM_KINDS: dict[str, NormKind] = {
    # In a recurrent cell: statistics per step in training, one running set shared over
    # time (Laurent et al. 2016's and Cooijmans et al.'s foil); in a transformer: over
    # batch x tokens per feature (Shen et al. 2020).
    "bn": NormKind(BatchNormConfig, conv_bias=False, checks=_BN_CHECKS, archs=ARCHS),
    "none": NormKind(NoNormConfig, conv_bias=True, norm_free=True, archs=ARCHS),
    "gn": NormKind(GroupNormConfig, conv_bias=False, checks=(check_eps, check_groups)),
    # In sequence models: over each token's / time step's features (Ba et al. 2016).
    "ln": NormKind(LayerNormConfig, conv_bias=False, checks=(check_eps,), archs=ARCHS),
    "bn_noisy": NormKind(NoisyBatchNormConfig, conv_bias=False, checks=(*_BN_CHECKS, check_noise)),
    # Noise without BN: its shift is not learned, so the convs keep their biases.
    "none_noisy": NormKind(
        NoisyNoNormConfig, conv_bias=True, checks=(check_noise,), norm_free=True
    ),
    "ghost_bn": NormKind(
        GhostBatchNormConfig, conv_bias=False, checks=(*_BN_CHECKS, check_virtual_batch)
    ),
    "batch_renorm": NormKind(
        BatchRenormConfig, conv_bias=False, checks=(*_BN_CHECKS, check_renorm)
    ),
    "in": NormKind(InstanceNormConfig, conv_bias=False, checks=(check_eps,)),
    # No norm layer: every conv/linear weight is reparametrised (bnlab.build), no shift.
    "weight_norm": NormKind(WeightNormConfig, conv_bias=True),
    # Sequence models only. conv_bias is moot there (no convs); RMSNorm subtracts no
    # mean, so a bias in front of it would not be wasted.
    "rmsnorm": NormKind(RMSNormConfig, conv_bias=True, checks=(check_eps,), archs=SEQUENCE_ARCHS),
    "step_bn": NormKind(
        StepBatchNormConfig, conv_bias=False, checks=_BN_CHECKS, archs=RECURRENT_ARCHS
    ),
}
NORM_FREE_KINDS = tuple(k for k, v in NORM_KINDS.items() if v.norm_free)


def norm_kind(kind: str) -> NormKind:
    try:
        return NORM_KINDS[kind]
    except KeyError:
        known = ", ".join(NORM_KINDS)
        raise ValueError(f"unknown norm kind {kind!r}; known kinds: {known}") from None


def kinds_for(arch: str) -> tuple[str, ...]:
    """The norm kinds ``arch`` has a layer for, in table order."""
    return tuple(k for k, v in NORM_KINDS.items() if arch in v.archs)


def check_norm(cfg: Any) -> None:
    """The value checks of cfg.norm's kind (its type checks are Hydra's)."""
    kind = cfg.norm.kind
    if kind not in NORM_KINDS:
        raise BnlabError(f"norm={kind!r} is not one of: {', '.join(NORM_KINDS)}")
    arch = cfg.model.arch
    _require(
        arch in NORM_KINDS[kind].archs,
        f"norm={kind} has no place in model.arch={arch} "
        f"({arch} takes norm={', '.join(kinds_for(arch))})",
    )
    for check in NORM_KINDS[kind].checks:
        check(cfg.norm, cfg)
