"""A throwaway one-node SLURM cluster for tests that submit real jobs (test helper, not a test module).

`one_node_cluster(tmp)` starts a private munged (own key and socket), slurmctld and slurmd as root with every file
(slurm.conf, state, spool, pid files, logs) under `tmp`, on free ports, so it clashes neither with a system cluster
nor with another test's, and stops them all on exit. No systemd and no slurmdbd (accounting_storage/none).

ProctrackType=proctrack/pgid because the cgroup plugins need a delegated, writable cgroup hierarchy, which containers
and CI runners rarely give. The price: a job's processes are tracked (signalled, killed) by process group, so a
process that leaves it (setsid, start_new_session=True) escapes the job and outlives it (if it keeps the step's
stdout/stderr open, the step cannot end either: after UnkillableStepTimeout, 60 s, the node is drained with "Kill
task failed"); and there is no memory confinement. CPU binding is applied as sites apply it: TaskPlugin=task/affinity
(sched_setaffinity, no cgroups needed) binds every task to its step's CPUs, and the clients' environment has
SLURM_EXACT=1, so a job step gets exactly the CPUs it asks for (as ``srun --exact``; Slurm 20.11's default, and what
srun from 22.05 to 23.02 does to a step that does not restate the job's --cpus-per-task): a step that asks for
nothing is bound to one CPU. On exit, every process that still has this cluster's SLURM_CONF in its environment
(slurmstepd, job processes, such escapees) is killed too.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")


def available() -> str | None:
    """None if the cluster can run here (binaries installed, we are root), else why not, in one line."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return (
            f"SLURM not installed ({', '.join(missing)} missing): run "
            "`apt-get install munge slurmctld slurmd slurm-client` (as .ci/run does) to run this test"
        )
    if os.geteuid() != 0:
        return "the one-node SLURM cluster runs its daemons as root (SlurmUser=root): run this test as root"
    return None


