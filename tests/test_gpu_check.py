"""scripts/gpu_check.sh (the one command for a GPU machine), its wheelhouse, and the
preset=gpu budget -- all checked here, on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bnlab.sweep.grid import suite
from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "gpu_check.sh"
WHEELHOUSE = REPO / "wheelhouse"
sys.path.insert(0, str(REPO / "scripts"))


def gpu_check(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("BNLAB_RUNS", None)
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


@pytest.mark.e2e
def test_smoke_runs_the_whole_sequence_and_leaves_what_a_commit_needs(tmp_path):
    out = tmp_path / "out"
    # The current environment instead of the wheelhouse (that install is
    # test_wheelhouse_installs_and_imports's, and CI's `gpu_check.sh --smoke`).
    proc = gpu_check("--smoke", "--no-install", "--runs", str(tmp_path / "runs"), str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = {p.name for p in out.iterdir()}
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir())
    assert {"status.json", "check.log", "bench.json", "pack.json"} <= files
    assert {"runs.tar.gz", "report.tar.gz"} <= files

    status = json.loads((out / "status.json").read_text())
    assert status["smoke"] is True and status["device"]["device"] == "cpu"
    steps = ["tests", "bench", "bench512", "profile", "pack", "graph_test", "sweep", "report"]
    assert list(status["steps"]) == steps
    assert all(s["outcome"] == "ok" for s in status["steps"].values()), status["steps"]
    # The graphed-pack test skips without CUDA: the packs train eager, and the sweep says so.
    assert status["pack_graph"] is False
    # bn and none at lr 0.05 and 50: all four finish, lr 50 diverges.
    assert sum(status["runs"].values()) == 4 and set(status["runs"]) <= {"completed", "diverged"}
    assert status["runs"]["diverged"] >= 2

    bench = json.loads((out / "bench.json").read_text())
    (variant,) = bench["variants"]
    assert variant["variant"] == "fp32-cl-eager" and variant["a_bnlab_images_per_s"] > 0
    assert json.loads((out / "bench512.json").read_text())["batch"] == 512
    pack = json.loads((out / "pack.json").read_text())
    assert {(row["mode"], row["k"]) for row in pack} >= {("solo", 1), ("eager", 1), ("eager", 2)}

    with tarfile.open(out / "runs.tar.gz") as tar:
        names = tar.getnames()
    runs = {Path(n).parent.name for n in names if n.endswith("summary.json")}
    assert len(runs) == 4
    assert not any("checkpoint" in n or ".sweeps" in n for n in names)
    with tarfile.open(out / "report.tar.gz") as tar:
        assert "report/report.md" in tar.getnames()
    log = (out / "check.log").read_text()
    assert "4 runs (" in log and "== report: exit 0" in log
    assert "== the packs' steps as CUDA graphs: false" in log and "sweep.pack_graph=false" in log
    assert '"kernel_launches_per_step"' in log and '"top_cpu_ops"' in log  # the profile


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "usage"),
        (["--minutes", "abc", "OUT"], "--minutes"),
        (["--minutes", "0", "OUT"], "--minutes"),
        (["--n-jobs", "0", "OUT"], "--n-jobs"),
        (["--steps", "tests,nope", "OUT"], "unknown step 'nope'"),
        (["--frobnicate", "OUT"], "unknown option"),
        (["A", "B"], "one OUT_DIR only"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, needle):
    args = [str(tmp_path / a) if a in ("OUT", "A", "B") else a for a in args]
    proc = gpu_check(*args, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: error:") and needle in lines[0]
    assert not (tmp_path / "OUT").exists() or not any((tmp_path / "OUT").iterdir())


def test_a_non_empty_out_dir_is_refused(tmp_path):
    (tmp_path / "old.json").write_text("{}")
    proc = gpu_check("--smoke", str(tmp_path), timeout=60)
    assert proc.returncode == 2 and "not empty" in proc.stderr


@pytest.mark.skipif(
    not list(WHEELHOUSE.glob("*.whl")), reason="no wheelhouse/ (make wheelhouse builds it)"
)
def test_wheelhouse_installs_and_imports():
    from check_wheelhouse import check

    check(WHEELHOUSE)  # raises SystemExit or CalledProcessError on any problem


def test_gpu_budget_rates_are_the_measured_ones_in_between_and_beyond():
    import gpu_budget as g

    # Every measured point comes back exactly (step_ms and pack_rate invert each other).
    for mode, by_batch in g.MEASURED.items():
        for batch, points in by_batch.items():
            for k, rate in points.items():
                assert g.pack_rate(mode, k, batch) == pytest.approx(rate, rel=1e-9), (mode, k)
    # Between measured K: linear in K (graph K=8 and 16 -> K=12 halfway); batch linear
    # between 2 and 128; above 128 the batch-128 step of K x batch/128 runs.
    mid = (g.step_ms(g.GRAPH, 8, 128) + g.step_ms(g.GRAPH, 16, 128)) / 2
    assert g.step_ms(g.GRAPH, 12, 128) == pytest.approx(mid)
    mid = (g.step_ms(g.GRAPH, 1, 2) + g.step_ms(g.GRAPH, 1, 128)) / 2
    assert g.step_ms(g.GRAPH, 1, 65) == pytest.approx(mid)
    assert g.step_ms(g.GRAPH, 8, 512) == pytest.approx(g.step_ms(g.GRAPH, 32, 128))
    # Bigger packs are faster per image, and eager never beats the graph.
    for batch in (2, 8, 32, 128, 512):
        for mode in (g.EAGER, g.GRAPH):
            rates = [g.pack_rate(mode, k, batch) for k in (1, 2, 3, 6, 8, 15, 16, 32, 48, 64)]
            assert rates == sorted(rates), (mode, batch)
        for k in (1, 3, 15, 32, 64, 100):
            assert g.pack_rate(g.EAGER, k, batch) <= g.pack_rate(g.GRAPH, k, batch)
    # Processes sharing the GPU: 48,097 img/s from four, 18,174 from one (measured).
    assert g.share(1) == 1 and 4 * g.share(4) == pytest.approx(48_097 / 18_174, abs=0.01)
    assert 16 * g.share(16) == pytest.approx(8 * g.share(8))  # no gain past the last measured


@pytest.mark.e2e
def test_preset_gpu_sweep_plans_packs_and_stays_within_its_measured_budget():
    import gpu_budget as g

    rows = g.pack_budget()  # sweep.pack=auto on a GPU, one unit at a time
    grids = REPO / "conf" / "grid"
    claims = set(suite(["experiment=all", "preset=gpu"]))  # conf/grid/_suites.yaml
    assert {r.experiment for r in rows} == claims, "the plan is experiment=all's at preset=gpu"
    # Fewer than 3 seeds only where no verdict is decided, and the grid file says so.
    for r in rows:
        text = (grids / f"{r.experiment}.yaml").read_text()
        assert r.seeds >= 3 or "exploratory" in text, (r.experiment, r.seeds)

    # The plan is the sweep's: every new run in one unit; the seeds and lrs of one arm in
    # one pack; the activations probe packs (ics), the landscape probe and the sequence
    # models do not; preset=gpu trains its packs eager (train.compile=false).
    plan = {r.experiment: sorted((u.k for u in r.units), reverse=True) for r in rows}
    for r in rows:
        assert sum(u.k for u in r.units) == r.new_runs, r.experiment
        assert all(u.mode == g.EAGER for u in r.units), r.experiment
    assert plan["lr"] == [30, 18, 18, 18] and plan["convergence"] == []  # lr's runs
    assert plan["ics"] == [3, 3, 3, 3]
    assert set(plan["landscape"]) == {1}
    sequence = next(r for r in rows if r.experiment == "sequence")
    assert set(plan["sequence"]) == {1} and not any(u.measured for u in sequence.units)

    # The ResNet claims at the measured rates (gpu_budget.py): with issue 24's grids
    # (2026-12-05) 89.7 minutes one unit at a time, 36.7 with 4 units sharing the GPU --
    # far from a lent session (the small-batch grid is most of it; README, "On a GPU").
    # Kept within 10% of that, so that a bigger grid (or a packing lost) is a decision.
    measured = [r for r in rows if all(u.measured for u in r.units)]
    one = sum(r.seconds for r in measured) / 60
    four = sum(g.experiment_seconds(r.units, 4) for r in measured) / 60
    assert one <= 99.0 and four <= 40.5, f"{one:.1f} min one unit at a time, {four:.1f} at 4"
    images = sum(r.images for r in rows)
    assert images <= 60e6, "preset=gpu: every claim within 60M training images (ARCHITECTURE.md)"

    # The jobs mode's arithmetic (at conf/scale/gpu.yaml's 60,000 img/s with n_jobs=4), on
    # one claim: the lr grid's 84 runs of 20,000 images x 5 epochs.
    others = [r.experiment for r in rows if r.experiment != "lr"]
    (jobs,) = g.budget(g.read_throughput(), skip=others)
    assert jobs.new_runs == 84 and round(jobs.seconds / 60, 1) == 3.6


def test_the_budget_costs_sweep_pack_graph_as_the_sweep_trains_it():
    # sweep.pack_graph=true: the packs' steps as CUDA graphs, the runs alone eager (the
    # sweep sets train.compile on pack members only, bnlab.sweep.packs.graphed).
    import gpu_budget as g

    others = [n for n in suite(["preset=gpu"]) if n not in ("ics", "landscape")]
    eager = {r.experiment: r for r in g.pack_budget(skip=others)}
    graph = {r.experiment: r for r in g.pack_budget(["sweep.pack_graph=true"], skip=others)}
    assert {u.mode for u in eager["ics"].units} == {g.EAGER}  # packs of 3, eager by default
    assert {(u.k > 1, u.mode) for u in graph["ics"].units} == {(True, g.GRAPH)}
    assert {(u.k, u.mode) for u in graph["landscape"].units} == {(1, g.EAGER)}  # alone
    assert graph["ics"].seconds < eager["ics"].seconds
    assert graph["landscape"].seconds == eager["landscape"].seconds


def test_the_gpu_suite_tunes_small_batch_between_its_two_sweeps(tmp_path):
    # preset=gpu's small-batch bases are not tuned yet: the claims whose runs tune them
    # (lr, batch_tune) sweep first, scripts/tune_small_batch.py writes the bases, then
    # the rest of the suite, small_batch included.
    proc = gpu_check("--no-install", "--print-sweeps", str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first, rest = (line.split(",") for line in proc.stdout.strip().splitlines()[-2:])
    assert {"lr", "batch_tune"} <= set(first) and "small_batch" in rest
    assert first + rest == [n for n in suite(["preset=gpu"]) if n in first + rest]
    assert set(suite(["preset=gpu"])) - set(first + rest) <= {"sequence"}  # no Fashion-MNIST
    script = SCRIPT.read_text()
    assert 'scripts/tune_small_batch.py --runs "$RUNS" --preset gpu --write' in script
