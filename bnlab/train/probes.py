"""Measurements taken after (or during) training, beside the metrics the loop records."""

from __future__ import annotations

import contextlib
import copy
import csv
import io
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnlab.data import DeviceLoader
from bnlab.models.norms import GhostBatchNorm2d, group_batch_norm
from bnlab.store import PROBE_COLUMNS, PROBES_FILE, atomic_write_text
from bnlab.train.runtime import Runtime
from bnlab.train.spec import ProbeSpec

# ----------------------------------------------------------------------------- batch statistics
#
# BN "in train mode" at a group size g, without touching anything: every BN layer
# of a deep copy normalises each run of g consecutive samples by that run's own
# statistics (bnlab.models.norms.group_batch_norm), its running averages untouched.
# One forward of a chunk of many groups computes exactly what one forward per group
# would, in a fraction of the time at small g. Used by batch_stats_accuracy (the
# bn_stats probe, bn_eval) and bnlab.train.bn_modes.

# Images per forward in a grouped pass, at least: whole batches are concatenated up to
# it. A GPU wants few large launches; a CPU wants activations that stay in cache: on
# the 2-core CPU a grouped pass ran ~2.7x faster in chunks of 128 than of 1024
# (results/bench/README.md, scripts/bench_grouped.py).
CHUNK_IMAGES = {"cuda": 1024, "cpu": 128}

# Per BN layer of a copy: [sum of the groups' means, of their unbiased variances, groups].
StatsRecord = dict[nn.Module, list[Any]]


