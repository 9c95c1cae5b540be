"""sweep.pack: which runs of a sweep train together, decided before launch (bnlab.sweep.packs)."""

from __future__ import annotations

import sys
import types

import pytest
from omegaconf import OmegaConf

from bnlab.errors import BnlabError
from bnlab.sweep import packs


def _cfg(seed: int, norm: str = "bn", batch: int = 2, device: str = "cpu", probe: bool = False):
    return OmegaConf.create(
        {
            "train": {"seed": seed, "device": device},
            "norm": {"kind": norm},
            "data": {"batch_size": batch},
            "model": {"depth": 20, "width": 16},
            "probe": {"activations": probe},
        }
    )


@pytest.fixture
def fake_pack_rules(monkeypatch):
    """bnlab.pack.run's two rules, reduced to what these tests vary: runs pack when norm
    and batch agree, and a run flagged here (probe.activations stands in for any reason)
    trains alone."""
    module = types.ModuleType("bnlab.pack.run")
    module.pack_key = lambda cfg: (cfg.norm.kind, cfg.data.batch_size)  # type: ignore[attr-defined]
    module.solo_reason = lambda cfg: "probes on" if cfg.probe.activations else None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bnlab.pack.run", module)


@pytest.mark.parametrize(
    ("overrides", "rest", "setting"),
    [
        (["norm=bn,gn"], ["norm=bn,gn"], "auto"),
        (["sweep.pack=1", "norm=bn"], ["norm=bn"], "1"),
        (["norm=bn", "sweep.pack=16", "optim.lr=0.1"], ["norm=bn", "optim.lr=0.1"], "16"),
        (["sweep.pack=auto"], [], "auto"),
    ],
)
def test_the_pack_setting_is_taken_off_the_overrides(overrides, rest, setting):
    assert packs.split_pack_setting(overrides) == (rest, setting)


@pytest.mark.parametrize("bad", ["sweep.pack=0", "sweep.pack=-2", "sweep.pack=big", "sweep.pack"])
def test_a_bad_pack_setting_is_one_line(bad):
    with pytest.raises(BnlabError, match="must be auto or a pack size >= 1"):
        packs.split_pack_setting([bad])


@pytest.mark.parametrize(
    ("overrides", "rest", "graph"),
    [
        (["norm=bn,gn"], ["norm=bn,gn"], False),
        (["sweep.pack_graph=true", "norm=bn"], ["norm=bn"], True),
        (["norm=bn", "sweep.pack_graph=False", "sweep.pack=2"], ["norm=bn", "sweep.pack=2"], False),
    ],
)
def test_the_pack_graph_setting_is_taken_off_the_overrides(overrides, rest, graph):
    assert packs.split_pack_graph(overrides) == (rest, graph)


@pytest.mark.parametrize("bad", ["sweep.pack_graph=yes", "sweep.pack_graph=1", "sweep.pack_graph"])
def test_a_bad_pack_graph_setting_is_one_line(bad):
    with pytest.raises(BnlabError, match="must be true or false"):
        packs.split_pack_graph([bad])


def test_a_graphed_member_asks_for_the_graph_and_keeps_its_run_id():
    from bnlab.compose import load_config
    from bnlab.store import run_id

    cfg = load_config(["preset=smoke"])
    graphed = packs.graphed(cfg)
    assert graphed.train.compile is True and cfg.train.compile is False  # a copy
    assert run_id(graphed) == run_id(cfg)


def test_pack_1_trains_every_run_alone_without_asking_the_rules(monkeypatch):
    monkeypatch.setitem(sys.modules, "bnlab.pack.run", None)  # importing it would raise
    units = packs.plan([_cfg(s) for s in range(3)], "1")
    assert [u.nums for u in units] == [(0,), (1,), (2,)]
    assert packs.labels(units) == {}


def test_runs_pack_by_key_in_grid_order_up_to_the_size(fake_pack_rules):
    cfgs = [_cfg(0), _cfg(0, "gn"), _cfg(1), _cfg(2), _cfg(1, "gn"), _cfg(3, probe=True), _cfg(4)]
    units = packs.plan(cfgs, "2")
    assert [u.nums for u in units] == [(0, 2), (1, 4), (3, 6), (5,)]
    assert packs.labels(units) == {
        0: "p0/2", 2: "p0/2", 1: "p1/2", 4: "p1/2", 3: "p3/2", 6: "p3/2"
    }  # fmt: skip
    # Every run in exactly one unit.
    assert sorted(n for u in units for n in u.nums) == list(range(len(cfgs)))


def test_auto_packs_small_batches_on_a_cpu_and_not_large_ones(fake_pack_rules):
    small = [_cfg(s, batch=2) for s in range(20)]
    assert [len(u.nums) for u in packs.plan(small, "auto")] == [packs.CPU_PACK, 4]
    large = [_cfg(s, batch=128) for s in range(3)]
    assert [u.nums for u in packs.plan(large, "auto")] == [(0,), (1,), (2,)]


