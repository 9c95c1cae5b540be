"""Train a pack of runs end to end: ``train_pack`` is ``bnlab.recipe.train`` for K runs at once.

The sweep asks two questions of each run and then hands over the packs:

    solo_reason(cfg)  why this run cannot pack (None: it can)
    pack_key(cfg)     runs with equal keys train as one pack (None: solo)
    train_pack(cfgs, reporters) -> [RunOutcome per cfg]   (what recipe.train returns)

Members may differ in ``MEMBER_KEYS`` only -- their seed (so init weights, data order,
augmentation and noise), lr and its schedule, momentum, weight decay, Fixup's scalar
lr, init scale and (weight-only) init scheme, divergence factor -- and in how they are
recorded (``OWN_KEYS``: runs folder, logger, preset/experiment labels). Everything
else is one key: architecture, norm kind and settings, batch size, epochs, data,
device, precision, compile, probes. What cannot pack at all (``solo_reason``): a
sequence model, the probes that need a solo model or loader (``SOLO_PROBES``: bn_stats,
ics, landscape), dropout, logger=wandb, or modules ``bnlab.pack.packers`` has no rule
for (checked by packing two small members of the config once).

probe.activations packs: at a fresh start and after each epoch, each member's state is
unpacked into its solo model (``unpack_state``) and measured by the solo run's own
``EpochProbes`` on the solo run's fixed batch (the first batch of epoch 0 of the
member's own loader), with torch's global generators set, for the probe's duration, to
the member's solo states (its noise generator and CPU generator, as its checkpoint
records them) and restored after: the same draws as the solo probe, nothing consumed
from the pack's streams, the packed BN statistics untouched (the probe works on a copy).
Its rows go to the member's probes.csv and its checkpoint's ``probe_rows``; a resumed
member continues them, as ``bnlab.train.fit`` does.

Each member's run folder reads exactly like its solo run's: config.yaml, metrics.csv,
checkpoint.pt in the solo format (model: ``unpack_state``; optimizer: the member's
``torch.optim.SGD`` state dict; rng: its generator; initial_loss, rows, epoch, step,
diverged_epoch) -- so a pack-trained run resumes solo, a solo-started one resumes
in a pack -- and summary.json with recipe.train's fields plus ``"pack": {"size",
"members", "index"}`` naming the pack that trained its last epochs. A member that
diverges is stopped (its updates masked, ``bnlab.pack.step``), its row and summary
written at that epoch, while the others train on unchanged. A killed pack resumes
every member from its last epoch's checkpoint; members found at different epochs
train as separate packs, one per (epoch, step), one after the other.

Differences from the solo run, all inside what the pack core documents: a diverged
member keeps the state from *before* its diverging step (the solo run applies that
step, then stops), so its checkpoint, its last row's test numbers and its last
activation-probe rows are of that state; divergence is checked every step on a GPU
too (the solo loop every 25th);
``train.compile`` means the pack's whole-step CUDA graph on CUDA (``GraphedStep``,
falling back to eager with a warning) and eager elsewhere (``bnlab sweep
sweep.pack_graph=true`` sets it on the packs' members only); time_s, images_per_s and
elapsed_s are the pack's time (images_per_s: the member's own images per second).
A stopped member stays in the module, masked, until the pack ends: dropping it
would change the others' kernel shapes, so their rounding (tests/test_pack_run.py).

Tested on CPU (tests/test_pack_run.py); the CUDA paths -- the generators' CUDA
states in checkpoints and in the activations probe (``_solo_rng``), ``GraphedStep``
-- have not yet run on a GPU.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import os
import platform
import time
import traceback
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from bnlab import __version__
from bnlab.build import build_model
from bnlab.config import RESIDUAL_INITS, validate
from bnlab.data import Dataset, DeviceLoader, load_dataset
from bnlab.data.load import curve_subset
from bnlab.errors import BnlabError, warn
from bnlab.models import count_params
from bnlab.models.norms import ActivationNoise
from bnlab.pack.divergence import PackDivergence
from bnlab.pack.model import capture_generator, pack_models, unpack_state
from bnlab.pack.optim import PackSGD, lr_table
from bnlab.pack.packers import PackError
from bnlab.pack.step import PackTrainer, evaluate_pack, pack_batch
from bnlab.recipe import (
    RunFailed,
    RunOutcome,
    final_measurements,
    result_summary,
    train_spec,
)
from bnlab.sinks import Sink, make_sink
from bnlab.store import RunBusy, RunDir, RunStore, check_writable, git_commit, run_id, run_name
from bnlab.train.fit import FitResult, build_optimizer
from bnlab.train.loop import Reporter
from bnlab.train.probes import EpochProbes, ProbeRow, write_probes
from bnlab.train.runtime import Runtime, resolve_runtime
from bnlab.train.spec import TrainSpec

# What a member may have of its own: the values the pack core takes per member
# (PackSGD.from_solo reads them from each member's solo optimizer, lr_table from each
# member's own schedule, PackDivergence has a factor per member, the weights come from
# each member's own build). model.init is one only among the weight-only schemes:
# fixup/skipinit build other modules, so they are part of the key.
MEMBER_KEYS = (
    "train.seed",
    "optim.lr",
    "optim.momentum",
    "optim.weight_decay",
    "optim.fixup_scalar_lr",
    "optim.schedule",
    "optim.milestones",
    "optim.gamma",
    "optim.warmup_epochs",
    "optim.peak_at",
    "model.init_scale",
    "model.init",
    "train.divergence_factor",
)
# Where and how a member is recorded: its own folder, logger and labels.
OWN_KEYS = ("paths", "logger", "preset_name", "experiment_name")
# The per-epoch probes a pack cannot take (bnlab.train.probes): ics and landscape
# measure the solo model between its steps (on the step's own batch, at its lr),
# bn_stats needs a loader of its own over the curve's images. probe.activations (a
# fixed batch, at init and each epoch's end) is measured per member (``_member_probes``).
SOLO_PROBES = ("bn_stats", "ics", "landscape")


# ----------------------------------------------------------------------------- which runs pack


def solo_reason(cfg: DictConfig) -> str | None:
    """Why this run cannot train in a pack (one line), or None: it can."""
    m = cfg.model
    if m.arch != "resnet":
        return f"model.arch={m.arch}: only the CIFAR ResNets pack (bnlab.pack.packers)"
    on = [name for name in SOLO_PROBES if cfg.probe.get(name, False)]
    if on:
        return (
            f"probe.{on[0]}=true: bn_stats, ics and landscape measure a solo model between "
            "steps or on a loader of their own (of the probes, only activations packs)"
        )
    dropout = float(m.get("dropout", 0.0) or 0.0)
    if dropout > 0:
        return (
            f"model.dropout={dropout}: dropout masks come from the device's global "
            "generator, so no member could draw its solo run's"
        )
    if cfg.logger.kind == "wandb":
        return "logger=wandb: wandb keeps one run open per process, a pack needs one per member"
    return _pack_refusal(OmegaConf.to_yaml(m, resolve=True), OmegaConf.to_yaml(cfg.norm))


@functools.lru_cache(maxsize=64)
def _pack_refusal(model_yaml: str, norm_yaml: str) -> str | None:
    """Pack two members of this model and norm (at depth 8: the same module types as
    every 6n+2 depth, in milliseconds); the packer's refusal, or None."""
    model = OmegaConf.create(model_yaml)
    model.depth = 8
    norm = OmegaConf.create(norm_yaml)
    try:
        with torch.random.fork_rng(devices=[]):
            built = []
            for seed in (0, 1):
                torch.manual_seed(seed)
                built.append((build_model(model, norm), capture_generator("cpu")))  # type: ignore[arg-type]
            pack_models([b for b, _ in built], [g for _, g in built])
    except PackError as err:
        return f"it does not pack: {err}"
    return None


