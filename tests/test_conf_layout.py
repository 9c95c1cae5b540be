"""conf/'s layout: grids apart from fixed settings, values written once, and presets that
scale a claim without a file per (preset, experiment) pair -- with the runs unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bnlab.compose import CONFIG_DIR, config_groups, load_config
from bnlab.errors import BnlabError
from bnlab.store import run_id
from bnlab.sweep.grid import (
    GRID_DIR,
    SEED_KEY,
    SHARED,
    SUITES,
    expand,
    experiment_grid,
    experiment_grids,
    experiments,
    read_grid,
    suite,
)

GRIDS = CONFIG_DIR / GRID_DIR
SCALE = CONFIG_DIR / "scale"

# Runs per experiment at each preset (bnlab sweep experiment=NAME preset=... --dry-run).
# 2026-12-05 (issue 24): lr, convergence and depth took the headline grids (per-arm lr
# windows; plain and residual depth 8-110), and batch_tune, small_batch and dropout
# are new.
COUNTS = {
    "full": {"batch": 21, "batch_protocol": 30, "batch_tune": 18, "convergence": 84,
             "deep_no_norm": 36, "depth": 216, "depth_plain": 18, "dropout": 36, "ics": 18,
             "inference": 3, "init": 60, "landscape": 9, "lr": 84, "lr_naive": 30,
             "norms": 21, "regularization": 12, "sequence": 99, "small_batch": 57},
    "cpu": {"batch": 21, "batch_protocol": 10, "batch_tune": 36, "convergence": 87,
            "deep_no_norm": 24, "depth": 114, "depth_plain": 4, "dropout": 36, "ics": 15,
            "inference": 3, "init": 36, "landscape": 6, "lr": 87, "lr_naive": 10,
            "norms": 21, "regularization": 12, "sequence": 99, "small_batch": 57},
    "gpu": {"batch": 21, "batch_protocol": 10, "batch_tune": 18, "convergence": 84,
            "deep_no_norm": 24, "depth": 216, "depth_plain": 4, "dropout": 36, "ics": 18,
            "inference": 3, "init": 36, "landscape": 9, "lr": 84, "lr_naive": 10,
            "norms": 21, "regularization": 12, "sequence": 99, "small_batch": 57},
}  # fmt: skip
COUNTS["smoke"] = COUNTS["full"]
TOTALS = {preset: sum(counts.values()) for preset, counts in COUNTS.items()}

# The first and last run of a few sweeps, by overrides and run id, as that layout named
# them. A run id hashes the scientific config (data size, epochs, probe steps, eval
# batches, ...), so these pin the preset's fixed settings as well as the grid.
KNOWN_RUNS = [
    (["experiment=landscape", "preset=cpu"], 6,
     ("arm=bn train.seed=0", "1fd2ccf92688"), ("arm=fixup train.seed=2", "1945bfed38c9")),
    (["experiment=landscape", "preset=gpu"], 9,
     ("arm=bn train.seed=0", "c42230938ce6"), ("arm=skipinit train.seed=2", "a88f4a2c029a")),
    (["experiment=batch_protocol", "preset=cpu"], 10,
     ("arm=bn data.batch_size=2 train.seed=0", "4c989e3c2955"),
     ("arm=gn data.batch_size=128 train.seed=0", "2ced90cb0ac5")),
    (["experiment=batch_protocol", "preset=gpu"], 10,
     ("arm=bn data.batch_size=2 train.seed=0", "02e4b0f660ff"),
     ("arm=gn data.batch_size=128 train.seed=0", "53e31e60a430")),
    (["experiment=inference", "preset=cpu"], 3,
     ("arm=bn train.seed=0", "a2b0f5523141"), ("arm=bn train.seed=2", "15142a9945a9")),
    (["experiment=depth_plain", "preset=cpu"], 4,
     ("arm=bn model.depth=20 train.seed=0", "1f383e22bee0"),
     ("arm=none model.depth=56 train.seed=0", "1ac2212a82d8")),
    (["experiment=ics", "preset=cpu"], 15,
     ("arm=bn train.seed=0", "ce4a7511516b"), ("arm=noisy_m1 train.seed=2", "abc386109651")),
    (["experiment=lr_naive", "preset=gpu"], 10,
     ("arm=none optim.lr=0.0001 train.seed=0", "f3fc79b0abcb"),
     ("arm=none optim.lr=3.0 train.seed=0", "28089d3d6468")),
    (["experiment=lr", "preset=cpu"], 87,
     ("train.seed=0 arm=none optim.lr=0.003125", "a761520cb2e5"),
     ("train.seed=2 arm=bn optim.lr=12.8", "33471952987e")),
    (["experiment=small_batch", "preset=cpu"], 57,
     # the tuned bases (scripts/tune_small_batch.py, 2026-12-05): bn 0.025, gn 0.0125, ln 0.00625
     ("train.seed=0 arm=bn data.batch_size=2 optim.lr=0.00078125", "27a56ace4a83"),
     ("train.seed=2 arm=ghost_bn2 optim.lr=0.025", "575ab14cc111")),
    (["experiment=regularization", "preset=smoke"], 12,
     ("arm=bn train.seed=0", "b9c7d758da27"), ("arm=none train.seed=2", "3975ca24d4e4")),
]  # fmt: skip


def grid_size(experiment: str, preset: str) -> int:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from bnlab.sweep.adapters import split_grid

    jobs: list[list[str]] = []
    for product in experiment_grids(experiment, preset):
        grid = [f"{k}={v}" for k, v in product.items()]
        parsed = OverridesParser.create().parse_overrides(grid)
        jobs += [job for job in split_grid(parsed) if job not in jobs]
    return len(jobs)


def yaml_files() -> list[Path]:
    return sorted(CONFIG_DIR.rglob("*.yaml"))


def leaves(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every scalar or list in a loaded YAML tree."""
    if isinstance(node, dict):
        return [leaf for k, v in node.items() for leaf in leaves(v, f"{path}{k}.")]
    return [(path.rstrip("."), node)]


