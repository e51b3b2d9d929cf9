r"""The launcher of the training stages on one or several nodes: ``python -m pipeline.training.launch
[--nproc-per-node N] -m MODULE ARGS...`` runs the module (a training stage) under torchrun, with the node count, this
node's rank and the rendezvous address taken from the environment the cluster sets.

``launcher: python -m pipeline.training.launch --nproc-per-node 8`` in params.yaml makes a stage's command
``python -m pipeline.training.launch --nproc-per-node 8 -m pipeline.stages.pretrain ...``. The nodes:

- under SLURM (``SLURM_JOB_ID``) with several nodes, from the batch script: it runs itself once per node
  through ``srun --ntasks-per-node=1`` (marking those tasks with ``QKV_LAUNCH_NODE_TASK=1``); in each of
  them ``SLURM_NNODES``, ``SLURM_NODEID`` and the
  first host of ``SLURM_JOB_NODELIST`` (or ``MASTER_ADDR``) give torchrun its ``--nnodes``, ``--node-rank``
  and ``--master-addr``; ``MASTER_PORT`` (default 29500 + the job id modulo 20000) its port;
- otherwise torchrun's own variables (``PET_NNODES``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``,
  ``PET_MASTER_PORT``), which torchrun reads itself: start the same command on every node with them set;
- with neither, one node (``--standalone``).

Processes per node: ``--nproc-per-node``, else ``PET_NPROC_PER_NODE``, else ``SLURM_GPUS_ON_NODE``, else 1.
``--dry-run`` prints the command instead of running it.

Stopping: torchrun's agent runs in this process (no extra process between DVC and it) and passes SIGTERM,
SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 on to its workers, the signals they handle (``PET_SIGNALS_TO_HANDLE``
may name fewer, never others: :mod:`pipeline.stop_signals`), which stop cleanly
(:mod:`pipeline.training.signals`) within ``TORCH_ELASTIC_SHUTDOWN_TIMEOUT`` seconds (30 unless set) before it
kills them. It then exits with 128 + the signal's number, as do workers that stopped on their own
(after their one line), without torchrun's traceback. Two nodes by hand (shared filesystem, node A reachable
from B)::

    # on node A                                   # on node B
    export PET_NNODES=2 PET_NODE_RANK=0           export PET_NNODES=2 PET_NODE_RANK=1
    export PET_MASTER_ADDR=nodeA PET_MASTER_PORT=29500   (the same two)
    dvc repro --single-item pretrain@n12-sne-0    python -m pipeline.training.launch --nproc-per-node 8 \
                                                      -m pipeline.stages.pretrain ...
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

from pipeline import cli, stop_signals

__all__ = ["NODE_TASK", "command"]

NODE_TASK = "QKV_LAUNCH_NODE_TASK"  # set in the per-node tasks srun starts, so they do not fan out again


def _first_host(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(
            f"launch: error: cannot expand SLURM_JOB_NODELIST={nodelist!r} with scontrol ({exc}); set MASTER_ADDR"
        ) from None
    hosts = out.stdout.split()
    if not hosts:
        raise SystemExit(f"launch: error: scontrol found no host in SLURM_JOB_NODELIST={nodelist!r}; set MASTER_ADDR")
    return hosts[0]


def command(argv: list[str], env: dict[str, str]) -> list[str]:
    """The command to run for ``python -m pipeline.training.launch <argv>`` in environment ``env``."""
    nproc = None
    if argv[:1] == ["--nproc-per-node"]:
        if len(argv) < 2 or not argv[1].isdigit() or int(argv[1]) < 1:
            raise SystemExit(f"launch: error: --nproc-per-node needs a positive number, got {argv[1:2] or 'nothing'}")
        nproc, argv = argv[1], argv[2:]
    if argv[:1] != ["-m"] or len(argv) < 2:
        raise SystemExit(
            "launch: error: usage: python -m pipeline.training.launch [--nproc-per-node N] -m MODULE ARGS..."
        )
    nproc = nproc or env.get("PET_NPROC_PER_NODE") or env.get("SLURM_GPUS_ON_NODE") or "1"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", nproc]
    nodes = int(env.get("SLURM_NNODES", "1")) if "SLURM_JOB_ID" in env else 1
    if nodes > 1 and NODE_TASK not in env:  # the batch script: one task per node, each runs this again
        # --nodes/--ntasks override the job's own task count (srun would inherit SLURM_NTASKS); each task gets the
        # node's CPUs for its ranks and their loader workers (srun no longer inherits --cpus-per-task since 22.05)
        cpus = [f"--cpus-per-task={env['SLURM_CPUS_ON_NODE']}"] if "SLURM_CPUS_ON_NODE" in env else []
        return ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1", *cpus, "--kill-on-bad-exit=1",
                f"--export=ALL,{NODE_TASK}=1", sys.executable, "-m", "pipeline.training.launch",
                "--nproc-per-node", nproc, *argv]  # fmt: skip
    if nodes > 1:
        addr = env.get("MASTER_ADDR") or _first_host(env["SLURM_JOB_NODELIST"])
        port = env.get("MASTER_PORT") or str(29500 + int(env["SLURM_JOB_ID"]) % 20000)
        rendezvous = ["--nnodes", str(nodes), "--node-rank", env["SLURM_NODEID"], "--master-addr", addr,
                      "--master-port", port]  # fmt: skip
    elif "PET_NNODES" in env:
        rendezvous = []  # torchrun reads PET_NNODES, PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT itself
    else:
        rendezvous = ["--standalone"]
    return [*torchrun, *rendezvous, *argv]


def _forwarded(env: dict[str, str]) -> str:
    """What torchrun's agent passes on to its ranks: every stop signal the ranks handle, and nothing else (a signal
    they do not handle would kill them unsaved)."""
    given = env.get("PET_SIGNALS_TO_HANDLE")
    if given is None:
        return ",".join(stop_signals.NAMES)
    names = [name.strip() for name in given.split(",") if name.strip()]
    other = [name for name in names if name not in stop_signals.NAMES]
    if other:
        raise SystemExit(
            f"launch: error: PET_SIGNALS_TO_HANDLE={given!r} names {', '.join(other)}, which the ranks do not handle "
            f"(they would end without saving); use some of {','.join(stop_signals.NAMES)}, or unset it"
        )
    return ",".join(names)


def _torchrun(args: list[str]) -> None:
    """torchrun with ``args``, in this process; a stop (a signal to the agent, or workers that all stopped on a
    signal or the end of their dvc) ends it with 128 + the signal's number and no traceback."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    os.environ["PET_SIGNALS_TO_HANDLE"] = _forwarded(dict(os.environ))
    try:
        torchrun(args)
    except SignalException as exc:
        sys.exit(128 + int(exc.sigval))
    except ChildFailedError as exc:
        codes = {failure.exitcode for failure in exc.failures.values()}
        if all(code > 128 for code in codes):  # every failed worker stopped cleanly and said so
            sys.exit(max(codes))
        raise