@dataclass
class Cluster:
    """A running cluster: `env` for its client commands (sbatch, squeue, ...), its one partition and node."""

    env: dict[str, str]
    partition: str
    node: str
    cpus: int
    conf: Path
    pids: dict[str, int] = field(default_factory=dict)  # daemon name -> PID

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a client command (`cluster.run("sbatch", "--parsable", ...)`) with stdout and stderr captured."""
        return subprocess.run(args, env=self.env, capture_output=True, text=True, check=check, timeout=60)

    def squeue(self, job_ids) -> dict[str, tuple[str, str]]:
        """{job id: (state, reason)} of these jobs, finished ones included (they are kept for MinJobAge)."""
        ids = ",".join(str(i) for i in job_ids)
        out = self.run("squeue", "-h", "--states=all", "-j", ids, "-o", "%i|%T|%r", check=False).stdout
        return {i: (state, reason) for i, state, reason in (line.split("|", 2) for line in out.splitlines())}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 15) -> list[str]:
    return path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []


def _alive(pid: int) -> bool:
    """Whether `pid` runs (an exited child that is not reaped yet, a zombie, counts as dead)."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def _stop(pids: list[int], grace: float = 5.0) -> None:
    """SIGTERM these processes, then SIGKILL those still alive after `grace` seconds."""
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while (pids := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _tagged(marker: bytes) -> list[int]:
    """PIDs of the processes whose environment holds `marker`."""
    pids = []
    for proc in Path("/proc").iterdir():
        with suppress(OSError):
            if proc.name.isdigit() and int(proc.name) != os.getpid() and marker in (proc / "environ").read_bytes():
                pids.append(int(proc.name))
    return pids


def _slurm_conf(tmp: Path, munge_socket: Path, settings: dict) -> tuple[str, str, int]:
    """slurm.conf's text, the node's name and CPU count (its node line is `slurmd -C`'s first line)."""
    node_line = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    node = dict(item.split("=", 1) for item in node_line.split())
    conf = {
        "ClusterName": "testcluster",
        "SlurmctldHost": f"{node['NodeName']}(127.0.0.1)",
        "SlurmctldPort": _free_port(),
        "SlurmdPort": _free_port(),
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "AuthType": "auth/munge",
        "CredType": "cred/munge",
        # socket: our munged, for both auth/munge and cred/munge. cred_expire (default 120 s, minimum 5) is also how
        # long a requeued job waits, once its old run ended, before it may start again.
        "AuthInfo": f"socket={munge_socket},cred_expire=10",
        "StateSaveLocation": tmp / "state",
        "SlurmdSpoolDir": tmp / "spool",
        "SlurmctldPidFile": tmp / "slurmctld.pid",
        "SlurmdPidFile": tmp / "slurmd.pid",
        "SlurmctldLogFile": tmp / "slurmctld.log",
        "SlurmdLogFile": tmp / "slurmd.log",
        "PlugStackConfig": tmp / "plugstack.conf",  # empty, not the system's /etc/slurm/plugstack.conf
        "MailProg": "/bin/true",
        "ProctrackType": "proctrack/pgid",
        "TaskPlugin": "task/affinity",  # binds each task to its step's CPUs (sched_setaffinity)
        "JobAcctGatherType": "jobacct_gather/none",
        "AccountingStorageType": "accounting_storage/none",
        "JobCompType": "jobcomp/none",
        "SchedulerType": "sched/backfill",
        # Start a submitted job within a second rather than three; test all pending jobs every second rather than
        # every 60 s (else a requeued job whose begin time has passed waits for that).
        "SchedulerParameters": "batch_sched_delay=0,sched_interval=1",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_CPU",  # CPUs are the only consumable: one-CPU jobs run side by side
        "MpiDefault": "none",
        "ReturnToService": 2,
        "JobRequeue": 1,
        "MinJobAge": 3600,  # finished jobs stay in squeue for an hour
        "KillWait": 30,
    } | settings
    lines = [f"{key}={value}" for key, value in conf.items()]
    lines += [f"{node_line} NodeAddr=127.0.0.1", "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"]
    return "\n".join(lines) + "\n", node["NodeName"], int(node["CPUs"])


@contextmanager
def one_node_cluster(tmp: Path, timeout: float = 60.0, **settings) -> Iterator[Cluster]:
    """Start munged, slurmctld and slurmd under `tmp`; yield the Cluster once its node is idle; stop them all.

    `settings` override slurm.conf's keys (e.g. KillWait=5)."""
    tmp = Path(tmp).resolve()
    munge_dir = tmp / "munge"
    for d in (munge_dir, tmp / "state", tmp / "spool"):
        d.mkdir(parents=True, exist_ok=True)
    munge_dir.chmod(0o755)  # munged wants its socket's directory searchable by all
    key, munge_socket = munge_dir / "munge.key", munge_dir / "munge.socket"
    key.write_bytes(os.urandom(128))  # as `mungekey -c` does: 1024 random bits, mode 0600
    key.chmod(0o600)
    (tmp / "plugstack.conf").write_text("")
    text, node, cpus = _slurm_conf(tmp, munge_socket, settings)
    conf = tmp / "slurm.conf"
    conf.write_text(text)
    # Without an enclosing job's SLURM_* variables (the tests may run in one), and with our slurm.conf.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")} | {"SLURM_CONF": str(conf)}
    env["SLURM_EXACT"] = "1"  # exported to the jobs: each srun step gets the CPUs it asks for, no more
    cluster = Cluster(env=env, partition="debug", node=node, cpus=cpus, conf=conf)
    daemons = {
        # In the foreground munged logs to stderr, i.e. munged.out. --force: munged refuses a socket whose every
        # ancestor is not searchable by all (pytest's tmp_path is under /tmp/pytest-of-root, mode 0700); as root,
        # --force makes that a warning. (So no need to fall back on the system's munged and key.)
        "munged": ["munged", "--foreground", "--force", f"--socket={munge_socket}", f"--key-file={key}",
                   f"--pid-file={munge_dir / 'munged.pid'}", f"--seed-file={munge_dir / 'munged.seed'}"],
        "slurmctld": ["slurmctld", "-D", "-c", "-f", str(conf)],  # -D: foreground, -c: no saved state
        "slurmd": ["slurmd", "-D", "-f", str(conf)],
    }  # fmt: skip
    procs: list[subprocess.Popen] = []
    try:
        for name, argv in daemons.items():
            with open(tmp / f"{name}.out", "ab") as out:  # munged has no SLURM_CONF: the sweep below spares it
                procs.append(subprocess.Popen(argv, env=env if name != "munged" else None, stdout=out, stderr=out))
            cluster.pids[name] = procs[-1].pid
            for _ in range(200 if name == "munged" else 0):  # up to 10 s for munged's socket
                if munge_socket.exists() or not _alive(procs[-1].pid):
                    break
                time.sleep(0.05)
        deadline, state = time.monotonic() + timeout, ""
        while state != "idle":
            if dead := [name for name, pid in cluster.pids.items() if not _alive(pid)]:
                why = f"{', '.join(dead)} exited"
            elif time.monotonic() > deadline:
                why = f"node {node} still {state or 'not responding'} after {timeout} s"
            else:
                time.sleep(0.2)
                state = cluster.run("sinfo", "-h", "-n", node, "-o", "%T", check=False).stdout.strip()
                continue
            tails = "".join(f"\n--- {n}.out ---\n" + "\n".join(_tail(tmp / f"{n}.out")) for n in daemons)
            raise RuntimeError(f"one-node SLURM cluster in {tmp} did not come up: {why}{tails}")
        yield cluster
    finally:
        if _alive(cluster.pids.get("slurmctld", 0)):
            # Cancel every job, batch shell included, and give them a few seconds to go; what is left (KillWait not
            # over, or processes that left their job's process group) is killed by the sweep below.
            with suppress(subprocess.SubprocessError):
                cluster.run("scancel", "--full", "--user=root", check=False)
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and cluster.run("squeue", "-h", "-t", "R,CG", check=False).stdout:
                    time.sleep(0.2)
        _stop([cluster.pids[n] for n in ("slurmd", "slurmctld") if n in cluster.pids])
        _stop(_tagged(f"SLURM_CONF={conf}\0".encode()), grace=2.0)  # slurmstepd and job processes left behind
        _stop([cluster.pids[n] for n in ("munged",) if n in cluster.pids])
        for proc in procs:
            proc.wait()
