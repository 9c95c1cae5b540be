"""`bnlab sweep`: grids through Hydra multirun, resumable, on real launchers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bnlab.cli import RESUME_HINT, app
from bnlab.sweep.grid import suite
from tests.conftest import BNLAB, REPO, run_bnlab

# experiment=all is every experiment in conf/experiment.

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
    # (BN and He init in plain and residual nets, Fixup and SkipInit residual: 6 arms) x 4
    # depths x 3 lrs x 3 seeds
    assert "216 runs (216 new); would run" in proc.stdout
    assert "model.depth" in proc.stdout and "arm" in proc.stdout
    assert not runs.exists()


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


@pytest.mark.e2e
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

    def fit(model, spec, loaders, run, *args, **kwargs):
        if run.path.name.split("-")[1] == "none":  # fit sees no config: the run's folder name
            raise RuntimeError("simulated crash")
        return real_fit(model, spec, loaders, run, *args, **kwargs)

    monkeypatch.setattr(bnlab.recipe, "fit", fit)
    result = CliRunner().invoke(app, ["sweep", "norm=none,bn", *SMOKE, f"paths.runs={runs}"])
    assert result.exit_code == 1, result.output
    by_norm = {name.split("-")[1]: s for name, s in summaries(runs).items()}
    assert by_norm["none"]["status"] == "failed"
    assert "simulated crash" in by_norm["none"]["error"]
    assert by_norm["bn"]["status"] == "completed"  # ran after the failure


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_sweep_completes_on_rerun_without_duplicates(runs, sig):
    args = [
        "sweep", "norm=bn,gn,ln", "preset=smoke", "train.epochs=3", "data.train_size=512",
        "model.depth=8", f"paths.runs={runs}",
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


def _children(pid: int) -> set[int]:
    """The live processes whose parent is pid (read from /proc: Linux only, as CI)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.e2e
def test_kill_stops_a_joblib_sweep_and_its_workers(runs):
    """SIGTERM (`kill PID`, what a job manager sends) ends the workers too, not the
    parent alone: no orphan keeps training into the runs folder."""
    args = [
        "sweep", "norm=bn,gn", "preset=smoke", "train.epochs=50", "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2", f"paths.runs={runs}",
    ]  # fmt: skip
    proc = subprocess.Popen([*BNLAB, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if runs.exists() and len([d for d in run_dirs(runs) if (d / "metrics.csv").exists()]) == 2:
            break
        time.sleep(0.1)
    workers = _children(proc.pid)
    assert proc.poll() is None and len(workers) >= 2, "both runs never got under way"
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
        deadline = time.time() + 30
        while time.time() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.2)
        orphans = [p for p in workers if _alive(p)]
    finally:  # a failing run of this test leaves nothing training behind
        for pid in (p for p in workers if _alive(p)):
            os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
    out, err = proc.communicate(timeout=60)
    assert not orphans, "worker processes outlived the sweep"
    assert proc.returncode == 130, out + err
    assert f"bnlab: error: {RESUME_HINT}" in err and "Traceback" not in err, err
    assert not any((d / "summary.json").exists() for d in run_dirs(runs))


@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_the_cpu_grid_covers_every_claim_and_finds_every_committed_run_done():
    # One dry run of the CPU suite (it takes minutes) checks two things. The headline
    # claims' grids are experiment=all at preset=cpu (conf/grid/_suites.yaml), and with
    # the sequence family (its own command, README) they hold every results/cpu run. And
    # run identity stays stable as the schema grows: every committed run is found done
    # (by its run id) at a grid point instead of being trained again, none partial.
    runs = REPO / "results" / "cpu" / "runs"
    committed = {p.name.rsplit("-", 1)[1] for p in runs.iterdir() if (p / "summary.json").exists()}
    assert committed, "results/cpu/runs holds no finished run"
    names = [*suite(["experiment=all", "preset=cpu"]), "sequence"]
    listed = f"experiment={','.join(names)}"
    proc = run_bnlab("sweep", listed, "preset=cpu", "--dry-run", f"paths.runs={runs}")
    assert proc.returncode == 0, proc.stderr
    for i, name in enumerate(names, start=1):
        assert f"{name}:" in proc.stdout, name
        # the minutes of composition are not silent
        assert f"composing experiment={name} ({i}/{len(names)})" in proc.stderr
    found_done = {
        row.split("│")[-2].strip()
        for row in proc.stdout.splitlines()
        if row.count("│") > 2 and not re.search(r"│ (new|partial)\s*│", row)
    }
    assert committed <= found_done, sorted(committed - found_done)
    assert "partial" not in proc.stdout


# ----------------------------------------------------------------------------- the adapter
# bnlab.sweep.adapters holds every private Hydra/submitit API bnlab uses; these
# check that it still behaves on the installed versions.


def test_installed_hydra_and_submitit_are_the_versions_the_adapter_is_tested_on():
    from bnlab.sweep.adapters import untested_versions

    problems = untested_versions()
    assert not problems, (
        "bnlab.sweep.adapters uses private Hydra/submitit APIs and is tested only on "
        "TESTED_VERSIONS: " + "; ".join(problems)
    )


def test_pyproject_pins_the_ranges_the_adapter_is_tested_on():
    tomllib = pytest.importorskip("tomllib")
    from bnlab.sweep.adapters import TESTED_VERSIONS

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for name, (low, high) in TESTED_VERSIONS.items():
        assert f"{name}>={low},<{high}" in deps, f"pyproject.toml should pin {name}>={low},<{high}"


def test_a_version_outside_the_tested_range_is_named(monkeypatch):
    from importlib import metadata

    from bnlab.sweep import adapters

    real = metadata.version
    monkeypatch.setattr(
        adapters.metadata, "version", lambda n: "1.4.0" if n == "hydra-core" else real(n)
    )
    assert adapters.untested_versions() == [
        "hydra-core 1.4.0 is outside the range bnlab.sweep.adapters is tested on (>=1.3.8,<1.4)"
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        ["norm=bn,none", "optim.lr=0.1,1", "x=2"],
        ["arm=bn,fixup", "optim.lr=0.1,1", "train.seed=0,1,2", "optim.lr=0.3", "+a=b"],
        ["train.seed=range(0,3)", "norm=choice(bn,gn)", "x='a b'", "norm=ln,bn"],
        ["x=1"],
    ],
)
def test_split_grid_is_hydra_basic_sweepers_order(overrides):
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # the reference
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from bnlab.sweep.adapters import split_grid

    parsed = OverridesParser.create().parse_overrides(overrides)
    [hydras] = BasicSweeper.split_arguments(parsed, None)
    assert split_grid(parsed) == [list(job) for job in hydras]
    if overrides[0] == "norm=bn,none":
        assert split_grid(parsed) == [
            ["norm=bn", "optim.lr=0.1", "x=2"],
            ["norm=bn", "optim.lr=1", "x=2"],
            ["norm=none", "optim.lr=0.1", "x=2"],
            ["norm=none", "optim.lr=1", "x=2"],
        ]


