"""Pick the runs a claim compares: by config values, within one experimental setting.

A run may serve several claims (the lr sweep's lr=0.1 runs are also the depth
claim's depth-20 points), so claims select by config values, never by
experiment_name. And a grid point must never average runs of different scale
(a 2-epoch smoke run with an 8-epoch cpu run), so a claim uses the runs of one
*setting* -- the keys in SETTING_KEYS -- and names the others it ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bnlab.config import RESIDUAL_INITS, OptimConfig
from bnlab.norm_kinds import BatchRenormConfig
from bnlab.report.keys import (
    BN_EVAL_RUNNING,
    COMPLETED,
    DATASET,
    STATUS,
    TRAIN_IMAGES,
    K,
    section_prefix,
)
from bnlab.store import FINISHED, NON_SCIENCE_KEYS

# The recipe every claim holds fixed unless it varies that factor (He et al.'s ResNet-20).
STANDARD: dict[str, Any] = {
    K.model.depth: 20,
    # He init: Fixup/SkipInit runs (deep_no_norm) are another recipe, not a seed of these.
    K.model.init: "kaiming",
    K.model.residual: True,
    K.model.init_scale: 1.0,
    K.data.augment: True,
    K.data.batch_size: 128,
    K.optim.lr: OptimConfig.lr,  # the default lr, stated once (bnlab.config)
}


def recipe_without(*keys: str) -> dict[str, Any]:
    """The standard recipe but for `keys` (the factors a section varies)."""
    return {k: v for k, v in STANDARD.items() if k not in keys}


# Keys that define the scale and recipe of an experiment; runs compared in one claim
# share all of them. Norm-specific keys (norm.groups, ...) are left out on purpose:
# comparing norms is the point.
SETTING_KEYS = (
    K.data.name,
    K.preset_name,
    K.train.epochs,
    K.data.train_size,
    K.data.test_size,
    K.optim.schedule,
    K.optim.momentum,
    K.optim.weight_decay,
    K.optim.nesterov,
    K.optim.warmup_epochs,
    K.model.arch,
    K.model.init,
    K.model.width,
)
# When several settings match, the one with the most runs decides; ties go to the
# larger scale.
PRESET_RANK = {"full": 4, "gpu": 3, "cpu": 2, "smoke": 1}
LINEAR_LR_BASE, LINEAR_LR_BATCH = 0.1, 128  # conf's ${linear_lr:0.1,128,batch}
# Ioffe's warm-up (the schema's default) is the unlabelled batch_renorm arm.
RENORM_WARMUP = BatchRenormConfig.warmup_steps
# Config sections that decide how a run trains. probe.* only adds measurements after
# training, so runs that differ only there (the inference sweep's lr=0.1 batch-128
# runs and the lr sweep's) trained identically and count once at a grid point.
TRAINING_PREFIXES = tuple(section_prefix(s) for s in (K.data, K.model, K.norm, K.optim, K.train))
# bnlab.store.NON_SCIENCE_KEYS within those sections: how a run executed, not what.
EXECUTION_KEYS = tuple(k for k in NON_SCIENCE_KEYS if k.startswith(TRAINING_PREFIXES))


@dataclass
class Setting:
    """The experimental setting a claim's runs share, for captions and headers."""

    dataset: str  # summary's variant label, e.g. "CIFAR-10 (JPEG q75)"
    preset: str
    epochs: int
    train_images: int | None
    ignored: list[str] = field(default_factory=list)  # other settings that matched

    @property
    def caption(self) -> str:
        images = f" on {self.train_images:,} training images" if self.train_images else ""
        return f"{self.dataset}, preset {self.preset}: {self.epochs} epochs{images}"


