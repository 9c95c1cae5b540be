"""SLURM: bnlab's checks and messages (fast, no cluster), then sweeps on a real cluster.

The cluster tests (marker `slurm`, `make test-slurm`) start a single-node SLURM
from Debian's packages in a temporary folder (tests/slurm_cluster.py) and run
`bnlab sweep ... hydra/launcher=slurm` against it as a user would: jobs run,
a preempted job resumes, a cancelled one is reported, refusals are one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bnlab.sweep import slurm as bnlab_slurm
from tests.conftest import BNLAB, REPO, run_bnlab
from tests.slurm_cluster import PACKAGES, SHORT_PARTITION, SlurmCluster, missing_tools

SMOKE = ["preset=smoke"]
# What a job asks of the test cluster's CPU-only node (the shipped slurm.yaml asks a GPU).
CPU_JOB = [
    "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
]  # fmt: skip
SCIENCE = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")
# The README's command for a CPU-only cluster (2 cores, 2 GB: the whole test node).
README_CPU_JOB = [
    "hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=2",
    "hydra.launcher.mem_gb=2",
]  # fmt: skip


# ----------------------------------------------------------------------------- no cluster needed


def _fake_sinfo(monkeypatch: pytest.MonkeyPatch) -> None:
    """sinfo of a cluster with a CPU partition `debug` (default) and a GPU partition `gpu`."""
    answers = {
        "%P": "debug*\ngpu\n",
        "%P|%c|%m|%G": "debug*|2|2048|(null)\ngpu|16|64000|gpu:a100:4(S:0-1)\n",
    }

    def run(*cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        fmt = cmd[cmd.index("-o") + 1]
        return subprocess.CompletedProcess(list(cmd), 0, answers.get(fmt, ""), "")

    monkeypatch.setattr(bnlab_slurm, "_run", run)


@pytest.mark.parametrize(
    ("stderr", "params", "expected"),
    [
        (
            "sbatch: error: Invalid generic resource (gres) specification",
            {"gpus_per_node": 1},
            "SLURM refused the job: Invalid generic resource (gres) specification; the cluster "
            "has no such GPUs: change hydra.launcher.gpus_per_node "
            "(hydra.launcher.gpus_per_node=0 on a CPU-only cluster)",
        ),
        (
            "sbatch: error: invalid partition specified: nosuch\n"
            "allocation failure: Invalid partition name specified",
            {"partition": "nosuch"},
            "SLURM refused the job: invalid partition specified: nosuch; "
            "set hydra.launcher.partition to one of: debug, gpu",
        ),
        (
            "sbatch: error: Memory specification can not be satisfied\n"
            "sbatch: error: Batch job submission failed: Requested node configuration is not "
            "available",
            {"mem_gb": 32, "cpus_per_task": 8},
            "SLURM refused the job: Memory specification can not be satisfied; more than any "
            "node of the default partition has: lower hydra.launcher.cpus_per_task (largest "
            "node: 2 CPUs), hydra.launcher.mem_gb (largest node: 2 GB)",
        ),
        (
            "allocation failure: Requested node configuration is not available",
            {"partition": "gpu", "gpus_per_node": 8},
            "SLURM refused the job: Requested node configuration is not available; more than "
            "any node of partition gpu has: lower hydra.launcher.gpus_per_node (largest node: 4)",
        ),
    ],
    ids=["gpus", "partition", "memory", "gpus-per-node"],
)
def test_a_refusal_is_one_line_naming_the_key(monkeypatch, stderr, params, expected):
    _fake_sinfo(monkeypatch)
    assert bnlab_slurm.explain_refusal(stderr, params) == expected


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("1:00", 1), ("30", 30), ("1:30:00", 90), ("2-00:00:00", 2880), ("infinite", None)],
)
def test_slurm_time_limits_read_as_minutes(text, minutes):
    assert bnlab_slurm._minutes(text) == minutes


def test_the_watch_cancels_jobs_that_can_never_start_and_only_those(tmp_path, monkeypatch):
    queue = [("7_0", "PENDING", "PartitionTimeLimit"), ("7_1", "PENDING", "Resources")]
    cancelled: list[str] = []
    watch = bnlab_slurm.JobWatch(["7_0", "7_1"], {"timeout_min": 120}, never_starts_after_s=10)
    monkeypatch.setattr(watch, "queue", lambda: queue)
    monkeypatch.setattr(watch, "cancel", lambda: cancelled.append("all"))
    monkeypatch.setattr(bnlab_slurm, "never_starts_hint", lambda reason, params: "the hint")
    clock = [100.0]
    monkeypatch.setattr(bnlab_slurm.time, "monotonic", lambda: clock[0])
    watch.poll()
    clock[0] += 9  # not yet: a reason must persist (not a scheduler blip)
    watch.poll()
    assert watch.fatal is None and not cancelled
    queue.pop(0)  # the time-limited job left; Resources is a busy cluster, not a dead end
    clock[0] += 3600
    watch.poll()
    assert watch.fatal is None and not cancelled
    queue.append(("7_0", "PENDING", "PartitionTimeLimit"))
    watch.poll()
    clock[0] += 10
    watch.poll()
    assert cancelled == ["all"]
    assert watch.fatal == (
        "SLURM job 7_0 can never start (PartitionTimeLimit: the time limit exceeds the "
        "partition's); cancelled the sweep's jobs: the hint"
    )


def test_final_states_wait_for_accounting_to_record_each_end(tmp_path, monkeypatch):
    # slurmdbd hears of a job's end after squeue stops listing it: a first sacct can
    # still say RUNNING, and a lost run would be recorded as "ended RUNNING".
    answers = iter(["9_0|COMPLETED\n9_1|RUNNING\n", "9_0|COMPLETED\n9_1|CANCELLED by 0\n"])
    calls: list[tuple[str, ...]] = []

    def sacct(*cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        return subprocess.CompletedProcess(list(cmd), 0, next(answers), "")

    watch = bnlab_slurm.JobWatch(["9_0", "9_1"], {})
    monkeypatch.setattr(bnlab_slurm, "_run", sacct)
    monkeypatch.setattr(bnlab_slurm.time, "sleep", lambda s: None)
    assert watch.final_states() == {"9_0": "COMPLETED", "9_1": "CANCELLED"}
    assert len(calls) == 2 and calls[0][0] == "sacct"

    # A state that never settles is returned as it is once settle_s has passed.
    monkeypatch.setattr(bnlab_slurm, "_run", lambda *cmd, timeout=30: subprocess.CompletedProcess(
        list(cmd), 0, "9_0|RUNNING\n", ""))  # fmt: skip
    clock = iter([0.0, 10.0, 31.0])
    monkeypatch.setattr(bnlab_slurm.time, "monotonic", lambda: next(clock))
    assert watch.final_states(settle_s=30) == {"9_0": "RUNNING"}


def test_runs_whose_jobs_were_lost_are_marked_failed_and_only_those(runs):
    from bnlab.store import RunStore
    from bnlab.sweep.grid import expand
    from bnlab.sweep.job import SweepTask
    from bnlab.sweep.launchers import Lost

    sweep = expand(["norm=bn,gn,ln,in", *SMOKE, f"paths.runs={runs}"])
    bn, gn, ln, inorm = (RunStore(runs).run_dir(job.cfg) for job in sweep.jobs)
    bn.path.mkdir(parents=True)
    bn.write_summary({"status": "completed"})  # finished before its job was lost
    lost = [Lost(SweepTask((n,), (j.cfg,), str(runs)), f"9_{n}", "UncompletedJobError: ...")
            for n, j in enumerate(sweep.jobs)]  # fmt: skip
    states = {"9_0": "CANCELLED", "9_1": "NODE_FAIL", "9_2": "CANCELLED"}  # 9_3: submitit_local
    with ln.lock():  # another sweep is training it right now
        warnings = bnlab_slurm.mark_lost_runs(lost, states)
    assert warnings == [
        f"SLURM job 9_1 ended NODE_FAIL before the run finished: {gn.path.name} marked failed "
        "(rerun the sweep to resume it)",
        f"job 9_3 ended without a result (UncompletedJobError: ...): {inorm.path.name} marked "
        "failed (rerun the sweep to resume it)",
    ]
    assert bn.summary() == {"status": "completed"}
    assert gn.summary()["status"] == "failed" and gn.config_file.exists()  # a run, as a crash
    assert gn.summary()["slurm_state"] == "NODE_FAIL"
    assert inorm.summary()["status"] == "failed"
    assert ln.summary() is None


def test_a_slurm_sweep_where_slurm_is_missing_is_one_line(tmp_path, monkeypatch, runs):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, srun or squeue
    proc = run_bnlab("sweep", "norm=bn,gn", *SMOKE, "hydra/launcher=slurm", f"paths.runs={runs}")
    _assert_one_line_error(proc, "a SLURM launcher needs sbatch, srun, squeue on PATH")
    assert not runs.exists()


# ----------------------------------------------------------------------------- a real cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[SlurmCluster]:
    missing = missing_tools()
    if missing:
        pytest.skip(
            f"no SLURM test cluster here: {', '.join(missing)} missing "
            f"(apt-get install {PACKAGES}, or make test-slurm)"
        )
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster runs its daemons as root")
    c = SlurmCluster()
    c.start()
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(c.conf)  # bnlab, sbatch and the jobs talk to this cluster
    try:
        yield c
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        c.stop()


@pytest.fixture
def slurm(cluster: SlurmCluster) -> SlurmCluster:
    cluster.wait_idle()  # each test starts with an empty queue
    return cluster


def run_dirs(runs: Path) -> list[Path]:
    if not runs.exists():
        return []
    return sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith("."))


def summaries(runs: Path) -> dict[str, dict]:
    return {p.name: json.loads((p / "summary.json").read_text()) for p in run_dirs(runs)}


def metrics(runs: Path) -> list[dict[str, str]]:
    [run] = run_dirs(runs)
    header, *rows = (run / "metrics.csv").read_text().splitlines()
    keys = header.split(",")
    return [
        {k: v for k, v in zip(keys, row.split(","), strict=True) if k in SCIENCE} for row in rows
    ]


def wait_for(what: str, check: Callable[[], Any], timeout: float, proc: subprocess.Popen) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended before {what}: {proc.communicate()}")
        time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}: {proc.communicate()}")


def sweep_in_background(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("BNLAB_RUNS", None)
    return subprocess.Popen(
        [*BNLAB, "sweep", *args], cwd=REPO, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnlab: error:"), proc.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.slurm
def test_a_sweep_runs_on_slurm_and_a_second_one_skips_its_finished_runs(slurm, runs):
    args = ["sweep", "norm=bn,gn", *SMOKE, "train.epochs=1", *README_CPU_JOB, f"paths.runs={runs}"]
    before = {job["id"] for job in slurm.accounting()}
    proc = run_bnlab(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [s["status"] for s in summaries(runs).values()] == ["completed", "completed"]
    jobs = slurm.ended_jobs(before, count=2)  # results are written before SLURM records the end
    assert sorted(job["state"] for job in jobs) == ["COMPLETED", "COMPLETED"], jobs

    stamps = {p: p.stat().st_mtime_ns for d in run_dirs(runs) for p in d.iterdir()}
    again = run_bnlab(*args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 runs (2 completed)" in again.stdout
    assert len(slurm.accounting()) == len(before) + 2  # nothing was submitted
    assert {p: p.stat().st_mtime_ns for d in run_dirs(runs) for p in d.iterdir()} == stamps


@pytest.mark.slurm
def test_a_preempted_job_resumes_from_its_checkpoint_with_the_same_metrics(slurm, runs, tmp_path):
    science = ["norm=bn", *SMOKE, "train.epochs=6"]
    sweep = sweep_in_background(*science, *CPU_JOB, f"paths.runs={runs}")
    # The same run, never preempted, beside it: one thread, as the job has (cpus_per_task=1).
    reference_runs = tmp_path / "reference"
    reference = subprocess.Popen(
        [*BNLAB, "train", *science, "train.threads=1", f"paths.runs={reference_runs}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def running_after_an_epoch() -> str | None:
        done = [d for d in run_dirs(runs) if (d / "metrics.csv").exists()]
        queue = slurm.queue()
        epochs = len((done[0] / "metrics.csv").read_text().splitlines()) - 1 if done else 0
        if 1 <= epochs < 5 and len(queue) == 1 and queue[0]["state"] == "RUNNING":
            return queue[0]["id"]
        return None

    job = wait_for("an epoch on the cluster", running_after_an_epoch, 240, sweep)
    # What SLURM sends before preempting (or at a time limit): submitit requeues the job.
    slurm.run("scancel", "--signal=USR2", job)
    out, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 0, out + err
    ref_out, ref_err = reference.communicate(timeout=300)
    assert reference.returncode == 0, ref_out + ref_err

    [summary] = summaries(runs).values()
    assert summary["status"] == "completed" and summary["epochs"] == 6
    assert 1 <= summary["resumed_from_epoch"] < 6  # from its checkpoint, not from epoch 0
    assert metrics(runs) == metrics(reference_runs)


@pytest.mark.slurm
def test_a_cancelled_job_is_failed_in_the_table_and_the_sweep_ends(slurm, runs):
    sweep = sweep_in_background(
        "norm=bn,gn", *SMOKE, "train.epochs=4", *CPU_JOB, f"paths.runs={runs}"
    )

    def first_job_running_an_epoch() -> str | None:
        trained = [d for d in run_dirs(runs) if (d / "metrics.csv").exists()]
        ids = [job["id"] for job in slurm.queue() if job["state"] == "RUNNING"]
        first = [i for i in ids if i.endswith("_0")]  # grid point 0: norm=bn
        return first[0] if trained and first else None

    job = wait_for("the first job to train", first_job_running_an_epoch, 240, sweep)
    slurm.run("scancel", job)
    out, err = sweep.communicate(timeout=240)  # bounded: the sweep must not wait forever
    assert sweep.returncode == 1, out + err
    by_norm = {name.split("-")[1]: s for name, s in summaries(runs).items()}
    assert by_norm["bn"]["status"] == "failed" and by_norm["bn"]["slurm_state"] == "CANCELLED"
    assert by_norm["gn"]["status"] == "completed"  # the other job was waited for
    assert "1 completed, 1 failed" in out
    warnings = [line for line in err.splitlines() if line.startswith("bnlab:")]
    assert len(warnings) == 1 and f"SLURM job {job} ended CANCELLED" in warnings[0], err
    assert "Traceback" not in err


@pytest.mark.slurm
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], "hydra.launcher.gpus_per_node=0"),  # the shipped slurm.yaml asks a GPU
        ([*CPU_JOB, "hydra.launcher.partition=nosuch"], "hydra.launcher.partition to one of"),
        ([*CPU_JOB, "hydra.launcher.mem_gb=64"], "lower hydra.launcher.mem_gb"),
        ([*CPU_JOB, "hydra.launcher.cpus_per_task=8"], "lower hydra.launcher.cpus_per_task"),
    ],
    ids=["gpu-on-cpu-cluster", "no-such-partition", "more-memory-than-any-node", "more-cpus"],
)
def test_a_request_the_cluster_refuses_is_one_line_before_anything_runs(slurm, runs, args, needle):
    started = time.monotonic()
    proc = run_bnlab("sweep", "norm=bn,gn", *SMOKE, "hydra/launcher=slurm", *args,
                     f"paths.runs={runs}", timeout=120)  # fmt: skip
    _assert_one_line_error(proc, needle)
    assert time.monotonic() - started < 60
    assert not runs.exists()  # not even Hydra's sweep folder
    assert not slurm.queue()


@pytest.mark.slurm
def test_a_job_that_can_never_start_is_reported_in_bounded_time(slurm, runs):
    # sbatch accepts a time limit above the partition's; the job then pends forever.
    started = time.monotonic()
    proc = run_bnlab("sweep", "norm=bn,gn", *SMOKE, *CPU_JOB, "hydra.launcher.timeout_min=120",
                     f"hydra.launcher.partition={SHORT_PARTITION}", f"paths.runs={runs}",
                     timeout=180)  # fmt: skip
    _assert_one_line_error(proc, "lower hydra.launcher.timeout_min=120 to the partition's limit")
    assert "PartitionTimeLimit" in proc.stderr
    assert time.monotonic() - started < 120
    assert run_dirs(runs) == []  # no run started
    assert not slurm.queue()  # and its jobs were cancelled, not left pending
