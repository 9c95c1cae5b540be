"""Per-member divergence, decided on the device: no host sync per step.

The rule is the solo run's (``bnlab.train.loop.DivergenceGuard``): a loss that is not
finite, or above ``factor`` times the member's first finite training loss, stops the
member. Here it is a (K,) ``active`` mask that the pack's step reads to leave stopped
members untouched; the host reads it once per epoch (or whenever it likes) to mark a
member diverged at that epoch and to end the pack when no member is left.

The solo loop checks every step on the CPU but only every 25th step on a GPU (each
check is a host sync there); a pack checks every step everywhere, which is the CPU
solo behaviour. The comparison is made in float64 from the fp32 loss, as the solo
guard compares Python floats, so the threshold falls on the same number.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class PackDivergence:
    """``DivergenceGuard`` for K members: ``active`` (K,) bool and ``initial`` (K,) float64.

    ``initial`` is NaN until a member's first finite loss (the solo guard's None).
    Both tensors are updated in place, so a CUDA graph that captured them stays valid.
    """

    def __init__(
        self, k: int, factor: float | Sequence[float], device: torch.device | str = "cpu"
    ) -> None:
        factors = [float(factor)] * k if isinstance(factor, (int, float)) else list(factor)
        if len(factors) != k:
            raise ValueError(f"{len(factors)} divergence factors for {k} members")
        self.k = k
        self.factor = torch.tensor(factors, dtype=torch.float64, device=device)
        self.initial = torch.full((k,), float("nan"), dtype=torch.float64, device=device)
        self.active = torch.ones(k, dtype=torch.bool, device=device)

    @torch.no_grad()
    def check(self, losses: torch.Tensor) -> torch.Tensor:
        """Stop the members whose loss (K,) diverged; returns ``active`` (updated in place).

        Also the end-of-epoch check on the members' mean training losses, as the solo
        loop does after its last step.
        """
        loss = losses.detach().double()
        finite = torch.isfinite(loss)
        unset = torch.isnan(self.initial)
        bad = ~finite | (~unset & (loss > self.factor * self.initial))
        # The first finite loss becomes the reference (not compared with itself).
        self.initial.copy_(torch.where(self.active & unset & finite, loss, self.initial))
        self.active.logical_and_(~bad)
        return self.active

    def initial_loss(self, k: int) -> float | None:
        """Member k's reference loss as the solo checkpoint stores it (None: not set yet)."""
        value = float(self.initial[k])
        return None if value != value else value

    @torch.no_grad()
    def load(self, k: int, initial_loss: float | None, active: bool) -> None:
        """Member k's state from its checkpoint (resume)."""
        self.initial[k] = float("nan") if initial_loss is None else initial_loss
        self.active[k] = active