def matches(runs: pd.DataFrame, fixed: Mapping[str, Any]) -> pd.Series:
    """Rows whose config equals every value in `fixed` (floats within rounding)."""
    mask = pd.Series(True, index=runs.index)
    for key, want in fixed.items():
        if key not in runs:
            return pd.Series(False, index=runs.index)
        col = runs[key]
        if isinstance(want, bool) or not isinstance(want, int | float):
            mask &= col.map(lambda v, w=want: v == w).astype(bool)
        else:
            values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
            mask &= np.isclose(values, float(want), rtol=1e-9, atol=0.0)
    return mask


def bn_eval_probed(runs: pd.DataFrame) -> pd.Series:
    """Completed rows at the linearly scaled lr that carry the bn_eval probe (inference)."""
    probed = runs.get(BN_EVAL_RUNNING, pd.Series(np.nan, index=runs.index)).notna()
    return linear_lr(runs) & probed & runs[STATUS].eq(COMPLETED)


def linear_lr(runs: pd.DataFrame) -> pd.Series:
    """Rows whose lr follows the linear scaling rule, 0.1 x batch/128 (batch claims)."""
    lr = pd.to_numeric(runs[K.optim.lr], errors="coerce").to_numpy(dtype=float)
    batch = pd.to_numeric(runs[K.data.batch_size], errors="coerce").to_numpy(dtype=float)
    return pd.Series(
        np.isclose(lr, LINEAR_LR_BASE * batch / LINEAR_LR_BATCH, rtol=1e-6), index=runs.index
    )


def select(
    runs: pd.DataFrame,
    fixed: Mapping[str, Any],
    norms: Sequence[str] | None = None,
    extra: pd.Series | None = None,
    vary: Sequence[str] = (),
) -> tuple[pd.DataFrame, Setting | None, list[str]]:
    """The finished runs matching `fixed` (and `norms`, `extra`), in one setting.

    `vary`: setting keys the claim compares across (model.init for the no-norm
    inits), so runs that differ there still belong to one setting.

    Returns the runs, their setting (None when nothing matched) and notes for the
    report: matching runs left out because they failed, are unfinished, or belong
    to another setting.
    """
    mask = matches(runs, fixed)
    if norms is not None:
        mask &= runs[K.norm.kind].isin(list(norms))
    if extra is not None:
        mask &= extra
    notes: list[str] = []
    left_out = runs[mask & ~runs[STATUS].isin(FINISHED)]
    if not left_out.empty:
        counts = left_out[STATUS].value_counts().sort_index()
        what = ", ".join(f"{n} {status}" for status, n in counts.items())
        notes.append(f"left out matching runs that have no result: {what}")
    chosen = runs[mask & runs[STATUS].isin(FINISHED)]
    if chosen.empty:
        return chosen, None, notes
    chosen, twins = drop_probe_twins(chosen)
    if twins:
        notes.append(
            f"counted {twins} run(s) once: they differ from another run only in probe.* "
            "settings, so they trained identically"
        )
    chosen, setting = pick_setting(chosen, vary)
    notes += [f"left out {text}" for text in setting.ignored]
    return chosen, setting, notes