HEADLINE = "headline"


def names_headline(path: Path) -> bool:
    """A pair file whose only content is the preset's headline scale."""
    tree = yaml.safe_load(path.read_text())
    return tree == {"defaults": [f"/scale/{path.parent.name}/{HEADLINE}"]}


def pair_files() -> list[Path]:
    """conf/scale/<preset>/<experiment>.yaml: a preset's change to one claim's settings."""
    return sorted(SCALE.glob("*/*.yaml"))


# ----------------------------------------------------------------------------- the layout


def test_every_experiment_has_a_grid_and_every_grid_an_experiment():
    grids = {p.stem for p in GRIDS.glob("*.yaml")} - {SHARED, SUITES}
    assert grids == set(experiments())


def test_the_seeds_and_lr_ranges_are_written_once():
    shared = yaml.safe_load((GRIDS / f"{SHARED}.yaml").read_text())
    for name in ("seeds", "lr", "lr_sweep", "depths", "depths_sweep"):
        holders = [
            p.relative_to(CONFIG_DIR)
            for p in yaml_files()
            if any(str(v) == str(shared[name]) for _, v in leaves(yaml.safe_load(p.read_text())))
        ]
        assert holders == [Path(GRID_DIR, f"{SHARED}.yaml")], (name, holders)


def test_grids_live_in_conf_grid_only():
    # No train.seed and no hydra.sweeper.params outside conf/grid: the experiment and
    # scale files hold fixed settings, conf/grid/ the grids.
    for p in yaml_files():
        if p.parent == GRIDS:
            continue
        keys = [k for k, _ in leaves(yaml.safe_load(p.read_text()) or {})]
        assert not [k for k in keys if k == SEED_KEY or k.startswith("hydra.sweeper")], p
    # In conf/grid, train.seed only ever names a shared value.
    for p in GRIDS.glob("*.yaml"):
        for key, value in leaves(yaml.safe_load(p.read_text())):
            if key.endswith(SEED_KEY):
                assert str(value).startswith("${"), (p.name, key, value)


def test_a_preset_scales_claims_with_one_file_not_one_per_pair():
    presets, names = config_groups()["preset"], experiments()
    per_preset = {p.stem for p in SCALE.glob("*.yaml")}
    assert per_preset == {"cpu", "gpu"}, per_preset
    # The headline claims' scale (issue 24) is written once per preset, in
    # conf/scale/<preset>/headline.yaml, and each of those claims' pair file only names it.
    headline = {p.parent.name: p for p in SCALE.glob(f"*/{HEADLINE}.yaml")}
    assert set(headline) == {"cpu", "gpu"}
    for name in names:  # each claim's sweep takes its preset's scale file
        defaults = yaml.safe_load((CONFIG_DIR / "experiment" / f"{name}.yaml").read_text())
        assert {"override /scale": "${preset}"} in defaults["defaults"], name
    # Per pair, a file only where the preset changes that claim's own fixed settings,
    # and each such file changes something: most pairs have none.
    pairs = [p for p in pair_files() if p.stem != HEADLINE and not names_headline(p)]
    assert len(pairs) < len(names), [str(p.relative_to(SCALE)) for p in pairs]
    for path in pairs:
        preset, name = path.parent.name, path.stem
        assert preset in presets and name in names, path
        with_it = load_config([f"experiment={name}", f"preset={preset}"])
        without = load_config([f"experiment={name}", f"preset={preset}", "~scale@_global_"])
        assert with_it != without, f"{path} changes nothing"