def bn_layers(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The BatchNorm2d layers (the BN variants subclass it), in module order."""
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def statistics_size(model: nn.Module, batch: int) -> int:
    """How many samples a BN layer's statistics cover when ``model`` trains on ``batch``.

    ``batch`` itself for BN; for Ghost BN the smaller of it and norm.virtual_batch.
    """
    ghosts = [m.virtual_batch for m in model.modules() if isinstance(m, GhostBatchNorm2d)]
    return min([batch, *ghosts])


def _grouped_forward(
    layer: nn.BatchNorm2d, group: int, record: StatsRecord | None, x: torch.Tensor
) -> torch.Tensor:
    out, means, variances = group_batch_norm(x, group, layer.weight, layer.bias, layer.eps)
    if record is not None:
        sums = record.setdefault(layer, [0.0, 0.0, 0])
        sums[0] = sums[0] + means.double().sum(0)
        sums[1] = sums[1] + variances.double().sum(0)
        sums[2] += means.shape[0]
    return out


@contextlib.contextmanager
def grouped_statistics(
    model: nn.Module, group: int, record: StatsRecord | None = None
) -> Iterator[None]:
    """Within: every BN layer of ``model`` (a copy: it is patched) uses groups of ``group``.

    The BN variants' own training behaviour (noise, renorm, ghost chunks) is replaced
    by plain per-group batch statistics. With ``record``, each group's statistics are
    summed per layer (precise BN).
    """
    layers = bn_layers(model)
    for layer in layers:
        # An instance attribute shadows the class's forward; deleted again below.
        layer.forward = partial(_grouped_forward, layer, group, record)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


@torch.no_grad()
def grouped_pass(
    probe: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    group: int,
    rt: Runtime,
    record: StatsRecord | None = None,
) -> tuple[float, int, int]:
    """(summed cross-entropy, correct, images) of ``probe`` over ``batches`` at group size
    ``group``; each batch's size must be a multiple of it. Consecutive batches are
    concatenated into chunks of about CHUNK_IMAGES[device] images, one forward each.

    ``probe`` must be a copy: it is put in eval mode (the BN layers use their group
    statistics all the same) and, with ``record``, its layers are the record's keys.
    """
    probe.eval()
    loss_sum, correct, n = 0.0, 0, 0
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []

    def forward() -> None:
        nonlocal loss_sum, correct, n
        x, y = torch.cat(xs), torch.cat(ys)
        with grouped_statistics(probe, group, record), rt.autocast():
            logits = probe(x)
        loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(dim=1) == y).sum())
        n += y.numel()
        xs.clear()
        ys.clear()

    chunk = CHUNK_IMAGES.get(rt.device.type, CHUNK_IMAGES["cuda"])
    pending = 0
    for x, y in batches:
        xs.append(x)
        ys.append(y)
        pending += y.numel()
        if pending >= chunk:
            forward()
            pending = 0
    if xs:
        forward()
    return loss_sum, correct, n


def batch_stats_accuracy(
    model: nn.Module, loader: DeviceLoader, rt: Runtime, epoch: int = 0
) -> float:
    """Test accuracy when BN normalises with each eval batch's own statistics.

    What ``model`` in train mode gives on the batches of ``loader.epoch(epoch)``
    (Ghost BN: groups of norm.virtual_batch within each batch), computed on a copy
    (``grouped_pass``), so the real model's running averages are never touched. The
    loader must shuffle (train=True, augment=False): the test set is stored class by
    class, and a single-class batch would give the batch statistics an unfair bias
    that random inference batches do not have.
    """
    group = statistics_size(model, loader.batch_size)
    _, correct, n = grouped_pass(copy.deepcopy(model), loader.epoch(epoch), group, rt)
    return correct / max(1, n)


def bn_eval(
    model: nn.Module,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    sizes: list[int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    rt: Runtime,
    seed: int,
    running_acc: float,
) -> dict[str, Any]:
    """Running-statistics accuracy vs batch-statistics accuracy at each eval batch size.

    `running_acc` is the final epoch's test accuracy: the loop already evaluated
    this model with its running statistics on the same test set.
    """
    batch_acc = {}
    for size in sizes:
        loader = DeviceLoader(
            test_x, test_y, size, train=True, augment=False, mean=mean, std=std,
            device=rt.device, seed=seed, channels_last=rt.channels_last,
        )  # fmt: skip
        batch_acc[str(size)] = batch_stats_accuracy(model, loader, rt)
    return {"running_stats_acc": running_acc, "batch_stats_acc": batch_acc}


# ----------------------------------------------------------------------------- per-epoch probes
#
# Every probe below works on a deep copy of the model inside `isolated_rng()`, which
# restores the global RNG afterwards: the real model's weights, grads, BN running
# averages and the random stream (noisy norms draw from it) are never touched, so
# a run's metrics.csv is the same with or without probes.


ProbeRow = dict[str, Any]

# loss_fn(model output, targets) -> scalar loss. The probes' default is the training
# loss (bnlab.train.loop): cross-entropy on the float32 logits. Tests pass another
# (e.g. a quadratic loss on a linear model, whose landscape is known in closed form).
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The conv and linear layers, in forward order (stem conv1, layer1.0.conv1, ..., fc)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def probes_csv_text(rows: list[ProbeRow]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(PROBE_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        # repr: floats round-trip exactly, so a resumed run's file can be compared.
        writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    return buf.getvalue()


def write_probes(run_path: Path, rows: list[ProbeRow]) -> None:
    atomic_write_text(run_path / PROBES_FILE, probes_csv_text(rows))


@contextlib.contextmanager
def isolated_rng(rt: Runtime) -> Iterator[None]:
    devices = [rt.device.index or 0] if rt.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


class _SameNoise:
    """Replays one RNG state before each forward, so noisy norms (bn_noisy) draw
    the same noise in the passes a probe compares: differences are then due to
    the weights alone."""

    def __init__(self, rt: Runtime) -> None:
        self.cuda = rt.device.type == "cuda"
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state() if self.cuda else None

    def replay(self) -> None:
        torch.set_rng_state(self.cpu_state)
        if self.cuda_state is not None:
            torch.cuda.set_rng_state(self.cuda_state)


def _at_least_f32(t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 (autocast) up to float32; float32 as is (the same tensor); float64 kept."""
    return t if t.dtype == torch.float64 else t.float()


def _grads(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    rt: Runtime,
    loss_fn: LossFn = F.cross_entropy,
) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and every parameter's gradient on (x, y), as the training step computes them."""
    model.zero_grad(set_to_none=True)
    with rt.autocast():
        loss = loss_fn(_at_least_f32(model(x)), y)
    loss.backward()
    grads = {
        n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
        for n, p in model.named_parameters()
    }
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


def _norm(tensors: list[torch.Tensor]) -> float:
    total = sum((_at_least_f32(t).pow(2).sum() for t in tensors), torch.zeros(()))
    return float(torch.sqrt(total))


def activation_stats(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    rt: Runtime,
    *,
    loss_fn: LossFn = F.cross_entropy,
) -> list[tuple[str, str, float]]:
    """(layer, metric, value): each conv/linear output's mean and std, and its weight's grad norm.

    The output is taken before the norm layer (the pre-activation), in train mode
    as the training step sees it, by forward hooks on a copy. The grad norms are
    of `loss_fn(model(x), y)` (default: the training loss, cross-entropy).
    """
    probe = copy.deepcopy(model).train()
    stats: dict[str, tuple[float, float]] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(_module: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
            out = _at_least_f32(out.detach())
            stats[name] = (out.mean().item(), out.std().item())

        return record

    layers = weight_layers(probe)
    handles = [m.register_forward_hook(hook(name)) for name, m in layers]
    try:
        with isolated_rng(rt):
            _, grads = _grads(probe, x, y, rt, loss_fn)
    finally:
        for h in handles:
            h.remove()
    out = []
    for name, _ in layers:
        mean, std = stats[name]
        out += [(name, "act_mean", mean), (name, "act_std", std)]
        out.append((name, "grad_norm", _norm([grads[f"{name}.weight"]])))
    return out


def _step_copy(
    probe: nn.Module,
    base: dict[str, torch.Tensor],
    grads: dict[str, torch.Tensor],
    trained: set[str],
    eta: float,
) -> None:
    """Set the copy's weights to base - eta * grad on the trained parameters (plain SGD)."""
    with torch.no_grad():
        for n, p in probe.named_parameters():
            p.copy_(base[n])
            if n in trained:
                p.sub_(grads[n], alpha=eta)


def ics(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    trained: set[str],
    rt: Runtime,
    *,
    loss_fn: LossFn = F.cross_entropy,
) -> list[tuple[str, str, float]]:
    """Internal covariate shift after Santurkar et al. (2018, Sec. 3), per weight layer.

    G = the layer's weight gradient on this batch; G' = the same after one plain
    SGD step (w -= lr * g: no momentum, no weight decay) on the batch. Santurkar
    update only the layers *before* layer i for G'_i, which costs one extra
    forward/backward per layer; here all trained layers are updated at once (one
    extra pass in total), so G'_i also moves with layer i's own and the later
    layers' updates. Reported: ||G - G'||_2 (ics_l2) and cos(G, G') (ics_cos).
    Gradients are of `loss_fn(model(x), y)` (default: the training loss, cross-entropy).
    """
    probe = copy.deepcopy(model).train()
    with isolated_rng(rt):
        noise = _SameNoise(rt)
        _, g = _grads(probe, x, y, rt, loss_fn)
        base = {n: p.detach().clone() for n, p in probe.named_parameters()}
        _step_copy(probe, base, g, trained, lr)
        noise.replay()
        _, g2 = _grads(probe, x, y, rt, loss_fn)
    out = []
    for name, _ in weight_layers(probe):
        a = _at_least_f32(g[f"{name}.weight"].flatten())
        b = _at_least_f32(g2[f"{name}.weight"].flatten())
        denom = a.norm() * b.norm()
        cos = float(a @ b / denom) if denom > 0 else float("nan")
        out += [(name, "ics_l2", float((a - b).norm())), (name, "ics_cos", cos)]
    return out


def landscape(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    multiples: list[float],
    trained: set[str],
    rt: Runtime,
    *,
    loss_fn: LossFn = F.cross_entropy,
) -> list[tuple[str, str, float]]:
    """The loss along the gradient direction (Santurkar et al. 2018, Sec. 3.1), on this batch.

    For eta = m * lr for m in `multiples`: loss(w - eta g) (`loss@m`) and the
    gradient change ||grad(w) - grad(w - eta g)||_2 (`grad_change@m`). Always also
    `loss@0`: the loss at the current weights, i.e. the training loss of this step's
    batch before its update (train mode, as the training step computes it; free: the
    pass that computes g). Summaries (over `multiples` only, as before `loss@0`):
    loss_min/loss_max/loss_variation (max - min over the etas), grad_change_max
    (gradient predictiveness), and beta_smoothness = max over eta > 0 of
    grad change / ||eta g|| (nan when no eta > 0). Only the trained parameters
    move, and g and the gradient change are over those alone; layer is "all".
    The loss is `loss_fn(model(x), y)` (default: the training loss, cross-entropy).
    """
    probe = copy.deepcopy(model).train()
    losses, changes, betas = [], [], []
    out: list[tuple[str, str, float]] = []
    with isolated_rng(rt):
        noise = _SameNoise(rt)
        loss0, g = _grads(probe, x, y, rt, loss_fn)
        base = {n: p.detach().clone() for n, p in probe.named_parameters()}
        names = [n for n in base if n in trained]
        g_norm = _norm([g[n] for n in names])
        if 0.0 not in multiples:  # else the loop records it (the same value)
            out.append(("all", "loss@0", loss0))
        for m in multiples:
            eta = m * lr
            _step_copy(probe, base, g, trained, eta)
            noise.replay()
            loss, g2 = _grads(probe, x, y, rt, loss_fn)
            change = _norm([g[n] - g2[n] for n in names])
            losses.append(loss)
            changes.append(change)
            if eta * g_norm > 0:
                betas.append(change / (eta * g_norm))
            out += [("all", f"loss@{m:g}", loss), ("all", f"grad_change@{m:g}", change)]
    if losses:
        out += [
            ("all", "loss_min", min(losses)),
            ("all", "loss_max", max(losses)),
            ("all", "loss_variation", max(losses) - min(losses)),
            ("all", "grad_change_max", max(changes)),
        ]
    out.append(("all", "beta_smoothness", max(betas) if betas else float("nan")))
    return out


class EpochProbes:
    """The probes switched on in ``spec`` (probe.* in the config), with the rows they produced.

    `rows` is checkpointed by fit() beside the metric rows, so a resumed run
    continues the same list (and a killed epoch's rows are dropped with it).
    """

    def __init__(
        self,
        spec: ProbeSpec,
        model: nn.Module,
        rt: Runtime,
        trained: set[str],
        fixed_batch: tuple[torch.Tensor, torch.Tensor] | None,
        bn_loader: DeviceLoader | None,
    ) -> None:
        self.spec = spec
        self.model = model
        self.rt = rt
        self.trained = trained
        self.fixed_batch = fixed_batch
        self.bn_loader = bn_loader
        self.steps = set(spec.steps)
        self.rows: list[ProbeRow] = []

    def _add(self, epoch: int, step: int, probe: str, values: list[tuple[str, str, float]]) -> None:
        for layer, metric, value in values:
            self.rows.append(
                {"epoch": epoch, "step": step, "probe": probe, "layer": layer,
                 "metric": metric, "value": float(value)}
            )  # fmt: skip

    def at_init(self) -> None:
        """Before the first step of a fresh run (epoch 0, step 0)."""
        if self.spec.activations:
            self._activations(0, 0)

    def _activations(self, epoch: int, step: int) -> None:
        assert self.fixed_batch is not None
        x, y = self.fixed_batch
        self._add(epoch, step, "activations", activation_stats(self.model, x, y, self.rt))

    def before_step(
        self, epoch: int, step: int, x: torch.Tensor, y: torch.Tensor, lr: float
    ) -> None:
        """On the batch of global step `step`, before the real update (weights as it sees them)."""
        if step not in self.steps:
            return
        if self.spec.ics:
            self._add(epoch, step, "ics", ics(self.model, x, y, lr, self.trained, self.rt))
        if self.spec.landscape:
            values = landscape(
                self.model, x, y, lr, list(self.spec.landscape_steps), self.trained, self.rt
            )
            self._add(epoch, step, "landscape", values)

    def end_epoch(self, epoch: int, step: int, running_acc: float) -> None:
        if self.spec.bn_stats:
            assert self.bn_loader is not None
            with isolated_rng(self.rt):
                batch_acc = batch_stats_accuracy(self.model, self.bn_loader, self.rt)
            # gap > 0: running statistics beat the batch's own at the training batch size.
            values = [
                ("all", "running_acc", running_acc),
                ("all", "batch_acc", batch_acc),
                ("all", "gap", running_acc - batch_acc),
            ]
            self._add(epoch, step, "bn_stats", values)
        if self.spec.activations:
            self._activations(epoch, step)