def drop_probe_twins(runs: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Keep one run of each training config (first by folder name); count the rest.
    (A section that needs one twin's measurements selects on them, so the others are
    not candidates.)"""
    keys = [c for c in runs.columns if c.startswith(TRAINING_PREFIXES) and c not in EXECUTION_KEYS]
    # Lists (optim.milestones) are unhashable; their text stands for them.
    identity = runs[keys].map(lambda v: repr(v) if isinstance(v, list) else v)
    twin = identity.duplicated(keep="first")
    return runs[~twin], int(twin.sum())


def pick_setting(runs: pd.DataFrame, vary: Sequence[str] = ()) -> tuple[pd.DataFrame, Setting]:
    """The runs of the best-covered setting, and that setting described."""
    keys = [k for k in SETTING_KEYS if k in runs and k not in vary]
    groups = list(runs.groupby(keys, dropna=False, sort=False)) if keys else [((), runs)]

    def rank(group: tuple[Any, pd.DataFrame]) -> tuple[int, int]:
        rows = group[1]
        return len(rows), PRESET_RANK.get(str(rows[K.preset_name].iloc[0]), 0)

    groups.sort(key=rank, reverse=True)
    chosen = groups[0][1]
    ignored = [
        f"{len(rows)} run(s) of another setting ({_differences(rows, chosen, keys)})"
        for _, rows in groups[1:]
    ]
    setting = describe_setting(chosen)
    setting.ignored = ignored
    return chosen, setting


def describe_setting(runs: pd.DataFrame) -> Setting:
    dataset = _most_common(runs.get(DATASET)) or _most_common(runs.get(K.data.name)) or "?"
    images = _most_common(runs.get(TRAIN_IMAGES))
    return Setting(
        dataset=str(dataset),
        preset=str(_most_common(runs.get(K.preset_name)) or "?"),
        epochs=int(_most_common(runs[K.train.epochs])),
        train_images=int(images) if images is not None else None,
    )


def _differences(other: pd.DataFrame, chosen: pd.DataFrame, keys: list[str]) -> str:
    """`key=value` for each setting key where `other` differs from the chosen setting."""
    parts = []
    for key in keys:
        mine, theirs = chosen[key].iloc[0], other[key].iloc[0]
        if not (mine == theirs or (pd.isna(mine) and pd.isna(theirs))):
            parts.append(f"{key}={_plain(theirs)}")
    return ", ".join(parts)


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "null"
    value = value.item() if isinstance(value, np.generic) else value
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _most_common(col: pd.Series | None) -> Any:
    if col is None:
        return None
    counts = col.dropna().value_counts()
    return counts.index[0] if not counts.empty else None


def arm_labels(runs: pd.DataFrame) -> pd.Series:
    """The experimental arm of each run: norm.kind, with the settings that make a norm
    another arm -- Ghost BN's virtual batch (ghost_bn/4), a Batch Renorm warm-up other
    than the paper's 5,000 steps (batch_renorm/w100), the noise magnitude of the noisy
    norms (bn_noisy/m0.5) -- and, without a norm, the residual init that replaces it
    (fixup, skipinit; the He-init net stays "none"). Runs of different arms are never
    averaged as seeds."""
    label = runs[K.norm.kind].astype(str).copy()
    nan = pd.Series(np.nan, index=runs.index)
    ghost = label.eq("ghost_bn")
    vb = runs.get(K.norm.virtual_batch, nan)[ghost]
    label[ghost] = [f"ghost_bn/{int(v)}" if pd.notna(v) else "ghost_bn" for v in vb]
    renorm = label.eq("batch_renorm")
    warmup = runs.get(K.norm.warmup_steps, nan)[renorm]
    label[renorm] = [
        f"batch_renorm/w{int(w)}" if pd.notna(w) and int(w) != RENORM_WARMUP else "batch_renorm"
        for w in warmup
    ]
    noisy = label.isin(["bn_noisy", "none_noisy"])
    label[noisy] = [
        f"{kind}/{noise_label(mean, scale, jitter)}"
        for kind, mean, scale, jitter in zip(
            label[noisy],
            runs.get(K.norm.noise_mean, nan)[noisy],
            runs.get(K.norm.noise_scale, nan)[noisy],
            runs.get(K.norm.noise_jitter, nan)[noisy],
            strict=True,
        )
    ]
    init = runs.get(K.model.init, pd.Series("kaiming", index=runs.index)).fillna("kaiming")
    replaced = label.eq("none") & init.isin(RESIDUAL_INITS)
    label[replaced] = init[replaced]
    return label


def noise_label(mean: float, scale: float, jitter: float) -> str:
    """A noise setting's name: its magnitude m when it is m x the default (mean 0.5 m,
    scale m, jitter 0.25 m), else the three values."""
    if pd.isna(scale) or scale <= 0:
        return f"{mean:g},{scale:g},{jitter:g}"
    m = float(scale)
    if np.isclose(mean, 0.5 * m) and np.isclose(jitter, 0.25 * m):
        return f"m{m:g}"
    return f"{mean:g},{m:g},{jitter:g}"
