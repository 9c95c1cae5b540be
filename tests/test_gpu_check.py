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
    steps = ["tests", "bench", "bench512", "profile", "pack", "sweep", "report"]
    assert list(status["steps"]) == steps
    assert all(s["outcome"] == "ok" for s in status["steps"].values()), status["steps"]
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


@pytest.mark.e2e
def test_preset_gpu_sweep_fits_twenty_minutes_at_the_stated_throughput():
    from gpu_budget import budget, read_throughput

    tp = read_throughput()
    rows = budget(tp)
    grids = REPO / "conf" / "grid"
    claims = {p.stem for p in grids.glob("*.yaml")} - {"_shared"}
    assert {r.experiment for r in rows} == claims, "every experiment needs conf/grid/NAME.yaml"
    # Fewer than 3 seeds only where no verdict is decided, and the grid file says so.
    for r in rows:
        text = (grids / f"{r.experiment}.yaml").read_text()
        assert r.seeds >= 3 or "exploratory" in text, (r.experiment, r.seeds)
    minutes = sum(r.seconds for r in rows) / 60
    assert minutes <= 20, f"experiment=all preset=gpu: {minutes:.1f} min at {tp.img_per_s} img/s"
