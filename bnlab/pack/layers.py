"""The packed twins of the layers whose solo form cannot simply be widened K times.

Every tensor of a packed layer holds its K members' tensors concatenated along dim 0
(the member dim), and every activation holds member k's channels at
``k*C .. (k+1)*C - 1`` of dim 1. Layers that act on each channel alone (ReLU, pooling,
BatchNorm over K*C channels, GroupNorm with K*G groups, convolutions with K times the
groups) need no twin: ``bnlab.pack.model`` widens them. The ones here mix channels
with a per-member quantity and so need the member count:

* ``PackedLinear``        -- the head: a batched matmul over (K, out, in).
* ``PackedPadShortcut``   -- option A's zero channels go after *each* member's channels.
* ``PackedActivationNoise`` -- each member draws its noise from its own generator, in
  the order and layout its solo run draws it, so a member equals its solo run exactly.
* ``PackedBatchRenorm2d`` -- its warm-up reads the step count; each member keeps its own.
* ``PackedBasicBlock`` / ``PackedResNet`` -- the same forward as ``BasicBlock`` /
  ``CifarResNet``, with Fixup's and SkipInit's per-member scalars (shape (K,))
  broadcast over each member's channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from bnlab.models.blocks import PadShortcut
from bnlab.models.norms import BatchRenorm2d

_SQRT12 = 12.0**0.5  # as bnlab.models.norms.ActivationNoise


def per_member_channels(value: torch.Tensor, k: int, x: torch.Tensor) -> torch.Tensor:
    """A (K,) per-member scalar as a per-channel tensor that broadcasts over ``x``.

    ``x`` is (B, K*C, ...) or (B, K*C): member k's value lands on its C channels.
    """
    c = x.shape[1] // k
    shape = (1, k * c) + (1,) * (x.dim() - 2)
    return value.view(k, 1).expand(k, c).reshape(shape)


class PackedLinear(nn.Module):
    """K linear layers: (B, K*in) features -> (K, B, out) logits.

    ``weight`` is (K*out, in) (the members' weights stacked along dim 0, so weight
    norm's per-row g stays per member and unit) and ``bias`` (K*out,). One batched
    matmul (baddbmm); the result is (K, B, out), each member's logits contiguous.
    """

    def __init__(self, k: int, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.k = k
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(k * out_features, in_features))
        self.bias = nn.Parameter(torch.empty(k * out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, n_in, n_out = self.k, self.in_features, self.out_features
        features = x.view(x.shape[0], k, n_in).transpose(0, 1)  # (K, B, in)
        weight = self.weight.view(k, n_out, n_in).transpose(1, 2)  # (K, in, out)
        if self.bias is None:
            return torch.bmm(features, weight)
        return torch.baddbmm(self.bias.view(k, 1, n_out), features, weight)

    def extra_repr(self) -> str:
        return (
            f"k={self.k}, in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


class PackedPadShortcut(nn.Module):
    """``PadShortcut`` for K members: subsample, then zero-pad each member's channels.

    Padding the packed tensor as a whole would put all the zeros after the last
    member; (B, K, C, H, W) pads every member's C to C + extra.
    """

    def __init__(self, k: int, solo: PadShortcut) -> None:
        super().__init__()
        self.k = k
        self.stride = solo.stride
        self.extra_channels = solo.extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        members = x.unflatten(1, (self.k, x.shape[1] // self.k))
        # F.pad's pairs run from the last dim backwards: (W, W, H, H, C_front, C_back).
        out = F.pad(members, (0, 0, 0, 0, 0, self.extra_channels)).flatten(1, 2)
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            # The 5-D pad comes back channels-first; the branch it is added to is not.
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def extra_repr(self) -> str:
        return f"k={self.k}, stride={self.stride}, extra_channels={self.extra_channels}"


class PackedActivationNoise(nn.Module):
    """K ``ActivationNoise`` layers, each member drawing from its own generator.

    A solo run draws its noise from torch's global generator of the device (seeded by
    train.seed; nothing else draws from it during training: the loader has its own).
    Member k draws from ``generators[k]``, which must start where the solo run's global
    generator stands when training starts (``bnlab.pack.model.capture_generator``
    right after building member k). Each layer draws, per member and in the solo
    order: mu (1, C), sigma (1, C), then (unless noise_jitter is 0) u and u' of the
    member's (B, C, H, W) shape in the memory format its solo activation has, so the
    uniform generator fills them in the same element order. Each member's noise
    settings are its own (they are drawn per member anyway).

    The draws are K small launches per layer instead of one: the price of exact
    equality with the solo runs (one draw over the packed tensor would give every
    member a different, equally valid, noise sequence).
    """

    def __init__(self, solos: Sequence[nn.Module], generators: Sequence[torch.Generator]) -> None:
        super().__init__()
        if len(generators) != len(solos):
            raise ValueError(f"{len(solos)} noise layers but {len(generators)} generators")
        self.k = len(solos)
        self.settings = [(s.noise_mean, s.noise_scale, s.noise_jitter) for s in solos]
        # Plain attributes, not state: a generator's state belongs in the member's
        # checkpoint (as its solo run's RNG state), not in the model's state dict.
        self.generators = list(generators)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        k = self.k
        c = x.shape[1] // k
        rest = x.shape[2:]
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        affine_shape = (1, c) + (1,) * len(rest)
        member_shape = (x.shape[0], c, *rest)
        scales: list[torch.Tensor] = []
        shifts: list[torch.Tensor] = []
        for (mean, scale, jitter), gen in zip(self.settings, self.generators, strict=True):
            if gen.device != x.device:
                raise ValueError(f"noise generator on {gen.device} for activations on {x.device}")
            mu = torch.empty(affine_shape, dtype=x.dtype, device=x.device)
            mu.uniform_(-mean, mean, generator=gen)
            sigma = torch.empty(affine_shape, dtype=x.dtype, device=x.device)
            sigma.uniform_(1.0, 1.0 + scale, generator=gen)
            if jitter == 0:
                scales.append(sigma)
                shifts.append(mu)
                continue
            # The arithmetic of bnlab.models.norms._JitterFn, on this member's draws.
            s = torch.empty(member_shape, dtype=x.dtype, device=x.device, memory_format=fmt)
            s.uniform_(0.0, 1.0, generator=gen)
            s = torch.addcmul(sigma * (1 - 0.5 * jitter), s, sigma * jitter)
            m = torch.empty(member_shape, dtype=x.dtype, device=x.device, memory_format=fmt)
            m.uniform_(0.0, 1.0, generator=gen)
            m_scale = sigma * (jitter * _SQRT12)
            m = torch.addcmul(mu - 0.5 * m_scale, m, m_scale)
            scales.append(s)
            shifts.append(m)
        if all(jitter == 0 for _, _, jitter in self.settings):  # per-channel affines only
            return x * torch.cat(scales, dim=1) + torch.cat(shifts, dim=1)
        # Some members jitter: widen the others' per-channel affines to full tensors.
        scale_all = torch.cat([s.expand(member_shape) for s in scales], dim=1)
        shift_all = torch.cat([m.expand(member_shape) for m in shifts], dim=1)
        # The noise is a constant of the step: the gradient flows through x only (via s).
        return torch.addcmul(shift_all, x, scale_all)

    def extra_repr(self) -> str:
        return f"k={self.k}, settings={self.settings}"


class PackedBatchRenorm2d(BatchRenorm2d):
    """``BatchRenorm2d`` over K*C channels with one step count per member.

    ``num_batches_tracked`` is (K,): the warm-up of r_max/d_max reads it, and a member
    stopped by divergence keeps the count it stopped at. Everything else is per
    channel and so already per member.
    """

    def __init__(self, k: int, solo: BatchRenorm2d) -> None:
        super().__init__(
            k * solo.num_features,
            solo.r_max,
            solo.d_max,
            solo.warmup_steps,
            eps=solo.eps,
            momentum=solo.momentum,
            affine=solo.affine,
        )
        self.k = k

    def _limits(self) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        r_max, d_max = super()._limits()
        if not isinstance(r_max, torch.Tensor) or not isinstance(d_max, torch.Tensor):
            return r_max, d_max  # no warm-up: the same numbers for every member
        k, c = self.k, self.num_features // self.k
        # (K,) per-member limits -> (K*C,) per channel, for the per-channel clamps.
        # (expand, not repeat_interleave: that one can read its output size back to the host.)
        return r_max.view(k, 1).expand(k, c).reshape(-1), d_max.view(k, 1).expand(k, c).reshape(-1)


class PackedBasicBlock(nn.Module):
    """``BasicBlock.forward`` for K members; children are the packed layers, same names.

    Fixup's bias1a/bias1b/bias2a/bias2b/scale and SkipInit's alpha are (K,) here,
    one value per member, broadcast over that member's channels.
    tests/test_pack.py checks this forward against ``BasicBlock``'s for every kind.
    """

    def __init__(self, k: int, branch_scalars: str | None, children: dict[str, nn.Module]) -> None:
        super().__init__()
        self.k = k
        self.branch_scalars = branch_scalars
        for name, child in children.items():
            self.add_module(name, child)
        if "shortcut" not in children:
            self.shortcut = None  # the plain twin: no skip connection, as in BasicBlock

    def _m(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return per_member_channels(getattr(self, name), self.k, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip_in = x
        if self.branch_scalars == "fixup":
            biased = x + self._m("bias1a", x)
            out = self.norm1(self.conv1(biased))
            out = self.relu1(out + self._m("bias1b", out))
            out = self.norm2(self.conv2(out + self._m("bias2a", out)))
            out = out * self._m("scale", out) + self._m("bias2b", out)
            if isinstance(self.shortcut, PackedPadShortcut):
                skip_in = biased
        else:
            out = self.relu1(self.norm1(self.conv1(x)))
            out = self.norm2(self.conv2(out))
            if self.branch_scalars == "skipinit":
                out = self._m("alpha", out) * out
        if self.shortcut is not None:
            out = out + self.shortcut(skip_in)
        return self.relu2(out)


class PackedResNet(nn.Module):
    """``CifarResNet.forward`` for K members: (B, K*C_in, H, W) -> (K, B, classes)."""

    def __init__(self, k: int, fixup: bool, children: dict[str, nn.Module]) -> None:
        super().__init__()
        self.k = k
        self.fixup = fixup
        for name, child in children.items():
            self.add_module(name, child)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm1(self.conv1(x))
        if self.fixup:
            out = out + per_member_channels(self.stem_bias, self.k, out)
        out = self.layer3(self.layer2(self.layer1(self.relu1(out))))
        features = torch.flatten(self.pool(out), 1)
        if self.fixup:
            features = features + per_member_channels(self.head_bias, self.k, features)
        return self.fc(features)
