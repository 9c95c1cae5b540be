"""A real single-node SLURM cluster in a temporary folder, for the `slurm` tests.

Debian 12's packages (slurmctld, slurmd, slurm-client, slurmdbd, mariadb-server;
Slurm 22.05), started as root without systemd or munge:

- ``auth/none`` + ``cred/none``: no munge daemon; ``proctrack/linuxproc``,
  ``task/none``, ``jobacct_gather/none``: no cgroups.
- Accounting runs (slurmdbd on a private MariaDB, socket-only, socket auth for
  root) because submitit reads job states through ``sacct``: without it a job
  that dies leaves ``job.result()`` waiting forever.
- ``AuthInfo=cred_expire=5`` cuts a requeued job's 120 s wait (2 is rejected);
  short scheduler intervals and ``DefMemPerCPU`` keep jobs from idling or
  blocking each other; ``KillWait=5`` makes a cancelled job die in seconds
  (submitit ignores the SIGTERM a cancel sends first).
- ``SlurmdParameters=config_overrides``: the node is exactly NODE_CPUS cores
  and NODE_MEMORY_MB of memory whatever the machine has, so "larger than any
  node" is the same request everywhere.

Every daemon runs in the foreground as a child of this process and is stopped
by its pid. ``python -m tests.slurm_cluster`` starts one and waits (Ctrl-C
stops it): handy for trying the launcher by hand.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bnlab.sweep.slurm import LIVE_STATES

NODE_CPUS = 2
NODE_MEMORY_MB = 2048
PARTITION = "debug"
# A second partition whose time limit no bnlab job fits: a job sent there is
# accepted by sbatch but can never start (pending reason PartitionTimeLimit).
SHORT_PARTITION = "short"
SHORT_MAX_MIN = 1

DAEMONS = ("mariadbd", "mariadb-install-db", "mariadb-admin", "slurmdbd", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sacct", "scancel", "scontrol", "sinfo", "srun")
PACKAGES = "slurmctld slurmd slurm-client slurmdbd mariadb-server"


def missing_tools() -> list[str]:
    """The programs this cluster needs that are not installed (empty: it can start)."""
    return [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(
    what: str, ready: Callable[[], bool], timeout: float, procs: dict[str, subprocess.Popen]
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}")
        if ready():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


class SlurmCluster:
    """Start with ``start()`` (or use as a context manager), stop with ``stop()``."""

    def __init__(self) -> None:
        # Short path: the MariaDB socket path must fit in 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="bnlab-slurm-", dir="/tmp"))
        self.node = socket.gethostname().split(".")[0]
        self.ports = {"ctld": _free_port(), "slurmd": _free_port(), "dbd": _free_port()}
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = self.root / "etc" / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        # A job must not pick up the test runner's own SLURM variables, if any.
        for key in [k for k in self.env if k.startswith(("SLURM_JOB", "SBATCH_", "SRUN_"))]:
            del self.env[key]

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 90) -> None:
        try:
            for sub in ("etc", "log", "state", "spool", "db", "run"):
                (self.root / sub).mkdir()
            self._start_mariadb(timeout)
            self._write_configs()
            self._start_daemon("slurmdbd", ["slurmdbd", "-D"])
            _wait("slurmdbd", lambda: self._port_open(self.ports["dbd"]), timeout, self.procs)
            self._start_daemon("slurmctld", ["slurmctld", "-D", "-c", "-i"])
            _wait("slurmctld", lambda: self._port_open(self.ports["ctld"]), timeout, self.procs)
            self._start_daemon("slurmd", ["slurmd", "-D", "-N", self.node])
            _wait("the node to be idle", self._node_idle, timeout, self.procs)
            _wait("accounting (sacct)", self._sacct_works, timeout, self.procs)
        except BaseException:
            logs = self.logs_tail()
            self.stop()
            raise RuntimeError(f"the SLURM test cluster did not start; its logs:\n{logs}") from None

    def stop(self) -> None:
        """Cancel every job, then stop each daemon this object started, by its pid."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--full", "--user", "root", check=False, timeout=20)
            with contextlib.suppress(RuntimeError):
                _wait("jobs to end", lambda: not self.queue(), 30, {})
        for name in ("slurmd", "slurmctld", "slurmdbd", "mariadbd"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ helpers

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """A Slurm client command against this cluster."""
        return subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, check=check, timeout=timeout
        )

    def queue(self) -> list[dict[str, str]]:
        """squeue's jobs: id (array tasks as 12_0), state, reason."""
        out = self.run("squeue", "-h", "-r", "-o", "%i|%T|%r", check=False).stdout
        rows = [line.split("|") for line in out.splitlines() if line.strip()]
        return [{"id": r[0], "state": r[1], "reason": r[2]} for r in rows if len(r) == 3]

    def accounting(self) -> list[dict[str, str]]:
        """sacct's record of every job (allocations only, not steps)."""
        out = self.run(
            "sacct", "-X", "-n", "-a", "-P", "-S", "now-1days", "-o", "JobID,State,ExitCode",
            check=False,
        ).stdout  # fmt: skip
        rows = [line.split("|") for line in out.splitlines() if line.strip()]
        return [{"id": r[0], "state": r[1], "exit": r[2]} for r in rows if len(r) == 3]

    def ended_jobs(
        self, exclude: set[str], count: int, timeout: float = 60
    ) -> list[dict[str, str]]:
        """The ``count`` jobs not in ``exclude``, once sacct records each one's end.

        slurmctld reports a job's end to slurmdbd asynchronously, so sacct can still say
        RUNNING after the queue is empty and the node idle.
        """
        jobs: list[dict[str, str]] = []

        def ended() -> bool:
            nonlocal jobs
            jobs = [job for job in self.accounting() if job["id"] not in exclude]
            return len(jobs) >= count and not any(job["state"] in LIVE_STATES for job in jobs)

        try:
            _wait(f"sacct to record the end of {count} jobs", ended, timeout, {})
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {jobs}") from None
        return jobs

    def wait_idle(self, timeout: float = 60) -> None:
        """No job left in the queue and the node idle (between tests)."""
        _wait("an empty queue", lambda: not self.queue() and self._node_idle(), timeout, {})

    def logs_tail(self, lines: int = 15) -> str:
        parts = []
        for log in sorted((self.root / "log").glob("*")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"== {log.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def _port_open(self, port: int) -> bool:
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", port)) == 0

    def _node_idle(self) -> bool:
        # One line per partition the node is in.
        out = self.run("sinfo", "-h", "-N", "-o", "%T", check=False, timeout=10).stdout
        return bool(out.split()) and set(out.split()) == {"idle"}

    def _sacct_works(self) -> bool:
        return self.run("sacct", "-n", "-X", check=False, timeout=10).returncode == 0

    def _start_daemon(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.root / "log" / f"{name}.out", "wb")  # noqa: SIM115 (lives with the daemon)
        self.procs[name] = subprocess.Popen(
            cmd, env=env or self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
            start_new_session=True,  # a Ctrl-C in the test's terminal is not theirs
        )  # fmt: skip
        log.close()

    # ------------------------------------------------------------------ MariaDB

    @property
    def db_socket(self) -> Path:
        return self.root / "run" / "mysql.sock"

    def _start_mariadb(self, timeout: float) -> None:
        datadir = self.root / "db"
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={datadir}", "--user=root",
             "--auth-root-authentication-method=socket", "--skip-test-db"],
            capture_output=True, check=True, timeout=120,
        )  # fmt: skip
        self._start_daemon(
            "mariadbd",
            ["mariadbd", "--no-defaults", f"--datadir={datadir}", f"--socket={self.db_socket}",
             "--skip-networking", "--user=root", f"--pid-file={self.root / 'run' / 'mysql.pid'}",
             "--innodb-buffer-pool-size=32M", "--innodb-flush-log-at-trx-commit=0",
             f"--log-error={self.root / 'log' / 'mariadb.err'}"],
        )  # fmt: skip

        def pings() -> bool:
            ping = subprocess.run(
                ["mariadb-admin", "--no-defaults", f"--socket={self.db_socket}", "-uroot", "ping"],
                capture_output=True, timeout=10,
            )  # fmt: skip
            return ping.returncode == 0

        _wait("MariaDB", pings, timeout, self.procs)

    # ------------------------------------------------------------------ configs

    def _write_configs(self) -> None:
        r = self.root
        dbd = r / "etc" / "slurmdbd.conf"
        dbd.write_text(
            "\n".join([
                "AuthType=auth/none",
                "DbdHost=localhost",
                "DbdAddr=127.0.0.1",
                f"DbdPort={self.ports['dbd']}",
                "SlurmUser=root",
                "StorageType=accounting_storage/mysql",
                "StorageHost=localhost",
                "StorageUser=root",
                "StorageLoc=bnlab_slurm_acct",
                f"PidFile={r / 'run' / 'slurmdbd.pid'}",
                "DebugLevel=info",  # no LogFile: in the foreground (-D) they log to stderr
                "",
            ])
        )  # fmt: skip
        dbd.chmod(0o600)  # slurmdbd refuses a config others can read
        # slurmdbd's MySQL client finds the private socket through this variable.
        self.env["MYSQL_UNIX_PORT"] = str(self.db_socket)
        self.conf.write_text(
            "\n".join([
                "ClusterName=bnlabci",
                f"SlurmctldHost={self.node}(127.0.0.1)",
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/none",
                "CredType=cred/none",
                "AuthInfo=cred_expire=5",
                f"SlurmctldPort={self.ports['ctld']}",
                f"SlurmdPort={self.ports['slurmd']}",
                f"StateSaveLocation={r / 'state'}",
                f"SlurmdSpoolDir={r / 'spool'}",
                f"SlurmctldPidFile={r / 'run' / 'slurmctld.pid'}",
                f"SlurmdPidFile={r / 'run' / 'slurmd.pid'}",
                "SlurmctldDebug=info",
                "SlurmdDebug=info",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/slurmdbd",
                "AccountingStorageHost=127.0.0.1",
                f"AccountingStoragePort={self.ports['dbd']}",
                "JobCompType=jobcomp/none",
                "MpiDefault=none",
                "SchedulerType=sched/backfill",
                "SchedulerParameters=bf_interval=5,sched_interval=5",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core_Memory",
                "DefMemPerCPU=1024",
                "SlurmdParameters=config_overrides",
                "ReturnToService=2",
                "KillWait=5",
                "MinJobAge=300",
                "InactiveLimit=0",
                "MailProg=/bin/true",
                f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} "
                f"RealMemory={NODE_MEMORY_MB} State=UNKNOWN",
                f"PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE "
                "State=UP",
                f"PartitionName={SHORT_PARTITION} Nodes={self.node} MaxTime={SHORT_MAX_MIN} "
                "State=UP",
                "",
            ])
        )  # fmt: skip


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    # `kill PID` stops it as cleanly as Ctrl-C (background shells ignore SIGINT).
    signal.signal(signal.SIGTERM, _exit)
    cluster = SlurmCluster()
    cluster.start()
    print(f"export SLURM_CONF={cluster.conf}  # Ctrl-C or kill {os.getpid()} stops it", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
