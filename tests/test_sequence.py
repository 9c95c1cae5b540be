"""The sequence models (model=lstm|gru|transformer) and their norms: references, statistics,
the arch/norm rule, the config, and one end-to-end run per family."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnlab.build import FAMILY, NORM_LAYERS, build_model
from bnlab.compose import load_config
from bnlab.config import MODEL_SCHEMAS, validate
from bnlab.errors import BnlabError
from bnlab.models import count_params
from bnlab.models.norms import EveryStep, TimeBatchNorm, TokenBatchNorm
from bnlab.models.recurrent import GRULayer, LSTMLayer, RecurrentStack, RowRNN
from bnlab.models.sequence import image_rows
from bnlab.norm_kinds import (
    ARCHS,
    NORM_KINDS,
    SEQUENCE_ARCHS,
    NoNormConfig,
    RMSNormConfig,
    kinds_for,
)
from tests.conftest import run_bnlab

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").exists()
    and not (FASHION / "train-images-idx3-ubyte").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)
# Tiny sizes: every test here runs in well under a second of compute.
TINY = {
    "lstm": ["model.width=6", "model.depth=2"],
    "gru": ["model.width=6", "model.depth=2"],
    "transformer": ["model.width=8", "model.depth=2", "model.heads=2"],
}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on a shared 2-core machine
    yield
    torch.set_num_threads(threads)


def _no_norm(steps: int = 1):
    factory = NORM_LAYERS["none"].recurrent
    assert factory is not None
    return factory(NoNormConfig(), steps)


# ----------------------------------------------------------------------------- references


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cells_without_a_norm_equal_torch(cell: str) -> None:
    torch.manual_seed(0)
    inputs, hidden, layers = 5, 7, 2
    ref = (nn.LSTM if cell == "lstm" else nn.GRU)(inputs, hidden, layers, batch_first=True)
    ours = RecurrentStack(cell, inputs, hidden, layers, _no_norm())
    ref, ours = ref.double(), ours.double()
    with torch.no_grad():
        for k, layer in enumerate(ours.layers):
            layer.weight_ih.copy_(getattr(ref, f"weight_ih_l{k}"))
            layer.weight_hh.copy_(getattr(ref, f"weight_hh_l{k}"))
            b_ih, b_hh = getattr(ref, f"bias_ih_l{k}"), getattr(ref, f"bias_hh_l{k}")
            if isinstance(layer, LSTMLayer):
                layer.bias.copy_(b_ih + b_hh)
            else:
                assert isinstance(layer, GRULayer)
                layer.bias_ih.copy_(b_ih)
                layer.bias_hh.copy_(b_hh)
    x = torch.randn(3, 9, inputs, dtype=torch.float64)
    want_out, want_state = ref(x)
    got_out, got_state = ours(x)
    assert torch.allclose(got_out, want_out, rtol=0, atol=1e-10)
    if cell == "lstm":
        for got, want in zip(got_state, want_state, strict=True):
            assert torch.allclose(got, want, rtol=0, atol=1e-10)
    else:
        assert torch.allclose(got_state, want_state, rtol=0, atol=1e-10)  # type: ignore[arg-type]


def test_rmsnorm_equals_its_definition() -> None:
    torch.manual_seed(0)
    cfg = RMSNormConfig()
    tokens, recurrent = NORM_LAYERS["rmsnorm"].tokens, NORM_LAYERS["rmsnorm"].recurrent
    assert tokens is not None and recurrent is not None
    x = torch.randn(4, 3, 16, dtype=torch.float64) * 3 + 1
    for layer in (tokens(cfg)(16), recurrent(cfg, 3)(16)):
        layer = layer.double()
        gain = layer.norm.weight if isinstance(layer, EveryStep) else layer.weight
        with torch.no_grad():
            gain.uniform_(0.5, 1.5)
        want = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + cfg.eps) * gain
        got = layer(x[:, 0], 0) if isinstance(layer, EveryStep) else layer(x)
        assert torch.allclose(got, want[:, 0] if isinstance(layer, EveryStep) else want, atol=1e-12)


def test_token_bn_normalises_each_feature_over_batch_and_tokens() -> None:
    torch.manual_seed(0)
    bn = TokenBatchNorm(5).double()
    x = torch.randn(4, 6, 5, dtype=torch.float64) * 2 + 3
    flat = x.reshape(-1, 5)
    want = (x - flat.mean(0)) / torch.sqrt(flat.var(0, unbiased=False) + bn.eps)
    assert torch.allclose(bn(x), want, atol=1e-12)
    assert torch.allclose(bn.running_mean, 0.1 * flat.mean(0))


# ----------------------------------------------------------------------------- recurrent BN


def _steps_with_their_own_mean(steps: int, batch: int = 64, features: int = 3) -> torch.Tensor:
    # Step t's values have mean t and std 1 + t/10: statistics that differ per step.
    torch.manual_seed(1)
    x = torch.randn(batch, steps, features, dtype=torch.float64)
    return x * (1 + torch.arange(steps).view(1, -1, 1) / 10) + torch.arange(steps).view(1, -1, 1)


def test_step_bn_keeps_a_set_of_statistics_per_step_and_uses_step_ts_at_eval() -> None:
    steps, features = 4, 3
    bn = TimeBatchNorm(features, steps, shared=False, momentum=1.0, gamma_init=0.1).double()
    assert bn.running_mean.shape == (steps, features) and bn.weight is not None
    assert torch.allclose(bn.weight, torch.tensor(0.1, dtype=torch.float64))  # Cooijmans et al.
    gain = bn.weight.detach()
    x = _steps_with_their_own_mean(steps)
    for t in range(steps):  # training: each step by its own batch statistics
        out = bn(x[:, t], t)
        want = (x[:, t] - x[:, t].mean(0)) / torch.sqrt(x[:, t].var(0, unbiased=False) + bn.eps)
        assert torch.allclose(out, gain * want, atol=1e-12)
    # momentum 1: set t holds exactly step t's batch mean and unbiased variance
    assert torch.allclose(bn.running_mean, x.mean(0))
    assert torch.allclose(bn.running_var, x.var(0))
    bn.eval()
    probe = torch.randn(5, features, dtype=torch.float64)
    for t in range(steps + 3):
        s = min(t, steps - 1)  # beyond the last trained step: the last set
        want = (probe - bn.running_mean[s]) / torch.sqrt(bn.running_var[s] + bn.eps) * gain
        assert torch.allclose(bn(probe, t), want, atol=1e-12), t


def test_shared_bn_keeps_one_set_averaged_over_the_steps() -> None:
    steps, features, momentum = 4, 3, 0.2
    bn = TimeBatchNorm(features, steps, shared=True, momentum=momentum).double()
    assert bn.running_mean.shape == (1, features)
    x = _steps_with_their_own_mean(steps)
    expected = torch.zeros(features, dtype=torch.float64)
    for t in range(steps):
        bn(x[:, t], t)
        expected = expected + momentum / steps * (x[:, t].mean(0) - expected)
    assert torch.allclose(bn.running_mean[0], expected)
    bn.eval()
    probe = torch.randn(5, features, dtype=torch.float64)
    outs = [bn(probe, t) for t in range(steps + 2)]
    assert all(torch.equal(o, outs[0]) for o in outs)  # one set for every step


def test_rnn_with_train_steps_trains_on_the_first_rows_and_evaluates_on_all() -> None:
    cfg = load_config(
        ["model=lstm", "norm=step_bn", "data=fashion_mnist", "model.train_steps=10", *TINY["lstm"]]
    )
    validate(cfg)
    torch.manual_seed(0)
    net = build_model(cfg.model, cfg.norm, 10, 1)
    assert isinstance(net, RowRNN)
    for layer in net.rnn.layers:  # one set of statistics per step trained on
        assert isinstance(layer.norm_ih, TimeBatchNorm)
        assert layer.norm_ih.running_mean.shape == (10, 4 * 6)
    x = torch.randn(8, 1, 28, 28)
    spoiled = x.clone()
    spoiled[:, :, 10:] = 1e6  # rows the training pass must not read
    net.train()
    assert torch.equal(net(x), net(spoiled))
    net.eval()
    assert not torch.allclose(net(x), net(spoiled))


def test_image_rows_are_rows_of_pixels_with_their_channels() -> None:
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)  # B, C, H, W
    rows = image_rows(x)
    assert rows.shape == (2, 4, 15)
    assert torch.equal(rows[1, 2], x[1, :, 2, :].t().reshape(-1))  # pixel by pixel, C each
    assert torch.equal(image_rows(x.contiguous(memory_format=torch.channels_last)), rows)


# ----------------------------------------------------------------------------- the arch rule


def test_each_arch_has_a_factory_for_exactly_the_kinds_that_list_it() -> None:
    assert tuple(FAMILY) == ARCHS == tuple(MODEL_SCHEMAS)
    for kind, entry in NORM_KINDS.items():
        for arch in ARCHS:
            has_layer = getattr(NORM_LAYERS[kind], FAMILY[arch]) is not None
            assert has_layer == (arch in entry.archs), (kind, arch)
    assert kinds_for("lstm") == kinds_for("gru") == ("bn", "none", "ln", "rmsnorm", "step_bn")
    assert kinds_for("transformer") == ("bn", "none", "ln", "rmsnorm")


CASES = [(arch, kind) for arch in SEQUENCE_ARCHS for kind in kinds_for(arch)]


@pytest.mark.parametrize(("arch", "kind"), CASES, ids=[f"{a}-{k}" for a, k in CASES])
def test_each_arch_and_norm_builds_and_every_parameter_learns(arch: str, kind: str) -> None:
    cfg = load_config([f"model={arch}", f"norm={kind}", *TINY[arch]])
    validate(cfg)
    torch.manual_seed(0)
    net = build_model(cfg.model, cfg.norm, 10, 3)  # CIFAR-10 rows: 32 steps of 96
    x = torch.randn(6, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    out = net(x)
    assert out.shape == (6, 10)
    F.cross_entropy(out, torch.arange(6)).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    net.eval()
    assert torch.isfinite(net(x[:2])).all()


@pytest.mark.parametrize(
    ("arch", "channels", "kind", "params"),
    [
        # The counts in bnlab/models/recurrent.py's and transformer.py's docstrings.
        ("lstm", 1, "ln", 83_978),
        ("lstm", 1, "none", 81_674),
        ("lstm", 1, "rmsnorm", 82_826),
        ("lstm", 3, "ln", 118_794),
        ("gru", 1, "ln", 63_498),
        ("gru", 1, "none", 61_962),
        ("transformer", 1, "ln", 204_362),
        ("transformer", 1, "none", 203_210),
        ("transformer", 3, "ln", 208_970),
    ],
)
def test_default_sizes_have_the_documented_parameter_counts(
    arch: str, channels: int, kind: str, params: int
) -> None:
    cfg = load_config([f"model={arch}", f"norm={kind}"])
    assert count_params(build_model(cfg.model, cfg.norm, 10, channels)) == params


def test_recurrent_bn_kinds_differ_only_in_their_statistics() -> None:
    nets = {}
    for kind in ("bn", "step_bn"):
        cfg = load_config(["model=gru", f"norm={kind}", *TINY["gru"]])
        torch.manual_seed(0)
        nets[kind] = build_model(cfg.model, cfg.norm, 10, 1)
    shared, per_step = (nets[k].rnn.layers[0].norm_hh for k in ("bn", "step_bn"))
    assert isinstance(shared, TimeBatchNorm) and isinstance(per_step, TimeBatchNorm)
    assert (shared.sets, per_step.sets) == (1, 28)
    params = [dict(n.named_parameters()) for n in nets.values()]
    assert all(torch.equal(params[0][k], params[1][k]) for k in params[0])


def test_validate_refuses_what_a_sequence_model_cannot_take() -> None:
    bad = {
        ("model=lstm", "norm=ghost_bn"): "norm=ghost_bn has no place in model.arch=lstm",
        (
            "model=transformer",
            "norm=step_bn",
        ): "norm=step_bn has no place in model.arch=transformer",
        ("norm=rmsnorm",): "norm=rmsnorm has no place in model.arch=resnet",
        ("model.arch=lstm",): "model=lstm",
        ("model=gru", "model.arch=resnet"): "model=resnet",
        ("model=lstm", "data.augment=true"): "data.augment=true",
        ("model=lstm", "model.residual=false"): "model.residual=false",
        ("model=lstm", "model.init=kaiming"): "model.init=orthogonal",
        ("model=lstm", "data=fashion_mnist", "model.train_steps=29"): "28 rows",
        ("model=transformer", "model.heads=3"): "model.heads=3",
        ("model=gru", "train.only_bn=true"): "train.only_bn",
        ("model.arch=vgg",): "model.arch='vgg'",
    }
    for overrides, needle in bad.items():
        with pytest.raises(BnlabError, match=re.escape(needle)):
            validate(load_config(list(overrides)))
    for other_family in (("model=lstm", "model.heads=2"), ("model=resnet", "model.train_steps=3")):
        with pytest.raises(BnlabError, match="unknown config key"):
            load_config(list(other_family))


def test_a_sequence_model_composes_without_augmentation() -> None:
    for arch in SEQUENCE_ARCHS:
        cfg = load_config([f"model={arch}"])
        assert cfg.model.arch == arch and cfg.data.augment is False
        validate(cfg)
    assert load_config([]).data.augment is True  # the conv nets keep theirs


# ----------------------------------------------------------------------------- through the CLI


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (("model.arch=vgg",), "model.arch='vgg'"),
        (("model=lstm", "norm=ghost_bn"), "norm=ghost_bn has no place in model.arch=lstm"),
        (("model=transformer", "norm=step_bn"), "model.arch=transformer"),
    ],
)
def test_bad_arch_or_pair_is_one_line_exit_2(runs: Path, overrides, needle: str) -> None:
    proc = run_bnlab("train", *overrides, f"paths.runs={runs}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnlab: error:") and needle in lines[0]
    assert not runs.exists()


def _finished_run(runs: Path, *overrides: str) -> dict:
    proc = run_bnlab(
        "train",
        *overrides,
        "preset=smoke",
        "data.train_size=256",
        "data.test_size=200",
        "train.epochs=1",
        f"paths.runs={runs}",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (run,) = runs.iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    for name in ("config.yaml", "metrics.csv", "checkpoint.pt"):
        assert (run / name).is_file(), name
    return {"name": run.name, **summary}


@pytest.mark.e2e
@needs_fashion
def test_lstm_with_ln_on_fashion_mnist_trains_end_to_end(runs: Path) -> None:
    run = _finished_run(runs, "model=lstm", "norm=ln", "data=fashion_mnist", "model.width=32")
    assert run["name"].startswith("lstm1-ln-")
    # LSTM 4H(I + H + 1), LN's gain and shift on 4H, 4H and H, head 10H + 10 (H = 32, I = 28)
    assert run["dataset"] == "Fashion-MNIST"
    assert run["params"] == 4 * 32 * (28 + 32 + 1) + 2 * (4 * 32 + 4 * 32 + 32) + 10 * 32 + 10


@pytest.mark.e2e
def test_transformer_with_rmsnorm_on_cifar10_trains_end_to_end(runs: Path) -> None:
    run = _finished_run(
        runs, "model=transformer", "norm=rmsnorm", "model.width=16", "model.depth=1"
    )
    assert run["name"].startswith("transformer1-rmsnorm-")
    assert run["test_acc"] is not None
