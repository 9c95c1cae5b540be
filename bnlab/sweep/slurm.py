"""bnlab's side of SLURM: the script a sweep submits, the check before it, the watch after it.

- ``sbatch_script``: the script each job is submitted with (`--dry-run` prints it).
- ``check_submission``: the cluster judges that script with ``sbatch --test-only``
  before anything is created; a refusal (no such partition, GPUs on a CPU-only
  cluster, more memory or cores than any node has) becomes one line naming the
  ``hydra.launcher.*`` key to change.
- ``JobWatch``: while bnlab waits for the submitted jobs, reads ``squeue``. A
  job pending for a reason that never clears by itself (its partition's limits
  are below the request) is cancelled with the sweep's other jobs and reported;
  a job pending long for another reason (a busy cluster) gets a notice line.
- ``mark_lost_runs``: a run whose job ended without finishing it (cancelled,
  killed, node lost) gets ``summary.json`` status failed, as a crash would
  (submitit_local's lost jobs too).

Only SLURM's command-line tools are used here; submitit's internals stay in
bnlab.sweep.adapters.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bnlab.errors import BnlabError, warn
from bnlab.store import RunBusy, RunStore, run_id
from bnlab.sweep import adapters

if TYPE_CHECKING:
    from bnlab.sweep.launchers import Lost

CHECK_TIMEOUT_S = 60
# Pending reasons SLURM keeps until someone changes the job or the partition.
NEVER_STARTS = {
    "PartitionConfig": "the request exceeds what the partition's nodes have",
    "PartitionNodeLimit": "the request needs more nodes than the partition allows",
    "PartitionTimeLimit": "the time limit exceeds the partition's",
    "BadConstraints": "no node has the requested constraints",
    "InvalidAccount": "the account is not valid",
    "InvalidQOS": "the QOS is not valid",
    "AccountNotAllowed": "the account may not use this partition",
    "QOSNotAllowed": "the QOS may not use this partition",
}


def sbatch_script(launcher_params: dict[str, Any], folder: Path, job_name: str) -> str:
    """The sbatch script of one job of the sweep (hydra-submitit-launcher's, exactly)."""
    return adapters.sbatch_text(launcher_params, folder, job_name)


def _run(*cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------- before submitting


def check_submission(launcher_params: dict[str, Any]) -> None:
    """Ask the cluster whether it would accept the sweep's jobs; BnlabError (one line) if not."""
    missing = [tool for tool in ("sbatch", "srun", "squeue") if shutil.which(tool) is None]
    if missing:
        raise BnlabError(
            f"a SLURM launcher needs {', '.join(missing)} on PATH: run the sweep where SLURM "
            "jobs are submitted (--dry-run prints the sbatch script without SLURM)"
        )
    with tempfile.TemporaryDirectory(prefix="bnlab-sbatch-") as tmp:
        script = Path(tmp) / "check.sbatch"
        script.write_text(sbatch_script(launcher_params, Path(tmp), "bnlab-check"))
        try:
            proc = _run("sbatch", "--test-only", str(script), timeout=CHECK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise BnlabError(
                f"sbatch --test-only did not answer in {CHECK_TIMEOUT_S}s: is the SLURM "
                "controller up? (try sinfo)"
            ) from None
    if proc.returncode != 0:
        raise BnlabError(explain_refusal(proc.stderr or proc.stdout, launcher_params))


def _first_reason(text: str) -> str:
    prefixes = ("sbatch: error: ", "allocation failure: ", "Batch job submission failed: ")
    for line in text.splitlines():
        line = line.strip()
        while line.startswith(prefixes):
            line = next(line[len(p) :] for p in prefixes if line.startswith(p))
        if line:
            return line
    return "no reason given"


def explain_refusal(text: str, params: dict[str, Any]) -> str:
    """sbatch's refusal as one line: what SLURM said, and which hydra.launcher key to change."""
    reason, low = _first_reason(text), text.lower()
    if "gres" in low or "generic resource" in low:
        key = "gres" if params.get("gres") else "gpus_per_node"
        hint = (
            f"the cluster has no such GPUs: change hydra.launcher.{key} "
            "(hydra.launcher.gpus_per_node=0 on a CPU-only cluster)"
        )
    elif "partition" in low:
        names = partitions()
        hint = "set hydra.launcher.partition" + (f" to one of: {', '.join(names)}" if names else "")
    elif "node configuration" in low or "memory specification" in low:
        hint = _oversized_hint(params)
    elif "time limit" in low:
        hint = "lower hydra.launcher.timeout_min or choose another hydra.launcher.partition"
    elif "account" in low:
        hint = "check hydra.launcher.account"
    elif "qos" in low:
        hint = "check hydra.launcher.qos"
    elif "constraint" in low or "feature" in low:
        hint = "check hydra.launcher.constraint"
    else:
        hint = "check the hydra.launcher.* settings (--dry-run prints the sbatch script)"
    return f"SLURM refused the job: {reason}; {hint}"


# ----------------------------------------------------------------------------- the cluster's nodes


def partitions() -> list[str]:
    """The cluster's partitions (the default one first), or [] if sinfo cannot tell."""
    try:
        out = _run("sinfo", "-h", "-o", "%P").stdout.split()
    except (OSError, subprocess.SubprocessError):
        return []
    names = [p.rstrip("*") for p in sorted(set(out), key=lambda p: (not p.endswith("*"), p))]
    return list(dict.fromkeys(names))


@dataclass
class Node:
    cpus: int
    memory_mb: int
    gpus: int


def nodes(partition: str | None) -> list[Node]:
    """The nodes of `partition` (None: the default one) as sinfo reports them."""
    try:
        out = _run("sinfo", "-h", "-N", "-o", "%P|%c|%m|%G").stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found = []
    for line in out.splitlines():
        part, cpus, mem, gres = (line.split("|") + ["", "", "", ""])[:4]
        default = part.endswith("*")
        if (partition is None and not default) or (
            partition is not None and part.rstrip("*") != partition
        ):
            continue
        gpus = sum(int(n) for n in re.findall(r"gpu(?::[^:,(]+)?:(\d+)", gres))
        with_digits = [cpus, re.sub(r"\D.*", "", mem)]
        if all(v.isdigit() for v in with_digits):
            found.append(Node(int(with_digits[0]), int(with_digits[1]), gpus))
    return found


def _oversized_hint(params: dict[str, Any]) -> str:
    """Which requested resources no node of the partition has."""
    partition = params.get("partition")
    found = nodes(partition)
    where = f"partition {partition}" if partition else "the default partition"
    over = []
    if found:
        most_cpus = max(n.cpus for n in found)
        most_gb = max(n.memory_mb for n in found) / 1024
        most_gpus = max(n.gpus for n in found)
        cpus = int(params.get("cpus_per_task") or 1) * int(params.get("tasks_per_node") or 1)
        if cpus > most_cpus:
            key = "cpus_per_task" if params.get("cpus_per_task") else "tasks_per_node"
            over.append(f"hydra.launcher.{key} (largest node: {most_cpus} CPUs)")
        if params.get("mem_gb") and float(params["mem_gb"]) > most_gb:
            over.append(f"hydra.launcher.mem_gb (largest node: {most_gb:g} GB)")
        if int(params.get("gpus_per_node") or 0) > most_gpus:
            over.append(f"hydra.launcher.gpus_per_node (largest node: {most_gpus})")
        if int(params.get("nodes") or 1) > len(found):
            over.append(f"hydra.launcher.nodes ({where} has {len(found)})")
    if over:
        return f"more than any node of {where} has: lower {', '.join(over)}"
    return (
        f"no node of {where} has what the job asks: lower hydra.launcher.cpus_per_task, "
        "mem_gb or gpus_per_node, or choose another hydra.launcher.partition"
    )


def _minutes(text: str) -> float | None:
    """A SLURM time limit ([days-]hours:minutes:seconds, minutes:seconds, ...) in minutes."""
    days, _, rest = text.rpartition("-")
    parts = rest.split(":")
    if not all(p.isdigit() for p in parts) or (days and not days.isdigit()):
        return None
    nums = [int(p) for p in parts]
    if len(nums) == 1:  # minutes
        h, m, s = 0, nums[0], 0
    elif len(nums) == 2:  # minutes:seconds
        h, m, s = 0, nums[0], nums[1]
    else:  # hours:minutes:seconds
        h, m, s = nums[-3:]
    return int(days or 0) * 1440 + h * 60 + m + s / 60


def never_starts_hint(reason: str, params: dict[str, Any]) -> str:
    """What to change for a job pending for one of the NEVER_STARTS reasons."""
    if reason == "PartitionTimeLimit":
        partition = params.get("partition")
        try:
            args = ["sinfo", "-h", "-o", "%l"] + (["-p", str(partition)] if partition else [])
            limits = [_minutes(t) for t in _run(*args).stdout.split()]
        except (OSError, subprocess.SubprocessError):
            limits = []
        known = [m for m in limits if m is not None]
        limit = f" ({max(known):g} min)" if known else ""
        return (
            f"lower hydra.launcher.timeout_min={params.get('timeout_min')} to the partition's "
            f"limit{limit} or choose another hydra.launcher.partition"
        )
    if reason in ("PartitionConfig", "PartitionNodeLimit"):
        return _oversized_hint(params)
    if reason == "BadConstraints":
        return "check hydra.launcher.constraint"
    if "Account" in reason:
        return "check hydra.launcher.account"
    return "check hydra.launcher.qos"


# ----------------------------------------------------------------------------- after submitting


def _states(command: list[str], ids: list[str], fmt: str, fields: int) -> list[list[str]]:
    """Rows of `fields` "|"-separated values about the jobs `ids` (their arrays' tasks too)."""
    masters = sorted({i.split("_")[0] for i in ids})
    if not masters:
        return []
    try:
        out = _run(*command, "-j", ",".join(masters), "-o", fmt).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.split("|") for line in out.splitlines() if line.count("|") == fields - 1]


# sacct states of a job that has not ended yet.
LIVE_STATES = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}
)


