"""Export a trained run's network for inference, optionally with BatchNorm folded.

The output is a TorchScript module (``torch.jit.trace`` of the eval-mode
network): it loads with ``torch.jit.load`` alone -- no bnlab, no config, no
Python class definitions -- which is the point of an export. Tracing is exact
for these networks because their control flow is fixed at construction (the
shortcut choice) and every shape op generalises over the batch size. The
traced graph is the *eval-mode* function (running BN statistics); calling
``.train()`` on the loaded module does not bring batch statistics back.

The module expects what the training loop fed the network: float32 NCHW
images scaled to [0, 1] and normalised with the dataset's per-channel
mean/std (``bnlab.data.load_dataset(cfg.data).mean/.std``). The run's
config.yaml and a small JSON description travel inside the file as TorchScript
extra files (``config.yaml``, ``bnlab.json``).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from bnlab.build import build_model
from bnlab.config import MODEL_REVISION
from bnlab.errors import BnlabError, first_line, warn
from bnlab.models.fold import fold_bn
from bnlab.store import (
    FINISHED,
    CorruptCheckpoint,
    RunDir,
    atomic_write_bytes,
    load_checkpoint_file,
)

# data.name -> (channels, side): the input shape the network was trained on.
INPUT_SHAPES: dict[str, tuple[int, int]] = {
    "cifar10_jpeg": (3, 32),
    "cifar10": (3, 32),
    "fashion_mnist": (1, 28),
}
NUM_CLASSES = 10  # every supported dataset has ten classes


def load_run_model(run_dir: Path) -> tuple[nn.Module, DictConfig, tuple[int, int, int]]:
    """The run's network with its checkpoint weights, in eval mode, its config and input shape."""
    run = RunDir(Path(run_dir))
    cfg = _load_config(run)
    try:
        data_name = str(cfg.data.name)
        if data_name not in INPUT_SHAPES:
            raise BnlabError(
                f"{run.config_file}: data.name={data_name!r} is not one of: "
                + ", ".join(INPUT_SHAPES)
            )
        channels, side = INPUT_SHAPES[data_name]
        _check_revision(run, cfg)
        # build_model initialises from torch's global RNG; the weights are
        # overwritten anyway, so don't disturb the caller's random stream.
        with torch.random.fork_rng(devices=[]):
            model = build_model(cfg.model, cfg.norm, NUM_CLASSES, channels)
    except (OmegaConfBaseException, ValueError, TypeError) as err:
        raise BnlabError(f"{run.config_file}: {first_line(err)}") from None

    if not run.checkpoint_file.exists():
        raise BnlabError(_no_checkpoint(run))
    # The same safe loader as resuming (tensors and plain values only), but strict:
    # an export is of the run's last checkpoint, never silently of an older one.
    try:
        state = load_checkpoint_file(run.checkpoint_file)
    except CorruptCheckpoint as err:
        raise BnlabError(f"{run.checkpoint_file}: unreadable checkpoint ({err})") from None
    if not isinstance(state.get("model"), dict):
        raise BnlabError(f"{run.checkpoint_file}: unreadable or not a bnlab checkpoint")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise BnlabError(
            f"{run.checkpoint_file} does not match the model in config.yaml: {first_line(err)}"
        ) from None
    return model.eval(), cfg, (channels, side, side)


