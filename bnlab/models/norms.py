"""The normalisation layers that torch does not have, and the plain helpers around them.

* ``ActivationNoise`` / ``NoisyBatchNorm2d`` -- BN (or nothing) followed, in
  training only, by the shifting noise of Santurkar et al. 2018, sec. 2.1.
* ``GhostBatchNorm2d`` -- Hoffer et al. 2017: batch statistics over sub-batches.
* ``BatchRenorm2d`` -- Ioffe 2017.
* ``group_norm`` -- GN, and LN (1 group) and IN (one per channel) as its special cases.
* ``weight_norm`` / ``wrap_layers`` -- a reparametrisation applied to built layers.
* For the sequence models: ``TimeBatchNorm`` (BN in a recurrent cell, statistics per
  time step or shared over time), ``EveryStep`` (a per-sample norm in a recurrent
  cell), ``TokenBatchNorm`` (BN over batch x tokens in a transformer). LayerNorm and
  RMSNorm are torch's (``nn.LayerNorm``, ``nn.RMSNorm``).

Models take a ``norm_layer`` (``NormLayer``: channels -> layer) and know nothing of
the config: which layer a norm kind builds, with which settings, is the factory
table in ``bnlab.build``; the kind's schema and checks are in ``bnlab.norm_kinds``.

The BN variants subclass ``nn.BatchNorm2d`` and keep its parameter and buffer
names, so in eval mode (running statistics) they *are* BatchNorm: state dicts,
conv+BN folding and ``isinstance`` checks treat them as BN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

# What a model takes to make its norm layers: channels -> layer. A class (nn.BatchNorm2d,
# nn.Identity) or a functools.partial of one with the settings bound.
NormLayer = Callable[[int], nn.Module]

# ----------------------------------------------------------------------------- noise


_SQRT12 = math.sqrt(12.0)


class _JitterFn(torch.autograd.Function):
    """out = x * s + m with s, m drawn per activation (see ActivationNoise), in one buffer.

    Hand-written so that forward is two draws and three passes over the activations
    (each affine in place, then one fused multiply-add), and backward keeps only s:
    autograd on the plain expression keeps more and makes more passes.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, s_scale: torch.Tensor, s_shift: torch.Tensor,
        m_scale: torch.Tensor, m_shift: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        s = torch.rand_like(x)
        torch.addcmul(s_shift, s, s_scale, out=s)  # s = s_shift + u * s_scale
        out = torch.rand_like(x)
        torch.addcmul(m_shift, out, m_scale, out=out)  # m = m_shift + u' * m_scale
        out.addcmul_(x, s)
        ctx.save_for_backward(s)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (s,) = ctx.saved_tensors
        return grad * s, None, None, None, None


