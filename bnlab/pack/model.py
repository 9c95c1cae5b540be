"""K solo models of one architecture as one module (HFTA, Wang et al. MLSys 2021).

``pack_models`` takes K already built and initialised solo models (each built by the
caller from its own seed, so each member starts from exactly its solo run's weights)
and returns a ``PackedNet``: every convolution has K times the groups, every norm
layer K times the channels (each member keeps its own statistics), the head is a
batched matmul, and the per-member scalars of Fixup/SkipInit are (K,) vectors.

One invariant carries everything else: **every parameter and buffer of the packed
body holds its K members' tensors concatenated along dim 0** (a 0-dim member tensor,
e.g. BatchNorm's ``num_batches_tracked``, becomes a (K,) vector), and every
activation holds member k's channels at ``k*C .. (k+1)*C - 1``. So
``t.unflatten(0, (K, -1))[k]`` is member k's tensor: ``unpack_state`` and
``pack_state`` convert to and from the solo state-dict format with it, the pack
optimizer broadcasts per-member lr/weight decay along it, and a stopped member's
buffers are restored along it.

The module tree is walked by **exact type** (``bnlab.pack.packers``): each type has one
packer and a type without one (a subclass included: a subclass may draw, mix or count
differently) is a ``PackError`` naming the module, never a silent wrong pack. The
packed body keeps the solo tree's module names, so state-dict keys are the solo keys.

Every norm kind of ``bnlab.norm_kinds`` packs, each member equal to its solo run
(tests/test_pack.py): bn, ghost_bn, batch_renorm, bn_noisy (BN over K*C channels;
batch renorm with a per-member step count), gn/ln/in (GroupNorm with K*G groups),
none, none_noisy (Identity / per-member noise), weight_norm (per output channel, so
per member), and the fixup/skipinit inits. The noisy kinds need each member's own
generator (``capture_generator``); BatchNorm with ``momentum=None`` (a cumulative
average that reads the step count as one number) does not pack.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from bnlab.pack.packers import PackError, pack, stack

# ----------------------------------------------------------------------------- the pack


class PackedNet(nn.Module):
    """K members trained as one module: (B, K*C, H, W) or (K, B, C, H, W) -> (K, B, classes).

    ``body`` is the packed twin of the solo tree (same module names); ``k`` the member
    count; ``member_shapes`` each state-dict key's solo shape. Member k's input batch
    is channels ``k*C .. (k+1)*C - 1`` of a packed input (``pack_inputs``); members
    may see different images (each its own data order). ``generators`` are the
    members' noise generators (None without noise layers): their states are the
    members' RNG states for checkpoints.
    """

    def __init__(
        self,
        body: nn.Module,
        k: int,
        member_shapes: dict[str, torch.Size],
        generators: Sequence[torch.Generator] | None = None,
    ) -> None:
        super().__init__()
        self.body = body
        self.k = k
        self.member_shapes = member_shapes
        self.generators = list(generators) if generators is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:
            x = pack_inputs(x)
        return self.body(x)

    @torch.no_grad()
    def snapshot_buffers(self) -> list[torch.Tensor]:
        """Copies of every buffer (BN running statistics, step counts), for restore_buffers."""
        return [b.clone() for b in self.body.buffers()]

    @torch.no_grad()
    def restore_buffers(self, snapshot: list[torch.Tensor], active: torch.Tensor) -> None:
        """Put back the snapshot's buffers of every member where ``active`` (K,) is False.

        A training forward updates every member's running statistics, a stopped
        member's too (with whatever its diverged weights give, NaN included); this
        undoes that for them, on the device, without a host sync.
        """
        for buf, old in zip(self.body.buffers(), snapshot, strict=True):
            now, before = member_view(buf, self.k), member_view(old, self.k)
            now.copy_(torch.where(member_column(active, now), now, before))


def member_view(t: torch.Tensor, k: int) -> torch.Tensor:
    """(K*n, ...) -> a (K, n, ...) view, member k's tensor at [k] ((K,) -> (K, 1))."""
    return t.unflatten(0, (k, t.shape[0] // k))


def member_column(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (K,) per-member vector shaped to broadcast against a (K, ...) members view."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def pack_models(
    models: Sequence[nn.Module],
    generators: Sequence[torch.Generator] | None = None,
) -> PackedNet:
    """One module training ``models`` (K solo models of one architecture) together.

    The members' parameters and buffers are copied (stacked along dim 0), the models
    themselves are left as they are. ``generators`` (one per member, on the training
    device) are needed when the models have noise layers (bn_noisy, none_noisy):
    member k draws from ``generators[k]`` what its solo run draws from torch's global
    generator. Raises PackError for an unknown module type, or for members that
    differ in anything but their tensors' values (and noise settings).
    The packed net is in training mode, on the members' device and dtype.
    """
    models = list(models)
    if not models:
        raise PackError("no models to pack")
    k = len(models)
    # Building the packed layers runs their default inits: keep those draws off the
    # global generator, so packing leaves the RNG (and hence later draws) as it was.
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        body = pack(models, generators)
    member = models[0].state_dict()
    packed = body.state_dict()
    if list(member) != list(packed):
        raise PackError(f"packed keys differ from the solo keys: {set(member) ^ set(packed)}")
    shapes: dict[str, torch.Size] = {}
    for name, t in member.items():
        expect = (k,) if t.dim() == 0 else (k * t.shape[0], *t.shape[1:])
        if tuple(packed[name].shape) != expect:
            raise PackError(f"{name}: packed shape {tuple(packed[name].shape)}, expected {expect}")
        shapes[name] = t.shape
    return PackedNet(body.train(), k, shapes, generators)


def pack_inputs(batches: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """K member batches (each (B, C, H, W), or one (K, B, C, H, W)) -> (B, K*C, H, W)."""
    if isinstance(batches, torch.Tensor):
        if batches.dim() != 5:
            raise ValueError(f"expected (K, B, C, H, W), got {tuple(batches.shape)}")
        batches = batches.unbind(0)
    return torch.cat(list(batches), dim=1)


def shared_input(x: torch.Tensor, k: int) -> torch.Tensor:
    """One batch (B, C, H, W) for every member (evaluation on a common test set)."""
    return x.repeat(1, k, 1, 1)


def unpack_state(packed: PackedNet, k: int) -> OrderedDict[str, torch.Tensor]:
    """Member ``k``'s state dict, in exactly its solo model's format (keys, shapes)."""
    if not 0 <= k < packed.k:
        raise IndexError(f"member {k} of a pack of {packed.k}")
    return OrderedDict(
        (name, member_view(t, packed.k)[k].reshape(packed.member_shapes[name]).clone())
        for name, t in packed.body.state_dict().items()
    )


def pack_state(packed: PackedNet, states: Sequence[dict[str, torch.Tensor]]) -> None:
    """Load K solo state dicts (e.g. the members' checkpoints, to resume) into ``packed``."""
    if len(states) != packed.k:
        raise PackError(f"{len(states)} states for a pack of {packed.k}")
    current = packed.body.state_dict()
    merged: dict[str, torch.Tensor] = {}
    for name, t in current.items():
        values = []
        for i, state in enumerate(states):
            if name not in state:
                raise PackError(f"member {i}'s state has no {name!r}")
            value = state[name]
            if value.shape != packed.member_shapes[name]:
                raise PackError(
                    f"member {i}'s {name!r} has shape {tuple(value.shape)}, "
                    f"expected {tuple(packed.member_shapes[name])}"
                )
            values.append(value.to(device=t.device, dtype=t.dtype))
        merged[name] = stack(values, name).view(t.shape)
    for i, state in enumerate(states):
        extra = set(state) - set(current)
        if extra:
            raise PackError(f"member {i}'s state has keys the model lacks: {sorted(extra)}")
    packed.body.load_state_dict(merged)


def capture_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A new generator in the current state of torch's global generator of ``device``.

    Call it right after seeding and building member k (as the solo run does:
    ``torch.manual_seed(seed); model = build_model(...)``): the solo run's noise draws
    continue from exactly that state, so member k's must too. For CUDA the global
    generator is untouched by a CPU build, so this is the seed's fresh state.
    """
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        source = torch.cuda.default_generators[index]
    else:
        source = torch.default_generator
    gen = torch.Generator(device=device)
    gen.set_state(source.get_state())
    return gen


def generator_states(packed: PackedNet) -> list[torch.Tensor] | None:
    """The members' noise-generator states (for their checkpoints), or None."""
    if packed.generators is None:
        return None
    return [g.get_state() for g in packed.generators]