@pytest.mark.parametrize(("one", "other"), [("convergence", "lr"), ("norms", "batch")])
def test_claims_that_share_runs_share_their_grid_at_every_preset(one, other):
    for preset in COUNTS:
        assert experiment_grids(one, preset) == experiment_grids(other, preset), preset


# ----------------------------------------------------------------------------- the runs


@pytest.mark.parametrize("preset", sorted(COUNTS))
def test_each_grid_has_its_runs_at_each_preset(preset):
    sizes = {name: grid_size(name, preset) for name in experiments()}
    assert sizes == COUNTS[preset]
    assert sum(sizes.values()) == TOTALS[preset]


@pytest.mark.parametrize(("overrides", "count", "first", "last"), KNOWN_RUNS)
def test_known_runs_keep_their_place_and_id(overrides, count, first, last):
    jobs = expand(overrides).jobs
    assert len(jobs) == count
    for job, (points, rid) in ((jobs[0], first), (jobs[-1], last)):
        assert job.overrides == [*points.split(), *overrides]
        assert run_id(job.cfg) == rid


def test_the_command_line_comes_after_the_grid():
    # A key the grid has keeps its place and takes the command line's value.
    jobs = expand(["experiment=batch", "preset=cpu", "train.seed=5"]).jobs
    assert jobs[1].overrides[:2] == ["arm=ghost_bn32", "train.seed=5"]
    assert len(jobs) == 7 and {j.cfg.train.seed for j in jobs} == {5}
    jobs = expand(["experiment=lr", "optim.lr=0.1"]).jobs
    assert len(jobs) == 12 and {j.cfg.optim.lr for j in jobs} == {0.1}
    # No experiment: the command line is the whole grid (no seeds added).
    jobs = expand(["norm=bn,none", "optim.lr=0.1,1", "preset=smoke"]).jobs
    assert jobs[0].overrides == ["norm=bn", "optim.lr=0.1", "preset=smoke"]
    assert len(jobs) == 4


def test_a_run_with_an_experiment_takes_the_presets_sweep_scale():
    # bnlab train experiment=X preset=cpu composes what the sweep's run composes ...
    cfg = load_config(["experiment=landscape", "preset=cpu", "arm=bn", "train.seed=0"])
    assert run_id(cfg) == "1fd2ccf92688"  # = KNOWN_RUNS' first landscape run at cpu
    # ... and a run without an experiment keeps the preset's own scale.
    plain = load_config(["preset=cpu"])
    assert (plain.data.train_size, plain.train.epochs) == (10_000, 6)
    assert (cfg.data.train_size, cfg.train.epochs) == (5_000, 4)


# ----------------------------------------------------------------------------- bad grids


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("arm: bn,gn\ncpuu:\n  arm: bn\n", "'cpuu' holds settings but is no preset"),
        ("arm: [bn, gn]\n", "arm should be a sweep value"),
        ("arm: bn\ncpu:\n  arm: null\n", "cpu.arm should be a sweep value"),
        ("lr: 0.1\n", "name values of _shared.yaml"),
    ],
)
def test_a_bad_grid_file_is_one_line_naming_it(tmp_path, monkeypatch, text, needle):
    import bnlab.sweep.grid as grid

    (tmp_path / GRID_DIR).mkdir()
    (tmp_path / GRID_DIR / f"{SHARED}.yaml").write_text((GRIDS / f"{SHARED}.yaml").read_text())
    (tmp_path / GRID_DIR / "bad.yaml").write_text(text)
    monkeypatch.setattr(grid, "CONFIG_DIR", tmp_path)
    with pytest.raises(BnlabError) as err:
        experiment_grid("bad", "cpu")
    assert needle in str(err.value) and "bad.yaml" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.fixture