@dataclass
class JobWatch:
    """Polls squeue for the sweep's submitted jobs (see module doc)."""

    ids: list[str]  # SLURM job ids as submitit gives them (array tasks as 12_0)
    params: dict[str, Any]
    poll_s: float = 5
    never_starts_after_s: float = 15  # a reason must persist this long (not a scheduler blip)
    notice_after_s: float = 120
    notice_every_s: float = 600
    fatal: str | None = None  # set when the watch cancelled the sweep's jobs
    _pending_since: dict[tuple[str, str], float] = field(default_factory=dict)
    _noticed: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def job_ids(self) -> list[str]:
        return list(self.ids)

    def queue(self) -> list[tuple[str, str, str]]:
        """(job id, state, reason) of this sweep's jobs still in SLURM's queue."""
        rows = _states(["squeue", "-h", "-r"], self.job_ids(), "%i|%T|%r", 3)
        return [(r[0], r[1], r[2]) for r in rows]

    def poll(self) -> None:
        now = time.monotonic()
        pending = {(jid, reason) for jid, state, reason in self.queue() if state == "PENDING"}
        self._pending_since = {k: self._pending_since.get(k, now) for k in pending}
        for (jid, reason), since in sorted(self._pending_since.items()):
            waited = now - since
            if reason in NEVER_STARTS and waited >= self.never_starts_after_s:
                self.fatal = (
                    f"SLURM job {jid} can never start ({reason}: {NEVER_STARTS[reason]}); "
                    f"cancelled the sweep's jobs: {never_starts_hint(reason, self.params)}"
                )
                self.cancel()
                return
            since_notice = now - self._noticed.get(jid, -float("inf"))
            if waited >= self.notice_after_s and since_notice >= self.notice_every_s:
                self._noticed[jid] = now
                print(
                    f"bnlab: waiting: SLURM job {jid} pending for {waited / 60:.0f} min ({reason})",
                    file=sys.stderr,
                    flush=True,
                )

    def cancel(self) -> None:
        masters = sorted({i.split("_")[0] for i in self.job_ids()})
        if masters:
            subprocess.run(["scancel", *masters], capture_output=True, timeout=60, check=False)

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.poll_s) and self.fatal is None:
                try:
                    self.poll()
                except (OSError, subprocess.SubprocessError) as err:  # keep watching
                    warn(f"squeue failed ({err})")

        self._thread = threading.Thread(target=loop, name="bnlab-slurm-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def wait_until_gone(self) -> None:
        """Block until none of the sweep's jobs is pending or running (they finish their runs)."""
        while self.queue():
            self.poll()
            if self.fatal:
                return
            time.sleep(self.poll_s)

    def final_states(self, settle_s: float = 30) -> dict[str, str]:
        """sacct's last state of each of the sweep's jobs (CANCELLED, NODE_FAIL, ...).

        slurmctld tells the accounting daemon of a job's end asynchronously, so sacct
        can still say RUNNING once squeue no longer lists the job: ask again, for up to
        `settle_s`, while any job shows a state it has not ended in.
        """
        deadline = time.monotonic() + settle_s
        while True:
            rows = _states(["sacct", "-X", "-n", "-P"], self.job_ids(), "JobID,State", 2)
            # "CANCELLED by 0" -> CANCELLED
            states = {jid: state.split()[0] if state else "UNKNOWN" for jid, state in rows}
            if not LIVE_STATES.intersection(states.values()) or time.monotonic() >= deadline:
                return states
            time.sleep(1)


def mark_lost_runs(lost: Sequence[Lost], states: dict[str, str]) -> list[str]:
    """Record status failed for each run whose job ended without finishing it.

    `states` maps SLURM job ids to sacct's final state (empty for submitit_local's
    jobs: their error says what happened). A run with a summary (finished, or failed
    with bnlab's own record) or held by another process is left alone. Returns one
    warning line per run marked.
    """
    warnings = []
    for job, cfg in ((one, cfg) for one in lost for cfg in one.task.cfgs):
        run = RunStore(cfg.paths.runs).run_dir(cfg)
        if run.summary() is not None:
            continue
        state = states.get(job.job_id)
        if state is not None:
            error = f"SLURM job {job.job_id} ended {state} before the run finished"
            extra = {"slurm_job": job.job_id, "slurm_state": state}
        else:
            error = f"job {job.job_id} ended without a result ({job.error})"
            extra = {"job": job.job_id}
        try:
            with run.lock():
                if run.summary() is not None:
                    continue
                if not run.config_file.exists():
                    run.write_config(cfg)
                run.write_summary(
                    {"status": "failed", "error": error, "run_id": run_id(cfg),
                     "epochs": run.epochs_done(), **extra}
                )  # fmt: skip
        except RunBusy:
            continue
        warnings.append(f"{error}: {run.path.name} marked failed (rerun the sweep to resume it)")
    return warnings
