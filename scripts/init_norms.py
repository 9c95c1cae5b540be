"""Activation and gradient norms per layer at initialisation: BN, no norm (He init), Fixup.

The "why" figure of the depth claim (issue 24, item 2). Each network is bnlab's own
CIFAR ResNet, composed and built the way ``bnlab train`` builds it
(``compose.load_config`` with ``arm=...``, ``model.depth=...``, ``model.residual=...``,
``train.seed=0``; ``config.validate``; ``torch.manual_seed(seed)`` then
``build.build_model``), for the arms bn, none (He init) and fixup (residual only),
plain and residual.

Every network sees the same ONE batch: the first training batch a ``bnlab train
train.seed=0`` run trains on (``data.DeviceLoader``, epoch 0, the config's
augmentation, the training normalisation), at ``--batch`` images (128). The network
is in train mode (BN normalises with the batch's statistics, as at the first step);
one forward, mean cross-entropy, one backward; no optimiser step.

Per layer in depth order (0 = the stem's ReLU output, then each residual/plain block's
output, after its final ReLU): the RMS of the output and the L2 norm (and RMS) of the
gradient of the loss with respect to it; per network the loss and the std of the
logits. Fixup's head starts at 0, so at initialisation the gradient with respect to
every block output is exactly 0: the CSV says so and the figure notes it (log axis).

Writes ``init_norms.csv`` (one row per arm/arch/depth/layer) and ``init_norms.png``
(+ ``.svg``) to ``--out`` and prints a summary (first -> last layer per network).

    python scripts/init_norms.py --out results/cpu/init_norms             # depth 20, 56
    python scripts/init_norms.py --out /tmp/init_norms --depths 20,56,110
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from bnlab.build import build_model
from bnlab.compose import load_config
from bnlab.config import validate
from bnlab.data import DeviceLoader, load_dataset
from bnlab.errors import BnlabError, first_line
from bnlab.models.blocks import BasicBlock
from bnlab.models.resnet import blocks_per_stage
from bnlab.report.figure_kit import TWO_PANELS, arm_label, new_figure, norm_colour, save_figure

SEED = 0
BATCH = 128
DEFAULT_DEPTHS = (20, 56)
DEFAULT_OUT = Path("results/cpu/init_norms")
NAME = "init_norms"
# Fixup only exists for residual nets (config.validate rejects it on a plain one).
ARCHS = {"bn": ("plain", "residual"), "none": ("plain", "residual"), "fixup": ("residual",)}
STEM = "stem"
FIELDS = (
    "arm",
    "arch",
    "depth",
    "layer",
    "module",
    "channels",
    "act_rms",
    "grad_norm",
    "grad_rms",
    "loss",
    "logits_std",
    "batch",
    "seed",
)


@dataclass(frozen=True)
class Net:
    arm: str
    arch: str  # "plain" | "residual"
    depth: int

    def overrides(self, batch: int) -> list[str]:
        residual = "true" if self.arch == "residual" else "false"
        return [
            f"arm={self.arm}",
            f"model.depth={self.depth}",
            f"model.residual={residual}",
            f"train.seed={SEED}",
            f"data.batch_size={batch}",
        ]

    def label(self) -> str:
        return f"{arm_label(self.arm)}, {self.arch}, depth {self.depth}"


@dataclass(frozen=True)
class Layer:
    layer: int  # 0 = stem, then the blocks in depth order
    module: str
    channels: int
    act_rms: float
    grad_norm: float  # L2 norm of d(loss)/d(output) over the whole batch tensor
    grad_rms: float


@dataclass(frozen=True)
class Measured:
    net: Net
    layers: list[Layer]
    loss: float
    logits_std: float
    batch: int

    def rows(self) -> list[dict[str, Any]]:
        top = {"arm": self.net.arm, "arch": self.net.arch, "depth": self.net.depth}
        tail = {"loss": self.loss, "logits_std": self.logits_std, "batch": self.batch}
        return [top | asdict(layer) | tail | {"seed": SEED} for layer in self.layers]


@dataclass(frozen=True)
class Batch:
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    variant: str  # the dataset's label for results, e.g. "CIFAR-10 (JPEG q75)"


# ----------------------------------------------------------------------------- inputs


def nets(depths: Sequence[int]) -> list[Net]:
    return [Net(arm, arch, d) for d in depths for arm, archs in ARCHS.items() for arch in archs]


def compose(net: Net, batch: int) -> DictConfig:
    """The config ``bnlab train`` would run for ``net`` (checked the same way)."""
    cfg = load_config(net.overrides(batch))
    validate(cfg)
    return cfg


def first_batch(cfg: DictConfig) -> Batch:
    """Step 0's training batch of a run with ``cfg`` (same loader, seed, augmentation)."""
    data = load_dataset(cfg.data)
    loader = DeviceLoader(
        data.train_x, data.train_y, cfg.data.batch_size, train=True, augment=cfg.data.augment,
        mean=data.mean, std=data.std, seed=cfg.train.seed,
    )  # fmt: skip
    x, y = next(iter(loader.epoch(0)))
    return Batch(x, y, len(data.classes), data.variant)


