"""scripts/init_norms.py: per-layer activation and gradient norms at initialisation.

Tiny nets (depth 8, or 20 for the depth trends) on a handful of images: the hooks
measure what a hand computation gives, the layers come in depth order, the known
init facts hold (Fixup's zero head, BN's constant RMS, He-init residual growth), and
the CLI writes its CSV and figure or fails in one line with exit 2.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("init_norms", REPO / "scripts/init_norms.py")
assert _spec is not None and _spec.loader is not None
init_norms = importlib.util.module_from_spec(_spec)
sys.modules["init_norms"] = init_norms  # dataclasses look their module up by name
_spec.loader.exec_module(init_norms)

IMAGES = 6


def synthetic_batch(images: int = IMAGES) -> init_norms.Batch:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(images, 3, 32, 32, generator=g)
    return init_norms.Batch(x, torch.arange(images) % 10, 10, "synthetic")


def measured(arm: str, arch: str, depth: int) -> tuple[list, float, float]:
    batch = synthetic_batch()
    cfg = init_norms.compose(init_norms.Net(arm, arch, depth), IMAGES)
    return init_norms.measure(init_norms.build(cfg, batch), batch)


def test_nets_cover_every_arm_and_arch_but_plain_fixup() -> None:
    got = {(n.arm, n.arch, n.depth) for n in init_norms.nets([20, 56])}
    assert len(got) == 10
    assert ("fixup", "plain", 20) not in got
    assert ("none", "plain", 56) in got and ("fixup", "residual", 56) in got
    over = init_norms.Net("bn", "plain", 56).overrides(128)
    assert {"arm=bn", "model.depth=56", "model.residual=false", "train.seed=0"} <= set(over)


def test_layers_in_depth_order(one_thread: None) -> None:
    layers, _, _ = measured("bn", "residual", 8)
    assert [layer.layer for layer in layers] == [0, 1, 2, 3]
    assert [layer.module for layer in layers] == ["stem", "layer1.0", "layer2.0", "layer3.0"]
    assert [layer.channels for layer in layers] == [16, 16, 32, 64]


def test_hooks_measure_what_a_hand_computation_gives(one_thread: None) -> None:
    batch = synthetic_batch()
    cfg = init_norms.compose(init_norms.Net("bn", "residual", 8), IMAGES)
    layers, loss, logits_std = init_norms.measure(init_norms.build(cfg, batch), batch)

    model = init_norms.build(cfg, batch)  # the same seed: the same weights
    model.train()
    with torch.no_grad():
        stem = model.relu1(model.norm1(model.conv1(batch.x)))
        last = model.layer3(model.layer2(model.layer1(stem)))
        logits = model(batch.x)
    # d(mean CE)/d(logits) = (softmax - onehot)/B; back through fc and the average pool.
    with torch.no_grad():
        dlogits = (logits.softmax(1) - F.one_hot(batch.y, 10)) / IMAGES
        dlast = (dlogits @ model.fc.weight)[:, :, None, None] / (last.shape[2] * last.shape[3])
        dlast = dlast.expand_as(last)

    assert layers[0].act_rms == pytest.approx(float(stem.pow(2).mean().sqrt()), rel=1e-5)
    assert layers[-1].act_rms == pytest.approx(float(last.pow(2).mean().sqrt()), rel=1e-5)
    assert layers[-1].grad_norm == pytest.approx(float(dlast.norm()), rel=1e-4)
    assert layers[-1].grad_rms == pytest.approx(float(dlast.pow(2).mean().sqrt()), rel=1e-4)
    assert loss == pytest.approx(float(F.cross_entropy(logits, batch.y)), rel=1e-5)
    assert logits_std == pytest.approx(float(logits.std()), rel=1e-5)


def test_fixup_starts_at_chance_with_zero_gradients(one_thread: None) -> None:
    layers, loss, logits_std = measured("fixup", "residual", 8)
    assert loss == pytest.approx(math.log(10), rel=1e-6)  # the head is 0: uniform logits
    assert logits_std == 0
    assert all(layer.grad_norm == 0 for layer in layers)
    assert all(layer.act_rms > 0 for layer in layers)


def test_depth_trends_at_init(one_thread: None) -> None:
    bn_plain, _, _ = measured("bn", "plain", 20)
    he_residual, _, _ = measured("none", "residual", 20)
    # BN then ReLU, gain 1: every block output has RMS sqrt(1/2), whatever the depth.
    assert all(0.6 < layer.act_rms < 0.8 for layer in bn_plain)
    # ... while its gradient grows from the output back to the input.
    assert bn_plain[0].grad_norm > 5 * bn_plain[-1].grad_norm
    # He init adds a branch of the stream's own size each block: the stream grows.
    assert he_residual[-1].act_rms > 10 * he_residual[0].act_rms


def test_cli_writes_csv_figure_and_summary(
    tmp_path: Path, one_thread: None, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "norms"
    assert init_norms.main(["--out", str(out), "--depths", "8", "--batch", "4"]) == 0
    with (out / "init_norms.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 * 4  # 5 nets of 4 layers (stem + 3 blocks)
    assert tuple(rows[0]) == init_norms.FIELDS
    assert {(r["arm"], r["arch"]) for r in rows} == {
        ("bn", "plain"), ("bn", "residual"), ("none", "plain"), ("none", "residual"),
        ("fixup", "residual"),
    }  # fmt: skip
    assert {r["batch"] for r in rows} == {"4"} and {r["seed"] for r in rows} == {"0"}
    assert all(float(r["act_rms"]) > 0 for r in rows)
    assert (out / "init_norms.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "fixup residual   8" in printed and "act RMS" in printed


@pytest.mark.parametrize(
    "args",
    [["--depths", "21"], ["--depths", "20,x"], ["--depths", "20,20"], ["--batch", "0"], ["--x"]],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        init_norms.main(["--out", str(tmp_path), *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("init_norms.py: error:")
    assert not list(tmp_path.iterdir())


def test_out_that_is_a_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = tmp_path / "file"
    taken.write_text("")
    assert init_norms.main(["--out", str(taken), "--depths", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a folder" in err
