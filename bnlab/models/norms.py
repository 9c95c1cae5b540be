"""One factory for every normalisation layer the networks can use.

Each kind is one entry in ``NORMS``: how to build the layer for ``channels``
feature maps, whether the convolution in front of it needs its own bias, and
(optionally) how to reparametrise every conv/linear layer of the network
(``weight_norm`` has no layer of its own; it changes the convs instead).

The configs arrive as ``bnlab.config`` dataclasses or as OmegaConf nodes with
the same fields, so builders only use attribute access (``cfg.eps``).

Kinds beyond plain BN/GN/LN (each with its dataclass in ``bnlab.config``):

* ``bn_noisy`` / ``none_noisy`` -- BN (or nothing) followed, in training only,
  by the shifting noise of Santurkar et al. 2018, sec. 2.1; see ``ActivationNoise``.
* ``ghost_bn`` -- Hoffer et al. 2017: batch statistics over sub-batches of
  ``virtual_batch`` samples; see ``GhostBatchNorm2d``.
* ``batch_renorm`` -- Ioffe 2017; see ``BatchRenorm2d``.
* ``in`` -- InstanceNorm as GroupNorm(C, C).
* ``weight_norm`` -- Salimans & Kingma 2016: no norm layer, every conv/linear
  weight is ``g * v / ||v||`` (torch's ``parametrizations.weight_norm``).

The BN variants subclass ``nn.BatchNorm2d`` and keep its parameter and buffer
names, so in eval mode (running statistics) they *are* BatchNorm: state dicts,
conv+BN folding and ``isinstance`` checks treat them as BN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

from bnlab.config import NormConfig

NormBuilder = Callable[[NormConfig, int], nn.Module]
LayerWrapper = Callable[[nn.Module], nn.Module]


@dataclass(frozen=True)
class NormSpec:
    build: NormBuilder
    # A conv bias is wasted in front of a layer that subtracts a mean (and adds
    # its own learned shift); it is only needed when nothing follows the conv.
    conv_bias: bool
    # Applied to every Conv2d/Linear after initialisation (weight norm must see
    # the initialised weight: it sets g = ||w||, so the function is unchanged).
    wrap_layer: LayerWrapper | None = None


# ----------------------------------------------------------------------------- noise


class ActivationNoise(nn.Module):
    """Santurkar et al. 2018 (sec. 2.1) "noisy BN" noise; identity in eval mode.

    In training, every forward step t draws fresh per-channel distribution
    parameters, so the noise distribution changes from step to step:

        mu[t, c]    ~ U(-noise_mean, noise_mean)
        sigma[t, c] ~ U(1, 1 + noise_scale)

    and then, i.i.d. for every activation x (sample n, channel c, pixel h, w):

        out = x * s + m,   s ~ sigma[t, c] * (1 + j * U(-0.5, 0.5)),
                           m ~ mu[t, c] + j * sigma[t, c] * N(0, 1),   j = noise_jitter

    so each activation's noise has a non-zero mean and a non-unit variance that
    change every step: the "covariate shift" the paper injects after BN. The
    paper gives no magnitudes; these are our choice. noise_jitter sizes the
    per-activation part against the per-step shift: at 1 the additive noise is as
    large as BN's unit-variance output (std sigma >= 1); the default 0.25 keeps a
    signal-to-noise ratio of 2-4 per layer. noise_jitter=0 leaves only the
    per-step, per-channel shift and scale. Measured at CPU scale (5k images): the
    *residual* ResNet-20 with bn_noisy does not train at 1 or at 0.25 (training
    accuracy ~12%, lr 0.01 and 0.1) -- the shifts add up along the unnormalised
    skip stream -- while the plain twin does (24% training accuracy after 2
    epochs): experiment=ics uses plain nets, as Santurkar et al. used VGG.
    """

    def __init__(self, noise_mean: float, noise_scale: float, noise_jitter: float = 0.25) -> None:
        super().__init__()
        self.noise_mean = noise_mean
        self.noise_scale = noise_scale
        self.noise_jitter = noise_jitter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
        mu = x.new_empty(shape).uniform_(-self.noise_mean, self.noise_mean)
        sigma = x.new_empty(shape).uniform_(1.0, 1.0 + self.noise_scale)
        if self.noise_jitter == 0:
            return x * sigma + mu
        j = self.noise_jitter
        s = sigma * (1 + j * torch.empty_like(x).uniform_(-0.5, 0.5))
        m = mu + j * sigma * torch.randn_like(x)
        return x * s + m

    def extra_repr(self) -> str:
        return (
            f"noise_mean={self.noise_mean}, noise_scale={self.noise_scale}, "
            f"noise_jitter={self.noise_jitter}"
        )


class NoisyBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d, then ``ActivationNoise`` in training mode (plain BN in eval mode)."""

    def __init__(
        self,
        channels: int,
        noise_mean: float,
        noise_scale: float,
        noise_jitter: float = 0.25,
        **bn: object,
    ) -> None:
        super().__init__(channels, **bn)  # type: ignore[arg-type]
        self.noise = ActivationNoise(noise_mean, noise_scale, noise_jitter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.noise(super().forward(x))


# ----------------------------------------------------------------------------- ghost BN


class GhostBatchNorm2d(nn.BatchNorm2d):
    """Ghost BatchNorm (Hoffer et al. 2017): BN over sub-batches of ``virtual_batch``.

    Training: the batch is split into consecutive chunks of ``virtual_batch``
    samples (a last, smaller chunk when the batch size is not a multiple --
    only the final partial batch of an epoch; ``validate`` requires
    data.batch_size to be a multiple), and each chunk is normalised by its own
    statistics, exactly as ``nn.BatchNorm2d`` would normalise that chunk alone.
    The running statistics are updated once per step, with the momentum, from
    the chunk-size-weighted average of the chunks' mean and (unbiased) variance.
    Eval: the running statistics, as BN. A chunk as large as the batch is BN.
    """

    def __init__(self, channels: int, virtual_batch: int, **bn: object) -> None:
        super().__init__(channels, **bn)  # type: ignore[arg-type]
        if virtual_batch < 1:
            raise ValueError(f"virtual_batch={virtual_batch} must be at least 1")
        self.virtual_batch = virtual_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] <= self.virtual_batch:
            return super().forward(x)
        chunks = x.split(self.virtual_batch)
        # No running buffers passed: each chunk is normalised by its own statistics.
        out = [
            F.batch_norm(c, None, None, self.weight, self.bias, True, 0.0, self.eps) for c in chunks
        ]
        if self.track_running_stats:
            self._update_running_stats(chunks)
        return torch.cat(out)

    @torch.no_grad()
    def _update_running_stats(self, chunks: tuple[torch.Tensor, ...]) -> None:
        sizes = torch.tensor(
            [c.shape[0] for c in chunks], dtype=torch.float32, device=chunks[0].device
        )
        weights = (sizes / sizes.sum()).unsqueeze(1)
        means = torch.stack([c.float().mean(dim=(0, 2, 3)) for c in chunks])
        variances = torch.stack([c.float().var(dim=(0, 2, 3), unbiased=True) for c in chunks])
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_((weights * means).sum(0), momentum)
        self.running_var.lerp_((weights * variances).sum(0), momentum)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, virtual_batch={self.virtual_batch}"


