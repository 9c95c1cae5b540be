"""The packing rules: one per module type, walking K solo module trees in step.

``pack(models, k, generators)`` returns the packed twin of the members' module tree,
with the same module names; every parameter and buffer holds the K members' tensors
concatenated along dim 0 (see ``bnlab.pack.model``). Modules are matched by **exact
type** in ``PACKERS``: a type without a rule -- a subclass of a known type included,
since a subclass may draw, mix or count differently -- is a ``PackError`` naming the
module, never a silent wrong pack. Members must agree in every setting
(``extra_repr``) and shape; only the tensors' values (and noise settings) may differ.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _WeightNorm

from bnlab.models.blocks import BasicBlock, PadShortcut
from bnlab.models.norms import (
    ActivationNoise,
    BatchRenorm2d,
    GhostBatchNorm2d,
    NoisyBatchNorm2d,
)
from bnlab.models.resnet import CifarResNet
from bnlab.pack.layers import (
    PackedActivationNoise,
    PackedBasicBlock,
    PackedBatchRenorm2d,
    PackedLinear,
    PackedPadShortcut,
    PackedResNet,
)


class PackError(ValueError):
    """These models cannot be packed (unknown module type, differing shapes or settings)."""


@dataclass(frozen=True)
class _Context:
    k: int
    generators: Sequence[torch.Generator] | None
    path: str  # the module being packed, for error messages ("" is the root)

    def child(self, name: str) -> _Context:
        return _Context(self.k, self.generators, f"{self.path}.{name}" if self.path else name)

    def where(self) -> str:
        return self.path or "the root module"


Packer = Callable[[list[nn.Module], _Context], nn.Module]


# ----------------------------------------------------------------------------- the walk


def _solo_type(module: nn.Module) -> type[nn.Module]:
    """The module's class; for a parametrized one (weight norm), the class it wraps."""
    if parametrize.is_parametrized(module):
        return type(module).__bases__[0]
    return type(module)


def _pack(mods: list[nn.Module], ctx: _Context) -> nn.Module:
    first = mods[0]
    solo_type = _solo_type(first)
    for m in mods[1:]:
        # (A parametrized module's class is made per instance: compare what it wraps.)
        same = parametrize.is_parametrized(m) == parametrize.is_parametrized(first)
        if not same or _solo_type(m) is not solo_type:
            raise PackError(
                f"{ctx.where()}: members differ in type ({type(first).__name__} vs "
                f"{type(m).__name__}); only models of one architecture pack"
            )
    packer = PACKERS.get(solo_type)
    if packer is None:
        known = ", ".join(sorted(t.__name__ for t, f in PACKERS.items() if f is not _dropout))
        raise PackError(
            f"{ctx.where()}: no packing rule for {solo_type.__module__}.{solo_type.__name__}; "
            f"known types: {known}. Add a packer to bnlab.pack.packers.PACKERS (and a "
            "member-equals-solo test) or train these runs solo"
        )
    if solo_type not in _PER_MEMBER_SETTINGS:
        reprs = {m.extra_repr() for m in mods}
        if len(reprs) > 1:
            raise PackError(f"{ctx.where()}: members' settings differ: {sorted(reprs)}")
    packed = packer(mods, ctx)
    if parametrize.is_parametrized(first):
        _pack_weight_norm(packed, mods, ctx)
    return packed


def _children(mods: list[nn.Module], ctx: _Context) -> dict[str, nn.Module]:
    """The members' children, packed, by name (every member must have the same names)."""
    names = [n for n, _ in mods[0].named_children()]
    for m in mods[1:]:
        if [n for n, _ in m.named_children()] != names:
            raise PackError(f"{ctx.where()}: members have different submodules")
    return {name: _pack([getattr(m, name) for m in mods], ctx.child(name)) for name in names}


def stack(tensors: list[torch.Tensor], what: str) -> torch.Tensor:
    """Member tensors along a new member dim 0 (0-dim ones) or concatenated along dim 0."""
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise PackError(f"{what}: members' shapes differ: {sorted(shapes)}")
    detached = [t.detach() for t in tensors]
    return torch.stack(detached) if tensors[0].dim() == 0 else torch.cat(detached)


def _set(packed: nn.Module, mods: list[nn.Module], name: str, ctx: _Context) -> None:
    """Set ``packed.name`` (a parameter or a buffer, as in the members) to the members' stack."""
    values = [getattr(m, name) for m in mods]
    if values[0] is None:
        return
    stacked = stack(values, f"{ctx.where()}.{name}")
    if isinstance(values[0], nn.Parameter) or name in ("weight", "bias"):
        # "weight" of a parametrized member is computed, not a Parameter; it becomes one
        # here and _pack_weight_norm then parametrizes it again.
        setattr(packed, name, nn.Parameter(stacked, requires_grad=values[0].requires_grad))
    else:
        setattr(packed, name, stacked)