def grid_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty conf/grid (seeds 0,1) that the grid reader reads instead of the project's."""
    from bnlab.sweep import grid as grid_module

    folder = tmp_path / GRID_DIR
    folder.mkdir()
    (folder / f"{SHARED}.yaml").write_text("seeds: 0,1\n")
    monkeypatch.setattr(grid_module, "CONFIG_DIR", tmp_path)
    return folder


def test_a_union_grid_gives_each_product_its_own_axes_and_counts_a_run_once(grid_folder):
    folder = grid_folder
    (folder / "u.yaml").write_text(
        "arm: bn\n"
        "union:\n"
        "  - {optim.lr: '0.1,0.3'}\n"
        "  - {optim.lr: '0.3,1.0', arm: fixup}\n"
        "gpu:\n"
        "  union: [{optim.lr: '3.0'}]\n"
    )
    assert experiment_grids("u", "cpu") == [
        {"arm": "bn", "train.seed": "0,1", "optim.lr": "0.1,0.3"},
        {"arm": "fixup", "train.seed": "0,1", "optim.lr": "0.3,1.0"},
    ]
    assert experiment_grids("u", "gpu") == [{"arm": "bn", "train.seed": "0,1", "optim.lr": "3.0"}]
    with pytest.raises(BnlabError, match="union of 2 products"):
        experiment_grid("u", "cpu")
    (folder / "bad.yaml").write_text("union: {optim.lr: '0.1'}\n")
    with pytest.raises(BnlabError, match="union should be a list of mappings"):
        experiment_grids("bad", "cpu")


def test_an_untuned_grid_says_why_for_the_presets_it_covers(grid_folder):
    folder = grid_folder
    (folder / "t.yaml").write_text(
        "untuned: 'tune the base lr first'\n"
        "union: [{optim.lr: '0.2'}]\n"
        "cpu:\n"
        "  union: [{optim.lr: '0.025'}]\n"  # replaces the top level's union: tuned here
        "smoke:\n"
        "  train.epochs: 1\n"  # keeps the top level's union, and its note
        "gpu:\n"
        "  untuned: 'its own reason'\n"
    )
    assert read_grid("t", "full")[1] == "tune the base lr first"
    assert read_grid("t", "smoke")[1] == "tune the base lr first"
    assert read_grid("t", "cpu") == ([{"train.seed": "0,1", "optim.lr": "0.025"}], "")
    assert read_grid("t", "gpu")[1] == "its own reason"
    (folder / "bad.yaml").write_text("untuned: ''\nunion: [{optim.lr: '0.1'}]\n")
    with pytest.raises(BnlabError, match="untuned should say why"):
        read_grid("bad", "cpu")


def test_only_the_gpu_small_batch_grid_waits_for_its_tuning():
    # preset=cpu's bases were tuned (scripts/tune_small_batch.py); preset=gpu's are not yet.
    assert read_grid("small_batch", "cpu")[1] == ""
    assert "tune_small_batch.py" in read_grid("small_batch", "gpu")[1]
    assert all(read_grid(name, "cpu")[1] == "" for name in suite(["preset=cpu"]))


def test_the_sequence_grid_gives_each_arm_its_own_ladder():
    jobs = expand(["experiment=sequence", "preset=cpu"]).jobs
    assert len(jobs) == 99
    ladders: dict[tuple[str, str, int], set[float]] = {}
    for job in jobs:
        cfg = job.cfg
        key = (cfg.model.arch, cfg.norm.kind, cfg.data.batch_size)
        ladders.setdefault(key, set()).add(cfg.optim.lr)
    assert ladders[("lstm", "ln", 128)] == {0.1, 0.3, 1.0}
    assert ladders[("lstm", "step_bn", 16)] == {0.0375, 0.125, 0.375}
    assert ladders[("transformer", "none", 128)] == {0.01, 0.03, 0.1}
    assert all(len(lrs) == 3 for lrs in ladders.values())


def test_experiment_all_or_a_list_is_one_sweep_per_claim():
    from bnlab.sweep.grid import split_experiment_all

    assert split_experiment_all(["experiment=lr,depth", "preset=cpu"]) == [
        ["experiment=lr", "preset=cpu"],
        ["experiment=depth", "preset=cpu"],
    ]
    every = split_experiment_all(["experiment=all"])
    assert [p[0] for p in every] == [f"experiment={n}" for n in experiments()]
    assert "experiment=sequence" in {p[0] for p in every}
    assert split_experiment_all(["experiment=lr", "x=1"]) == [["experiment=lr", "x=1"]]
    assert split_experiment_all(["norm=bn,gn"]) == [["norm=bn,gn"]]