# ----------------------------------------------------------------------------- batch renorm


class BatchRenorm2d(nn.BatchNorm2d):
    """Batch Renormalization (Ioffe 2017); eval uses the running statistics, as BN.

    Training: with batch mean/std (mu_B, s_B = sqrt(var_B + eps)) and running
    ones (mu, s = sqrt(running_var + eps)),

        r = clip(s_B / s, 1/r_max, r_max),   d = clip((mu_B - mu) / s, -d_max, d_max)
        y = (x - mu_B) / s_B * r + d          (r, d are constants: no gradient)

    then the affine. r_max = 1, d_max = 0 is BN. The limits are relaxed
    linearly from (1, 0) to (``r_max``, ``d_max``) over ``warmup_steps``
    training steps (counted by ``num_batches_tracked``), a one-ramp version of
    the paper's schedule (r_max 1 -> 3, d_max 0 -> 5, after an initial 5k steps
    of plain BN); warmup_steps=0 uses the final values from the first step.
    Running statistics are updated as BN does (momentum, unbiased variance).
    """

    def __init__(
        self, channels: int, r_max: float, d_max: float, warmup_steps: int, **bn: object
    ) -> None:
        super().__init__(channels, track_running_stats=True, **bn)  # type: ignore[arg-type]
        self.r_max = r_max
        self.d_max = d_max
        self.warmup_steps = warmup_steps

    def limits(self) -> tuple[float, float]:
        """(r_max, d_max) at the current step of the warm-up."""
        step = int(self.num_batches_tracked)
        frac = 1.0 if self.warmup_steps <= 0 else min(1.0, step / self.warmup_steps)
        return 1.0 + (self.r_max - 1.0) * frac, self.d_max * frac

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        r_max, d_max = self.limits()
        xf = x.float()  # statistics in fp32 under bf16 autocast, like BN's kernel
        mean = xf.mean(dim=(0, 2, 3))
        var = xf.var(dim=(0, 2, 3), unbiased=False)
        std = (var + self.eps).sqrt()
        with torch.no_grad():
            running_std = (self.running_var + self.eps).sqrt()
            r = (std / running_std).clamp(1.0 / r_max, r_max)
            d = ((mean - self.running_mean) / running_std).clamp(-d_max, d_max)
            n = x.numel() / x.shape[1]
            momentum = float(self.momentum)  # type: ignore[arg-type]
            self.running_mean.lerp_(mean, momentum)
            self.running_var.lerp_(var * n / max(n - 1, 1), momentum)
            self.num_batches_tracked.add_(1)
        y = (xf - _c(mean)) / _c(std) * _c(r) + _c(d)
        if self.affine:
            y = y * _c(self.weight) + _c(self.bias)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, r_max={self.r_max}, d_max={self.d_max}, "
            f"warmup_steps={self.warmup_steps}"
        )


