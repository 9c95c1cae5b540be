"""`bnlab sweep`: grids through Hydra multirun, resumable, on real launchers."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bnlab.cli import app
from tests.conftest import BNLAB, REPO, run_bnlab

SMOKE = ["preset=smoke", "train.epochs=1"]


def run_dirs(runs: Path) -> list[Path]:
    return sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith("."))


def summaries(runs: Path) -> dict[str, dict]:
    return {p.name: json.loads((p / "summary.json").read_text()) for p in run_dirs(runs)}


def _assert_clean_error(proc, needle: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnlab: error:"), proc.stderr
    assert needle in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_dry_run_lists_an_experiment_grid_and_writes_nothing(runs):
    proc = run_bnlab("sweep", "experiment=depth", "--dry-run", f"paths.runs={runs}")
    assert proc.returncode == 0, proc.stderr
    assert "36 runs (36 new); would run" in proc.stdout  # 3 depths x 2 x 2 norms x 3 seeds
    assert "model.depth" in proc.stdout and "model.residual" in proc.stdout
    assert not runs.exists()


def test_dry_run_all_covers_every_claim(runs):
    proc = run_bnlab("sweep", "experiment=all", "preset=cpu", "--dry-run", f"paths.runs={runs}")
    assert proc.returncode == 0, proc.stderr
    for name in ("lr", "depth", "batch", "init", "regularization", "convergence", "inference"):
        assert f"{name}:" in proc.stdout, name


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["experiment=nope"], "experiment 'nope'"),
        (["norm=bn,none", "optim.lr=0.1,abc"], "optim.lr=abc"),
        (["model.depth=20,21"], "model.depth=21"),
        (["hydra/launcher=nope", "norm=bn,none"], "hydra/launcher 'nope'"),
        (["norm=bn,nonsense"], "nonsense"),
    ],
)
def test_bad_sweep_input_fails_before_any_run(runs, args, needle):
    proc = run_bnlab("sweep", *args, *SMOKE, f"paths.runs={runs}")
    _assert_clean_error(proc, needle)
    assert not runs.exists()


def test_sweep_runs_the_grid_then_skips_it(runs):
    args = ["sweep", "norm=bn,none", "optim.lr=0.05,50", *SMOKE, f"paths.runs={runs}"]
    proc = run_bnlab(*args)
    assert proc.returncode == 0, proc.stderr  # diverged runs are results, not failures
    assert len(run_dirs(runs)) == 4
    statuses = {s["status"] for s in summaries(runs).values()}
    assert statuses <= {"completed", "diverged"} and "diverged" in statuses
    assert "4 runs (" in proc.stdout

    stamps = {p: p.stat().st_mtime_ns for d in run_dirs(runs) for p in d.iterdir()}
    again = run_bnlab(*args)
    assert again.returncode == 0
    assert len(run_dirs(runs)) == 4
    assert {p: p.stat().st_mtime_ns for d in run_dirs(runs) for p in d.iterdir()} == stamps


def test_a_failing_run_does_not_stop_the_sweep(runs, monkeypatch):
    import bnlab.recipe

    real_fit = bnlab.recipe.fit

    def fit(model, train_loader, test_loader, cfg, *args, **kwargs):
        if cfg.norm.kind == "none":
            raise RuntimeError("simulated crash")
        return real_fit(model, train_loader, test_loader, cfg, *args, **kwargs)

    monkeypatch.setattr(bnlab.recipe, "fit", fit)
    result = CliRunner().invoke(app, ["sweep", "norm=none,bn", *SMOKE, f"paths.runs={runs}"])
    assert result.exit_code == 1, result.output
    by_norm = {name.split("-")[1]: s for name, s in summaries(runs).items()}
    assert by_norm["none"]["status"] == "failed"
    assert "simulated crash" in by_norm["none"]["error"]
    assert by_norm["bn"]["status"] == "completed"  # ran after the failure


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_sweep_completes_on_rerun_without_duplicates(runs, sig):
    args = [
        "sweep", "norm=bn,gn,ln", "preset=smoke", "train.epochs=3", "data.train_size=768",
        f"paths.runs={runs}",
    ]  # fmt: skip
    # A shell starts background jobs (`make test &`) with SIGINT ignored, and the child
    # would inherit that: start it with the default disposition, as a terminal's Ctrl-C sees.
    proc = subprocess.Popen(
        [*BNLAB, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.time() + 240
    # Kill while the second run is in flight: the first is done, the third not started.
    seen: list[tuple[int, int]] = []
    while time.time() < deadline and proc.poll() is None:
        done = [d for d in run_dirs(runs) if (d / "summary.json").exists()] if runs.exists() else []
        state = (len(done), len(run_dirs(runs)) if runs.exists() else 0)
        seen += [state] if not seen or seen[-1] != state else []
        if state == (1, 2):
            break
        time.sleep(0.05)
    assert seen and seen[-1] == (1, 2), f"never saw run 2 in flight: (done, dirs) went {seen}"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    if sig == signal.SIGINT:
        assert proc.returncode == 130, out + err
        assert "interrupted" in err and "Traceback" not in err
    unfinished = [d for d in run_dirs(runs) if not (d / "summary.json").exists()]
    assert len(unfinished) >= 1, "the sweep finished before it could be killed"

    rerun = run_bnlab(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert len(run_dirs(runs)) == 3
    assert all(s["status"] == "completed" and s["epochs"] == 3 for s in summaries(runs).values())


def test_overlapping_sweeps_at_once_do_not_corrupt_each_other(runs):
    common = [*SMOKE, "train.epochs=2", "train.threads=1", f"paths.runs={runs}"]
    a = subprocess.Popen([*BNLAB, "sweep", "norm=bn,none", *common], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    b = subprocess.Popen([*BNLAB, "sweep", "norm=none,bn", *common], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    for p in (a, b):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, out + err
    assert len(run_dirs(runs)) == 2
    rerun = run_bnlab("sweep", "norm=bn,none", *common)
    assert rerun.returncode == 0
    for d in run_dirs(runs):
        summary = json.loads((d / "summary.json").read_text())
        assert summary["status"] in ("completed", "diverged")
        rows = (d / "metrics.csv").read_text().strip().splitlines()
        assert len(rows) == 1 + summary["epochs"]
        assert not list(d.glob(".*.tmp"))


def test_joblib_runs_jobs_in_parallel_with_one_thread_each(runs):
    proc = run_bnlab(
        "sweep", "norm=bn,gn", *SMOKE, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        f"paths.runs={runs}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    found = summaries(runs)
    assert len(found) == 2
    assert all(s["status"] == "completed" and s["threads"] == 1 for s in found.values())
    # Two processes really ran: each run was trained by a different pid.
    assert len({s["pid"] for s in found.values()}) == 2


def test_submitit_local_runs_the_grid(runs):
    proc = run_bnlab(
        "sweep", "norm=bn,ln", *SMOKE, "hydra/launcher=submitit_local", f"paths.runs={runs}"
    )
    assert proc.returncode == 0, proc.stderr
    assert {s["status"] for s in summaries(runs).values()} == {"completed"}
    assert list((runs / ".sweeps").glob("*/.submitit"))


def test_slurm_dry_run_shows_the_sbatch_script_with_requeue_settings(runs):
    proc = run_bnlab(
        "sweep", "experiment=depth", "hydra/launcher=submitit_slurm",
        "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=1", "--dry-run",
        f"paths.runs={runs}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "#SBATCH --partition=gpu" in proc.stdout
    assert "#SBATCH --gpus-per-node=1" in proc.stdout
    shipped = run_bnlab("sweep", "experiment=depth", "hydra/launcher=slurm", "--dry-run",
                        f"paths.runs={runs}")  # fmt: skip
    assert "#SBATCH --signal=USR2@120" in shipped.stdout  # the requeue warning signal
    assert "#SBATCH --time=120" in shipped.stdout
    assert not runs.exists()


def test_slurm_launcher_requeues_through_the_checkpoint():
    from bnlab.sweep.grid import expand

    sweep = expand(["norm=bn,none", "hydra/launcher=slurm"])
    # submitit resubmits a timed-out/preempted job up to max_num_timeout times; the
    # rerun finds the run's checkpoint (same identity) and resumes.
    assert sweep.launcher_params["max_num_timeout"] > 0
    assert sweep.launcher_params["_target_"].endswith("SlurmLauncher")


def test_the_committed_cpu_grid_is_found_complete_by_a_rerun():
    # Run identity must stay stable as the schema grows: rerunning the CPU suite over
    # the committed results finds every grid point done instead of training it again.
    runs = REPO / "results" / "cpu" / "runs"
    proc = run_bnlab("sweep", "experiment=all", "preset=cpu", "--dry-run", f"paths.runs={runs}")
    assert proc.returncode == 0, proc.stderr
    assert "81 runs (" in proc.stdout
    assert " new" not in proc.stdout and "partial" not in proc.stdout