def build(cfg: DictConfig, batch: Batch) -> nn.Module:
    # As recipe.train: the weights are drawn right after seeding with train.seed.
    torch.manual_seed(cfg.train.seed)
    return build_model(
        cfg.model, cfg.norm, num_classes=batch.num_classes, in_channels=batch.x.shape[1]
    )


# ----------------------------------------------------------------------------- measuring


def watched(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The stem's ReLU, then every block, in depth order (registration order)."""
    blocks = [(name, m) for name, m in model.named_modules() if isinstance(m, BasicBlock)]
    return [(STEM, model.relu1), *blocks]


def _keep(name: str, outputs: dict[str, torch.Tensor]) -> Callable[..., None]:
    def hook(module: nn.Module, args: Any, out: torch.Tensor) -> None:
        out.retain_grad()  # a non-leaf: its .grad is kept only when asked
        outputs[name] = out

    return hook


def measure(model: nn.Module, batch: Batch) -> tuple[list[Layer], float, float]:
    """One train-mode forward + cross-entropy backward: per-layer norms, loss, logits std."""
    outputs: dict[str, torch.Tensor] = {}
    layers = watched(model)
    handles = [m.register_forward_hook(_keep(name, outputs)) for name, m in layers]
    try:
        model.train()  # BN on the batch's statistics, as at the first step
        model.zero_grad(set_to_none=True)
        logits = model(batch.x)
        loss = F.cross_entropy(logits, batch.y)
        loss.backward()
    finally:
        for h in handles:
            h.remove()
    found = [_norms(i, name, outputs[name]) for i, (name, _) in enumerate(layers)]
    return found, float(loss.detach()), float(logits.detach().double().std())


def _norms(index: int, name: str, out: torch.Tensor) -> Layer:
    if out.grad is None:
        raise RuntimeError(f"no gradient reached {name}: it is not on the loss's path")
    act, grad = out.detach().double(), out.grad.double()
    return Layer(
        layer=index,
        module=name,
        channels=int(out.shape[1]),
        act_rms=float(act.pow(2).mean().sqrt()),
        grad_norm=float(grad.norm()),
        grad_rms=float(grad.pow(2).mean().sqrt()),
    )


def run_all(depths: Sequence[int], batch_size: int) -> tuple[list[Measured], str]:
    """Every net's measurements, and the setting line the figure states."""
    todo = [(net, compose(net, batch_size)) for net in nets(depths)]
    cfg = todo[0][1]
    batch = first_batch(cfg)  # data.* is the same for every arm and depth
    results = []
    for net, net_cfg in todo:
        layers, loss, logits_std = measure(build(net_cfg, batch), batch)
        results.append(Measured(net, layers, loss, logits_std, batch_size))
    setting = (
        f"{batch.variant}, the first training batch of train.seed={SEED}, train mode, "
        f"width {cfg.model.width}, mean cross-entropy"
    )
    return results, setting


# ----------------------------------------------------------------------------- outputs


def write_csv(results: Sequence[Measured], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for m in results:
            writer.writerows(m.rows())


def title(batch: int) -> str:
    return (
        "Activation and gradient norms per layer at initialisation "
        f"(one batch of {batch}, seed {SEED})"
    )


def _positive_or_nan(values: list[float]) -> np.ndarray:
    # A log axis cannot show 0: such points are left out (and named in a note).
    return np.array([v if v > 0 else math.nan for v in values])


def plot(results: Sequence[Measured], setting: str, folder: Path) -> Path:
    fig, (act_ax, grad_ax) = new_figure((TWO_PANELS[0], 6.2), ncols=2)
    depths = sorted({m.net.depth for m in results})
    zero_grads = []
    for m in results:
        x = [layer.layer for layer in m.layers]
        style = {
            "color": norm_colour(m.net.arm),
            "ls": "-" if m.net.arch == "residual" else "--",
            "lw": 1.0 + 0.8 * depths.index(m.net.depth),
            "marker": "os^D"[depths.index(m.net.depth) % 4],
            "ms": 3,
            "label": m.net.label(),
        }
        act_ax.plot(x, [layer.act_rms for layer in m.layers], **style)
        grads = [layer.grad_norm for layer in m.layers]
        if not any(g > 0 for g in grads):
            zero_grads.append(m.net.label())
        grad_ax.plot(x, _positive_or_nan(grads), **style)
    for ax, what in ((act_ax, "activation RMS"), (grad_ax, "||d loss / d output|| (L2, batch)")):
        ax.set_yscale("log")
        ax.set_xlabel("layer (0 = stem, then each block's output, input -> output)")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3, which="both")
    act_ax.set_title("Activation RMS per layer", fontsize=10)
    grad_ax.set_title("Gradient norm per layer", fontsize=10)
    if zero_grads:
        note = "exactly 0 at every layer (zero head at init), not drawn:\n" + "\n".join(zero_grads)
        grad_ax.text(
            0.98, 0.98, note, transform=grad_ax.transAxes, fontsize=7, ha="right", va="top"
        )
    fig.legend(*act_ax.get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize=8)
    fig.suptitle(f"{title(results[0].batch)}\n{setting}", fontsize=11)
    png, _ = save_figure(fig, folder, NAME)
    return png


def _ratio(first: float, last: float) -> str:
    if first == 0 and last == 0:
        return "0 -> 0"
    factor = f"x{last / first:.3g}" if first > 0 else "inf"
    return f"{first:.3g} -> {last:.3g} ({factor})"


def summary(results: Sequence[Measured]) -> list[str]:
    lines = ["first -> last layer (last/first); loss; logits std"]
    for m in results:
        first, last = m.layers[0], m.layers[-1]
        lines.append(
            f"{m.net.arm:5} {m.net.arch:8} {m.net.depth:3}: "
            f"act RMS {_ratio(first.act_rms, last.act_rms)}; "
            f"grad norm {_ratio(first.grad_norm, last.grad_norm)}; "
            f"loss {m.loss:.4g}; logits std {m.logits_std:.3g}"
        )
    return lines


# ----------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, not argparse's usage block: bad input is one line everywhere in bnlab.
        print(f"init_norms.py: error: {message}", file=sys.stderr)
        sys.exit(2)


def depth_list(text: str) -> list[int]:
    try:
        depths = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers") from None
    for d in depths:
        try:
            blocks_per_stage(d)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    if len(set(depths)) != len(depths):
        raise argparse.ArgumentTypeError(f"{text!r}: a depth is repeated")
    return depths


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return value


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = _Parser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    p.add_argument(
        "--depths",
        type=depth_list,
        default=list(DEFAULT_DEPTHS),
        help="comma-separated depths 6n+2 (default 20,56; add 110 for the deepest)",
    )
    p.add_argument("--batch", type=positive, default=BATCH, help="images in the batch (128)")
    p.add_argument("--threads", type=positive, default=1, help="torch CPU threads (1)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    try:
        if args.out.exists() and not args.out.is_dir():
            raise BnlabError(f"--out {args.out} exists and is not a folder")
        results, setting = run_all(args.depths, args.batch)
        args.out.mkdir(parents=True, exist_ok=True)
        write_csv(results, args.out / f"{NAME}.csv")
        png = plot(results, setting, args.out)
    except (BnlabError, OSError) as e:
        print(f"init_norms.py: error: {first_line(e)}", file=sys.stderr)
        return 2
    print("\n".join(summary(results)))
    print(f"wrote {args.out / f'{NAME}.csv'} and {png} (+ .svg)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