def _help() -> argparse.ArgumentParser:
    """The parser that prints ``--help``: it only describes the command line, which :func:`command` reads (its
    options in this order, everything after ``-m MODULE`` passed on unchanged)."""
    out = cli.parser("python -m pipeline.training.launch", __doc__, {})
    out.usage = "%(prog)s [--dry-run] [--nproc-per-node N] -m MODULE [ARGS ...]"
    out.epilog = (
        "The nodes: under SLURM (SLURM_JOB_ID) with several nodes, SLURM_NNODES, SLURM_NODEID and the first host "
        "of SLURM_JOB_NODELIST (or MASTER_ADDR; MASTER_PORT); otherwise torchrun's PET_NNODES, PET_NODE_RANK, "
        "PET_MASTER_ADDR and PET_MASTER_PORT; with neither, one node (--standalone). More: pydoc "
        "pipeline.training.launch."
    )
    out.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    out.add_argument(
        "--nproc-per-node",
        metavar="N",
        help="processes on this node, one per GPU (default: PET_NPROC_PER_NODE, else SLURM_GPUS_ON_NODE, else 1)",
    )
    out.add_argument("-m", metavar="MODULE", help="the module every process runs, e.g. pipeline.stages.pretrain")
    out.add_argument("args", nargs="*", metavar="ARGS", help="the module's arguments, passed on unchanged")
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        _help().print_help()
        return
    dry = "--dry-run" in argv[:1]
    cmd = command(argv[1:] if dry else argv, dict(os.environ))
    if dry:
        print(shlex.join(cmd))
        return
    if cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]:
        _torchrun(cmd[3:])
        return
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
