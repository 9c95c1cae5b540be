"""The per-epoch probes (probe.bn_stats/activations/ics/landscape): rows, known cases, and
that they only measure: training is the same with them on, and resuming keeps probes.csv."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from bnlab.compose import load_config
from bnlab.models import build_model
from bnlab.recipe import train
from bnlab.store import run_id
from bnlab.train.loop import SilentReporter
from bnlab.train.probes import activation_stats, ics, landscape
from bnlab.train.runtime import resolve_runtime

# 512 images / batch 128 = 4 steps an epoch: step 5 is inside epoch 2.
SMOKE = ["preset=smoke", "train.threads=1", "probe.steps=[0,5]"]
ALL_PROBES = ["probe.bn_stats=true", "probe.activations=true", "probe.ics=true",
              "probe.landscape=true"]  # fmt: skip
SCIENCE = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr")


def run(runs: Path, *overrides: str, reporter: SilentReporter | None = None) -> Path:
    outcome = train(load_config([*SMOKE, *overrides, f"paths.runs={runs}"]), reporter)
    return outcome.run_dir


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def science(run_dir: Path) -> list[tuple[str, ...]]:
    return [tuple(r[k] for k in SCIENCE) for r in read_csv(run_dir / "metrics.csv")]


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run(tmp_path_factory.mktemp("probed"), *ALL_PROBES)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run(tmp_path_factory.mktemp("plain"))


def test_probes_off_by_default_and_run_identity_unchanged(plain):
    assert not (plain / "probes.csv").exists()
    # Neutral at their defaults: adding the keys did not move any run id.
    base = load_config(["preset=smoke"])
    assert run_id(base) == run_id(load_config(["preset=smoke", "probe.steps=[0,50,200]"]))
    assert run_id(base) != run_id(load_config(["preset=smoke", "probe.ics=true"]))


def test_each_probe_writes_its_metrics(probed):
    rows = read_csv(probed / "probes.csv")
    assert list(rows[0]) == ["epoch", "step", "probe", "layer", "metric", "value"]
    by_probe: dict[str, set[str]] = {}
    for r in rows:
        by_probe.setdefault(r["probe"], set()).add(r["metric"])
    assert by_probe["bn_stats"] == {"running_acc", "batch_acc", "gap"}
    assert by_probe["activations"] == {"act_mean", "act_std", "grad_norm"}
    assert by_probe["ics"] == {"ics_l2", "ics_cos"}
    assert {"loss_min", "loss_max", "loss_variation", "grad_change_max", "beta_smoothness",
            "loss@1", "grad_change@1"} <= by_probe["landscape"]  # fmt: skip

    # Activations at init (epoch 0, step 0) and after each of the 2 epochs, for
    # the stem, 18 block convs and fc.
    act = {(r["epoch"], r["step"]) for r in rows if r["probe"] == "activations"}
    assert act == {("0", "0"), ("1", "4"), ("2", "8")}
    layers = {r["layer"] for r in rows if r["probe"] == "activations"}
    assert len(layers) == 20 and {"conv1", "layer3.2.conv2", "fc"} <= layers
    # ics/landscape exactly at probe.steps, labelled with the epoch being trained.
    assert {(r["epoch"], r["step"]) for r in rows if r["probe"] == "ics"} == {
        ("1", "0"), ("2", "5")
    }  # fmt: skip
    for r in rows:
        if r["metric"] == "ics_cos":
            assert -1.0 <= float(r["value"]) <= 1.0 + 1e-5

    # bn_stats: running_acc is the epoch's test_acc; gap = running - batch. After
    # 2 smoke epochs running statistics are not clearly worse than batch ones.
    metrics = read_csv(probed / "metrics.csv")
    bn = {(r["epoch"], r["metric"]): float(r["value"]) for r in rows if r["probe"] == "bn_stats"}
    for m in metrics:
        e = m["epoch"]
        assert bn[(e, "running_acc")] == pytest.approx(float(m["test_acc"]))
        assert bn[(e, "gap")] == pytest.approx(bn[(e, "running_acc")] - bn[(e, "batch_acc")])
    assert bn[("2", "gap")] > -0.1


def test_probes_do_not_change_training(probed, plain):
    # Same config minus the probe keys (hence another run id and folder).
    assert science(probed) == science(plain)


class StopAt(SilentReporter):
    """Interrupts like Ctrl-C at the n-th training step (after checkpoints of earlier epochs)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def step(self) -> None:
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt


def test_resume_keeps_probes_csv_consistent(probed, tmp_path):
    runs = tmp_path / "runs"
    # Step 6 is in epoch 2, after the ics/landscape probes of step 5 ran in memory.
    with pytest.raises(KeyboardInterrupt):
        run(runs, *ALL_PROBES, reporter=StopAt(6))
    (killed,) = runs.iterdir()
    partial = read_csv(killed / "probes.csv")
    assert {r["epoch"] for r in partial} == {"0", "1"}
    run(runs, *ALL_PROBES)
    resumed = read_csv(killed / "probes.csv")
    straight = read_csv(probed / "probes.csv")
    key = ("epoch", "step", "probe", "layer", "metric")
    keys = [tuple(r[k] for k in key) for r in resumed]
    assert len(keys) == len(set(keys)), "duplicate probe rows after resume"
    assert keys == [tuple(r[k] for k in key) for r in straight]
    for a, b in zip(resumed, straight, strict=True):
        assert float(a["value"]) == pytest.approx(
            float(b["value"]), rel=1e-4, abs=1e-6, nan_ok=True
        )


def _init_model(norm: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, object]:
    cfg = load_config(["preset=smoke", f"norm={norm}", "model.depth=20"])
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.norm, num_classes=10, in_channels=3)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(32, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (32,), generator=gen)
    return model, x, y, resolve_runtime(cfg.train)


@pytest.mark.parametrize("norm", ["bn", "bn_noisy"])
def test_ics_with_zero_lr_is_no_shift(norm):
    # bn_noisy draws noise in each forward: both passes must see the same noise.
    model, x, y, rt = _init_model(norm)
    trained = {n for n, _ in model.named_parameters()}
    values = ics(model, x, y, 0.0, trained, rt)
    assert {k for _, k, _ in values} == {"ics_l2", "ics_cos"}
    for _, metric, v in values:
        if metric == "ics_l2":
            assert v == 0.0
        else:
            assert v == pytest.approx(1.0, abs=1e-5)
    # ... and a real step does shift the gradients.
    assert max(v for _, k, v in ics(model, x, y, 0.1, trained, rt) if k == "ics_l2") > 0


def test_landscape_with_zero_step_has_no_variation():
    model, x, y, rt = _init_model("bn")
    trained = {n for n, _ in model.named_parameters()}
    values = {k: v for _, k, v in landscape(model, x, y, 0.1, [0.0], trained, rt)}
    assert values["loss_variation"] == 0.0
    assert values["grad_change_max"] == 0.0
    assert math.isnan(values["beta_smoothness"])  # no eta > 0 to divide by
    moved = {k: v for _, k, v in landscape(model, x, y, 0.1, [0.5, 2.0], trained, rt)}
    assert moved["loss_variation"] > 0 and moved["beta_smoothness"] > 0


@pytest.mark.parametrize("norm", ["bn", "bn_noisy"])
def test_probes_leave_the_model_and_rng_untouched(norm):
    # The RNG matters: noisy norms (bn_noisy) draw from it in training too.
    model, x, y, rt = _init_model(norm)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    trained = {n for n, _ in model.named_parameters()}
    activation_stats(model, x, y, rt)
    ics(model, x, y, 0.1, trained, rt)
    landscape(model, x, y, 0.1, [1.0], trained, rt)
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # BN running averages included
    assert all(p.grad is None for p in model.parameters())


def test_pre_activation_std_grows_with_depth_without_norm_only():
    def conv_stds(norm: str) -> list[float]:
        model, x, y, rt = _init_model(norm)
        stats = activation_stats(model, x, y, rt)
        return [v for layer, k, v in stats if k == "act_std" and layer != "fc"]

    none, bn = conv_stds("none"), conv_stds("bn")
    assert len(none) == len(bn) == 19  # stem + 18 block convs at depth 20

    def growth(stds: list[float]) -> float:
        return (sum(stds[-4:]) / 4) / (sum(stds[:4]) / 4)

    assert growth(none) > 4.0  # the residual stream's variance adds up block by block
    assert growth(bn) < 2.0  # every block's input is renormalised
