"""bnlab.pack.run: a pack of runs trained end to end, each member in its own run folder.

The pack core (tests/test_pack.py) proves a member equals its solo run in float64;
here the driver is checked against ``bnlab.recipe.train`` itself, in float32 on the
bundled data: the same data order and augmentation per seed, the same schedule, the
same evaluations, the same files.

Tolerance (members vs their solo runs, float32). Packing changes only the order of
float32 sums, which training then amplifies like any rounding-level change. The
runs here (ResNet-8 of width 8, 8 steps at lr 2e-3 .. 8e-3) keep that amplification
mild: measured over every comparison below (pack vs solo, a pack of 2 vs one of 3,
a pack resumed solo, bn_noisy), losses differ by at most 1.9e-6 relative and no
accuracy differs, while the same solo run with train.channels_last=false (the same
run id: only the kernels' rounding changes) moves its losses by up to 8e-6
relative -- the run's own float32 floor. Losses must agree to 1e-4 relative (about
10x that floor), accuracies to 2 images; members differ from each other by 7%, and
a member fed another seed's batches misses by 4e-3 (both asserted or tried). At
larger learning rates the floor grows to percents within a few steps (BN's running
statistics after 4-16 steps; ResNet-20 at lr 0.1: test losses 5-50 apart), which
would make such a comparison meaningless. The lr column and the row layout are exact.

probe.activations (probes.csv) compares the same way. At init a member's probe is its
solo probe bit for bit (the same model, batch and noise draws). After training, the
same solo run with train.channels_last=false (its float32 floor; MEMBERS, 2 epochs)
moves act_mean by up to 2.4e-5 of the layer's act_std, act_std by 3.7e-5 relative
and grad_norm by 6.4e-3 relative (already 1.2e-3 at init, from the same weights:
rounding alone); members differ from their solo runs by at most 6e-6, 1.5e-5 and
7.5e-3 (bn_noisy included). So: act_mean and act_std to 5e-4 of the layer's act_std,
grad_norm to 5e-2 relative. Tried: a probe drawing the wrong noise (the global
generators left as the pack has them) misses by 14-39% in act_std and 21-61% in
grad_norm; one on another seed's fixed batch by 1.5-3.4% and 31-130%.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from bnlab.data import DeviceLoader, load_dataset
from bnlab.norm_kinds import kinds_for
from bnlab.pack import PackError
from bnlab.pack.run import PackFailed, _reseeded, pack_key, solo_reason, train_pack
from bnlab.recipe import RunFailed, train
from bnlab.store import RunDir, RunStore, load_checkpoint_file
from bnlab.sweep.compose_grid import GridComposer
from bnlab.train.loop import SilentReporter

pytestmark = pytest.mark.usefixtures("one_thread")

BASE = [
    "preset=smoke",
    "train.threads=1",
    "model.depth=8",
    "model.width=8",
    "data.train_size=256",
    "data.batch_size=64",  # 4 steps an epoch, 2 epochs
    "data.test_size=200",
    "data.curve_test_size=100",  # epoch 1 on 100 test images, the last on all 200
]
# The post-training extras recipe.train computes (bn_modes, the costly one, tested apart).
EXTRAS = ["probe.bn_eval_batch_sizes=[100]"]
# Per-member keys: seed, lr, weight decay, schedule, init scale.
MEMBERS = [
    ["train.seed=0", "optim.lr=0.002"],
    ["train.seed=1", "optim.lr=0.004", "optim.weight_decay=5e-4"],
    ["train.seed=2", "optim.lr=0.008", "optim.schedule=cosine", "model.init_scale=0.8"],
]
STEPS_PER_EPOCH = 4
# load_config for many configs: each set of group choices composed once.
load_config = GridComposer().load
SCIENCE = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "test_images", "lr")
LOSS_RTOL = 1e-4
ACC_IMAGES = 2
PROBED = "probe.activations=true"
ACT_TOL = 5e-4  # of the layer's act_std, for act_mean and act_std
GRAD_RTOL = 5e-2


def config(root: Path, *overrides: str, extras: bool = False) -> DictConfig:
    return load_config([*BASE, *(EXTRAS if extras else []), *overrides, f"paths.runs={root}"])


def silent(n: int) -> list[SilentReporter]:
    return [SilentReporter() for _ in range(n)]


def rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def science(run: Path) -> list[dict[str, str]]:
    return [{k: r[k] for k in SCIENCE} for r in rows(run)]


def summary(run: Path) -> dict[str, Any]:
    return json.loads((run / "summary.json").read_text())


def assert_close_rows(got: Path, want: Path) -> None:
    """The rows of two runs of one config: layout and lr exact, metrics to the tolerance."""
    a, b = rows(got), rows(want)
    assert len(a) == len(b)
    for r, s in zip(a, b, strict=True):
        for key in ("epoch", "test_images", "lr"):
            assert r[key] == s[key], key
        for key in ("train_loss", "test_loss"):
            assert float(r[key]) == pytest.approx(float(s[key]), rel=LOSS_RTOL), key
        train_images = STEPS_PER_EPOCH * 64
        assert abs(float(r["train_acc"]) - float(s["train_acc"])) <= ACC_IMAGES / train_images
        test_images = int(s["test_images"])
        assert abs(float(r["test_acc"]) - float(s["test_acc"])) <= ACC_IMAGES / test_images


def probe_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "probes.csv") as f:
        return list(csv.DictReader(f))


def assert_close_probes(got: Path, want: Path) -> None:
    """probes.csv of two runs of one config: the same rows (none twice), init bit for
    bit, the values after training to the tolerances above."""
    a, b = probe_rows(got), probe_rows(want)
    labels = [[r[k] for k in ("epoch", "step", "probe", "layer", "metric")] for r in a]
    assert labels == [[r[k] for k in ("epoch", "step", "probe", "layer", "metric")] for r in b]
    assert len({tuple(x) for x in labels}) == len(labels)
    epochs = sorted({int(r["epoch"]) for r in a})
    assert epochs == list(range(len(rows(got)) + 1))  # init and every epoch's end, once
    std = {(r["epoch"], r["layer"]): float(r["value"]) for r in b if r["metric"] == "act_std"}
    for r, s in zip(a, b, strict=True):
        x, y, where = float(r["value"]), float(s["value"]), (r["epoch"], r["layer"], r["metric"])
        if r["epoch"] == "0":
            assert x == y, where
        elif r["metric"] == "grad_norm":
            assert x == pytest.approx(y, rel=GRAD_RTOL), where
        else:
            assert abs(x - y) <= ACT_TOL * std[(r["epoch"], r["layer"])], where


class StopAt:
    """A reporter that interrupts the pack (as Ctrl-C would) at a given step or epoch end."""

    def __init__(self, step: int | None = None, epoch_end: int | None = None) -> None:
        self.steps, self.at_step, self.at_epoch_end = 0, step, epoch_end

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def step(self) -> None:
        self.steps += 1
        if self.steps == self.at_step:
            raise KeyboardInterrupt

    def epoch_end(self, row: dict[str, float]) -> None:
        if row["epoch"] == self.at_epoch_end:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    """MEMBERS trained as one pack, never interrupted (with bn_eval)."""
    root = tmp_path_factory.mktemp("straight")
    torch.set_num_threads(1)
    return train_pack([config(root, *m, extras=True) for m in MEMBERS], silent(3))


# ----------------------------------------------------------------------------- member == solo


def test_members_match_their_solo_runs(straight: list[Any], tmp_path: Path) -> None:
    names = [o.run_dir.name for o in straight]
    for k, (out, member) in enumerate(zip(straight, MEMBERS, strict=True)):
        solo = train(config(tmp_path, *member, extras=True))
        assert out.status == solo.status == "completed"
        assert out.run_dir.name == solo.run_dir.name  # the same run, the same folder
        assert_close_rows(out.run_dir, solo.run_dir)

        # The folder reads like the solo run's: the same files, config and summary
        # fields, plus the pack.
        files = {p.name for p in out.run_dir.iterdir()}
        assert files == {p.name for p in solo.run_dir.iterdir()}
        assert _without_paths(out.run_dir) == _without_paths(solo.run_dir)
        got, want = summary(out.run_dir), summary(solo.run_dir)
        assert set(got) == set(want) | {"pack"}
        assert got["pack"] == {"size": 3, "members": names, "index": k}
        for key in ("run_id", "dataset", "params", "status", "epochs", "epochs_planned",
                    "diverged_epoch", "train_images", "test_images", "curve_test_images",
                    "device", "resumed_from_epoch"):  # fmt: skip
            assert got[key] == want[key], key
        assert got["test_acc"] == pytest.approx(want["test_acc"], abs=ACC_IMAGES / 200)
        # The post-training extras, per member, from the member's own final state.
        ours_eval, theirs_eval = got["bn_eval"], want["bn_eval"]
        assert set(ours_eval["batch_stats_acc"]) == set(theirs_eval["batch_stats_acc"]) == {"100"}
        assert ours_eval["batch_stats_acc"]["100"] == pytest.approx(
            theirs_eval["batch_stats_acc"]["100"], abs=ACC_IMAGES / 200
        )
        # The checkpoint is the solo one (plus the pack): same keys, same tensors' shapes.
        ours = load_checkpoint_file(RunDir(out.run_dir).checkpoint_file)
        theirs = load_checkpoint_file(RunDir(solo.run_dir).checkpoint_file)
        assert set(ours) == set(theirs) | {"pack"}
        assert {n: t.shape for n, t in ours["model"].items()} == {
            n: t.shape for n, t in theirs["model"].items()
        }
        assert len(ours["optimizer"]["state"]) == len(theirs["optimizer"]["state"])
    # The tolerance tells members apart: member 0 is far from member 1's numbers.
    a, b = rows(straight[0].run_dir), rows(straight[1].run_dir)
    assert abs(float(a[0]["train_loss"]) / float(b[0]["train_loss"]) - 1) > 100 * LOSS_RTOL


def _without_paths(run: Path) -> dict[str, Any]:
    cfg = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))
    assert isinstance(cfg, dict)
    cfg.pop("paths")
    return cfg


def test_each_member_gets_its_solo_runs_batches() -> None:
    cfg = config(Path("unused"))
    data = load_dataset(cfg.data)

    def loader(seed: int) -> DeviceLoader:
        return DeviceLoader(
            data.train_x, data.train_y, 64, train=True, augment=True, mean=data.mean,
            std=data.std, seed=seed, channels_last=True,
        )  # fmt: skip

    shared = loader(0)
    for seed in (1, 7):
        for epoch in (0, 3):
            for (x, y), (u, v) in zip(
                _reseeded(shared, seed).epoch(epoch), loader(seed).epoch(epoch), strict=True
            ):
                assert torch.equal(x, u) and torch.equal(y, v)
    assert shared.seed == 0  # the shared loader is left as it was


@pytest.mark.slow  # 10 s: bn_modes' 100 batches, twice; bn_eval covers the same path fast
def test_bn_modes_of_a_member_are_its_solo_runs(tmp_path: Path) -> None:
    # probe.bn_modes re-estimates BN statistics over 100 training batches: one member only.
    member = [*MEMBERS[1], "probe.bn_modes=true"]
    (out,) = train_pack([config(tmp_path / "pack", *member)], silent(1))
    solo = train(config(tmp_path / "solo", *member))
    got, want = summary(out.run_dir)["bn_modes"], summary(solo.run_dir)["bn_modes"]
    assert set(got) == set(want)
    for key in ("running_acc", "precise_acc", "batch_stats_acc", "train_mode_acc"):
        assert got[key] == pytest.approx(want[key], abs=ACC_IMAGES / 200), key
    assert got["train_mode_loss"] == pytest.approx(want["train_mode_loss"], rel=LOSS_RTOL)


def test_activation_probes_of_members_are_their_solo_runs(tmp_path: Path) -> None:
    members = [[*m, PROBED] for m in MEMBERS]
    out = train_pack([config(tmp_path / "pack", *m) for m in members], silent(3))
    for got, member in zip(out, members, strict=True):
        solo = train(config(tmp_path / "solo", *member))
        assert {p.name for p in got.run_dir.iterdir()} == {p.name for p in solo.run_dir.iterdir()}
        assert_close_rows(got.run_dir, solo.run_dir)
        assert_close_probes(got.run_dir, solo.run_dir)
        ours = load_checkpoint_file(RunDir(got.run_dir).checkpoint_file)["probe_rows"]
        assert len(ours) == len(probe_rows(got.run_dir)) == 3 * 8 * 3  # 3 probes x 8 layers x 3
    # The tolerance tells members apart (at init: other weights, another batch).
    with pytest.raises(AssertionError):
        assert_close_probes(out[0].run_dir, out[1].run_dir)


def test_activation_probes_resume_and_leave_training_alone(tmp_path: Path) -> None:
    # bn_noisy: the probe's forward draws noise, from the member's solo stream.
    members = [["norm=bn_noisy", *m, PROBED] for m in MEMBERS[:2]]
    straight = train_pack([config(tmp_path / "straight", *m) for m in members], silent(2))
    # The probes consume nothing of the pack's: its metrics are the unprobed pack's, bit
    # for bit.
    plain = train_pack([config(tmp_path / "plain", *m[:-1]) for m in members], silent(2))
    for got, want in zip(straight, plain, strict=True):
        assert science(got.run_dir) == science(want.run_dir)
        assert not (want.run_dir / "probes.csv").exists()

    # Killed in epoch 2 and resumed: the straight pack's rows, bit for bit, none twice.
    cfgs = [config(tmp_path / "killed", *m) for m in members]
    with pytest.raises(KeyboardInterrupt):
        train_pack(cfgs, [StopAt(step=STEPS_PER_EPOCH + 1), SilentReporter()])
    for out in straight:
        assert {r["epoch"] for r in probe_rows(tmp_path / "killed" / out.run_dir.name)} == {
            "0", "1"
        }  # fmt: skip
    for got, want in zip(train_pack(cfgs, silent(2)), straight, strict=True):
        assert got.resumed_from == 1
        assert science(got.run_dir) == science(want.run_dir)
        assert (got.run_dir / "probes.csv").read_text() == (want.run_dir / "probes.csv").read_text()

    # A pack's checkpoint resumes solo, a solo one in a pack: the rows carry over.
    cross = [config(tmp_path / "cross", *m) for m in members]
    with pytest.raises(KeyboardInterrupt):
        train_pack([cross[0]], [StopAt(epoch_end=1)])
    with pytest.raises(KeyboardInterrupt):
        train(cross[1], StopAt(epoch_end=1))
    solo = train(cross[0])
    (packed,) = train_pack([cross[1]], silent(1))
    for got, want in ((solo, straight[0]), (packed, straight[1])):
        assert got.resumed_from == 1
        assert_close_rows(got.run_dir, want.run_dir)
        assert_close_probes(got.run_dir, want.run_dir)


# ----------------------------------------------------------------------------- divergence


def test_a_diverging_member_stops_and_leaves_the_others_untouched(tmp_path: Path) -> None:
    tame = [["norm=none", *m] for m in MEMBERS]
    wild = ["norm=none", "train.seed=1", "optim.lr=1000"]
    calm = train_pack([config(tmp_path / "calm", *m) for m in tame], silent(3))
    wild_pack = [tame[0], wild, tame[2]]
    out = train_pack([config(tmp_path / "wild", *m) for m in wild_pack], silent(3))
    assert [o.status for o in out] == ["completed", "diverged", "completed"]

    # The diverged member: marked at its epoch, its folder a diverged run's.
    s = summary(out[1].run_dir)
    assert s["status"] == "diverged" and s["diverged_epoch"] == 1 and s["epochs"] == 1
    assert len(rows(out[1].run_dir)) == 1
    assert rows(out[1].run_dir)[0]["test_images"] == "200"  # a diverged row: the whole test set
    solo = train(config(tmp_path / "solo", *wild))
    assert solo.status == "diverged" and solo.summary is not None
    assert solo.summary["diverged_epoch"] == 1
    assert rows(out[1].run_dir)[0]["lr"] == rows(solo.run_dir)[0]["lr"]  # the same step

    # The others: bit for bit the pack in which that member trained normally (the
    # masking leaves their computations alone), not just close.
    for k in (0, 2):
        assert science(out[k].run_dir) == science(calm[k].run_dir)

    # ... and close to a pack without it (K=2: other kernel shapes, so to rounding).
    pair = train_pack([config(tmp_path / "pair", *m) for m in (tame[0], tame[2])], silent(2))
    for got, k in zip(pair, (0, 2), strict=True):
        assert_close_rows(got.run_dir, calm[k].run_dir)
        assert summary(got.run_dir)["pack"]["size"] == 2


# ----------------------------------------------------------------------------- resume


def test_a_killed_pack_resumes_to_the_same_metrics(straight: list[Any], tmp_path: Path) -> None:
    cfgs = [config(tmp_path, *m, extras=True) for m in MEMBERS]
    # Ctrl-C in the middle of epoch 2 (member 1's reporter, at its 6th step).
    with pytest.raises(KeyboardInterrupt):
        train_pack(cfgs, [SilentReporter(), StopAt(step=STEPS_PER_EPOCH + 2), SilentReporter()])
    for out in straight:
        run = tmp_path / out.run_dir.name
        assert len(rows(run)) == 1 and not (run / "summary.json").exists()
        assert load_checkpoint_file(run / "checkpoint.pt")["epoch"] == 1

    again = train_pack(cfgs, silent(3))
    for got, want in zip(again, straight, strict=True):
        assert got.status == "completed" and got.resumed_from == 1
        assert summary(got.run_dir)["resumed_from_epoch"] == 1
        # The same pack, resumed: the same numbers, bit for bit.
        assert science(got.run_dir) == science(want.run_dir)
        assert summary(got.run_dir)["bn_eval"] == summary(want.run_dir)["bn_eval"]

    # Finished members are not trained again: done, their files untouched; a new
    # member in the same call trains alone (a pack of one).
    stamps = {p: p.stat().st_mtime_ns for o in again for p in o.run_dir.iterdir()}
    new = ["train.seed=3", "optim.lr=0.003"]
    third = train_pack([*cfgs, config(tmp_path, *new, extras=True)], silent(4))
    assert [o.status for o in third] == ["done", "done", "done", "completed"]
    assert {p: p.stat().st_mtime_ns for o in again for p in o.run_dir.iterdir()} == stamps
    assert summary(third[3].run_dir)["pack"] == {
        "size": 1, "members": [third[3].run_dir.name], "index": 0
    }  # fmt: skip


def test_pack_checkpoints_resume_solo_and_in_other_packs(
    straight: list[Any], tmp_path: Path
) -> None:
    cfgs = [config(tmp_path, *m) for m in MEMBERS]
    # Stopped right after epoch 1 (every member's checkpoint is written first).
    with pytest.raises(KeyboardInterrupt):
        train_pack(cfgs, [StopAt(epoch_end=1), SilentReporter(), SilentReporter()])

    # Member 1 goes on alone: recipe.train resumes from the pack's checkpoint.
    solo = train(cfgs[1])
    assert solo.status == "completed" and solo.resumed_from == 1
    assert "pack" not in summary(solo.run_dir)
    assert_close_rows(solo.run_dir, straight[1].run_dir)
    assert science(solo.run_dir)[0] == science(straight[1].run_dir)[0]  # epoch 1: the pack's

    # A solo run stopped after its epoch 1 joins the rest in a pack (its checkpoint is
    # the solo format, the pack's too); member 1 is done; a fresh run, at another
    # epoch, trains as its own pack.
    solo_started = config(tmp_path, "train.seed=3", "optim.lr=0.003")
    with pytest.raises(KeyboardInterrupt):
        train(solo_started, StopAt(epoch_end=1))
    first_row = science(RunStore(tmp_path).run_dir(solo_started).path)[0]
    fresh = config(tmp_path, "train.seed=4", "optim.lr=0.003")
    out = train_pack([*cfgs, solo_started, fresh], silent(5))
    assert [o.status for o in out] == ["completed", "done", "completed", "completed", "completed"]
    assert [o.resumed_from for o in out] == [1, 0, 1, 1, 0]
    trio = [out[k].run_dir.name for k in (0, 2, 3)]
    for index, k in enumerate((0, 2, 3)):
        assert summary(out[k].run_dir)["pack"] == {"size": 3, "members": trio, "index": index}
    assert summary(out[4].run_dir)["pack"]["size"] == 1
    assert science(out[3].run_dir)[0] == first_row
    for k in (0, 2):
        assert science(out[k].run_dir)[0] == science(straight[k].run_dir)[0]
        assert_close_rows(out[k].run_dir, straight[k].run_dir)


def test_noisy_members_draw_their_solo_noise_and_resume_it(tmp_path: Path) -> None:
    # bn_noisy draws from each member's own generator: its state is the checkpoint's rng.
    members = [["norm=bn_noisy", *m] for m in MEMBERS[:2]]
    straight = train_pack([config(tmp_path / "straight", *m) for m in members], silent(2))
    for out, member in zip(straight, members, strict=True):
        assert_close_rows(out.run_dir, train(config(tmp_path / "solo", *member)).run_dir)
    cfgs = [config(tmp_path / "killed", *m) for m in members]
    with pytest.raises(KeyboardInterrupt):
        train_pack(cfgs, [StopAt(step=STEPS_PER_EPOCH + 1), SilentReporter()])
    for got, want in zip(train_pack(cfgs, silent(2)), straight, strict=True):
        assert got.resumed_from == 1
        assert science(got.run_dir) == science(want.run_dir)


def test_members_killed_before_their_summaries_are_finished_from_checkpoints(
    tmp_path: Path,
) -> None:
    tame = ["norm=none", "train.epochs=1", *MEMBERS[0]]
    wild = ["norm=none", "train.epochs=1", "train.seed=1", "optim.lr=1000"]
    cfgs = [config(tmp_path, *m, extras=True) for m in (tame, wild)]
    # Stopped after the last epoch's checkpoints, before any summary.json.
    with pytest.raises(KeyboardInterrupt):
        train_pack(cfgs, [StopAt(epoch_end=1), SilentReporter()])
    runs = [RunStore(tmp_path).run_dir(c) for c in cfgs]
    assert not any(r.summary_file.exists() for r in runs)
    before = [science(r.path) for r in runs]

    out = train_pack(cfgs, silent(2))
    assert [o.status for o in out] == ["completed", "diverged"]
    assert [science(o.run_dir) for o in out] == before  # nothing trained again
    names = [r.path.name for r in runs]
    for k, o in enumerate(out):
        s = summary(o.run_dir)
        assert s["resumed_from_epoch"] == 1 and s["epochs"] == 1
        assert s["pack"] == {"size": 2, "members": names, "index": k}  # the pack that trained it
    assert "bn_eval" in summary(out[0].run_dir) and "bn_eval" not in summary(out[1].run_dir)
    assert summary(out[1].run_dir)["diverged_epoch"] == 1


def test_a_busy_member_is_left_to_its_owner(tmp_path: Path) -> None:
    cfgs = [config(tmp_path, *m, "train.epochs=1") for m in MEMBERS[:2]]
    busy = RunStore(tmp_path).run_dir(cfgs[0])
    with busy.lock():  # another process training it
        out = train_pack(cfgs, silent(2))
    assert [o.status for o in out] == ["busy", "completed"]
    assert out[0].summary is None and not busy.summary_file.exists()
    assert summary(out[1].run_dir)["pack"]["size"] == 1


def test_a_crash_fails_every_member_it_hit(tmp_path: Path, monkeypatch) -> None:
    import bnlab.pack.run as pack_run

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(pack_run, "evaluate_pack", broken)
    cfgs = [config(tmp_path, *m, "train.epochs=1") for m in MEMBERS[:2]]
    with pytest.raises(PackFailed, match="boom") as err:
        train_pack(cfgs, silent(2))
    assert isinstance(err.value, RunFailed)
    assert [o.status for o in err.value.outcomes] == ["failed", "failed"]
    for o in err.value.outcomes:
        s = summary(o.run_dir)
        assert s["status"] == "failed" and "boom" in s["error"] and s["run_id"]
    monkeypatch.undo()
    assert [o.status for o in train_pack(cfgs, silent(2))] == ["completed", "completed"]


# ----------------------------------------------------------------------------- which runs pack


def test_solo_reasons() -> None:
    base = ["preset=smoke"]
    for kind in kinds_for("resnet"):  # every norm kind of the conv nets packs
        assert solo_reason(load_config([*base, f"norm={kind}"])) is None, kind
    assert solo_reason(load_config([*base, "norm.track_running_stats=false"])) is None
    assert solo_reason(load_config([*base, "norm=none", "model.init=fixup"])) is None
    assert solo_reason(load_config([*base, "norm=none", "model.init=skipinit"])) is None
    assert solo_reason(load_config([*base, PROBED])) is None  # measured per member
    cases = {
        "probe.bn_stats=true": "probe.bn_stats",
        f"{PROBED} probe.ics=true": "probe.ics",  # activations packs, ics does not
        "probe.landscape=true": "probe.landscape",
        "model.dropout=0.2": "dropout",
        "model=lstm": "model.arch=lstm",
        "model=transformer": "model.arch=transformer",
        "logger=wandb": "wandb",
    }
    for override, words in cases.items():
        cfg = load_config([*base, *override.split()])
        reason = solo_reason(cfg)
        assert reason is not None and words in reason, override
        assert pack_key(cfg) is None
    with pytest.raises(PackError, match="trains solo: probe"):
        train_pack([load_config([*base, "probe.ics=true"])], silent(1))


def test_pack_keys() -> None:
    base = ["preset=smoke"]
    key = pack_key(load_config(base))
    same = [
        "train.seed=5",
        "optim.lr=0.3",
        "optim.weight_decay=0",
        "optim.momentum=0.5",
        "optim.schedule=cosine",
        "optim.warmup_epochs=1",
        "model.init_scale=2",
        "model.init=xavier",
        "train.divergence_factor=100",
        "paths.runs=elsewhere",
        "experiment_name=lr",
    ]
    for override in same:
        assert pack_key(load_config([*base, override])) == key, override
    different = [
        "norm=gn",
        "norm.momentum=0.2",
        "model.depth=32",
        "model.width=32",
        "model.residual=false",
        "data.batch_size=32",
        "data.train_size=1024",
        "train.epochs=3",
        "optim.nesterov=true",
        "train.precision=bf16",
        "train.only_bn=true",
        "probe.bn_modes=true",
        PROBED,  # probes.csv or not: the probe keys are shared, so part of the key
    ]
    for override in different:
        assert pack_key(load_config([*base, override])) != key, override
    # Fixup and SkipInit build other modules: a key of their own, per init.
    fixup = pack_key(load_config([*base, "norm=none", "model.init=fixup"]))
    skipinit = pack_key(load_config([*base, "norm=none", "model.init=skipinit"]))
    plain = pack_key(load_config([*base, "norm=none"]))
    assert len({fixup, skipinit, plain}) == 3
    assert plain == pack_key(load_config([*base, "norm=none", "model.init=orthogonal"]))
    with pytest.raises(PackError, match="per-member"):
        train_pack([load_config(base), load_config([*base, "norm=gn"])], silent(2))