def pack_key(cfg: DictConfig) -> Hashable | None:
    """Runs with equal keys can train as one pack; None: this run trains solo.

    The key is a hash of the resolved config without ``MEMBER_KEYS`` and ``OWN_KEYS``
    (with model.init kept when it changes the modules: fixup, skipinit).
    """
    if solo_reason(cfg) is not None:
        return None
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    init = plain["model"].get("init")
    for dotted in (*MEMBER_KEYS, *OWN_KEYS):
        _drop(plain, dotted)
    if init in RESIDUAL_INITS:
        plain["model"]["init"] = init
    canonical = json.dumps(plain, sort_keys=True, separators=(",", ":"), default=str)
    return "pack-" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _drop(tree: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node: Any = tree
    for p in parents:
        node = node.get(p, {})
    node.pop(leaf, None)


# ----------------------------------------------------------------------------- outcomes


class PackFailed(RunFailed):
    """Training crashed: each member it was training has a failed summary.json (rerunning
    resumes them). ``outcome`` is the first failed member's, ``outcomes`` one per cfg."""

    def __init__(self, outcomes: list[RunOutcome], message: str) -> None:
        failed = next(o for o in outcomes if o.status == "failed")
        super().__init__(failed, message)
        self.outcomes = outcomes


@dataclass
class _Member:
    """One run of the pack: its config, folder and progress (the solo fit's locals)."""

    index: int  # its position in train_pack's cfgs
    cfg: DictConfig
    run: RunDir
    reporter: Reporter
    spec: TrainSpec
    sink: Sink
    checkpoint: dict[str, Any] | None
    rows: list[dict[str, float]] = field(default_factory=list)
    probe_rows: list[ProbeRow] = field(default_factory=list)  # probe.activations' rows
    start_epoch: int = 0
    step: int = 0
    elapsed: float = 0.0
    diverged_epoch: int | None = None
    pack: dict[str, Any] | None = None  # the summary's "pack" field
    summary: dict[str, Any] = field(default_factory=dict)
    outcome: RunOutcome | None = None

    @property
    def over(self) -> bool:
        """Its checkpoint already holds its last epoch (killed before its summary)."""
        return self.diverged_epoch is not None or self.start_epoch >= self.spec.epochs


@dataclass(frozen=True)
class _Shared:
    """What every member of one call shares: the data, the eval loaders, the runtime."""

    data: Dataset
    train: DeviceLoader  # reseeded per member (_reseeded)
    test: DeviceLoader
    curve: DeviceLoader | None
    rt: Runtime
    git: str


# ----------------------------------------------------------------------------- train_pack


def train_pack(cfgs: Sequence[DictConfig], reporters: Sequence[Reporter]) -> list[RunOutcome]:
    """Train these runs (one pack_key) as one pack; what recipe.train returns for each.

    Outcomes: "completed" | "diverged" (trained here), "done" (finished before),
    "busy" (another process holds its lock). A crash writes a failed summary.json for
    every member it hit and raises ``PackFailed`` (a ``RunFailed``) once the other
    packs of the call are done; interrupts and BnlabErrors pass through as in
    recipe.train, the checkpoints kept.
    """
    cfgs, reporters = list(cfgs), list(reporters)
    if len(cfgs) != len(reporters):
        raise ValueError(f"{len(cfgs)} configs, {len(reporters)} reporters")
    if not cfgs:
        return []
    for cfg in cfgs:
        validate(cfg)
        if (reason := solo_reason(cfg)) is not None:
            raise PackError(f"{run_name(cfg)} trains solo: {reason}")
    if len({pack_key(cfg) for cfg in cfgs}) > 1:
        raise PackError("these runs differ in more than their per-member keys (pack_key)")
    runs = [RunStore(cfg.paths.runs).run_dir(cfg) for cfg in cfgs]
    if len({r.path.resolve() for r in runs}) < len(runs):
        raise PackError("the same run twice in one pack")
    rt = resolve_runtime(cfgs[0].train)

    outcomes: list[RunOutcome | None] = [None] * len(cfgs)
    todo = []
    for i, run in enumerate(runs):
        if run.is_finished():
            outcomes[i] = RunOutcome("done", run.path, run.summary())
        else:
            todo.append(i)
    if not todo:
        return outcomes  # type: ignore[return-value]
    for root in {Path(cfgs[i].paths.runs) for i in todo}:
        check_writable(root)
    shared = _load(cfgs[todo[0]], rt)

    with contextlib.ExitStack() as held:
        members: list[_Member] = []
        for i in todo:
            try:
                held.enter_context(runs[i].lock())
            except RunBusy:
                outcomes[i] = RunOutcome("busy", runs[i].path, None)
                continue
            if runs[i].is_finished():  # finished elsewhere while this call got here
                outcomes[i] = RunOutcome("done", runs[i].path, runs[i].summary())
                continue
            members.append(_start(i, cfgs[i], runs[i], reporters[i], shared))
        error = _train_members(members, shared)
        for m in members:
            outcomes[m.index] = m.outcome
    done = [o for o in outcomes if o is not None]
    assert len(done) == len(cfgs)
    if error is not None:
        raise PackFailed(done, error)
    return done


def _load(cfg: DictConfig, rt: Runtime) -> _Shared:
    """The data once, and its loaders (as recipe.train builds them)."""
    data = load_dataset(cfg.data)
    curve = curve_subset(data, cfg.data)
    d, cl = cfg.data, rt.channels_last
    train = DeviceLoader(
        data.train_x, data.train_y, d.batch_size, train=True, augment=d.augment,
        mean=data.mean, std=data.std, device=rt.device, seed=cfg.train.seed, channels_last=cl,
    )  # fmt: skip
    test = DeviceLoader(
        data.test_x, data.test_y, d.eval_batch_size, train=False, augment=False,
        mean=data.mean, std=data.std, device=rt.device, channels_last=cl,
    )  # fmt: skip
    curve_loader = None
    if curve is not None:
        curve_loader = DeviceLoader(
            curve[0], curve[1], d.eval_batch_size, train=False, augment=False,
            mean=data.mean, std=data.std, device=rt.device, channels_last=cl,
        )  # fmt: skip
    return _Shared(data, train, test, curve_loader, rt, git_commit())


def _reseeded(loader: DeviceLoader, seed: int) -> DeviceLoader:
    """``loader`` with another seed, sharing its device copy of the images.

    A DeviceLoader's batches depend on (seed, epoch) only (``DeviceLoader.epoch``), so
    this yields exactly the batches of ``DeviceLoader(..., seed=seed)``: each member's
    own data order and augmentation, without K copies of the training set.
    """
    clone = copy.copy(loader)
    clone.seed = seed
    return clone


def _start(i: int, cfg: DictConfig, run: RunDir, reporter: Reporter, shared: _Shared) -> _Member:
    """A locked member: its spec, config.yaml written, sink opened, checkpoint read."""
    spec = train_spec(cfg, shared.rt, steps_per_epoch=len(shared.train))
    run.clear_summary()  # a previously failed run is running again
    run.write_config(cfg)
    sink = make_sink(cfg, run.path, run_id(cfg))
    m = _Member(i, cfg, run, reporter, spec, sink, run.load_checkpoint())
    m.summary = _base_summary(cfg, shared)
    if m.checkpoint is not None:
        c = m.checkpoint
        m.rows, m.start_epoch, m.step = c["rows"], c["epoch"], c["step"]
        m.elapsed, m.diverged_epoch = c["elapsed_s"], c["diverged_epoch"]
        m.pack = c.get("pack")
        run.write_metrics(m.rows)  # repair a CSV that lagged the checkpoint
        if spec.probes.enabled:
            # get: a checkpoint written before the probes existed has no probe rows.
            m.probe_rows = c.get("probe_rows", [])
            write_probes(run.path, m.probe_rows)  # likewise
    return m


def _train_members(members: list[_Member], shared: _Shared) -> str | None:
    """Train every member, as packs of those at the same (epoch, step); the first error."""
    groups: dict[tuple[int, int], list[_Member]] = {}
    errors = []
    for m in members:
        if m.over:
            errors.append(_guarded([m], shared, _finish_from_checkpoint))
        else:
            groups.setdefault((m.start_epoch, m.step), []).append(m)
    for group in groups.values():  # a crash in one pack leaves the next to train
        errors.append(_guarded(group, shared, _train_group))
    return next((e for e in errors if e is not None), None)


def _guarded(
    group: list[_Member], shared: _Shared, work: Callable[[list[_Member], _Shared], None]
) -> str | None:
    """``work(group)`` as recipe.train guards fit: a crash is a failed summary per member."""
    started = time.perf_counter()
    try:
        work(group, shared)
    except (KeyboardInterrupt, SystemExit, BnlabError):
        raise  # interrupted or bad input found late: the checkpoints stay, rerunning resumes
    except Exception as err:
        message = f"{type(err).__name__}: {err}"
        for m in group:
            if m.outcome is not None:
                continue  # it finished (diverged) before the crash
            summary = m.summary | {
                "status": "failed",
                "error": message,
                "traceback": traceback.format_exc(),
                "wall_s": time.perf_counter() - started,
            }
            m.run.write_summary(summary)
            m.sink.finish(summary)
            m.outcome = RunOutcome("failed", m.run.path, summary)
        return message
    return None


def _base_summary(cfg: DictConfig, shared: _Shared) -> dict[str, Any]:
    """recipe.train's summary before training (its "params" and "device": _describe)."""
    data, curve = shared.data, shared.curve or shared.test
    return {
        "run_id": run_id(cfg),
        "dataset": data.variant,
        "train_images": int(data.train_x.shape[0]),
        "test_images": int(data.test_x.shape[0]),
        "curve_test_images": curve.num_images(),  # per-epoch rows but the last
        "host": platform.node(),
        "pid": os.getpid(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "bnlab_version": __version__,
        "git_commit": shared.git,
        "preset": cfg.preset_name,
    }


def _describe(m: _Member, model: torch.nn.Module, rt: Runtime) -> None:
    m.summary |= {"params": count_params(model), "device": rt.describe()}


def _build(m: _Member, shared: _Shared) -> tuple[torch.nn.Module, torch.Tensor]:
    """Member m's solo model as recipe.train builds it, and the CPU RNG state after it."""
    rt, data = shared.rt, shared.data
    torch.manual_seed(m.spec.seed)  # build_model initialises the weights from this seed
    model = build_model(
        m.cfg.model, m.cfg.norm, num_classes=len(data.classes), in_channels=data.train_x.shape[-1]
    )
    cpu_rng = torch.get_rng_state()
    model = model.to(rt.device)
    if rt.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, cpu_rng


def _finish_from_checkpoint(group: list[_Member], shared: _Shared) -> None:
    """Members killed after checkpointing their last epoch: the summary from the checkpoint."""
    for m in group:
        model, _ = _build(m, shared)
        assert m.checkpoint is not None
        model.load_state_dict(m.checkpoint["model"])
        _describe(m, model, shared.rt)
        _finish(m, model, shared)


def _finish(m: _Member, model: torch.nn.Module, shared: _Shared) -> None:
    """summary.json as recipe.train writes it, plus the pack; ``model``: the final state."""
    status = "diverged" if m.diverged_epoch is not None else "completed"
    result = FitResult(status, m.rows, m.diverged_epoch, m.start_epoch, m.elapsed)
    summary = m.summary | result_summary(result, m.spec.epochs)
    summary |= final_measurements(model, shared.data, m.spec, status, m.rows)
    if m.pack is not None:
        summary["pack"] = m.pack
    m.run.write_summary(summary)
    m.sink.finish(summary)
    m.summary = summary
    m.outcome = RunOutcome(status, m.run.path, summary, m.start_epoch)


@dataclass
class _Pack:
    """One PackedNet training a group of members, and what their checkpoints need."""

    trainer: PackTrainer
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # the trainer, or its graph
    models: list[torch.nn.Module]  # the solo models (for the summaries' extras)
    generators: list[torch.Generator]  # each member's noise stream (its "rng")
    cpu_rngs: list[torch.Tensor]  # on CUDA: the CPU generator as the solo run leaves it
    loaders: list[DeviceLoader]  # each member's training batches
    probes: list[EpochProbes | None]  # each member's probe.activations, on its solo model

    @property
    def net(self) -> Any:
        return self.trainer.net


def _pack(group: list[_Member], shared: _Shared) -> _Pack:
    """The members built, and resumed, exactly as their solo runs (fit) would be, packed."""
    rt, device = shared.rt, shared.rt.device
    spec0 = group[0].spec
    for m in group[1:]:
        if not m.spec.packs_with(spec0):
            raise PackError(f"{m.run.path.name} and {group[0].run.path.name} do not pack")
    fresh = [m.checkpoint is None for m in group]  # the solo fit probes these at init
    models, cpu_rngs, gens = [], [], []
    for m in group:
        model, cpu_rng = _build(m, shared)
        gen = capture_generator(device)  # the solo run's noise stream starts here
        if m.checkpoint is not None:
            c = m.checkpoint
            model.load_state_dict(c["model"])
            cpu_rng = c["rng"]
            if device.type == "cpu":
                gen.set_state(c["rng"])
            elif c.get("cuda_rng") is not None:
                gen.set_state(c["cuda_rng"])
        models.append(model)
        cpu_rngs.append(cpu_rng)
        gens.append(gen)
    noisy = any(isinstance(mod, ActivationNoise) for mod in models[0].modules())
    net = pack_models(models, gens if noisy else None).to(device)
    if rt.channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizers = [
        build_optimizer(model, m.spec.optim, m.spec.only_bn, m.spec.init)
        for model, m in zip(models, group, strict=True)
    ]
    opt = PackSGD.from_solo(net, models, optimizers)
    guard = PackDivergence(len(group), [m.spec.divergence_factor for m in group], device)
    for i, m in enumerate(group):
        if m.checkpoint is not None:
            opt.load_member_state_dict(i, m.checkpoint["optimizer"], steps=m.step)
            guard.load(i, m.checkpoint["initial_loss"], active=True)
            m.checkpoint = None  # all in the pack now; the member's copy is not needed
    table = lr_table([m.spec.lr_at for m in group], spec0.epochs * spec0.steps_per_epoch, device)
    graphed = rt.compile and device.type == "cuda"
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = rt.autocast
    if graphed and rt.autocast_dtype is not None:
        # Under a CUDA graph the cast cache would hold tensors of the capture.
        autocast = functools.partial(
            torch.autocast, device_type="cuda", dtype=rt.autocast_dtype, cache_enabled=False
        )
    trainer = PackTrainer(net, opt, guard, table, autocast)
    trainer.set_step(group[0].step)
    loaders = [_reseeded(shared.train, m.spec.seed) for m in group]
    probes = _member_probes(group, models, optimizers, loaders, rt)
    for i, p in enumerate(probes):
        if p is not None and fresh[i]:
            with _solo_rng(gens[i], cpu_rngs[i], device):
                p.at_init()  # before the graph's warm-up: every stream as the build left it
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = trainer
    if graphed:
        step, graphed = _graph(trainer, loaders, group[0].start_epoch)
    ran = replace(rt, compile=graphed, cuda_graphs=graphed)
    names = [m.run.path.name for m in group]
    for i, m in enumerate(group):
        m.pack = {"size": len(group), "members": names, "index": i}
        _describe(m, models[i], ran)
    return _Pack(trainer, step, models, gens, cpu_rngs, loaders, probes)


def _member_probes(
    group: list[_Member],
    models: list[torch.nn.Module],
    optimizers: list[torch.optim.Optimizer],
    loaders: list[DeviceLoader],
    rt: Runtime,
) -> list[EpochProbes | None]:
    """Each member's ``EpochProbes`` as its solo fit builds them (None: probes off), on
    its solo model, continuing the rows of its checkpoint. Only probe.activations gets
    here (``solo_reason``): the model is loaded with the member's state before each use."""
    out: list[EpochProbes | None] = []
    for m, model, optimizer, loader in zip(group, models, optimizers, loaders, strict=True):
        if not m.spec.probes.enabled:
            out.append(None)
            continue
        trained_ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
        trained = {n for n, p in model.named_parameters() if id(p) in trained_ids}
        # Epoch 0's first batch of the member's own loader: the solo fit's fixed batch.
        fixed = next(iter(loader.epoch(0))) if m.spec.probes.activations else None
        probes = EpochProbes(m.spec.probes, model, rt, trained, fixed, None)
        probes.rows = m.probe_rows  # the same list: the checkpoint's rows, continued
        out.append(probes)
    return out


@contextlib.contextmanager
def _solo_rng(gen: torch.Generator, cpu_rng: torch.Tensor, device: torch.device) -> Iterator[None]:
    """Within: torch's global generators in the states the member's solo run has now
    (``_save``'s rng and cuda_rng: on a CPU its noise generator ``gen`` stands for the
    global one; on CUDA for the device's, the CPU's at ``cpu_rng``); restored after, so
    a probe's draws are the solo probe's and leave every stream as it was."""
    if device.type != "cuda":
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(gen.get_state())
            yield
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.random.fork_rng(devices=[index]):
        torch.set_rng_state(cpu_rng)
        torch.cuda.set_rng_state(gen.get_state(), index)
        yield


def _train_group(group: list[_Member], shared: _Shared) -> None:
    """Train members at one (epoch, step) as one pack to their end: fit's epoch loop."""
    pack = _pack(group, shared)
    trainer, net, guard = pack.trainer, pack.net, pack.trainer.guard
    device = shared.rt.device
    epochs, steps_per_epoch = group[0].spec.epochs, group[0].spec.steps_per_epoch
    step, batch = group[0].step, shared.train.batch_size
    live = list(range(len(group)))  # members still training, as the host knows it
    for epoch in range(group[0].start_epoch, epochs):
        epoch_start = time.perf_counter()
        for i in live:
            group[i].reporter.epoch_start(epoch + 1, epochs, steps_per_epoch)
        trainer.stats.reset()
        net.train()
        began = time.perf_counter()
        for batches in zip(*(loader.epoch(epoch) for loader in pack.loaders), strict=True):
            pack.step(*pack_batch(batches))
            for i in live:
                group[i].reporter.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - began
        means = trainer.stats.means()
        # The solo loop's end-of-epoch check on the mean training loss (the same float64).
        guard.check(torch.tensor([s[0] for s in means], dtype=torch.float64, device=device))
        active = guard.active.tolist()
        stopped = {i for i in live if not active[i]}
        last = epoch + 1 == epochs

        # A run's last row (or a diverged one) on the whole test set, the rest on the
        # curve's images (data.curve_test_size): each set evaluated once for the pack.
        eval_loader = {
            i: shared.test if last or i in stopped or shared.curve is None else shared.curve
            for i in live
        }
        evals: dict[int, tuple[list[float], list[float]]] = {}
        for loader in {id(x): x for x in eval_loader.values()}.values():
            loss, acc = evaluate_pack(net, loader.epoch(0), shared.rt.autocast)
            evals[id(loader)] = (loss.tolist(), acc.tolist())
        for i in live:
            m, loader = group[i], eval_loader[i]
            train_loss, train_acc, images = means[i]
            steps = images // batch  # this epoch's steps, the diverging one included
            m.elapsed += seconds
            m.rows.append(
                {
                    "epoch": epoch + 1,
                    "train_loss": train_loss,
                    "train_acc": train_acc,
                    "test_loss": evals[id(loader)][0][i],
                    "test_acc": evals[id(loader)][1][i],
                    "test_images": loader.num_images(),
                    "lr": m.spec.lr_at(step + steps - 1),  # its last step's, as the solo row's
                    "time_s": time.perf_counter() - epoch_start,
                    "images_per_s": images / max(seconds, 1e-9),
                    "elapsed_s": m.elapsed,
                }
            )
            m.step = step + steps
            if i in stopped:
                m.diverged_epoch = epoch + 1
        step += steps_per_epoch
        # probe.activations after the epoch, as the solo fit's end_epoch: on the member's
        # state (a stopped member's: the one it keeps), in its solo model.
        for i in live:
            if pack.probes[i] is not None:
                _probe_member(group[i], pack, i, device)

        # Every member's checkpoint, then its CSV, before anyone hears of the epoch: a
        # pack stopped in a reporter leaves all its members at the same epoch.
        for i in live:
            _save(group[i], pack, i, device)
        for i in live:
            group[i].run.write_metrics(group[i].rows)
            if pack.probes[i] is not None:
                write_probes(group[i].run.path, group[i].probe_rows)
        for i in live:
            group[i].sink.log_epoch(group[i].rows[-1])
            group[i].reporter.epoch_end(group[i].rows[-1])
        over = set(live) if last else stopped
        for i in sorted(over):
            if group[i].diverged_epoch is None:  # bn_eval/bn_modes evaluate the final state
                pack.models[i].load_state_dict(unpack_state(net, i))
            _finish(group[i], pack.models[i], shared)
        live = [i for i in live if i not in over]
        if not live:
            break


def _probe_member(m: _Member, pack: _Pack, i: int, device: torch.device) -> None:
    """Member i's end-of-epoch probe rows (``EpochProbes.end_epoch``) on its solo model."""
    probes = pack.probes[i]
    assert probes is not None
    pack.models[i].load_state_dict(unpack_state(pack.net, i))
    with _solo_rng(pack.generators[i], pack.cpu_rngs[i], device):
        probes.end_epoch(len(m.rows), m.step, m.rows[-1]["test_acc"])


def _save(m: _Member, pack: _Pack, i: int, device: torch.device) -> None:
    """Member i's checkpoint in the solo format (bnlab.train.fit's), plus its pack."""
    cuda = device.type == "cuda"
    gen = pack.generators[i]
    m.run.save_checkpoint(
        {
            "epoch": len(m.rows),
            "step": m.step,
            "model": unpack_state(pack.net, i),
            "optimizer": pack.trainer.optimizer.member_state_dict(i),
            # The solo run's global generators: the member's generator stands in for
            # the device's (noise draws), the CPU's is where the build left it.
            "rng": pack.cpu_rngs[i] if cuda else gen.get_state(),
            "cuda_rng": gen.get_state() if cuda else None,
            "initial_loss": pack.trainer.guard.initial_loss(i),
            "rows": m.rows,
            "elapsed_s": m.elapsed,
            "diverged_epoch": m.diverged_epoch,
            "probe_rows": m.probe_rows,
            "pack": m.pack,
        }
    )


def _graph(
    trainer: PackTrainer, loaders: list[DeviceLoader], epoch: int
) -> tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], bool]:
    """The whole step in one CUDA graph (bnlab.pack.graph), or the trainer with a warning."""
    from bnlab.pack.graph import GraphedStep

    saved = trainer.state()
    try:
        x, y = pack_batch([next(iter(loader.epoch(epoch))) for loader in loaders])
        return GraphedStep(trainer, x, y), True
    except Exception as err:  # capture failed: eager is correct, only slower
        trainer.load_state(saved)  # the warm-up steps may have run
        trainer.optimizer.zero_grad()
        text = str(err).strip().splitlines()
        warn(
            f"the pack's CUDA graph failed ({type(err).__name__}: {text[0] if text else ''}): "
            "training the pack in eager mode"
        )
        return trainer, False