# ----------------------------------------------------------------------------- packers


def _sequential(mods: list[nn.Module], ctx: _Context) -> nn.Module:
    return nn.Sequential(OrderedDict(_children(mods, ctx)))


def _stateless(mods: list[nn.Module], ctx: _Context) -> nn.Module:
    """Identity, ReLU, pooling: per-element or per-channel, no state, no member dim."""
    first = mods[0]
    if any(True for _ in first.parameters()) or any(True for _ in first.buffers()):
        raise PackError(f"{ctx.where()}: {type(first).__name__} with state is not stateless")
    return copy.deepcopy(first)


def _conv(mods: list[nn.Module], ctx: _Context) -> nn.Module:
    s = mods[0]
    assert isinstance(s, nn.Conv2d)
    k = ctx.k
    # Member k's output channels read only its own input channels: K times the groups.
    packed = nn.Conv2d(
        k * s.in_channels,
        k * s.out_channels,
        s.kernel_size,  # type: ignore[arg-type]
        stride=s.stride,  # type: ignore[arg-type]
        padding=s.padding,  # type: ignore[arg-type]
        dilation=s.dilation,  # type: ignore[arg-type]
        groups=k * s.groups,
        bias=s.bias is not None,
        padding_mode=s.padding_mode,
    )
    _set(packed, mods, "weight", ctx)
    _set(packed, mods, "bias", ctx)
    return packed


def _linear(mods: list[nn.Module], ctx: _Context) -> nn.Module:
    s = mods[0]
    assert isinstance(s, nn.Linear)
    packed = PackedLinear(ctx.k, s.in_features, s.out_features, bias=s.bias is not None)
    _set(packed, mods, "weight", ctx)
    _set(packed, mods, "bias", ctx)
    return packed


def _bn_state(packed: nn.Module, mods: list[nn.Module], ctx: _Context) -> nn.Module:
    s = mods[0]
    assert isinstance(s, nn.BatchNorm2d)
    if s.momentum is None and s.track_running_stats:
        raise PackError(
            f"{ctx.where()}: BatchNorm with momentum=None (a cumulative average) reads the "
            "step count as one number; it does not pack"
        )
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        _set(packed, mods, name, ctx)
    return packed


def _bn_kwargs(s: nn.BatchNorm2d) -> dict[str, object]:
    return {
        "eps": s.eps,
        "momentum": s.momentum,
        "affine": s.affine,
        "track_running_stats": s.track_running_stats,
    }


def _batch_norm(mods: list[nn.Module], ctx: _Context) -> nn.Module:
    s = mods[0]
    assert isinstance(s, nn.BatchNorm2d)
    return _bn_state(nn.BatchNorm2d(ctx.k * s.num_features, **_bn_kwargs(s)), mods, ctx)  # type: ignore[arg-type]


def _ghost_batch_norm(mods: list[nn.Module], ctx: _Context) -> nn.Module:
    s = mods[0]
    assert isinstance(s, GhostBatchNorm2d)
    # Its sub-batches split the samples, not the channels: each channel, so each
    # member, is normalised over the same virtual batches as in its solo run.
    packed = GhostBatchNorm2d(ctx.k * s.num_features, s.virtual_batch, **_bn_kwargs(s))
    return _bn_state(packed, mods, ctx)


def _noisy_batch_norm(mods: list[nn.Module], ctx: _Context) -> nn.Module:
    s = mods[0]
    assert isinstance(s, NoisyBatchNorm2d)
    n = s.noise
    packed = NoisyBatchNorm2d(
        ctx.k * s.num_features,
        n.noise_mean,
        n.noise_scale,
        n.noise_jitter,
        **_bn_kwargs(s),
    )
    packed.noise = _pack([m.noise for m in mods], ctx.child("noise"))  # type: ignore[union-attr]
    return _bn_state(packed, mods, ctx)


def _batch_renorm(mods: list[nn.Module], ctx: _Context) -> nn.Module:
    s = mods[0]
    assert isinstance(s, BatchRenorm2d)
    return _bn_state(PackedBatchRenorm2d(ctx.k, s), mods, ctx)


def _group_norm(mods: list[nn.Module], ctx: _Context) -> nn.Module:
    s = mods[0]
    assert isinstance(s, nn.GroupNorm)
    # Groups are runs of consecutive channels: member k's G groups are k*G .. (k+1)*G-1.
    packed = nn.GroupNorm(ctx.k * s.num_groups, ctx.k * s.num_channels, s.eps, s.affine)
    _set(packed, mods, "weight", ctx)
    _set(packed, mods, "bias", ctx)
    return packed


def _noise(mods: list[nn.Module], ctx: _Context) -> nn.Module:
    if ctx.generators is None:
        raise PackError(
            f"{ctx.where()}: noise layers draw from each member's own generator: pass "
            "generators=[capture_generator(device) right after building each member]"
        )
    return PackedActivationNoise(mods, ctx.generators)


