"""model.dropout: an nn.Dropout before the ResNet's classifier, absent at 0 (issue 24 item 6).

At its default the switch changes nothing: no module, no state-dict key, no run id
(store.IDENTITY_NEUTRAL). On, it drops pooled features in training only; eval mode,
the BN-mode probes, folding and export see the net without it. Packs refuse it
(tests/test_pack.py): a member cannot draw its solo run's masks.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from bnlab.build import build_model
from bnlab.compose import load_config
from bnlab.config import ModelConfig, RecurrentConfig, validate
from bnlab.data import Dataset
from bnlab.errors import BnlabError
from bnlab.export import export_run, load_run_model
from bnlab.models import cifar_resnet
from bnlab.models.fold import fold_bn
from bnlab.norm_kinds import BatchNormConfig, LayerNormConfig, NoNormConfig
from bnlab.recipe import train, train_spec
from bnlab.store import run_id, science_dict
from bnlab.train.bn_modes import bn_modes
from bnlab.train.runtime import resolve_runtime
from tests.conftest import REPO, run_bnlab

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(depth=8, width=4)


def _net(dropout: float = 0.0, seed: int = 0, **model: object) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(**{**SMALL, **model, "dropout": dropout}), BatchNormConfig())


def _dropouts(net: nn.Module) -> list[str]:
    return [name for name, m in net.named_modules() if isinstance(m, nn.Dropout)]


# ----------------------------------------------------------------------------- the model


def test_at_zero_the_net_is_the_one_built_before_the_switch() -> None:
    default, explicit = _net(), _net(0.0)
    torch.manual_seed(0)
    before = cifar_resnet(8, nn.BatchNorm2d, width=4)  # no dropout argument at all
    for net in (default, explicit):
        assert _dropouts(net) == [] and net.dropout is None
        assert [n for n, _ in net.named_modules()] == [n for n, _ in before.named_modules()]
        state = net.state_dict()
        assert list(state) == list(before.state_dict())
        for key, value in before.state_dict().items():
            assert torch.equal(state[key], value), key


def test_dropout_sits_before_fc_and_changes_no_weight() -> None:
    plain, dropped = _net(), _net(0.3)
    assert _dropouts(dropped) == ["dropout"] and dropped.dropout.p == 0.3
    names = [n for n, _ in dropped.named_children()]
    assert names.index("dropout") == names.index("fc") - 1
    # No parameters, no buffers, no draws at construction: the same init, the same keys.
    assert list(dropped.state_dict()) == list(plain.state_dict())
    for key, value in plain.state_dict().items():
        assert torch.equal(dropped.state_dict()[key], value), key


def _head_inputs(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the dropout's input, fc's input) of one forward."""
    seen: dict[str, torch.Tensor] = {}
    # (A hook that returned a tensor would replace the module's output: update returns None.)
    hooks = [
        net.dropout.register_forward_hook(lambda m, i, o: seen.update(dropout=i[0])),
        net.fc.register_forward_hook(lambda m, i, o: seen.update(fc=i[0])),
    ]
    net(x)
    for h in hooks:
        h.remove()
    return seen["dropout"], seen["fc"]


def test_training_drops_pooled_features_and_eval_turns_it_off() -> None:
    p = 0.5
    net, twin = _net(p), _net()
    x = torch.randn(16, 3, 8, 8)
    features, head_in = _head_inputs(net.train(), x)
    assert features.shape == head_in.shape == (16, 16)
    kept = head_in != 0
    assert 0.3 < 1 - kept.float().mean().item() < 0.7  # about p of them dropped
    torch.testing.assert_close(head_in[kept], features[kept] / (1 - p))
    # Eval mode: exactly the net without dropout (same weights), on every call.
    twin.load_state_dict(net.state_dict())  # the train forward moved BN's running averages
    net.eval(), twin.eval()
    with torch.no_grad():
        assert torch.equal(net(x), twin(x)) and torch.equal(net(x), net(x))


def test_fixup_head_bias_comes_before_the_dropout() -> None:
    torch.manual_seed(0)
    net = build_model(ModelConfig(**SMALL, init="fixup", dropout=0.2), NoNormConfig())
    with torch.no_grad():
        net.head_bias.fill_(0.75)
    x = torch.randn(4, 3, 8, 8)
    features, _ = _head_inputs(net.train(), x)
    with torch.no_grad():
        pooled = torch.flatten(net.pool(net.layer3(net.layer2(net.layer1(
            net.relu1(net.norm1(net.conv1(x)) + net.stem_bias))))), 1)  # fmt: skip
    torch.testing.assert_close(features, pooled + 0.75)


def test_the_model_checks_the_probability_itself() -> None:
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="dropout"):
            cifar_resnet(8, nn.BatchNorm2d, dropout=bad)


def test_sequence_models_have_no_dropout() -> None:
    cfg = RecurrentConfig(arch="lstm", dropout=0.1)
    with pytest.raises(ValueError, match=r"model\.dropout=0\.1: model\.arch=lstm has no dropout"):
        build_model(cfg, LayerNormConfig(), in_channels=1)
    with pytest.raises(BnlabError, match=r"model\.dropout=0\.1: only resnet .*not lstm"):
        validate(load_config(["model=lstm", "norm=ln", "data=fashion_mnist", "model.dropout=0.1"]))


def test_a_stored_config_without_the_key_builds_the_net_without_dropout() -> None:
    stored = OmegaConf.create({"arch": "resnet", **SMALL, "residual": True,
                               "init": "kaiming", "init_scale": 1.0})  # fmt: skip
    assert _dropouts(build_model(stored, BatchNormConfig())) == []


# ----------------------------------------------------------------------------- config and identity


