"""probe.bn_modes (bnlab.train.bn_modes) and the grouped batch-statistics pass it shares
with probe.bn_stats and bn_eval: each of the five evaluations against a hand computation
on a tiny model, the model and RNG left alone, and the numbers in a real run's summary."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlab.compose import load_config
from bnlab.config import validate
from bnlab.data import Dataset, DeviceLoader
from bnlab.errors import BnlabError
from bnlab.models.norms import GhostBatchNorm2d
from bnlab.recipe import train_spec
from bnlab.store import run_id
from bnlab.train.bn_modes import (
    PRECISE_BATCHES,
    SHUFFLES,
    bn_modes,
    precise_statistics,
    running_pass,
)
from bnlab.train.probes import batch_stats_accuracy, grouped_pass, statistics_size
from bnlab.train.runtime import Runtime, resolve_runtime
from bnlab.train.spec import TrainSpec
from tests.conftest import run_bnlab

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _rt() -> Runtime:
    return resolve_runtime(load_config(["preset=smoke", "train.channels_last=false"]).train)


def _images(n: int, size: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, size, size, 3), generator=gen, dtype=torch.uint8)
    return x, torch.arange(n) % 10


def _tiny(ghost: int | None = None) -> nn.Module:
    """conv-BN-ReLU-conv-BN-pool-fc: the second BN's input depends on the first's statistics."""

    def norm(c: int) -> nn.BatchNorm2d:
        return GhostBatchNorm2d(c, ghost) if ghost else nn.BatchNorm2d(c)

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 1), norm(6), nn.ReLU(), nn.Conv2d(6, 6, 1), norm(6),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 10),
    )  # fmt: skip
    with torch.no_grad():  # trained-looking running averages and affine, not (0, 1)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model


def _loader(x: torch.Tensor, y: torch.Tensor, batch: int, augment: bool = False) -> DeviceLoader:
    return DeviceLoader(x, y, batch, train=True, augment=augment, mean=MEAN, std=STD, seed=0)


def _separately(
    model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], train: bool = True
) -> list[Any]:
    """The hand computation: one fresh copy per batch, plain train-mode forward (or
    eval-mode: BN with its running averages)."""
    out = []
    for x, y in batches:
        probe = copy.deepcopy(model).train(train)
        with torch.no_grad():
            logits = probe(x)
        out.append((F.cross_entropy(logits, y, reduction="sum").item(),
                    int((logits.argmax(1) == y).sum())))  # fmt: skip
    return out


# ----------------------------------------------------------------------------- the grouped pass


@pytest.mark.parametrize("ghost", [None, 2])
@pytest.mark.parametrize("group", [2, 4, 16])
def test_grouped_pass_equals_one_forward_per_batch(ghost, group):
    # Ghost BN in train mode at batch `group` normalises groups of min(group, 2) itself.
    model = _tiny(ghost)
    stats = statistics_size(model, group)
    assert stats == (min(group, ghost) if ghost else group)
    x, y = _images(96)
    batches = list(_loader(x, y, group).epoch(0))
    expect = _separately(model, batches)
    loss, correct, n = grouped_pass(copy.deepcopy(model), batches, stats, _rt())
    assert n == 96 and correct == sum(c for _, c in expect)
    assert loss == pytest.approx(sum(v for v, _ in expect), rel=1e-5)


def test_batch_stats_with_the_whole_test_set_is_train_mode_bn_on_it():
    model = _tiny()
    x, y = _images(64)
    loader = _loader(x, y, 64)  # one group: the whole (shuffled) test set
    (batch,) = list(loader.epoch(0))
    with torch.no_grad():
        logits = copy.deepcopy(model).train()(batch[0])
    expect = float((logits.argmax(1) == batch[1]).float().mean())
    assert batch_stats_accuracy(model, loader, _rt()) == expect
    loss, _, _ = grouped_pass(copy.deepcopy(model), [batch], 64, _rt())
    assert loss == pytest.approx(F.cross_entropy(logits, batch[1], reduction="sum").item(), 1e-6)


# ----------------------------------------------------------------------------- precise BN


def _bn_stats(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(m.running_mean, m.running_var) for m in model.modules()
            if isinstance(m, nn.BatchNorm2d)]  # fmt: skip


@pytest.mark.parametrize("ghost", [None, 4])
def test_precise_bn_is_the_average_of_the_per_batch_statistics(ghost):
    # fvcore's update_bn_stats, by hand: momentum None makes torch's BN keep the
    # cumulative average of the batch statistics; feed it the same batches one by one.
    model = _tiny(ghost)
    x, y = _images(40)
    loader = _loader(x, y, 4, augment=True)
    precise = precise_statistics(model, loader, 25, _rt())  # 2.5 epochs of 10 batches
    ref = copy.deepcopy(model).train()
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    batches = [b for e in range(3) for b in loader.epoch(e)][:25]
    with torch.no_grad():
        for bx, _ in batches:
            ref(bx)
    for (mean, var), (ref_mean, ref_var) in zip(_bn_stats(precise), _bn_stats(ref), strict=True):
        torch.testing.assert_close(mean, ref_mean)
        torch.testing.assert_close(var, ref_var)


def test_precise_bn_with_enough_batches_is_the_dataset_statistics():
    model = _tiny()
    x, y = _images(64, size=1)  # 1x1 images: BN's values per group are the g samples
    first = model[0]  # the first BN's input is conv1 of the (normalised) images
    with torch.no_grad():
        inputs = first(next(_loader(x, y, 64).epoch(0))[0]).flatten(1)  # (64, 6)
    # One group of the whole dataset: exactly its mean and unbiased variance.
    whole = precise_statistics(model, _loader(x, y, 64), 3, _rt())
    mean, var = _bn_stats(whole)[0]
    torch.testing.assert_close(mean, inputs.mean(0))
    torch.testing.assert_close(var, inputs.var(0))
    # Groups of 4 over 200 batches (12.5 epochs): the mean is exact after whole epochs,
    # the unbiased group variance averages to the dataset's unbiased variance.
    many = precise_statistics(model, _loader(x, y, 4), 192, _rt())  # 12 whole epochs
    mean, var = _bn_stats(many)[0]
    torch.testing.assert_close(mean, inputs.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(var, inputs.var(0), rtol=0.1, atol=0)


# ----------------------------------------------------------------------------- bn_modes


def _spec(*overrides: str) -> TrainSpec:
    """A run's training spec as the recipe builds it (the schedule's length is irrelevant)."""
    cfg = load_config(["data.eval_batch_size=16", "data.augment=false", "train.seed=0",
                       "probe.bn_modes=true", *overrides])  # fmt: skip
    return train_spec(cfg, _rt(), steps_per_epoch=1)


def _setup(ghost: int | None, batch: int) -> tuple[nn.Module, Dataset, TrainSpec]:
    train_x, train_y = _images(48, seed=1)
    test_x, test_y = _images(40, seed=2)
    data = Dataset(train_x, train_y, test_x, test_y, tuple("abcdefghij"), "synthetic", MEAN, STD)
    norm = ["norm=ghost_bn", f"norm.virtual_batch={ghost}"] if ghost else ["norm=bn"]
    return _tiny(ghost), data, _spec(*norm, f"data.batch_size={batch}")


@pytest.mark.parametrize(("ghost", "batch", "g"), [(None, 8, 8), (2, 8, 2), (4, 16, 4)])
def test_bn_modes_five_numbers_against_hand_computations(ghost, batch, g):
    model, data, spec = _setup(ghost, batch)
    rt = spec.runtime
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    got = bn_modes(model, data, spec, running_acc=0.25, batches=30, shuffles=2)
    # The model (weights, running averages, counters) and the global RNG are untouched.
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert got["g"] == g and got["running_acc"] == 0.25
    assert (got["precise_batches"], got["shuffles"]) == (30, 2)
    # (d): one pass over the training set in groups of g, each in its own train-mode forward.
    groups = list(DeviceLoader(data.train_x, data.train_y, g, train=True, augment=False,
                               mean=MEAN, std=STD, seed=0).epoch(0))  # fmt: skip
    hand = _separately(model, groups)
    assert got["train_images"] == 48
    assert got["train_mode_loss"] == pytest.approx(sum(v for v, _ in hand) / 48, rel=1e-5)
    assert got["train_mode_acc"] == sum(c for _, c in hand) / 48
    # (e): the same 48 images in eval mode, BN with the model's running averages.
    hand = _separately(model, groups, train=False)
    assert got["train_running_loss"] == pytest.approx(sum(v for v, _ in hand) / 48, rel=1e-5)
    assert got["train_running_acc"] == sum(c for _, c in hand) / 48
    # (c): each shuffle's accuracy of the test set in groups of g, by hand.
    test = DeviceLoader(data.test_x, data.test_y, g, train=True, augment=False,
                        mean=MEAN, std=STD, seed=0)  # fmt: skip
    per_shuffle = []
    for s in range(2):
        hand = _separately(model, list(test.epoch(s)))
        per_shuffle.append(sum(c for _, c in hand) / test.num_images())
    assert got["batch_stats_acc_shuffles"] == per_shuffle
    assert got["batch_stats_acc"] == pytest.approx(sum(per_shuffle) / 2)
    # (b): the test accuracy of the precise copy in eval mode.
    train = DeviceLoader(data.train_x, data.train_y, g, train=True, augment=False,
                         mean=MEAN, std=STD, seed=0)  # fmt: skip
    precise = precise_statistics(model, train, 30, rt).eval()
    x = DeviceLoader(data.test_x, data.test_y, 40, train=False, augment=False, mean=MEAN,
                     std=STD)  # fmt: skip
    ((tx, ty),) = list(x.epoch(0))
    with torch.no_grad():
        expect = float((precise(tx).argmax(1) == ty).float().mean())
    assert got["precise_acc"] == pytest.approx(expect)


def test_bn_modes_train_set_measures_differ_only_in_the_statistics():
    # (d) and (e) see the same images; with running averages far from any group's
    # statistics they disagree, with running averages the whole set's they nearly agree.
    model, data, spec = _setup(None, 48)  # one group: the whole training set
    far = bn_modes(model, data, spec, running_acc=0.5, batches=2, shuffles=1)
    assert far["train_images"] == 48
    matched = copy.deepcopy(model)
    for m in matched.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0  # the running averages become the last batch's statistics
    (whole,) = list(DeviceLoader(data.train_x, data.train_y, 48, train=True, augment=False,
                                 mean=MEAN, std=STD, seed=0).epoch(0))  # fmt: skip
    with torch.no_grad():
        matched.train()(whole[0])
    matched.eval()
    near = bn_modes(matched, data, spec, running_acc=0.5, batches=2, shuffles=1)
    # Only the running variance's unbiasing (768 values per channel) separates them.
    gap = {k: abs(v["train_running_loss"] - v["train_mode_loss"]) for k, v in
           (("far", far), ("near", near))}  # fmt: skip
    assert gap["near"] < 2e-4 * near["train_mode_loss"] and gap["near"] < gap["far"] / 10
    assert near["train_running_acc"] == near["train_mode_acc"]
    assert far["train_running_acc"] != far["train_mode_acc"]


@pytest.mark.parametrize("chunk", [1, 5, 16, 100])
def test_running_pass_is_one_eval_forward_whatever_the_chunks(chunk):
    model = _tiny(2)
    x, y = _images(40)
    groups = list(_loader(x, y, 2).epoch(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss, correct, n = running_pass(copy.deepcopy(model), groups, chunk, _rt())
    ((ex, ey),) = [(torch.cat([g[0] for g in groups]), torch.cat([g[1] for g in groups]))]
    with torch.no_grad():
        logits = copy.deepcopy(model).eval()(ex)
    assert n == 40 and correct == int((logits.argmax(1) == ey).sum())
    assert loss == pytest.approx(F.cross_entropy(logits, ey, reduction="sum").item(), rel=1e-5)
    assert model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_bn_modes_runs_for_norms_with_batch_statistics_only():
    # The recipe asks for bn_modes when the spec says so: probe.bn_modes on a BN kind.
    assert _spec("norm=bn").evals.bn_modes and _spec("norm=ghost_bn").evals.bn_modes
    for kind in ("gn", "none", "batch_renorm", "bn_noisy"):
        assert not _spec(f"norm={kind}").evals.bn_modes, kind
    assert not _spec("norm=bn", "probe.bn_modes=false").evals.bn_modes


def test_bn_modes_needs_running_averages():
    validate(load_config(["probe.bn_modes=true"]))
    with pytest.raises(BnlabError, match="track_running_stats=false"):
        validate(load_config(["probe.bn_modes=true", "norm.track_running_stats=false"]))


@pytest.mark.e2e
def test_bn_modes_land_in_a_real_runs_summary(tmp_path: Path):
    runs = tmp_path / "runs"
    proc = run_bnlab(
        "train", "preset=smoke", "norm=ghost_bn", "norm.virtual_batch=4", "probe.bn_modes=true",
        "train.threads=1", f"paths.runs={runs}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    summary = json.loads((run / "summary.json").read_text())
    modes = summary["bn_modes"]
    assert modes["g"] == 4
    assert (modes["precise_batches"], modes["shuffles"]) == (PRECISE_BATCHES, SHUFFLES)
    assert modes["running_acc"] == summary["test_acc"]
    for key in ("precise_acc", "batch_stats_acc", "train_mode_acc", "train_running_acc"):
        assert 0.0 <= modes[key] <= 1.0, key
    assert len(modes["batch_stats_acc_shuffles"]) == SHUFFLES
    assert modes["train_mode_loss"] > 0 and modes["train_running_loss"] > 0
    assert modes["test_images_per_shuffle"] == 500 and modes["train_images"] == 512


def test_bn_modes_switch_is_identity_neutral_when_off():
    base = load_config(["preset=smoke"])
    assert run_id(base) == run_id(load_config(["preset=smoke", "probe.bn_modes=false"]))
    assert run_id(base) != run_id(load_config(["preset=smoke", "probe.bn_modes=true"]))