class ActivationNoise(nn.Module):
    """Santurkar et al. 2018 (sec. 2.1) "noisy BN" noise; identity in eval mode.

    In training, every forward step t draws fresh per-channel distribution
    parameters, so the noise distribution changes from step to step:

        mu[t, c]    ~ U(-noise_mean, noise_mean)
        sigma[t, c] ~ U(1, 1 + noise_scale)

    and then, i.i.d. for every activation x (sample n, channel c, pixel h, w):

        out = x * s + m,   s ~ sigma[t, c] * (1 + j * U(-0.5, 0.5)),
                           m ~ mu[t, c] + j * sigma[t, c] * Z,   j = noise_jitter,

    Z ~ U(-sqrt(3), sqrt(3)): mean 0 and variance 1. (model.revision 1 drew Z from
    N(0, 1): same mean and variance, but torch's CPU normal generator is ~8x slower
    than its uniform one, and this noise is two draws per activation; with the
    uniform Z and _JitterFn a bn_noisy training step costs 1.37x BN's, against 3.1x
    for revision 1's draw: scripts/bench_noise.py, results/bench/README.md.) So each
    activation's noise has a non-zero mean and a non-unit variance that change
    every step: the "covariate shift" the paper injects after BN. The paper gives
    no magnitudes; these are our choice. noise_jitter sizes the per-activation part
    against the per-step shift: at 1 the additive noise is as large as BN's
    unit-variance output (std sigma >= 1); the default 0.25 keeps a
    signal-to-noise ratio of 2-4 per layer. noise_jitter=0 leaves only the
    per-step, per-channel shift and scale. (In a *residual* net the shifts add up
    along the unnormalised skip stream: experiment=ics uses plain nets, as
    Santurkar et al. used VGG; results/cpu/README.md has the measurements.)

    All draws come from torch's global generator (seeded by train.seed), in
    training mode only. The gradient flows through x only (dout/dx = s).
    """

    def __init__(self, noise_mean: float, noise_scale: float, noise_jitter: float) -> None:
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
        # From u, u' ~ U(0, 1): s = sigma (1 - j/2) + u sigma j and
        # m = mu - j sigma sqrt(12) / 2 + u' j sigma sqrt(12), per channel affines.
        m_scale = sigma * (j * _SQRT12)
        return _JitterFn.apply(x, sigma * j, sigma * (1 - 0.5 * j), m_scale, mu - 0.5 * m_scale)

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
        noise_jitter: float,
        **bn: object,
    ) -> None:
        super().__init__(channels, **bn)  # type: ignore[arg-type]
        self.noise = ActivationNoise(noise_mean, noise_scale, noise_jitter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.noise(super().forward(x))


# ----------------------------------------------------------------------------- ghost BN


def group_batch_norm(
    x: torch.Tensor,
    group: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normalise each run of ``group`` consecutive samples of ``x`` by its own statistics.

    Each group's output is exactly what ``nn.BatchNorm2d`` in training mode gives
    for that group alone (per-channel mean and biased variance over group x H x W
    values), then the affine. ``x.shape[0]`` must be a multiple of ``group``.
    Returns the output and each group's per-channel mean and *unbiased* variance,
    shape (groups, C) in float32 (float64 for float64 input) -- what BN's running
    averages are made of.

    One call of torch's fused kernel for all the groups, instead of one per group:
    the groups are folded into the channel dimension, (k*g, C, H, W) ->
    (g, k*C, H, W), so channel c of group i is channel i*C + c of the fold. The
    kernel's running-statistics update with momentum 1 and fresh buffers yields the
    groups' statistics at no extra pass.
    """
    n, c = x.shape[0], x.shape[1]
    if group < 1 or n % group != 0:
        raise ValueError(f"{n} samples do not split into groups of {group}")
    k = n // group
    rest = x.shape[2:]
    folded = x.view(k, group, c, *rest).transpose(0, 1).reshape(group, k * c, *rest)
    means = torch.zeros(k * c, dtype=stats_dtype(x), device=x.device)
    variances = torch.ones(k * c, dtype=stats_dtype(x), device=x.device)
    w = weight.repeat(k) if weight is not None else None
    b = bias.repeat(k) if bias is not None else None
    y = F.batch_norm(folded, means, variances, w, b, True, 1.0, eps)
    # Back to (k*g, C, ...) in x's memory format (channels_last stays channels_last).
    out = y.view(group, k, c, *rest).transpose(0, 1).reshape(n, c, *rest)
    out = out.contiguous(memory_format=_memory_format(x))
    return out, means.view(k, c), variances.view(k, c)


def stats_dtype(x: torch.Tensor) -> torch.dtype:
    """Batch statistics in float32 for float32/bf16/fp16 input (as BN's kernel computes
    them), in float64 for float64 input (which float32 statistics would round)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class GhostBatchNorm2d(nn.BatchNorm2d):
    """Ghost BatchNorm (Hoffer et al. 2017): BN over sub-batches of ``virtual_batch``.

    Training: the batch is split into consecutive chunks of ``virtual_batch``
    samples (a last, smaller chunk when the batch size is not a multiple --
    only the final partial batch of an epoch; ``validate`` requires
    data.batch_size to be a multiple), and each chunk is normalised by its own
    statistics, exactly as ``nn.BatchNorm2d`` would normalise that chunk alone
    (``group_batch_norm``: all chunks in one kernel call). At virtual_batch=2 a
    channel's variance is over 2 samples x H x W pixels.
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
        g = self.virtual_batch
        full = x.shape[0] // g * g
        out, means, variances = group_batch_norm(x[:full], g, self.weight, self.bias, self.eps)
        sizes = [g] * means.shape[0]
        if full < x.shape[0]:  # the uneven last chunk, on its own
            last, m, v = group_batch_norm(
                x[full:], x.shape[0] - full, self.weight, self.bias, self.eps
            )
            out = torch.cat([out, last])
            means, variances = torch.cat([means, m]), torch.cat([variances, v])
            sizes.append(x.shape[0] - full)
        if self.track_running_stats:
            self._update_running_stats(means, variances, sizes)
        return out

    @torch.no_grad()
    def _update_running_stats(
        self, means: torch.Tensor, variances: torch.Tensor, sizes: list[int]
    ) -> None:
        # Python-scalar weights, never a tensor made from `sizes`: on a GPU that is a
        # host-to-device copy, which waits for every queued kernel -- a full sync per
        # layer per step, in a network whose steps are bound by launch latency.
        if len(set(sizes)) == 1:  # every chunk the same size: the plain average
            mean, var = means.mean(0), variances.mean(0)
        else:
            total = float(sum(sizes))
            mean = sum(m * (n / total) for m, n in zip(means, sizes, strict=True))
            var = sum(v * (n / total) for v, n in zip(variances, sizes, strict=True))
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean, momentum)
        self.running_var.lerp_(var, momentum)

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
        """(r_max, d_max) at the current step of the warm-up (reads the step count)."""
        r_max, d_max = self._limits()
        return float(r_max), float(d_max)

    def _limits(self) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        # As tensors on the layer's device: reading num_batches_tracked back to the host
        # would wait for every queued kernel on a GPU, once per layer per step.
        if self.warmup_steps <= 0:
            return self.r_max, self.d_max
        frac = (self.num_batches_tracked / self.warmup_steps).clamp(max=1.0)
        return 1.0 + (self.r_max - 1.0) * frac, self.d_max * frac

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        r_max, d_max = self._limits()
        xf = x.to(stats_dtype(x))  # fp32 statistics under bf16 autocast, like BN's kernel
        mean = xf.mean(dim=(0, 2, 3))
        var = xf.var(dim=(0, 2, 3), unbiased=False)
        std = (var + self.eps).sqrt()
        with torch.no_grad():
            running_std = (self.running_var + self.eps).sqrt()
            r = torch.clamp(std / running_std, 1.0 / r_max, r_max)  # type: ignore[arg-type]
            d = torch.clamp((mean - self.running_mean) / running_std, -d_max, d_max)  # type: ignore[arg-type]
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


# ----------------------------------------------------------------------------- GN, weight norm

# The layer types ``initialize`` resets to weight 1, bias 0, and whose affine
# parameters ``train.only_bn`` trains. The BN variants subclass BatchNorm2d.
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.BatchNorm2d, nn.GroupNorm)


def group_norm(channels: int, groups: int | None, eps: float, affine: bool) -> nn.GroupNorm:
    """GroupNorm with ``groups`` groups (None: one per channel).

    GN, and LN (1 group) and IN (C groups) as its special cases -- LN/IN in the
    sense of the BN/GN literature (Wu & He 2018): one code path, a per-channel
    affine, no spatial size needed at build time.
    """
    g = channels if groups is None else groups
    if g < 1 or channels % g != 0:
        raise ValueError(
            f"groups={g} does not divide {channels} channels; "
            "GroupNorm needs a group count that divides every layer's width"
        )
    return nn.GroupNorm(g, channels, eps=eps, affine=affine)


def weight_norm(layer: nn.Module) -> nn.Module:
    """Weight normalisation (Salimans & Kingma 2016): weight = g * v / ||v||, in place.

    dim=0: one g per output channel (conv) or output unit (linear). Applied to an
    initialised layer it sets g = ||w||, so the layer computes the same function.
    """
    return parametrizations.weight_norm(layer, name="weight", dim=0)


def wrap_layers(net: nn.Module, wrap: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Apply ``wrap`` to every Conv2d/Linear of ``net``, in place (in module order)."""
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


# ----------------------------------------------------------------------------- sequence models
# A recurrent cell calls its norms as ``norm(x, step)``: x is (batch, features) at time
# step ``step`` (0-based), so BN can keep statistics per step. A ``StepNormLayer`` is
# the factory the cells take: features -> such a layer.
StepNormLayer = Callable[[int], nn.Module]


class TimeBatchNorm(nn.Module):
    """BN of a recurrent cell's (batch, features) pre-activations at each time step.

    Training: each step is normalised by its own batch statistics (over the batch,
    per feature), then ``weight * x_hat + bias``. The running statistics, used in
    eval mode, are

    * ``shared=False`` -- one set per time step, ``steps`` sets (Cooijmans et al.
      2016, "Recurrent Batch Normalization", sec. 4): step t is updated from and
      evaluated with set t. Beyond the last set (a sequence longer than those
      trained on) eval uses the last one, as Cooijmans et al. do for t > T_max;
      in training such steps update the last set too.
    * ``shared=True`` -- one set for all steps (BN applied as if time were
      stationary, the foil of Cooijmans et al. and Laurent et al. 2016): every
      step updates it with momentum / steps, so one sequence of ``steps`` steps
      moves it about as much as one batch moves BN's, with nearly equal weight
      per step.

    ``gamma_init``: the initial ``weight``; Cooijmans et al. recommend 0.1 (with 1
    the normalised inputs saturate tanh/sigmoid and gradients vanish over time).
    With ``track_running_stats=False`` eval uses the batch statistics, as BN does.
    """

    def __init__(
        self,
        features: int,
        steps: int,
        shared: bool = False,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        gamma_init: float = 1.0,
    ) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"steps={steps} must be at least 1")
        self.features = features
        self.steps = steps
        self.shared = shared
        self.sets = 1 if shared else steps
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.gamma_init = gamma_init
        self.weight: nn.Parameter | None = None
        self.bias: nn.Parameter | None = None
        if affine:
            self.weight = nn.Parameter(torch.full((features,), float(gamma_init)))
            self.bias = nn.Parameter(torch.zeros(features))
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(self.sets, features))
            self.register_buffer("running_var", torch.ones(self.sets, features))

    def forward(self, x: torch.Tensor, step: int) -> torch.Tensor:
        if not self.track_running_stats:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        s = min(step, self.sets - 1)
        # Rows of the buffers: F.batch_norm updates them in place, through the view.
        momentum = self.momentum / self.steps if self.shared else self.momentum
        return F.batch_norm(
            x,
            self.running_mean[s],
            self.running_var[s],
            self.weight,
            self.bias,
            self.training,
            momentum,
            self.eps,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.features}, steps={self.steps}, shared={self.shared}, eps={self.eps}, "
            f"momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}, gamma_init={self.gamma_init}"
        )


class EveryStep(nn.Module):
    """A per-sample norm (LayerNorm, RMSNorm, none) in a recurrent cell: the same
    layer at every step, so it takes the step index and ignores it."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor, step: int) -> torch.Tensor:
        return self.norm(x)


class TokenBatchNorm(nn.BatchNorm1d):
    """BN in a transformer: (batch, tokens, features) normalised per feature over
    batch x tokens (as Shen et al. 2020 describe BN in transformers); eval uses the
    running statistics. Keeps BatchNorm1d's parameter and buffer names."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(-1, x.shape[-1])).view_as(x)
