"""Runs :class:`pipeline.cluster.process_tree.Run` as a cluster job does, in a process of its own (it becomes the
subreaper of what it starts and reaps every child; a test must not do that to pytest's process): a stand-in dvc that
starts a stand-in stage, stopped ``--stop-after`` seconds after the start, ``--repeat`` times. Prints one JSON line per
run: what the stop did and which of the run's processes still existed (zombies included) the moment it returned.

    python -m tests.tree_driver --stage dies --repeat 20
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from pipeline import procfs
from pipeline.cluster import process_tree

# dvc: "collects" for COLLECT seconds (SIGINT, as DVC, unwinds it), runs its stage, ignores SIGINT meanwhile (as DVC
# does while a command runs) and exits 1 if the stage failed, as `dvc repro` does
DVC = """
import signal, subprocess, sys, time
time.sleep(float(sys.argv[1]))
stage = subprocess.Popen(sys.argv[2:])
signal.signal(signal.SIGINT, signal.SIG_IGN)
sys.exit(1 if stage.wait() else 0)
"""
# stages: "dies" on SIGTERM at once (a stage still starting up, nothing below it); "saves" for 0.5 s, then exits 143
# (a training run); "stubborn" ignores it; the last two start a worker (a DataLoader worker) that writes the signals
# it gets to the file argv[2] and ends with its parent
STAGE = """
import os, signal, subprocess, sys, time
mode, signals = sys.argv[1], sys.argv[2]
WORKER = '''
import os, signal, sys, time
for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
    signal.signal(s, lambda n, f: open(sys.argv[1], "a").write(signal.Signals(n).name + "\\\\n"))
parent = os.getppid()
while os.getppid() == parent:
    time.sleep(0.05)
'''
if mode != "dies":
    worker = subprocess.Popen([sys.executable, "-c", WORKER, signals])
if mode == "saves":
    signal.signal(signal.SIGTERM, lambda n, f: (time.sleep(0.5), worker.kill(), worker.wait(), os._exit(143)))
elif mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(120)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", choices=("dies", "saves", "stubborn"), default="dies")
    parser.add_argument("--collect", type=float, default=0.0, help="seconds dvc takes before it starts its stage")
    parser.add_argument("--stop-after", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--signals", default="signals.txt", help="file the stage's worker writes its signals to")
    args = parser.parse_args(argv)
    process_tree.become_subreaper()
    stage = [sys.executable, "-c", STAGE, args.stage, args.signals]
    for _ in range(args.repeat):
        run = process_tree.Run([sys.executable, "-c", DVC, str(args.collect), *stage], Path.cwd(), {})
        time.sleep(args.stop_after)
        before = process_tree.descendants(run.pid)
        stopped = run.stop(args.timeout)
        still = [p for p in [run.pid, *before] if procfs.stat(p) is not None]
        report = {"status": run.status, "had_stage": bool(before), "seconds": round(stopped.seconds, 2),
                  "signalled": stopped.signalled, "killed": len(stopped.killed), "left": stopped.left,
                  "still_exist": still, "children": process_tree.descendants(os.getpid())}  # fmt: skip
        print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
