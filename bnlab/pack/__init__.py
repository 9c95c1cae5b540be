"""Packed runs: K runs of one architecture trained as one module, each equal to its solo run.

A pack's members differ only in per-member values -- seed (hence init weights,
data order, augmentation, noise), lr and its schedule, weight decay, momentum,
init scale and scheme (same architecture), fixup_scalar_lr, divergence factor --
and share the rest: architecture, norm kind and its settings, batch size, epochs,
data, precision. The pieces, in the order a caller uses them:

    models = [build each member's solo model after torch.manual_seed(seed_k)]
    gens   = [capture_generator(device) right after each build]   # noisy kinds only
    net    = pack_models(models, gens)                 # model.py (rules: packers.py)
    specs  = [each member's TrainSpec (bnlab.train.spec): its own seed, optim, schedule]
    opt    = PackSGD.from_solo(net, models, [build_optimizer(m, spec.optim, ...) ...])
    guard  = PackDivergence(K, divergence_factor, device)
    step   = PackTrainer(net, opt, guard, lr_table([s.lr_at for s in specs], total_steps, device))
    for each step: losses = step(*pack_batch([member batches]))    # or GraphedStep
    per epoch: step.stats.means(), guard.active, evaluate_pack(net, test_batches)
    checkpoints: unpack_state(net, k), opt.member_state_dict(k), guard.initial_loss(k)
    resume: pack_state(net, states), opt.load_member_state_dict(k, ...), guard.load(...)

``bnlab.pack.run`` does all of that for runs (the packed ``bnlab.recipe.train``):
``solo_reason(cfg)`` and ``pack_key(cfg)`` say which runs may share a pack, and
``train_pack(cfgs, reporters)`` trains them, each member in its own run folder (solo
checkpoint format, summary.json plus a "pack" field). It is not imported here: it
brings the data, store and recipe modules, which the core does not need.
"""

from bnlab.pack.divergence import PackDivergence
from bnlab.pack.model import (
    PackedNet,
    capture_generator,
    generator_states,
    pack_inputs,
    pack_models,
    pack_state,
    shared_input,
    unpack_state,
)
from bnlab.pack.optim import PackSGD, lr_table
from bnlab.pack.packers import PACKERS, PackError
from bnlab.pack.step import PackStats, PackTrainer, evaluate_pack, member_losses, pack_batch

__all__ = [
    "PACKERS",
    "PackDivergence",
    "PackError",
    "PackSGD",
    "PackStats",
    "PackTrainer",
    "PackedNet",
    "capture_generator",
    "evaluate_pack",
    "generator_states",
    "lr_table",
    "member_losses",
    "pack_batch",
    "pack_inputs",
    "pack_models",
    "pack_state",
    "shared_input",
    "unpack_state",
]