def test_an_interval_sweep_is_refused_in_one_line():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from bnlab.errors import BnlabError
    from bnlab.sweep.adapters import split_grid

    parsed = OverridesParser.create().parse_overrides(["optim.lr=interval(0.1,1)"])
    with pytest.raises(BnlabError, match="only lists, choice"):
        split_grid(parsed)


def test_sbatch_text_renders_without_slurm_installed(tmp_path, monkeypatch):
    from submitit.slurm.slurm import SlurmExecutor

    from bnlab.sweep.adapters import sbatch_text
    from bnlab.sweep.grid import expand

    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch
    params = expand(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"]).launcher_params
    text = sbatch_text(params, tmp_path / "sweep", "bnlab")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --mem=32GB",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --job-name=bnlab"):  # fmt: skip
        assert line in text, line
    assert f"--output {tmp_path}/sweep/.submitit/%j/%j_%t_log.out" in text
    assert SlurmExecutor.affinity() == -1  # submitit itself is left as it was


def test_submitit_errors_are_told_apart():
    import subprocess

    from submitit.core.utils import FailedJobError, UncompletedJobError

    from bnlab.sweep.adapters import sbatch_refusal

    refused = FailedJobError("sbatch: error: invalid partition specified: x")
    refused.__cause__ = subprocess.CalledProcessError(
        1, ["sbatch", "job.sh"], stderr="sbatch: error: invalid partition specified: x"
    )
    assert sbatch_refusal(refused) == "sbatch: error: invalid partition specified: x"
    lost = UncompletedJobError("Job 12_0 has not produced any output (state: CANCELLED)")
    assert sbatch_refusal(lost) is None
    assert sbatch_refusal(RuntimeError("a bug")) is None


# Grid points as a sweep expands them: group choices and values, in Hydra's order. The
# second and fourth share their group choices with the first and third, after a point
# that set values: what one point sets must not leak into the next.
GRID_POINTS = [
    ["experiment=lr", "preset=cpu", "arm=fixup", "optim.lr=0.01", "train.seed=2"],
    ["experiment=lr", "preset=cpu", "arm=fixup"],
    ["norm=gn", "norm.groups=4", "model.depth=56"],
    ["norm=gn"],
    ["preset=smoke", "data.train_size=768", "optim.milestones=[0.3,0.6]"],
]
BAD_POINTS = [
    ["optim.lr=abc"],  # wrong type
    ["optim.nosuch=1"],  # unknown key
    ["norm=nosuch"],  # unknown option
    ["+optim.extra=1"],  # a key no code reads
    ["optim.lr=[1"],  # cannot parse
    ["~model.nosuch"],  # nothing to delete
]


@pytest.mark.parametrize("points", [GRID_POINTS, BAD_POINTS], ids=["configs", "errors"])
def test_grid_composer_gives_load_configs_config_or_error_at_every_point(points):
    from omegaconf import OmegaConf

    from bnlab.compose import load_config
    from bnlab.errors import BnlabError
    from bnlab.sweep.compose_grid import GridComposer

    def outcome(load, overrides):
        try:
            cfg = load(overrides)
        except BnlabError as err:
            return f"error: {err}"
        return OmegaConf.to_yaml(cfg) + repr(OmegaConf.get_type(cfg.norm))

    composer = GridComposer()
    for overrides in points:
        want_error = points is BAD_POINTS
        assert outcome(load_config, overrides).startswith("error") == want_error, overrides
        assert outcome(composer.load, overrides) == outcome(load_config, overrides), overrides


def test_grid_composer_composes_each_set_of_group_choices_once():
    from bnlab.sweep.compose_grid import GridComposer

    composer = GridComposer()
    lrs = [composer.load(["norm=bn", f"optim.lr={lr}"]).optim.lr for lr in (0.1, 0.3)]
    composer.load(["norm=gn", "optim.lr=0.1"])
    assert lrs == [0.1, 0.3] and composer.compositions == 2
