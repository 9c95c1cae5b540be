"""One training step of a pack, and evaluation: the pack's version of ``bnlab.train.loop``.

``PackTrainer.__call__(x, y)`` is the whole step on the device, with no host sync
(so it can be captured in one CUDA graph, ``bnlab.pack.graph``):

1. each member's lr for this step: row ``step`` of the lr table (a device tensor);
2. a copy of the buffers (BN running statistics, step counts);
3. forward; each member's own mean cross-entropy (the solo loss);
4. divergence: a member whose loss diverged is stopped *before* its update;
5. backward of the sum of the active members' losses: member k's parameters only
   reach member k's loss, so each gets exactly its solo gradient;
6. SGD with every stopped member masked; its buffers put back from the copy.

So a stopped member keeps the state it had before the step whose loss diverged
(the solo run applies that step, then stops: a diverged state is NaN or huge in
either case; the record that matters is the epoch and the loss, and those agree).
The per-member loss/accuracy sums count the diverging step, as the solo loop's do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from bnlab.pack.divergence import PackDivergence
from bnlab.pack.model import PackedNet, pack_inputs, shared_input
from bnlab.pack.optim import PackSGD

Autocast = Callable[[], contextlib.AbstractContextManager[Any]]


def member_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(K,) each member's mean cross-entropy, in fp32, from (K, B, classes) and (K, B).

    One call for all members. Its gradient is the solo loss's bit for bit (softmax
    minus one-hot, times 1/B); its value may differ from the solo ``F.cross_entropy``
    mean in the last bit (another summation order), which only shows in train_loss.
    """
    k, b = y.shape
    per_sample = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
    return per_sample.view(k, b).mean(dim=1)


