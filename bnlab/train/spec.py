"""What training uses, and nothing else: the narrow spec ``fit`` runs from.

``bnlab.recipe.train_spec`` builds a ``TrainSpec`` once from the composed config; no
module under ``bnlab.train`` reads the config itself. Every value is plain (numbers,
strings, tuples, a resolved ``Runtime``), so a spec can be built by hand in a test or
by a pack for each of its members.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from bnlab.train.runtime import Runtime
from bnlab.train.schedule import Schedule


@dataclass(frozen=True)
class OptimSpec:
    """SGD's settings (``bnlab.train.fit.build_optimizer``).

    The field names are the optim config's, so code that builds an optimizer outside a
    run (scripts, tests) may pass an ``OptimConfig`` where an ``OptimSpec`` is asked for.
    """

    lr: float  # the base lr: the schedule's factor 1; the one statement of it in a run
    momentum: float
    nesterov: bool
    weight_decay: float
    # The lr_scale of Fixup's scalar group (build_optimizer, init="fixup" only); the
    # default is neutral (no scaling), the config's own default is optim.fixup_scalar_lr's.
    fixup_scalar_lr: float = 1.0


@dataclass(frozen=True)
class ProbeSpec:
    """The per-epoch probes (``bnlab.train.probes.EpochProbes``); all off: none run."""

    bn_stats: bool = False
    activations: bool = False
    ics: bool = False
    landscape: bool = False
    steps: tuple[int, ...] = ()  # global steps at which ics/landscape run
    landscape_steps: tuple[float, ...] = ()  # landscape's step sizes, multiples of the lr

    @property
    def enabled(self) -> bool:
        return self.bn_stats or self.activations or self.ics or self.landscape


@dataclass(frozen=True)
class EvalSpec:
    """The evaluations after training (the recipe's bn_eval and bn_modes) and their batches."""

    batch_size: int  # data.eval_batch_size
    train_batch_size: int  # data.batch_size: the statistics size of BN in training
    augment: bool  # data.augment: the training images as the running averages saw them
    bn_eval_batch_sizes: tuple[int, ...] = ()  # empty: no bn_eval
    bn_modes: bool = False  # probe.bn_modes, and the norm is a BN kind (BN_MODE_KINDS)


@dataclass(frozen=True)
class TrainSpec:
    """One run's training: epochs of SGD on a schedule, probes, evaluations after.

    The loaders (data order from ``seed``), the model (initialised from ``seed``) and
    the run directory are built by the caller and passed to ``fit`` beside the spec.

    A pack member (``bnlab.pack``): each member has its own spec, built by
    ``train_spec`` from its own composed config (or ``dataclasses.replace`` of one
    spec with another ``seed``/``optim``/...). Members differ only in
    ``MEMBER_FIELDS`` -- seed, optim (lr, momentum, weight decay, Fixup's scalar lr;
    not nesterov), schedule, divergence factor, init -- and ``packs_with`` says
    whether two specs may share a pack. Member k's ``lr_at`` is its row of
    ``bnlab.pack.lr_table`` and ``build_optimizer(model_k, optim, only_bn, init)``
    its optimizer for ``PackSGD.from_solo``: the solo run's numbers exactly.
    """

    epochs: int
    steps_per_epoch: int  # optimizer steps per epoch (full training batches)
    seed: int  # train.seed: the caller's loaders and model; bn_eval/bn_modes shuffles
    optim: OptimSpec
    schedule: Schedule  # its total_steps = epochs x steps_per_epoch
    only_bn: bool  # train only the norm layers' gamma/beta (Frankle et al. 2020)
    init: str  # model.init: "fixup" gives the optimizer Fixup's scalar group
    divergence_factor: float  # diverged: a loss above this x the first step's
    runtime: Runtime
    probes: ProbeSpec
    evals: EvalSpec

    def __post_init__(self) -> None:
        if self.schedule.total_steps != self.epochs * self.steps_per_epoch:
            raise ValueError(
                f"schedule of {self.schedule.total_steps} steps for "
                f"{self.epochs} epochs x {self.steps_per_epoch} steps"
            )

    def lr_at(self, step: int) -> float:
        """The lr at optimizer step ``step`` (0-based): base lr x the schedule's factor."""
        return self.optim.lr * self.schedule.factor(step)

    def packs_with(self, other: TrainSpec) -> bool:
        """Whether ``other`` may train in one pack with this run: equal but for MEMBER_FIELDS."""
        shared = [f.name for f in fields(self) if f.name not in MEMBER_FIELDS]
        return self.optim.nesterov == other.optim.nesterov and all(
            getattr(self, name) == getattr(other, name) for name in shared
        )


# What a pack member may have of its own (bnlab.pack's module docstring).
MEMBER_FIELDS = ("seed", "optim", "schedule", "divergence_factor", "init")
