"""The per-epoch probes (probe.bn_stats/activations/ics/landscape): rows, known cases, and
that they only measure: training is the same with them on, and resuming keeps probes.csv."""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from bnlab.build import build_model
from bnlab.compose import load_config
from bnlab.recipe import train
from bnlab.store import run_id
from bnlab.train.loop import SilentReporter
from bnlab.train.probes import activation_stats, ics, landscape
from bnlab.train.runtime import Runtime, resolve_runtime

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
            "loss@0", "loss@1", "grad_change@1"} <= by_probe["landscape"]  # fmt: skip

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


@pytest.mark.e2e
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
def test_landscape_records_the_loss_at_the_current_weights(norm):
    # loss@0 is what the training step computes on this batch (bn_noisy: with the noise
    # the probe draws from the same RNG state the step would), recorded once.
    model, x, y, rt = _init_model(norm)
    trained = {n for n, _ in model.named_parameters()}
    state = torch.get_rng_state()
    values = landscape(model, x, y, 0.1, [0.5, 1.0], trained, rt)
    torch.set_rng_state(state)
    with torch.no_grad():
        step_loss = torch.nn.functional.cross_entropy(copy.deepcopy(model).train()(x), y)
    got = [v for _, k, v in values if k == "loss@0"]
    assert got == [pytest.approx(step_loss.item(), rel=1e-6)]
    with_zero = [k for _, k, _ in landscape(model, x, y, 0.1, [0.0, 1.0], trained, rt)]
    assert with_zero.count("loss@0") == 1


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


# ----------------------------------------------------------------------------- closed forms
#
# A linear model with the quadratic loss L(theta) = 0.5 * mean((X~ theta - y)^2), in
# float64, where X~ is X with a column of ones when the layer has a bias. With
# r = X~ theta - y: the gradient is g = X~^T r / n and the Hessian H = X~^T X~ / n
# (constant), so after a step theta - eta*d, exactly:
#   L(theta - eta d) = L - eta g.d + eta^2/2 d^T H d,   grad(theta - eta d) = g - eta H d.
# For the probes d = g on the trained coordinates and 0 elsewhere.


def quadratic_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (out.squeeze(-1) - y).pow(2).mean()


def _cpu_runtime() -> Runtime:
    return resolve_runtime(load_config(["preset=smoke"]).train)