def pack_batch(
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """K members' (images (B, C, H, W), labels (B,)) -> packed images and (K, B) labels."""
    return pack_inputs([x for x, _ in batches]), torch.stack([y for _, y in batches])


class PackStats:
    """Per-member training sums of an epoch, on the device (the solo ``EpochStats`` inputs)."""

    def __init__(self, k: int, device: torch.device) -> None:
        self.loss_sum = torch.zeros(k, device=device)  # fp32, as the solo loop's
        self.correct = torch.zeros(k, dtype=torch.long, device=device)
        self.images = torch.zeros(k, dtype=torch.long, device=device)

    @torch.no_grad()
    def add(
        self, losses: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, counted: torch.Tensor
    ) -> None:
        b = y.shape[1]
        self.loss_sum += torch.where(counted, losses.detach() * b, 0.0)
        hits = (logits.argmax(dim=-1) == y).sum(dim=1)
        self.correct += torch.where(counted, hits, 0)
        self.images += counted * b

    @torch.no_grad()
    def reset(self) -> None:
        for t in (self.loss_sum, self.correct, self.images):
            t.zero_()

    def means(self) -> list[tuple[float, float, int]]:
        """(mean loss, accuracy, images) per member, as the solo loop computes them (syncs)."""
        loss, correct, images = self.loss_sum.tolist(), self.correct.tolist(), self.images.tolist()
        return [
            (s / max(1, n), c / max(1, n), n) for s, c, n in zip(loss, correct, images, strict=True)
        ]


class PackTrainer:
    """The training step of a pack, all state on the device and updated in place.

    ``lr_table`` is (steps, K) float64 (``bnlab.pack.optim.lr_table``); the step
    counter ``step_index`` picks its row (set it with ``set_step`` on resume).
    ``autocast`` is the runtime's autocast context factory (under a CUDA graph it must
    not cache casts: ``torch.autocast(..., cache_enabled=False)``).
    """

    def __init__(
        self,
        net: PackedNet,
        optimizer: PackSGD,
        guard: PackDivergence,
        lr_table: torch.Tensor,
        autocast: Autocast | None = None,
    ) -> None:
        if lr_table.dim() != 2 or lr_table.shape[1] != net.k:
            raise ValueError(f"lr_table must be (steps, {net.k}), got {tuple(lr_table.shape)}")
        device = lr_table.device
        self.net = net
        self.optimizer = optimizer
        self.guard = guard
        self.lr_table = lr_table.to(torch.float64)
        self.autocast = autocast or contextlib.nullcontext
        self.step_index = torch.zeros((), dtype=torch.long, device=device)
        self.lr = torch.zeros(net.k, dtype=torch.float64, device=device)  # the last step's
        self.stats = PackStats(net.k, device)

    def set_step(self, step: int) -> None:
        self.step_index.fill_(step)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One step on packed images ``x`` (B, K*C, H, W) and labels ``y`` (K, B).

        Returns the members' losses (K,) (a device tensor; stopped members' are
        whatever their weights give).
        """
        last = self.lr_table.shape[0] - 1
        row = self.step_index.clamp(max=last).view(1)
        self.lr.copy_(self.lr_table.index_select(0, row).view(-1))
        snapshot = self.net.snapshot_buffers()
        counted = self.guard.active.clone()
        with self.autocast():
            logits = self.net(x)
            losses = member_losses(logits, y)
        active = self.guard.check(losses)
        self.optimizer.zero_grad()
        # torch.where, not a product: a stopped member's inf/NaN loss gets no gradient.
        torch.where(active, losses, 0.0).sum().backward()
        self.optimizer.step(self.lr, active)
        self.net.restore_buffers(snapshot, active)
        self.stats.add(losses, logits, y, counted)
        self.step_index += 1
        return losses.detach()

    def state(self) -> dict[str, Any]:
        """Copies of everything a step changes (for a trial run, e.g. before graph capture)."""
        gens = self.net.generators or []
        return {
            "tensors": [t.detach().clone() for t in self._tensors()],
            "generators": [g.get_state() for g in gens],
        }

    @torch.no_grad()
    def load_state(self, state: dict[str, Any]) -> None:
        """Put back ``state()``'s values, in place (tensors keep their addresses)."""
        for t, saved in zip(self._tensors(), state["tensors"], strict=True):
            t.copy_(saved)
        for g, saved in zip(self.net.generators or [], state["generators"], strict=True):
            g.set_state(saved)

    def _tensors(self) -> list[torch.Tensor]:
        opt = self.optimizer
        return [
            *self.net.body.parameters(),
            *self.net.body.buffers(),
            *(s.buffer for s in opt._slots if s.buffer is not None),
            opt.steps,
            self.guard.initial,
            self.guard.active,
            self.stats.loss_sum,
            self.stats.correct,
            self.stats.images,
            self.step_index,
            self.lr,
        ]


@torch.no_grad()
def evaluate_pack(
    net: PackedNet,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    autocast: Autocast | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each member's mean loss and accuracy (K,) on common batches (running statistics).

    As ``bnlab.train.loop.evaluate``: eval mode, fp32 sums on the device, one sync at
    the end (the caller's ``.tolist()``). The loss is summed per member with the solo
    call (not vectorised: evaluation is not the hot loop), so a member's test loss is
    the solo run's number, not one rounded differently.
    """
    autocast = autocast or contextlib.nullcontext
    net.eval()
    k = net.k
    device = next(net.parameters()).device
    loss_sum = torch.zeros(k, device=device)
    correct = torch.zeros(k, dtype=torch.long, device=device)
    n = 0
    for x, y in batches:
        with autocast():
            logits = net(shared_input(x, k))
        for i in range(k):
            loss_sum[i] += F.cross_entropy(logits[i].float(), y, reduction="sum")
        correct += (logits.argmax(dim=-1) == y).sum(dim=1)
        n += y.numel()
    # float64 division of the fp32 sums: the solo ``loss_sum.item() / n``, the same number.
    return loss_sum.double() / max(1, n), correct.double() / max(1, n)