@pytest.mark.parametrize("value", ["-0.1", "1", "1.5", "nan", "inf"])
def test_validate_refuses_a_probability_outside_0_1(value: str) -> None:
    with pytest.raises(BnlabError, match=r"^model\.dropout=\S+ must be a probability in \[0, 1\)$"):
        validate(load_config([f"model.dropout={value}"]))


def test_validate_takes_0_and_just_below_1() -> None:
    validate(load_config(["model.dropout=0.0"]))
    validate(load_config(["model.dropout=0.999"]))


def test_cli_out_of_range_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = run_bnlab("train", "model.dropout=1.5", f"paths.runs={tmp_path / 'runs'}")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "bnlab: error: model.dropout=1.5 must be a probability in [0, 1)"
    assert not (tmp_path / "runs").exists()


def test_the_default_keeps_every_run_id() -> None:
    cfg = load_config(["preset=smoke"])
    assert cfg.model.dropout == 0.0
    assert "dropout" not in science_dict(cfg)["model"]
    # A config composed before the key existed: the same id.
    before = OmegaConf.to_container(cfg)
    del before["model"]["dropout"]
    assert run_id(OmegaConf.create(before)) == run_id(cfg)
    assert run_id(load_config(["preset=smoke", "model.dropout=0"])) == run_id(cfg)
    assert run_id(load_config(["preset=smoke", "model.dropout=0.3"])) != run_id(cfg)


def test_committed_runs_keep_their_ids_with_the_key_at_its_default() -> None:
    # What composing a committed run's grid point now adds: model.dropout: 0.0.
    runs = sorted((REPO / "results").glob("*/runs/*/config.yaml"))  # cpu and gpu
    before_the_key = 0
    for path in runs:
        cfg = OmegaConf.load(path)
        if "dropout" not in cfg.model:  # trained before the key existed
            before_the_key += 1
            cfg.model.dropout = 0.0
        assert run_id(cfg) == path.parent.name.rsplit("-", 1)[1], path.parent.name
    assert before_the_key > 100


# ----------------------------------------------------------------------------- probes, fold, export


def test_bn_modes_probe_ignores_the_dropout() -> None:
    # Every bn_modes pass runs in eval mode (BN on group statistics): dropout is off,
    # so a dropout net gives exactly the numbers of its twin without dropout.
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (48, 8, 8, 3), generator=gen, dtype=torch.uint8)
    labels = torch.arange(48) % 10
    stats = ((0.5,) * 3, (0.25,) * 3)
    data = Dataset(images, labels, images[:40], labels[:40], tuple("abcdefghij"), "synth", *stats)
    cfg = load_config(["data.eval_batch_size=16", "data.augment=false", "data.batch_size=8",
                       "probe.bn_modes=true", "train.channels_last=false"])  # fmt: skip
    spec = train_spec(cfg, resolve_runtime(cfg.train), steps_per_epoch=1)
    got = [bn_modes(_net(d).eval(), data, spec, 0.5, batches=4, shuffles=1) for d in (0.5, 0.0)]
    assert got[0] == got[1]


def test_fold_keeps_the_dropout_and_the_eval_function() -> None:
    net = _net(0.4)
    with torch.no_grad():  # trained-looking running statistics
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    result = fold_bn(net)
    assert result.folded == 7 and _dropouts(result.model) == ["dropout"]
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), net.eval()(x), rtol=1e-4, atol=1e-5)


TINY_RUN = ["preset=smoke", "model.depth=8", "model.width=4", "data.train_size=128",
            "data.test_size=100", "train.threads=1", "model.dropout=0.5"]  # fmt: skip


@pytest.fixture(scope="module")
def dropout_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    outcome = train(load_config([*TINY_RUN, f"paths.runs={runs}"]))
    assert outcome.status == "completed"
    return outcome.run_dir


# torch >= 2.9 marks jit.load deprecated; it is still how a TorchScript export is read.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_export_of_a_dropout_run_is_its_eval_function(dropout_run: Path, tmp_path: Path) -> None:
    model, cfg, shape = load_run_model(dropout_run)
    assert cfg.model.dropout == 0.5 and _dropouts(model) == ["dropout"]
    out = export_run(dropout_run, tmp_path / "model.pt", fold=True)
    exported = torch.jit.load(str(out))
    x = torch.randn(4, *shape)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), model(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(exported(x), exported(x), rtol=0, atol=0)


def test_a_resumed_dropout_run_draws_the_same_masks(dropout_run: Path, tmp_path: Path) -> None:
    # Roll a copy back to its epoch-1 checkpoint (the RNG state the masks continue from)
    # and let the same command resume it: epoch 2 must come out exactly the same.
    runs = tmp_path / "runs"
    copy_dir = runs / dropout_run.name
    shutil.copytree(dropout_run, copy_dir)
    (copy_dir / "checkpoint.prev.pt").replace(copy_dir / "checkpoint.pt")
    (copy_dir / "summary.json").unlink()
    outcome = train(load_config([*TINY_RUN, f"paths.runs={runs}"]))
    assert outcome.status == "completed" and outcome.run_dir == copy_dir
    assert outcome.resumed_from == 1  # not trained again from scratch

    def science(run: Path) -> list[list[str]]:
        rows = [line.split(",") for line in (run / "metrics.csv").read_text().splitlines()]
        keep = [i for i, c in enumerate(rows[0]) if c not in ("time_s", "images_per_s",
                                                               "elapsed_s")]  # fmt: skip
        return [[r[i] for i in keep] for r in rows]

    assert science(copy_dir) == science(dropout_run)
    straight = torch.load(dropout_run / "checkpoint.pt", weights_only=False)["model"]
    resumed = torch.load(copy_dir / "checkpoint.pt", weights_only=False)["model"]
    for key, value in straight.items():
        assert torch.equal(resumed[key], value), key