def _dropout(mods: list[nn.Module], ctx: _Context) -> nn.Module:
    """Refused, with the reason: no member could draw its solo run's dropout masks."""
    raise PackError(
        f"{ctx.where()}: no packing rule for torch.nn.Dropout, on purpose: its masks are "
        "drawn inside torch's dropout kernel from the device's global generator (on CUDA "
        "a fused Philox kernel that takes no generator), so a pack member cannot draw "
        "the masks of its solo run; train runs with model.dropout > 0 solo"
    )


def _pad_shortcut(mods: list[nn.Module], ctx: _Context) -> nn.Module:
    s = mods[0]
    assert isinstance(s, PadShortcut)
    return PackedPadShortcut(ctx.k, s)


def _scalars(packed: nn.Module, mods: list[nn.Module], ctx: _Context) -> None:
    """A container's own parameters: per-member scalars of shape (1,) -> (K,)."""
    for name, p in mods[0].named_parameters(recurse=False):
        if p.shape != (1,):
            raise PackError(
                f"{ctx.where()}.{name}: a container's own parameter of shape "
                f"{tuple(p.shape)}; only per-member scalars (shape (1,)) pack"
            )
        _set(packed, mods, name, ctx)
    if any(True for _ in mods[0].buffers(recurse=False)):
        raise PackError(f"{ctx.where()}: a container with its own buffers does not pack")


def _scalar_container(setting: str, packed_type: type[nn.Module]) -> Packer:
    """A container (a block, the net) whose construction depends on one init setting
    (``setting``: BasicBlock.branch_scalars, CifarResNet.fixup) the members must share,
    and whose own parameters are per-member scalars."""

    def pack(mods: list[nn.Module], ctx: _Context) -> nn.Module:
        value = getattr(mods[0], setting)
        if any(getattr(m, setting) != value for m in mods):
            raise PackError(f"{ctx.where()}: members differ in {setting} (their init)")
        packed = packed_type(ctx.k, value, _children(mods, ctx))
        _scalars(packed, mods, ctx)
        return packed

    return pack


def _pack_weight_norm(packed: nn.Module, mods: list[nn.Module], ctx: _Context) -> None:
    """Re-apply the members' weight norm to the packed layer, with their g and v stacked.

    Only weight norm over dim 0 (one g per output channel or unit) packs: its norms
    are per output row, so per member; any other parametrization is a PackError.
    """
    plist = mods[0].parametrizations  # type: ignore[union-attr]
    found = {name: list(plist[name]) for name in plist}
    ok = list(found) == ["weight"] and len(found["weight"]) == 1
    wn = found["weight"][0] if ok else None
    if not isinstance(wn, _WeightNorm) or wn.dim != 0:
        raise PackError(
            f"{ctx.where()}: parametrizations {found} do not pack; only weight norm with "
            "dim=0 (one g per output channel) keeps its norms per member"
        )
    torch.nn.utils.parametrizations.weight_norm(packed, name="weight", dim=0)
    for name in ("original0", "original1"):  # g, v
        originals = [getattr(m.parametrizations.weight, name) for m in mods]  # type: ignore[union-attr]
        stacked = stack(originals, f"{ctx.where()}.parametrizations.weight.{name}")
        setattr(packed.parametrizations.weight, name, nn.Parameter(stacked))  # type: ignore[union-attr]


# Exact types; a subclass of one of these has no rule until one is added for it.
PACKERS: dict[type[nn.Module], Packer] = {
    CifarResNet: _scalar_container("fixup", PackedResNet),
    BasicBlock: _scalar_container("branch_scalars", PackedBasicBlock),
    nn.Sequential: _sequential,
    nn.Conv2d: _conv,
    nn.Linear: _linear,
    nn.BatchNorm2d: _batch_norm,
    GhostBatchNorm2d: _ghost_batch_norm,
    NoisyBatchNorm2d: _noisy_batch_norm,
    BatchRenorm2d: _batch_renorm,
    nn.GroupNorm: _group_norm,
    ActivationNoise: _noise,
    PadShortcut: _pad_shortcut,
    nn.Dropout: _dropout,  # refused: model.dropout > 0 trains solo (see _dropout)
    nn.Identity: _stateless,
    nn.ReLU: _stateless,
    nn.AdaptiveAvgPool2d: _stateless,
}
# Types whose settings may differ between members (the noise is drawn per member anyway).
_PER_MEMBER_SETTINGS: tuple[type[nn.Module], ...] = (ActivationNoise,)


def pack(models: Sequence[nn.Module], generators: Sequence[torch.Generator] | None) -> nn.Module:
    """The packed twin of ``models``' common module tree (see the module docstring)."""
    return _pack(list(models), _Context(len(models), generators, ""))
