"""The typed configuration schema, registered in Hydra's ConfigStore.

Hydra/OmegaConf enforce key names and types (``nosuchkey=1`` or
``optim.lr=abc`` fail at compose time). ``validate`` adds the value checks
that types cannot express (``model.depth`` must be 6n+2, sizes positive, ...).

Each norm kind has its own dataclass, so ``norm=bn norm.groups=4`` is an
unknown-key error instead of a silently ignored setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from bnlab.errors import BnlabError
from bnlab.norm_kinds import (
    ARCHS,
    NORM_FREE_KINDS,
    NORM_KINDS,
    RECURRENT_ARCHS,
    SEQUENCE_ARCHS,
    NormConfig,
    check_norm,
)

# ----------------------------------------------------------------------------- data


@dataclass
class DataConfig:
    name: str = MISSING  # cifar10_jpeg | cifar10 | fashion_mnist
    root: str | None = None  # None: the source's default location
    batch_size: int = 128
    eval_batch_size: int = 256  # fastest on the 2-core CPU; no effect on results
    train_size: int | None = None  # class-balanced training subset; None = all
    test_size: int | None = None  # class-balanced test subset (smoke tests only); None = all
    # Per-epoch evaluations (the curves in metrics.csv) on a fixed class-balanced subset
    # of the test set of this size (the same every epoch and seed: data.subset_seed);
    # the final epoch always evaluates the whole test set. None: every epoch, the whole.
    curve_test_size: int | None = None
    subset_seed: int = 0  # fixed: the subset does not change with train.seed
    augment: bool = True  # pad-4 random crop + horizontal flip
    download: bool = True  # official CIFAR-10 only: fetch it when missing and online


# ----------------------------------------------------------------------------- model


@dataclass
class ModelConfig:
    arch: str = "resnet"  # CIFAR ResNet 6n+2 (He et al. 2016); residual=false -> plain twin
    depth: int = 20
    width: int = 16  # channels of the first stage; stages are width, 2*width, 4*width
    residual: bool = True
    # kaiming | xavier | orthogonal | fixup (Zhang et al. 2019) | skipinit (De & Smith 2020);
    # fixup/skipinit need residual=true and a norm kind without normalisation (none, none_noisy)
    init: str = "kaiming"
    init_scale: float = 1.0  # multiplies every conv/linear weight after init
    # Dropout probability on the pooled features, right before the classifier fc (after
    # Fixup's head bias); in [0, 1). 0: no dropout layer at all (the net of before the
    # key). Only resnet has it: the sequence models keep it at 0 (validate()).
    dropout: float = 0.0
    # What this code builds for a config, bumped when that changes with no other key
    # changing, so the run id (a hash of the config) changes too. 1: runs stored before
    # the key existed. 2: Fixup as in Zhang et al.'s reference code (no conv biases,
    # x + bias1a into a downsampling shortcut, fan-out He init of the branches' first
    # convs) and bn_noisy/none_noisy's uniform per-activation draws (bnlab.models).
    revision: int = 2


# The sequence models read each image as a sequence of rows (H time steps of W x C
# features). Each family has its own schema, picked by the model group (model=lstm,
# model=gru, model=transformer), as each norm kind has its own: a key that only one
# family reads is an unknown key in the others, and ModelConfig -- hence the run id of
# every ResNet run -- is unchanged. They reuse ModelConfig's keys where the meaning
# carries over (depth: stacked layers, width: hidden units) and keep the rest at
# values validate() pins (residual, init, dropout), so every consumer of cfg.model
# reads them.


@dataclass
class RecurrentConfig(ModelConfig):
    """An LSTM or GRU over the rows (bnlab.models.recurrent), norms where the papers put them."""

    arch: str = "lstm"  # lstm | gru
    depth: int = 1  # stacked recurrent layers
    width: int = 128  # hidden units (h, and c for the LSTM)
    # The recurrent weights orthogonal (Saxe et al. 2014, as Cooijmans et al. 2016);
    # the only scheme the recurrent models implement.
    init: str = "orthogonal"
    # Train on the first train_steps rows of each image, evaluate on all of them (the
    # longer sequences of Cooijmans et al.'s generalisation test). None: all rows.
    train_steps: int | None = None


@dataclass
class TransformerConfig(ModelConfig):
    """A small pre-norm transformer encoder over the rows (bnlab.models.transformer)."""

    arch: str = "transformer"
    depth: int = 4  # encoder blocks
    width: int = 64  # d_model; the MLP has 4 x width hidden units
    heads: int = 4  # must divide width
    init: str = "xavier"  # Glorot-uniform linears (torch's nn.Transformer); the only scheme


# The schema each architecture (norm_kinds.ARCHS) is composed with: conf/model/<arch>.yaml.
MODEL_SCHEMAS: dict[str, type[ModelConfig]] = {
    "resnet": ModelConfig,
    "lstm": RecurrentConfig,
    "gru": RecurrentConfig,
    "transformer": TransformerConfig,
}


# ----------------------------------------------------------------------------- norms
# One entry per norm kind (schema, conv-bias rule, checks) in bnlab.norm_kinds, its layer
# factory in bnlab.build; each schema is registered as an option of the norm group.

NORM_SCHEMAS: dict[str, type[NormConfig]] = {k: v.schema for k, v in NORM_KINDS.items()}

# ----------------------------------------------------------------------------- optim


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    schedule: str = "multistep"  # multistep | cosine | onecycle | constant
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of training
    gamma: float = 0.1  # multistep: lr factor at each milestone
    warmup_epochs: float = 0.0  # linear warm-up from 0, before any schedule
    peak_at: float = 0.25  # onecycle: fraction of training where the lr peaks
    # model.init=fixup only: lr multiplier of the scalar biases and multipliers (and the
    # head's bias), as in Zhang et al.'s reference CIFAR code (base_lr / 10).
    fixup_scalar_lr: float = 0.1


# ----------------------------------------------------------------------------- train etc.


@dataclass
class TrainConfig:
    epochs: int = 164  # He et al.: 64k iterations of batch 128 on 50k images
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on a CUDA GPU that has it, else fp32) | fp32 | bf16
    # NHWC memory format: faster on GPUs and on CPU too (scripts/bench_throughput.py,
    # results/bench/README.md), so on by default everywhere.
    channels_last: bool = True
    # false: eager | true: torch.compile | cuda_graphs: torch.compile(mode="reduce-overhead"),
    # i.e. CUDA graphs (CUDA only; elsewhere a warning and eager mode). Typed Any to take
    # both bools and that word; validate() allows exactly these three.
    compile: Any = False
    threads: int | None = None  # CPU intra-op threads; None: torch's default
    divergence_factor: float = 10.0  # diverged when the loss exceeds this x its initial value
    # Train only the norm layers' gamma/beta, everything else frozen at init (Frankle et al. 2020).
    only_bn: bool = False


@dataclass
class ProbeConfig:
    """Measurements taken during or after training (they cost time, so off by default)."""

    # After training, test accuracy with BN using *batch* statistics (train-mode
    # normalisation, running averages untouched) at each of these eval batch sizes,
    # beside the usual running-statistics accuracy. Empty: skip.
    bn_eval_batch_sizes: list[int] = field(default_factory=list)
    # After training, BN and Ghost BN models only (other kinds: skipped): test accuracy
    # with the running averages, with precise BN (statistics re-estimated over 100
    # training batches of the statistics size), with each test group's own statistics,
    # and the training loss/accuracy in train mode (bnlab.train.bn_modes).
    bn_modes: bool = False
    # Per-epoch probes, written to probes.csv (long format). They run on deep
    # copies with the RNG restored, so switching them on never changes training.
    # Each epoch: test accuracy with running vs batch statistics (at data.batch_size).
    bn_stats: bool = False
    # At init and each epoch end, on one fixed training batch: every conv/linear
    # layer's output mean/std (pre-norm) and its weight's gradient norm.
    activations: bool = False
    # Internal covariate shift (Santurkar et al. 2018) at each of `steps`.
    ics: bool = False
    # Loss landscape along the gradient (loss variation, gradient predictiveness,
    # effective beta-smoothness) at each of `steps`.
    landscape: bool = False
    # Global step indices (0 = the first SGD step) at which ics/landscape run.
    steps: list[int] = field(default_factory=lambda: [0, 50, 200])
    # landscape step sizes, as multiples of the current lr (scale-free across schedules).
    landscape_steps: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0])


@dataclass
class LoggerConfig:
    kind: str = MISSING  # the CSV store is always written; other kinds add a sink


@dataclass
class CsvLoggerConfig(LoggerConfig):
    kind: str = "csv"


@dataclass
class WandbLoggerConfig(LoggerConfig):
    """Weights & Biases: one wandb run per bnlab run, grouped by experiment."""

    kind: str = "wandb"
    project: str = "bnlab"
    entity: str | None = None
    mode: str = "offline"  # offline (no network needed; `wandb sync` later) | online | disabled
    group: str | None = None  # None: the experiment name (or "adhoc" outside a sweep)
    tags: list[str] = field(default_factory=list)


LOGGER_SCHEMAS: dict[str, type[LoggerConfig]] = {
    "csv": CsvLoggerConfig,
    "wandb": WandbLoggerConfig,
}


@dataclass
class PathsConfig:
    runs: str = "runs"


@dataclass
class Config:
    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    norm: NormConfig = MISSING
    optim: OptimConfig = MISSING
    logger: LoggerConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    preset_name: str = "full"  # set by the preset group; recorded, not hashed
    experiment_name: str | None = None  # set by the experiment group; recorded, not hashed


def register_configs() -> None:
    """Register the schemas; conf/*.yaml extend them through their defaults lists."""
    # optim.lr: ${linear_lr:0.1,128,${data.batch_size}} -- Goyal et al.'s linear scaling rule.
    OmegaConf.register_new_resolver(
        "linear_lr", lambda base, ref, batch: float(base) * int(batch) / int(ref), replace=True
    )
    cs = ConfigStore.instance()
    cs.store(name="bnlab_schema", node=Config)
    cs.store(group="data", name="base_data", node=DataConfig)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="model", name="base_recurrent", node=RecurrentConfig)
    cs.store(group="model", name="base_transformer", node=TransformerConfig)
    cs.store(group="optim", name="base_optim", node=OptimConfig)
    for kind, schema in LOGGER_SCHEMAS.items():
        cs.store(group="logger", name=f"base_{kind}", node=schema)
    for kind, schema in NORM_SCHEMAS.items():
        cs.store(group="norm", name=f"base_{kind}", node=schema)


# ----------------------------------------------------------------------------- value checks

DATASETS = ("cifar10_jpeg", "cifar10", "fashion_mnist")
IMAGE_ROWS = {"cifar10_jpeg": 32, "cifar10": 32, "fashion_mnist": 28}  # the sequences' length
INITS = ("kaiming", "xavier", "orthogonal", "fixup", "skipinit")
RESIDUAL_INITS = ("fixup", "skipinit")  # add scalars to the residual branches
MODEL_REVISION = 2  # ModelConfig.revision: the only one bnlab.models builds
SCHEDULES = ("multistep", "cosine", "onecycle", "constant")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
WANDB_MODES = ("offline", "online", "disabled")
# The largest lr any parameter may see (optim.lr times the schedule's largest factor and
# Fixup's scalar multiplier). The grids stop at 3 and every net here diverges in its
# first steps far below 1000, so a larger lr measures nothing new; far larger ones
# (above float32's 3.4e38) do not even diverge but crash the optimizer step.
LR_MAX = 1e3
WEIGHT_DECAY_MAX = 1e3  # the same limit for the decay term (torch scales it in float32 too)
EPOCHS_MAX = 10**6  # ~2,000 x He et al.'s 164 epochs: anything more is a typo
SEED_MAX = 2**63 - 1  # torch.manual_seed takes at most 2**64 - 1; a signed 64-bit int is portable


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise BnlabError(message)


def _one_of(key: str, value: Any, choices: tuple[str, ...]) -> None:
    _check(value in choices, f"{key}={value!r} is not one of: {', '.join(choices)}")


def _positive(key: str, value: float | int | None, *, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    _check(
        value is not None and math.isfinite(value) and value > 0,
        f"{key}={value} must be a positive number",
    )


def _in_range(key: str, value: Any, low: float, high: float) -> None:
    """A finite number in [low, high]; the message names the key and the range."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    _check(
        number and math.isfinite(value) and low <= value <= high,
        f"{key}={value} must be a number in [{low:g}, {high:g}]",
    )


def _seed(key: str, value: Any) -> None:
    _check(
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= SEED_MAX,
        f"{key}={value} must be an integer in [0, 2**63-1]",
    )


def _largest_lr(o: Any, init: str) -> float:
    """The largest lr any parameter sees: lr x the schedule's peak x Fixup's multiplier."""
    try:
        peak = max(1.0, o.gamma) ** len(o.milestones) if o.schedule == "multistep" else 1.0
    except OverflowError:  # float ** int raises rather than giving inf
        return math.inf
    scalar = max(1.0, o.fixup_scalar_lr) if init == "fixup" else 1.0
    return o.lr * peak * scalar


def _check_schema(m: Any) -> None:
    """model.arch set on another architecture's schema (model.arch=lstm with model=resnet)."""
    schema = OmegaConf.get_type(m)
    if not isinstance(schema, type) or not issubclass(schema, ModelConfig):
        return  # an untyped node (a stored config.yaml): nothing to compare
    _check(
        schema is MODEL_SCHEMAS[m.arch],
        f"model.arch={m.arch} is chosen with the model group: model={m.arch} "
        f"(it brings the {m.arch}'s own keys and sizes)",
    )


def _validate_sequence_model(cfg: Any) -> None:
    """The sequence models' keys, and what they cannot take from the rest of the config."""
    d, m = cfg.data, cfg.model
    _check_schema(m)
    _positive("model.depth", m.depth)
    _check(m.residual, f"model.residual=false: only resnet has a plain twin, not {m.arch}")
    _check(
        m.dropout == 0,
        f"model.dropout={m.dropout}: only resnet has a dropout layer, not {m.arch}",
    )
    want = MODEL_SCHEMAS[m.arch].init  # the one scheme each sequence model implements
    _check(
        m.init == want,
        f"model.init={m.init}: the {m.arch} has one initialisation (model.init={want})",
    )
    if m.arch in RECURRENT_ARCHS and m.train_steps is not None:
        rows = IMAGE_ROWS.get(d.name)
        _positive("model.train_steps", m.train_steps)
        _check(
            rows is None or m.train_steps <= rows,
            f"model.train_steps={m.train_steps} is more than the {rows} rows of {d.name}",
        )
    if m.arch == "transformer":
        _positive("model.heads", m.heads)
        _check(
            m.width % m.heads == 0,
            f"model.heads={m.heads} must divide model.width={m.width}",
        )
    # Crop + flip are image augmentations: a 4-row shift moves which rows come first
    # (model.train_steps trains on the first rows) and a flip reverses every step's
    # features; sequential-MNIST work trains without. conf/model/<seq>.yaml sets it false.
    _check(not d.augment, f"data.augment=true: model.arch={m.arch} reads rows, not crops")
    _check(
        not cfg.train.only_bn,
        f"train.only_bn=true: the {m.arch}'s norm layers are not the conv nets' BN/GN",
    )


def validate(cfg: Any) -> None:
    """Raise BnlabError naming the first impossible value in a composed config."""
    d, m, n, o, t = cfg.data, cfg.model, cfg.norm, cfg.optim, cfg.train

    _one_of("data.name", d.name, DATASETS)
    _positive("data.batch_size", d.batch_size)
    _positive("data.eval_batch_size", d.eval_batch_size)
    _positive("data.train_size", d.train_size, allow_none=True)
    _positive("data.test_size", d.test_size, allow_none=True)
    _positive("data.curve_test_size", d.curve_test_size, allow_none=True)
    _seed("data.subset_seed", d.subset_seed)
    if d.curve_test_size is not None and d.test_size is not None:
        _check(
            d.curve_test_size <= d.test_size,
            f"data.curve_test_size={d.curve_test_size} is larger than "
            f"data.test_size={d.test_size}: the curves' subset comes from the test set",
        )
    if d.train_size is not None:
        _check(
            d.train_size >= d.batch_size,
            f"data.train_size={d.train_size} is smaller than data.batch_size={d.batch_size}: "
            "no full training batch",
        )

    _one_of("model.arch", m.arch, ARCHS)
    if m.arch in SEQUENCE_ARCHS:
        _validate_sequence_model(cfg)
    else:
        _check_schema(m)
        _check(
            m.depth >= 8 and (m.depth - 2) % 6 == 0,
            f"model.depth={m.depth} is not of the form 6n+2 with n >= 1 (e.g. 20, 32, 44, 56, 110)",
        )
    _positive("model.width", m.width)
    _one_of("model.init", m.init, INITS)
    _positive("model.init_scale", m.init_scale)
    _check(0.0 <= m.dropout < 1.0, f"model.dropout={m.dropout} must be a probability in [0, 1)")
    _check(
        m.revision == MODEL_REVISION,
        f"model.revision={m.revision}: this bnlab builds revision {MODEL_REVISION} only "
        "(an older revision's runs are read by the report, not rebuilt)",
    )
    if m.init in RESIDUAL_INITS:
        _check(
            m.residual,
            f"model.init={m.init} needs model.residual=true (it scales residual branches)",
        )
        _check(
            n.kind in NORM_FREE_KINDS,
            f"model.init={m.init} replaces normalisation: "
            f"use norm=none (or none_noisy), not norm={n.kind}",
        )

    check_norm(cfg)

    _check(o.name == "sgd", f"optim.name={o.name!r} is not one of: sgd")
    _positive("optim.lr", o.lr)
    _check(o.lr <= LR_MAX, f"optim.lr={o.lr} must be a number in (0, {LR_MAX:g}]")
    _check(0.0 <= o.momentum < 1.0, f"optim.momentum={o.momentum} must be in [0, 1)")
    _in_range("optim.weight_decay", o.weight_decay, 0.0, WEIGHT_DECAY_MAX)
    _one_of("optim.schedule", o.schedule, SCHEDULES)
    _check(
        all(0.0 < x < 1.0 for x in o.milestones) and list(o.milestones) == sorted(o.milestones),
        f"optim.milestones={list(o.milestones)} must be increasing fractions of training in (0, 1)",
    )
    _positive("optim.gamma", o.gamma)
    _positive("optim.fixup_scalar_lr", o.fixup_scalar_lr)
    _check(
        _largest_lr(o, m.init) <= LR_MAX,
        f"optim.lr={o.lr} with optim.gamma={o.gamma} and optim.fixup_scalar_lr="
        f"{o.fixup_scalar_lr} reaches an lr of {_largest_lr(o, m.init):g}: at most {LR_MAX:g}",
    )
    _in_range("optim.warmup_epochs", o.warmup_epochs, 0.0, EPOCHS_MAX)
    _check(0.0 < o.peak_at < 1.0, f"optim.peak_at={o.peak_at} must be in (0, 1)")
    _check(not (o.nesterov and o.momentum == 0), "optim.nesterov=true needs optim.momentum > 0")

    _check(1 <= t.epochs <= EPOCHS_MAX, f"train.epochs={t.epochs} must be in [1, {EPOCHS_MAX}]")
    _seed("train.seed", t.seed)
    _one_of("train.device", t.device, DEVICES)
    _one_of("train.precision", t.precision, PRECISIONS)
    _check(
        t.compile is True or t.compile is False or t.compile == "cuda_graphs",
        f"train.compile={t.compile!r} is not one of: false, true, cuda_graphs",
    )
    _positive("train.threads", t.threads, allow_none=True)
    _check(t.divergence_factor > 1.0, f"train.divergence_factor={t.divergence_factor} must be > 1")
    _check(
        not t.only_bn or bool(n.get("affine", False)),
        f"train.only_bn=true trains the norm's gamma/beta, but norm={n.kind} has none "
        f"(needs an affine norm: {', '.join(k for k, v in NORM_KINDS.items() if v.affine)})",
    )

    virtual_batch = n.get("virtual_batch")  # ghost_bn: train mode normalises groups of it
    for size in cfg.probe.bn_eval_batch_sizes:
        _positive("probe.bn_eval_batch_sizes", size)
        _check(
            virtual_batch is None or size <= virtual_batch or size % virtual_batch == 0,
            f"probe.bn_eval_batch_sizes has {size}: with norm.virtual_batch={virtual_batch} "
            "an eval batch must be at most that or a multiple of it",
        )
    _check(
        not cfg.probe.bn_modes or n.get("track_running_stats", True),
        "probe.bn_modes=true compares BN's running averages with other statistics, "
        "but norm.track_running_stats=false keeps none",
    )
    for probe_step in cfg.probe.steps:
        _check(probe_step >= 0, f"probe.steps has {probe_step}: steps must be >= 0")
    for mult in cfg.probe.landscape_steps:
        _check(
            math.isfinite(mult) and mult >= 0.0,
            f"probe.landscape_steps has {mult}: multiples of the lr must be finite and >= 0",
        )

    _one_of("logger", cfg.logger.kind, tuple(LOGGER_SCHEMAS))
    if cfg.logger.kind == "wandb":
        _one_of("logger.mode", cfg.logger.mode, WANDB_MODES)
    _check(bool(cfg.paths.runs), "paths.runs must not be empty")