def _data(n: int = 64, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    # Unequal column scales (H is far from a multiple of the identity, so H g is not
    # parallel to g) and a nonzero mean (the bias couples to the weights).
    scales = torch.tensor([0.5, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64)[:d]
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) * scales + 1.0
    y = torch.randn(n, generator=gen, dtype=torch.float64)
    return x, y


def _linear(d: int, bias: bool) -> nn.Sequential:
    """One linear layer, named "0" (the probes name layers and parameters by module path)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, 1, bias=bias)).double()


class Quadratic:
    """The hand-computed quantities of the linear model at its current weights."""

    def __init__(
        self, model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, trained: set[str]
    ) -> None:
        n, layer = x.shape[0], model[0]
        with torch.no_grad():
            w = layer.weight.detach().flatten()
            self.bias = layer.bias is not None
            if self.bias:
                x = torch.cat([x, torch.ones(n, 1, dtype=x.dtype)], dim=1)
                w = torch.cat([w, layer.bias.detach()])
            r = x @ w - y
            self.loss = float(0.5 * r.pow(2).mean())
            self.g = x.T @ r / n
            self.h = x.T @ x / n
            # 1 on the coordinates of the trained parameters (weight first, then bias).
            d = layer.weight.numel()
            self.mask = torch.tensor(
                [float("0.weight" in trained)] * d + [float("0.bias" in trained)] * self.bias,
                dtype=x.dtype,
            )
            self.step = self.mask * self.g  # the probes' step direction d

    def loss_after(self, eta: float) -> float:
        s = self.step
        return self.loss - eta * float(self.g @ s) + eta**2 / 2 * float(s @ self.h @ s)

    def grad_after(self, eta: float) -> torch.Tensor:
        return self.g - eta * (self.h @ self.step)

    def grad_change(self, eta: float) -> float:
        """Over the trained coordinates only, as the probe measures it."""
        return eta * float((self.mask * (self.h @ self.step)).norm())

    def best_eta(self) -> float:
        """The minimiser of the (quadratic) loss along the step."""
        s = self.step
        return float(self.g @ s) / float(s @ self.h @ s)


TRAINED_CASES = [
    (False, {"0.weight"}),
    (True, {"0.weight", "0.bias"}),
    (True, {"0.weight"}),  # the bias neither moves nor counts in g or the gradient change
]


@pytest.mark.parametrize(("bias", "trained"), TRAINED_CASES)
def test_landscape_matches_the_quadratic_closed_form(bias, trained):
    x, y = _data()
    model = _linear(x.shape[1], bias)
    q = Quadratic(model, x, y, trained)
    # lr = eta*/1.7 (eta*: the loss's minimiser along g), so the etas are (0, 0.29, 0.59,
    # 1.18, 2.35) * eta*: the loss is lowest at m=2, inside the range, and highest at m=4
    # (beyond 2 eta* it is above the start loss).
    lr = q.best_eta() / 1.7
    multiples = [0.0, 0.5, 1.0, 2.0, 4.0]
    rt = _cpu_runtime()
    values = landscape(model, x, y, lr, multiples, trained, rt, loss_fn=quadratic_loss)
    got = {k: v for layer, k, v in values if layer == "all"}
    assert len(got) == len(values) == 2 * len(multiples) + 5

    expect_loss = [q.loss_after(m * lr) for m in multiples]
    expect_change = [q.grad_change(m * lr) for m in multiples]
    for m, loss, change in zip(multiples, expect_loss, expect_change, strict=True):
        assert got[f"loss@{m:g}"] == pytest.approx(loss, rel=1e-10), m
        assert got[f"grad_change@{m:g}"] == pytest.approx(change, rel=1e-10, abs=1e-12), m
    assert got["loss@0"] == pytest.approx(q.loss, rel=1e-12)  # loss_fn really is the loss
    assert got["loss@1"] < q.loss < got["loss@4"]  # a step the wrong way would only go up
    assert got["loss_min"] == pytest.approx(min(expect_loss), rel=1e-10)
    assert got["loss_min"] == got["loss@2"] < min(got["loss@1"], got["loss@4"])
    assert got["loss_max"] == pytest.approx(expect_loss[-1], rel=1e-10)
    variation = max(expect_loss) - min(expect_loss)
    assert got["loss_variation"] == pytest.approx(variation, rel=1e-9)
    assert got["grad_change_max"] == pytest.approx(4 * lr * float((q.mask * (q.h @ q.step)).norm()))

    # beta = ||H g|| / ||g|| over the trained coordinates, the same for every eta > 0.
    hg, g = (q.mask * (q.h @ q.step)).norm(), q.step.norm()
    assert got["beta_smoothness"] == pytest.approx(float(hg / g), rel=1e-10)
    # Guards that the checks above can fail: neither ||g|| nor any eta is near 1 (a beta
    # without eta, or with ||g||^2, would differ), and H g is not parallel to g.
    assert abs(float(g) - 1.0) > 0.2 and all(abs(m * lr - 1.0) > 0.2 for m in multiples)
    cos_hg_g = float((q.mask * (q.h @ q.step)) @ q.step / (hg * g))
    assert cos_hg_g < 0.99


@pytest.mark.parametrize(("bias", "trained"), TRAINED_CASES)
def test_ics_of_a_linear_layer_matches_the_closed_form(bias, trained):
    x, y = _data()
    model = _linear(x.shape[1], bias)
    q = Quadratic(model, x, y, trained)
    # Near the line minimiser eta*: a big step (G' far from G), but not eta* itself, where
    # g.G' = 0 and any cos formula with g.G' on top would give the right 0.
    lr = 0.8 * q.best_eta()
    values = {k: v for _, k, v in ics(model, x, y, lr, trained, _cpu_runtime(),
                                      loss_fn=quadratic_loss)}  # fmt: skip
    assert {layer for layer, _, _ in ics(model, x, y, lr, trained, _cpu_runtime(),
                                         loss_fn=quadratic_loss)} == {"0"}  # fmt: skip

    d = model[0].weight.numel()  # ICS is of the weight's gradient: its first d coordinates
    g, g2 = q.g[:d], q.grad_after(lr)[:d]
    assert values["ics_l2"] == pytest.approx(lr * float((q.h @ q.step)[:d].norm()), rel=1e-10)
    assert values["ics_l2"] == pytest.approx(float((g - g2).norm()), rel=1e-10)
    cos = float(g @ g2 / (g.norm() * g2.norm()))
    assert values["ics_cos"] == pytest.approx(cos, rel=1e-10)
    assert cos < 0.9  # far from the no-shift value 1, and differs from a wrong-sign step's
    wrong_sign = g + lr * (q.h @ q.step)[:d]
    assert cos != pytest.approx(float(g @ wrong_sign / (g.norm() * wrong_sign.norm())), rel=1e-3)


def _two_layer_grads(
    w1: torch.Tensor, w2: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """By hand, for out = w2 w1 x (w1: k x d, w2: 1 x k) and the quadratic loss:
    dL/dw1 = w2^T (r^T X) / n and dL/dw2 = r^T (X w1^T) / n, with r = X w1^T w2^T - y."""
    n = x.shape[0]
    r = (x @ w1.T @ w2.T).squeeze(-1) - y
    return w2.T @ (r @ x).unsqueeze(0) / n, (r @ (x @ w1.T)).unsqueeze(0) / n


def test_ics_of_a_deep_linear_net_matches_the_hand_gradients():
    x, y = _data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3, bias=False), nn.Linear(3, 1, bias=False)).double()
    w1, w2 = model[0].weight.detach().clone(), model[1].weight.detach().clone()
    g1, g2 = _two_layer_grads(w1, w2, x, y)
    lr = 0.02
    rt = _cpu_runtime()

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a * b).sum() / (a.norm() * b.norm()))

    # All layers stepped at once (the probe's definition): G'_i = grad_i(w1 - lr g1, w2 - lr g2).
    both = {(layer, k): v for layer, k, v in ics(model, x, y, lr, {"0.weight", "1.weight"}, rt,
                                                 loss_fn=quadratic_loss)}  # fmt: skip
    after = _two_layer_grads(w1 - lr * g1, w2 - lr * g2, x, y)
    for layer, g, g_new in (("0", g1, after[0]), ("1", g2, after[1])):
        assert both[(layer, "ics_l2")] == pytest.approx(float((g - g_new).norm()), rel=1e-10)
        assert both[(layer, "ics_cos")] == pytest.approx(cos(g, g_new), rel=1e-10)

    # Only the first layer trained: layer 1's G' is Santurkar's per-layer definition (the
    # layers before it updated, itself not), grad_2(w1 - lr g1, w2) ...
    first = {(layer, k): v for layer, k, v in ics(model, x, y, lr, {"0.weight"}, rt,
                                                  loss_fn=quadratic_loss)}  # fmt: skip
    santurkar = _two_layer_grads(w1 - lr * g1, w2, x, y)[1]
    assert first[("1", "ics_l2")] == pytest.approx(float((g2 - santurkar).norm()), rel=1e-10)
    assert first[("1", "ics_cos")] == pytest.approx(cos(g2, santurkar), rel=1e-10)
    # ... which is not what the all-at-once probe reports for it.
    assert both[("1", "ics_l2")] != pytest.approx(first[("1", "ics_l2")], rel=0.05)


@pytest.mark.parametrize("bias", [False, True])
def test_activation_stats_of_a_linear_layer(bias):
    x, y = _data()
    model = _linear(x.shape[1], bias)
    q = Quadratic(model, x, y, {"0.weight", "0.bias"})
    values = {k: v for _, k, v in activation_stats(model, x, y, _cpu_runtime(),
                                                   loss_fn=quadratic_loss)}  # fmt: skip
    with torch.no_grad():
        out = model(x).squeeze(-1)
    assert values["act_mean"] == pytest.approx(float(out.mean()), rel=1e-12)
    assert values["act_std"] == pytest.approx(float(out.std()), rel=1e-12)
    # The weight's gradient only (not the bias's): its first d coordinates.
    grad_w = float(q.g[: x.shape[1]].norm())
    assert values["grad_norm"] == pytest.approx(grad_w, rel=1e-10)
    if bias:
        assert float(q.g.norm()) != pytest.approx(grad_w, rel=1e-3)