def test_auto_on_a_gpu_packs_large_batches_too(fake_pack_rules, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a SLURM GPU node
    cfgs = [_cfg(s, batch=128, device="cuda") for s in range(40)]
    assert [len(u.nums) for u in packs.plan(cfgs, "auto")] == [packs.GPU_PACK, 8]
    assert packs.auto_size(_cfg(0, batch=2, device="cuda")) == packs.GPU_PACK_SMALL


def test_auto_on_a_gpu_here_fits_the_pack_to_its_free_memory(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    member = packs.ACTIVATION_BYTES_PER_IMAGE * 128
    free = int(member * 10 / packs.MEMORY_SHARE)  # room for 10 members
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (free, 2 * free))
    assert packs.auto_size(_cfg(0, batch=128, device="auto")) == 10
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (1, 2))
    assert packs.auto_size(_cfg(0, batch=128, device="cuda")) == 1  # never below one


# ----------------------------------------------------------------------------- real sweeps

# Small enough to pack on a CPU (batch <= 8) and to train in seconds.
TINY_PACKABLE = [
    "preset=smoke", "train.epochs=1", "data.batch_size=8", "data.train_size=64",
    "data.test_size=100", "model.depth=8", "model.width=8", "train.threads=1",
]  # fmt: skip


def _sweep(runs, *args: str):
    from typer.testing import CliRunner

    from bnlab.cli import app

    return CliRunner().invoke(app, ["sweep", *TINY_PACKABLE, *args, f"paths.runs={runs}"])


def _summaries(runs) -> dict[str, dict]:
    import json

    return {
        d.name: json.loads((d / "summary.json").read_text())
        for d in sorted(runs.iterdir())
        if (d / "summary.json").exists()
    }


@pytest.mark.e2e
@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_packed_and_solo_sweeps_write_the_same_runs(tmp_path, launcher):
    grid = ["train.seed=0,1,2", "optim.lr=0.01,0.02", f"hydra/launcher={launcher}"]
    if launcher == "joblib":
        grid.append("hydra.launcher.n_jobs=2")
    packed = _sweep(tmp_path / "packed", *grid, "sweep.pack=auto")
    solo = _sweep(tmp_path / "solo", *grid, "sweep.pack=1")
    assert packed.exit_code == 0 and solo.exit_code == 0, packed.output + solo.output
    assert "6 runs (6 completed)" in packed.stdout and "6 of them in packs" in packed.stdout
    got, want = _summaries(tmp_path / "packed"), _summaries(tmp_path / "solo")
    assert sorted(got) == sorted(want) and len(got) == 6  # the same run ids
    for name, summary in got.items():
        assert summary["pack"]["size"] == 6 and name in summary["pack"]["members"]
        assert "pack" not in want[name]
        assert summary["epochs"] == want[name]["epochs"] == 1
    [record] = (tmp_path / "packed" / ".sweeps").glob("*/sweep.yaml")
    assert OmegaConf.load(record).launched == [[0, 1, 2, 3, 4, 5]]  # one job: the pack
    assert OmegaConf.load(record).pack_graph is False  # by default a pack trains eager

    rerun = _sweep(tmp_path / "packed", *grid, "sweep.pack=auto")
    assert rerun.exit_code == 0 and "6 runs (6 completed)" in rerun.stdout
    assert len(list((tmp_path / "packed" / ".sweeps").iterdir())) == 1  # nothing launched


@pytest.mark.e2e
def test_a_pack_size_splits_the_runs_and_unpackable_runs_go_alone(tmp_path):
    args = ["train.seed=0,1,2", "norm=bn,gn", "sweep.pack=2", "sweep.pack_graph=true"]
    result = _sweep(tmp_path, *args)
    assert result.exit_code == 0, result.output
    [record] = (tmp_path / ".sweeps").glob("*/sweep.yaml")
    # Grid order: (bn, 0), (gn, 0), (bn, 1), (gn, 1), (bn, 2), (gn, 2).
    assert OmegaConf.load(record).launched == [[0, 2], [1, 3], [4], [5]]
    assert OmegaConf.load(record).pack_graph is True
    assert "p0/2" in result.stdout and "p1/2" in result.stdout
    assert "in packs (sweep.pack_graph=true)" in result.stdout
    # pack_graph asks the packs' members for the graph (train.compile; eager on a CPU) and
    # leaves the runs alone as they were: each would pay a torch.compile.
    summaries = _summaries(tmp_path)
    compiled = {
        name: OmegaConf.load(tmp_path / name / "config.yaml").train.compile for name in summaries
    }
    assert sorted(compiled.values()) == [False, False, True, True, True, True], compiled
    assert all(compiled[name] == ("pack" in s) for name, s in summaries.items())
    probes = _sweep(tmp_path / "p", "train.seed=0,1", "probe.bn_stats=true", "sweep.pack=2")
    assert probes.exit_code == 0, probes.output
    [record] = (tmp_path / "p" / ".sweeps").glob("*/sweep.yaml")
    assert OmegaConf.load(record).launched == [[0], [1]]  # a per-step probe: each run alone