def export_run(run_dir: Path, out: Path, fold: bool, force: bool = False) -> Path:
    """Write the run's eval-mode network as TorchScript to ``out`` and return ``out``.

    ``fold=True`` merges every conv+BatchNorm pair first (``bnlab.models.fold``);
    for norms other than BN nothing folds and the export is the plain network.
    Raises BnlabError (one line) for a missing or unreadable run, and for one that is
    not a trained model (diverged, failed, unfinished, or NaN/inf weights) unless
    ``force``, which exports it with a warning line instead.
    """
    model, cfg, shape = load_run_model(run_dir)
    _check_exportable(RunDir(Path(run_dir)), model, force)
    folded = 0
    if fold:
        result = fold_bn(model)
        model, folded = result.model, result.folded

    example = torch.zeros(1, *shape)
    with warnings.catch_warnings():
        # torch >= 2.9 marks jit.trace deprecated; it still works and is the one
        # format that loads without Python code, so the warning is only noise here.
        warnings.simplefilter("ignore", DeprecationWarning)
        with torch.no_grad():
            traced = torch.jit.trace(model, example)
        info: dict[str, Any] = {
            "run": Path(run_dir).name,
            "input_shape": [None, *shape],
            "num_classes": NUM_CLASSES,
            "norm": str(cfg.norm.kind),
            "bn_folded": folded,
            "torch": torch.__version__,
        }
        extra = {
            "config.yaml": OmegaConf.to_yaml(cfg),
            "bnlab.json": json.dumps(info, sort_keys=True),
        }
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files=extra)

    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, buf.getvalue())
    except OSError as err:
        raise BnlabError(f"cannot write {out}: {err.strerror}") from None
    return out


def _check_revision(run: RunDir, cfg: DictConfig) -> None:
    """Refuse a Fixup run built by an older model revision: this code cannot rebuild it.

    Revision 1 (runs stored before the key existed) differs from what bnlab builds now
    only in Fixup's network (a per-channel bias in every conv); bn_noisy's different
    draw is training-only noise, so every other revision-1 run exports as it is.
    """
    revision = cfg.model.get("revision", 1)
    if revision != MODEL_REVISION and cfg.model.get("init") == "fixup":
        raise BnlabError(
            f"{run.config_file}: model.revision={revision}: a Fixup run built by an older "
            f"bnlab (conv biases everywhere); this one builds revision {MODEL_REVISION} "
            "only, so it cannot export it"
        )


def _no_checkpoint(run: RunDir) -> str:
    """Why there is nothing to export, in words that fit the run's state."""
    status = (run.summary() or {}).get("status")
    if status in FINISHED:
        return (
            f"{run.path}: no checkpoint.pt, although the run {status} "
            "(deleted, or not copied with the run folder): nothing to export"
        )
    return f"{run.path}: no checkpoint.pt (has the run finished an epoch?)"


def _unfit(run: RunDir, model: nn.Module) -> list[str]:
    """Why the checkpoint's weights are not a trained model (empty: they are)."""
    problems = []
    summary = run.summary()
    status = summary.get("status") if summary is not None else None
    if status == "diverged":
        problems.append(f"the run diverged (at epoch {summary.get('diverged_epoch')})")
    elif summary is None:
        problems.append("the run has not finished (no readable summary.json)")
    elif status != "completed":
        problems.append(f"the run's status is {status!r}, not 'completed'")
    # summary.json may have been edited or copied from elsewhere: the weights decide too.
    broken = [
        name
        for name, t in model.state_dict().items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if broken:
        problems.append(
            f"{len(broken)} weight tensor(s) hold NaN/inf (e.g. {broken[0]}): "
            "every output would be NaN"
        )
    return problems


def _check_exportable(run: RunDir, model: nn.Module, force: bool) -> None:
    """Refuse a run that is not a trained model, or (``force``) warn about it loudly."""
    problems = _unfit(run, model)
    if not problems:
        return
    reasons = "; ".join(problems)
    if not force:
        raise BnlabError(f"{run.path}: not exported: {reasons} (--force exports it anyway)")
    warn(f"EXPORTING ANYWAY (--force) {run.path}: {reasons}")


def _load_config(run: RunDir) -> DictConfig:
    if not run.config_file.exists():
        raise BnlabError(f"{run.path}: no config.yaml (not a bnlab run directory)")
    try:
        cfg = OmegaConf.load(run.config_file)
    except (OSError, yaml.YAMLError, OmegaConfBaseException, UnicodeDecodeError) as err:
        raise BnlabError(f"{run.config_file}: unreadable config: {first_line(err)}") from None
    if not isinstance(cfg, DictConfig):
        raise BnlabError(f"{run.config_file}: not a mapping of config keys")
    return cfg
