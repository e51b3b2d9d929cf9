"""The ``cluster`` section: where and with what resources :mod:`pipeline.cluster` runs the DAG's stage instances,
one submitit job each. Like ``runtime`` it is listed by no training stage in dvc.yaml, so editing it re-runs no
training (the plan lists ``cluster.training``: the CPUs per GPU set its loader cap).

What a job may use is checked against the profile here only where the section alone decides it (positive
counts, one node); whether the profile's launcher and batches fit the job's GPUs is checked at submission
(:func:`pipeline.cluster.commands.check_fit`), where the executor is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.config.schema import ParamsError, positive

__all__ = ["Cluster", "Resources"]


@dataclass(frozen=True)
class Resources:
    """What one job asks the scheduler for."""

    nodes: int  # one node per job: stage instances run side by side as separate jobs, not one job over nodes
    gpus_per_node: int  # 0 for a CPU job; else the launcher's processes per node (--nproc-per-node)
    cpus_per_node: int  # for the ranks and their DataLoader workers (runtime.workers per rank)
    mem_gb: int
    time_min: float  # the job's time limit; SLURM warns signal_delay_s before it, the job checkpoints and requeues

    def check(self, where: str) -> None:
        positive(where, nodes=self.nodes, cpus_per_node=self.cpus_per_node, mem_gb=self.mem_gb)
        if self.time_min <= 0:
            raise ParamsError(f"{where}.time_min: expected a positive number of minutes, got {self.time_min}")
        if self.gpus_per_node < 0:
            raise ParamsError(f"{where}.gpus_per_node: expected 0 (a CPU job) or more, got {self.gpus_per_node}")
        if self.nodes != 1:
            raise ParamsError(
                f"{where}.nodes: {self.nodes}: a job runs on one node (instances run side by side as separate "
                "jobs); to spread one run over nodes start pipeline.training.launch on each by hand "
                "(docs/cluster.md); set 1"
            )


@dataclass(frozen=True)
class Cluster:
    executor: Literal["local", "slurm"]  # local: submitit's LocalExecutor on this machine; slurm: sbatch
    partition: str | None  # SLURM partition (null: the cluster's default)
    account: str | None  # SLURM account to charge (null: the user's default)
    training: Resources  # pretrain and finetune jobs (bench: the same on one node)
    other: Resources  # prepare, flops, plan, report: CPU jobs
    requeue_limit: int  # restarts (time limits, preemptions, scontrol requeue) before a job fails for good
    signal_delay_s: int  # SLURM's warning (USR2) this many seconds before the time limit; the run stops cleanly
    # After SIGTERM (scancel, scontrol requeue, a preemption without warning) a stopped run has this long to save its
    # resume state and end before the job kills it: below SLURM's KillWait, after which SLURM kills the job
    stop_window_s: float
    log_folder: str  # submitit's job files and logs, and the record of what was submitted
    workspace: Literal["shared", "clone"]  # shared: jobs run in this workspace; clone: a git clone each + DVC remote

    def check(self, where: str) -> None:
        if self.requeue_limit < 0:
            raise ParamsError(f"{where}.requeue_limit: expected 0 or more restarts, got {self.requeue_limit}")
        positive(where, signal_delay_s=self.signal_delay_s, stop_window_s=self.stop_window_s)
        if self.other.gpus_per_node:
            raise ParamsError(f"{where}.other.gpus_per_node: the CPU stages use no GPU; set 0")
        if self.signal_delay_s >= min(self.training.time_min, self.other.time_min) * 60:
            raise ParamsError(
                f"{where}.signal_delay_s: {self.signal_delay_s} s is not less than a job's time limit "
                f"(training.time_min {self.training.time_min}, other.time_min {self.other.time_min}); lower it"
            )
        if not self.log_folder.strip():
            raise ParamsError(f"{where}.log_folder: expected a folder, got an empty string")
