"""BN folding (bnlab.models.fold) and run export (bnlab.export)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from bnlab.build import build_model
from bnlab.compose import load_config
from bnlab.config import ModelConfig
from bnlab.data import load_dataset
from bnlab.errors import BnlabError
from bnlab.export import export_run
from bnlab.models.fold import fold_bn
from bnlab.norm_kinds import BatchNormConfig, GroupNormConfig, NoNormConfig
from bnlab.recipe import train

RESNET20_BNS = 1 + 3 * 3 * 2  # the stem, then two per block, three blocks in each of 3 stages


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN state: stats from train-mode forwards, then scrambled gamma/beta/stats.

    Freshly initialised BN (mean 0, var 1, gamma 1, beta 0) is almost the
    identity, which would let a wrong fold formula pass.
    """
    torch.manual_seed(seed)
    model.train()
    for _ in range(3):
        model(torch.randn(8, 3, 32, 32))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean += 0.2 * torch.randn_like(m.running_mean)
            m.running_var *= torch.empty_like(m.running_var).uniform_(0.5, 2.0)
            if m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.5)
    return model.eval()


def _resnet20(norm=None, residual: bool = True) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(depth=20, residual=residual), norm or BatchNormConfig())


@pytest.mark.parametrize("residual", [True, False], ids=["resnet", "plain"])
def test_folded_resnet20_matches_eval_outputs(residual: bool) -> None:
    model = _randomise_bn(_resnet20(residual=residual))
    result = fold_bn(model)

    assert result.folded == RESNET20_BNS == len(result.names)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in result.model.modules())
    assert not result.model.training
    with torch.no_grad():
        for batch in (1, 16):
            x = torch.randn(batch, 3, 32, 32)
            _close(result.model(x), model(x))


def test_fold_leaves_the_original_untouched() -> None:
    model = _randomise_bn(_resnet20())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fold_bn(model)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == RESNET20_BNS
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_folded_model_with_channels_last_input() -> None:
    model = _randomise_bn(_resnet20())
    model_cl = model.to(memory_format=torch.channels_last)
    folded = fold_bn(model_cl).model
    x = torch.randn(16, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.no_grad():
        _close(folded(x), model(x.contiguous()))


def test_group_norm_model_folds_nothing() -> None:
    model = _resnet20(GroupNormConfig(groups=8)).eval()
    result = fold_bn(model)
    assert result.folded == 0 and result.names == []
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x), rtol=0, atol=0)


def test_no_norm_model_folds_nothing() -> None:
    model = _resnet20(NoNormConfig()).eval()
    assert fold_bn(model).folded == 0


def test_conv_bias_and_non_affine_bn_in_a_sequential() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, bias=True), nn.BatchNorm2d(6, affine=False), nn.ReLU(),
        nn.Conv2d(6, 4, 1, bias=False), nn.BatchNorm2d(4),
    )  # fmt: skip
    net = _randomise_bn(net)
    result = fold_bn(net)
    assert result.folded == 2
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        _close(result.model(x), net(x))


def test_bn_without_running_stats_cannot_fold() -> None:
    model = _resnet20(BatchNormConfig(track_running_stats=False))
    with pytest.raises(ValueError, match="track_running_stats=False"):
        fold_bn(model)


# ----------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    outcome = train(load_config(["preset=smoke", "train.epochs=1", f"paths.runs={runs}"]))
    assert outcome.status == "completed"
    return outcome.run_dir


def _test_images(data_cfg: DictConfig, n: int = 8) -> torch.Tensor:
    """The first test images, normalised the way the training loop feeds them."""
    data = load_dataset(data_cfg)
    x = data.test_x[:n].permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    return (x - mean) / std


# torch >= 2.9 marks jit.load deprecated; it is still how a TorchScript export is read.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_export_folded_run_matches_the_trained_model(smoke_run: Path, tmp_path: Path) -> None:
    cfg = OmegaConf.load(smoke_run / "config.yaml")
    original = build_model(cfg.model, cfg.norm, 10, 3)
    state = torch.load(smoke_run / "checkpoint.pt", map_location="cpu", weights_only=False)
    original.load_state_dict(state["model"])
    original.eval()

    out = export_run(smoke_run, tmp_path / "export" / "model.pt", fold=True)
    assert out.exists()
    extra = {"bnlab.json": ""}
    exported = torch.jit.load(str(out), _extra_files=extra)
    info = json.loads(extra["bnlab.json"])
    assert info["bn_folded"] == sum(isinstance(m, nn.BatchNorm2d) for m in original.modules())
    assert info["bn_folded"] > 0

    x = _test_images(cfg.data)
    with torch.no_grad():
        _close(exported(x), original(x))


def test_export_without_checkpoint_is_a_one_line_error(smoke_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text((smoke_run / "config.yaml").read_text())
    with pytest.raises(BnlabError, match="no checkpoint.pt") as err:
        export_run(run, tmp_path / "model.pt", fold=True)
    assert "\n" not in str(err.value)


def test_export_with_corrupt_config_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("model: [unclosed\n  : :")
    with pytest.raises(BnlabError, match="config") as err:
        export_run(tmp_path, tmp_path / "model.pt", fold=False)
    assert "\n" not in str(err.value)
