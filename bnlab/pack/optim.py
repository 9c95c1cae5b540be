"""SGD for a pack: per-member learning rate, weight decay and momentum, and a member mask.

``PackSGD`` does what ``torch.optim.SGD`` (as ``bnlab.train.fit.build_optimizer``
builds it and ``bnlab.train.loop.train_epoch`` drives it) does to each solo run,

    d = grad + weight_decay * param
    buf = momentum * buf + d                   (the first step: buf = d)
    d = d + momentum * buf  if nesterov  else  buf
    param = param - lr * lr_scale * d

with lr, weight_decay, momentum and lr_scale (K,) vectors broadcast along each
parameter's member dim (dim 0; see ``bnlab.pack.model``), so one update serves K
members with K schedules. ``lr`` is a device tensor passed to ``step``: a schedule
change is a tensor write, not a new CUDA graph. The momentum buffers start at zero,
which makes the first step's ``buf = 0 * momentum + d = d``, torch's first step,
exactly. A member whose ``active`` entry is False is left bit-for-bit as it is:
parameters and momentum buffers keep their values (selected with ``torch.where``,
never multiplied by 0, so NaN/inf in a stopped member cannot leak into anything).

``PackSGD.from_solo`` reads the members' own ``torch.optim.SGD`` (built by the solo
code, e.g. Fixup's scalar-lr group): no rule of the solo optimizer is copied here.
``member_state_dict``/``load_member_state_dict`` convert the momentum to and from the
solo optimizer's state-dict format, so a member's checkpoint is a solo checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bnlab.pack.model import PackedNet, PackError, member_column, member_view


@dataclass
class _Slot:
    """One packed parameter and its per-member settings."""

    name: str
    param: nn.Parameter
    scale: int  # index into PackSGD._scales: the (K,) lr_scale vector
    weight_decay: torch.Tensor  # (K,), in the parameter's dtype
    momentum: torch.Tensor  # (K,), in the parameter's dtype
    buffer: torch.Tensor | None  # momentum buffer, the parameter's shape; None: no momentum


@dataclass
class _Group:
    """A solo optimizer's param group: its settings and its parameters' names, in order."""

    settings: dict[str, Any]
    names: list[str] = field(default_factory=list)


class PackSGD:
    """SGD over a ``PackedNet``'s parameters with per-member hyperparameters.

    ``momentum``/``weight_decay``: one value per member, or a dict of per-member
    values per parameter name (what ``from_solo`` builds); ``lr_scales``: per parameter
    name, the per-member factor on the lr (default 1; Fixup's scalars use
    optim.fixup_scalar_lr); ``trained``: the parameter names updated (default all:
    train.only_bn trains only the norm affines). ``nesterov`` is one switch for all.
    """

    def __init__(
        self,
        packed: PackedNet,
        momentum: Sequence[float] | dict[str, Sequence[float]],
        weight_decay: Sequence[float] | dict[str, Sequence[float]],
        nesterov: bool = False,
        lr_scales: dict[str, Sequence[float]] | None = None,
        trained: Sequence[str] | None = None,
    ) -> None:
        self.k = packed.k
        self.nesterov = nesterov
        self.member_shapes = packed.member_shapes
        params = dict(packed.body.named_parameters())
        names = list(params) if trained is None else list(trained)
        device = next(iter(params.values())).device
        self._scales: list[torch.Tensor] = []
        scale_index: dict[tuple[float, ...], int] = {}
        self._slots: list[_Slot] = []
        for name in names:
            if name not in params:
                raise PackError(f"no parameter {name!r} in the pack")
            p = params[name]
            mom = self._per_member(momentum, name)
            scale = tuple(self._per_member(lr_scales or {}, name, default=1.0))
            if scale not in scale_index:
                scale_index[scale] = len(self._scales)
                self._scales.append(_vector(scale, device))
            self._slots.append(
                _Slot(
                    name,
                    p,
                    scale_index[scale],
                    # float64 first, then rounded once to the parameter's dtype, as the
                    # solo kernels round the Python float.
                    _vector(self._per_member(weight_decay, name), device).to(p.dtype),
                    _vector(mom, device).to(p.dtype),
                    torch.zeros_like(p) if any(m != 0 for m in mom) else None,
                )
            )
        # Steps each member has taken (a stopped member stops counting).
        self.steps = torch.zeros(self.k, dtype=torch.long, device=device)
        # The solo optimizers' param groups per member (from_solo); else one group.
        settings = {"momentum": 0.0, "weight_decay": 0.0, "nesterov": nesterov, "dampening": 0}
        self._layout: list[list[_Group]] = [[_Group(dict(settings), names)] for _ in range(self.k)]

    def _per_member(
        self,
        value: Sequence[float] | dict[str, Sequence[float]],
        name: str,
        default: float | None = None,
    ) -> list[float]:
        if isinstance(value, dict):
            if name not in value:
                if default is None:
                    raise PackError(f"no per-member value for parameter {name!r}")
                return [default] * self.k
            value = value[name]
        values = [float(v) for v in value]
        if len(values) != self.k:
            raise PackError(f"{len(values)} values for a pack of {self.k} ({name})")
        return values

    @classmethod
    def from_solo(
        cls,
        packed: PackedNet,
        models: Sequence[nn.Module],
        optimizers: Sequence[torch.optim.Optimizer],
    ) -> PackSGD:
        """The pack's SGD with each member's settings read from its own solo optimizer.

        ``models[k]`` and ``optimizers[k]`` are member k's solo model and the
        ``torch.optim.SGD`` the solo code builds for it (``build_optimizer``): its
        groups' momentum, weight decay, nesterov and ``lr_scale`` (the factor the
        solo loop multiplies the lr by) become per-member values of the pack's
        parameters of the same name. Dampening and maximize are not supported.
        """
        k = packed.k
        if len(models) != k or len(optimizers) != k:
            raise PackError(f"{len(models)} models, {len(optimizers)} optimizers for {k} members")
        per_name: dict[str, dict[str, list[float]]] = {}
        nesterov: set[bool] = set()
        layout: list[list[_Group]] = []
        trained: list[set[str]] = []
        for i, (model, opt) in enumerate(zip(models, optimizers, strict=True)):
            if type(opt) is not torch.optim.SGD:
                raise PackError(f"member {i}: {type(opt).__name__}, only torch.optim.SGD packs")
            ids = {id(p): n for n, p in model.named_parameters()}
            groups = []
            for group in opt.param_groups:
                if group.get("dampening", 0) != 0 or group.get("maximize", False):
                    raise PackError(f"member {i}: SGD with dampening or maximize does not pack")
                nesterov.add(bool(group["nesterov"]))
                names = []
                for p in group["params"]:
                    if id(p) not in ids:
                        raise PackError(f"member {i}: optimizer has a parameter not in its model")
                    name = ids[id(p)]
                    names.append(name)
                    values = per_name.setdefault(
                        name, {"momentum": [0.0] * k, "weight_decay": [0.0] * k, "scale": [1.0] * k}
                    )
                    values["momentum"][i] = float(group["momentum"])
                    values["weight_decay"][i] = float(group["weight_decay"])
                    values["scale"][i] = float(group.get("lr_scale", 1.0))
                settings = {key: v for key, v in group.items() if key != "params"}
                groups.append(_Group(settings, names))
            layout.append(groups)
            trained.append({n for g in groups for n in g.names})
        if len(nesterov) > 1:
            raise PackError("members differ in nesterov")
        if any(t != trained[0] for t in trained):
            raise PackError("members train different parameters (train.only_bn?)")
        names = [n for n, _ in packed.body.named_parameters() if n in trained[0]]
        opt = cls(
            packed,
            momentum={n: per_name[n]["momentum"] for n in names},
            weight_decay={n: per_name[n]["weight_decay"] for n in names},
            nesterov=nesterov.pop(),
            lr_scales={n: per_name[n]["scale"] for n in names},
            trained=names,
        )
        opt._layout = layout
        return opt

    def zero_grad(self) -> None:
        """Drop the gradients (set_to_none, as the solo loop does)."""
        for slot in self._slots:
            slot.param.grad = None

    @torch.no_grad()
    def step(self, lr: torch.Tensor, active: torch.Tensor) -> None:
        """One SGD step of every active member; ``lr`` (K,) float64, ``active`` (K,) bool.

        The solo loop sets ``group["lr"] = lr * lr_scale`` as a Python float (a float64
        product) that the kernel rounds to the parameter's dtype: the same here, so a
        member's effective lr is the same number as its solo run's.
        """
        neg_lrs: dict[tuple[int, torch.dtype], torch.Tensor] = {}
        for slot in self._slots:
            p = slot.param
            if p.grad is None:
                continue  # as torch's SGD: a parameter without a gradient is skipped
            key = (slot.scale, p.dtype)
            if key not in neg_lrs:
                neg_lrs[key] = -(lr * self._scales[slot.scale]).to(p.dtype)
            params, grads = member_view(p, self.k), member_view(p.grad, self.k)
            keep = member_column(active, params)
            # Fused multiply-adds and in-place selects: 6 passes over the parameter.
            d = torch.addcmul(grads, params, member_column(slot.weight_decay, params))
            if slot.buffer is not None:
                buf = member_view(slot.buffer, self.k)
                momentum = member_column(slot.momentum, params)
                new_buf = torch.addcmul(d, buf, momentum)  # momentum * buf + d
                torch.where(keep, new_buf, buf, out=buf)
                d = torch.addcmul(d, new_buf, momentum) if self.nesterov else new_buf
            new = torch.addcmul(params, d, member_column(neg_lrs[key], params))
            torch.where(keep, new, params, out=params)
        self.steps += active

    def member_state_dict(self, k: int) -> dict[str, Any]:
        """Member k's momentum as its solo ``torch.optim.SGD.state_dict()``.

        The param groups (settings and order) are the member's solo optimizer's (from
        ``from_solo``), so the result loads into a freshly built solo optimizer. As
        in torch, a member that has not stepped yet has no momentum buffers. Reads
        the step count: one host sync (checkpoint time only).
        """
        stepped = int(self.steps[k]) > 0
        slots = {slot.name: slot for slot in self._slots}
        state: dict[int, dict[str, torch.Tensor]] = {}
        groups: list[dict[str, Any]] = []
        index = 0
        for group in self._layout[k]:
            ids = []
            for name in group.names:
                slot = slots[name]
                if stepped and slot.buffer is not None and group.settings.get("momentum", 0):
                    buf = member_view(slot.buffer, self.k)[k]
                    state[index] = {
                        "momentum_buffer": buf.reshape(self.member_shapes[name]).clone()
                    }
                ids.append(index)
                index += 1
            groups.append({**group.settings, "params": ids})
        return {"state": state, "param_groups": groups}

    @torch.no_grad()
    def load_member_state_dict(self, k: int, state_dict: dict[str, Any], steps: int) -> None:
        """Member k's momentum from a solo optimizer state dict (resume); ``steps`` done so far.

        A parameter without a momentum buffer in the state gets zeros, which is the
        same thing for SGD's next step (0 * momentum + d = d).
        """
        slots = {slot.name: slot for slot in self._slots}
        saved = state_dict["state"]
        index = 0
        for group in self._layout[k]:
            for name in group.names:
                slot = slots[name]
                if slot.buffer is not None:
                    member = member_view(slot.buffer, self.k)[k]
                    value = saved.get(index, {}).get("momentum_buffer")
                    if value is None:
                        member.zero_()
                    else:
                        member.copy_(value.reshape(member.shape))
                index += 1
        self.steps[k] = steps


def _vector(values: Sequence[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(list(values), dtype=torch.float64, device=device)


def lr_table(
    lr_at: Sequence[Callable[[int], float]], steps: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(steps, K) float64: row t is each member's lr at step t, from its own schedule.

    ``lr_at[k]`` is member k's ``TrainSpec.lr_at`` (``bnlab.train.spec``: the base lr
    times its schedule's factor): the solo schedule's own numbers, not a re-implementation.
    The table lives on the device so a step reads its row without a host sync.
    """
    rows = [[f(t) for f in lr_at] for t in range(steps)]
    return torch.tensor(rows, dtype=torch.float64, device=device).view(steps, len(lr_at))