def _c(v: torch.Tensor) -> torch.Tensor:
    """A per-channel vector shaped to broadcast over (N, C, H, W)."""
    return v.view(1, -1, 1, 1)


# ----------------------------------------------------------------------------- builders


def _bn_kwargs(cfg: NormConfig) -> dict[str, object]:
    # getattr with a default: ghost_bn has no track_running_stats key (always tracked).
    return {
        "eps": cfg.eps,
        "momentum": cfg.momentum,
        "affine": cfg.affine,
        "track_running_stats": getattr(cfg, "track_running_stats", True),
    }


def _batch_norm(cfg: NormConfig, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels, **_bn_kwargs(cfg))  # type: ignore[arg-type]


def _noisy_batch_norm(cfg: NormConfig, channels: int) -> nn.Module:
    return NoisyBatchNorm2d(
        channels, cfg.noise_mean, cfg.noise_scale, cfg.noise_jitter, **_bn_kwargs(cfg)
    )


def _noise_only(cfg: NormConfig, channels: int) -> nn.Module:
    return ActivationNoise(cfg.noise_mean, cfg.noise_scale, cfg.noise_jitter)


def _ghost_batch_norm(cfg: NormConfig, channels: int) -> nn.Module:
    return GhostBatchNorm2d(channels, cfg.virtual_batch, **_bn_kwargs(cfg))


def _batch_renorm(cfg: NormConfig, channels: int) -> nn.Module:
    return BatchRenorm2d(
        channels,
        cfg.r_max,
        cfg.d_max,
        cfg.warmup_steps,
        eps=cfg.eps,
        momentum=cfg.momentum,
        affine=cfg.affine,
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


def _instance_norm(cfg: NormConfig, channels: int) -> nn.Module:
    # One group per channel: each (sample, channel) map normalised over (H, W),
    # with a per-channel affine -- nn.InstanceNorm2d(affine=True) without its
    # (off by default) running statistics, and one code path with GN/LN.
    return nn.GroupNorm(channels, channels, eps=cfg.eps, affine=cfg.affine)


def _weight_norm(layer: nn.Module) -> nn.Module:
    # dim=0: one g per output channel (conv) or output unit (linear).
    return parametrizations.weight_norm(layer, name="weight", dim=0)


NORMS: dict[str, NormSpec] = {
    "bn": NormSpec(_batch_norm, conv_bias=False),
    "none": NormSpec(_no_norm, conv_bias=True),
    "gn": NormSpec(_group_norm, conv_bias=False),
    "ln": NormSpec(_layer_norm, conv_bias=False),
    "bn_noisy": NormSpec(_noisy_batch_norm, conv_bias=False),
    # Noise without BN: its shift is not learned, so the convs keep their biases.
    "none_noisy": NormSpec(_noise_only, conv_bias=True),
    "ghost_bn": NormSpec(_ghost_batch_norm, conv_bias=False),
    "batch_renorm": NormSpec(_batch_renorm, conv_bias=False),
    "in": NormSpec(_instance_norm, conv_bias=False),
    "weight_norm": NormSpec(_no_norm, conv_bias=True, wrap_layer=_weight_norm),
}

# The layer types ``initialize`` resets to weight 1, bias 0, and whose affine
# parameters ``train.only_bn`` trains. The BN variants subclass BatchNorm2d.
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


def wrap_layers(cfg: NormConfig, net: nn.Module) -> nn.Module:
    """Apply the kind's reparametrisation (if any) to every Conv2d/Linear of ``net``, in place."""
    wrap = _spec(cfg.kind).wrap_layer
    if wrap is not None:
        for module in list(net.modules()):
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                wrap(module)
    return net


def norm_affine_parameters(net: nn.Module) -> list[nn.Parameter]:
    """The norm layers' gamma/beta (``train.only_bn``: Frankle et al. 2020), in module order."""
    return [
        p
        for m in net.modules()
        if isinstance(m, NORM_TYPES)
        for p in (getattr(m, "weight", None), getattr(m, "bias", None))
        if isinstance(p, nn.Parameter)
    ]
