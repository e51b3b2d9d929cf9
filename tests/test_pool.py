"""make repro JOBS=N (pipeline/cluster/pool.py): slots that never share a core or a GPU, measuring stages alone,
upstream first."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipeline import config
from pipeline.cluster import pool
from pipeline.cluster.dag import Instance

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "profiles" / "paper.yaml"


def _params(path, **runtime):
    p = config.load(path)
    return dataclasses.replace(p, runtime=dataclasses.replace(p.runtime, **runtime))


def test_cpu_slots_are_bound_to_disjoint_cores():
    p = _params(ROOT / "params.yaml", threads=1)
    slots = pool.slots(p, 2, cpus=[0, 1])
    assert [s.cpus for s in slots] == [(0,), (1,)] and all(not s.env for s in slots)
    p = _params(ROOT / "params.yaml", threads=2)
    assert [s.cpus for s in pool.slots(p, 2, cpus=[0, 1, 2, 3, 4])] == [(0, 1), (2, 3)]
    assert pool.slots(p, 1, cpus=[0, 1])[0].cpus is None  # one slot: a plain dvc repro, unbound


@pytest.mark.parametrize(
    ("threads", "jobs", "message"),
    [
        (2, 2, "JOBS=2 x runtime.threads 2 is more than the 2 core(s) this process may use: slots would share cores; "
               "lower JOBS to 1 or runtime.threads"),
        (0, 2, "JOBS=2 on a CPU needs runtime.threads set (it is 0: torch's default, every core, in each of the 2 "
               "instances); set runtime.threads to 1 in params.yaml"),
        (1, 0, "JOBS=0: expected a positive number of instances to run at once"),
    ],
)  # fmt: skip
def test_slots_that_do_not_fit_the_machine_are_refused(threads, jobs, message):
    with pytest.raises(pool.PoolError) as caught:
        pool.slots(_params(ROOT / "params.yaml", threads=threads), jobs, cpus=[0, 1])
    assert str(caught.value) == message


def test_gpu_slots_see_their_own_gpus(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    p = config.load(PAPER)  # launcher: 8 processes per node
    p1 = dataclasses.replace(p, launcher="python")
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in pool.slots(p1, 4, gpus=4)] == ["0", "1", "2", "3"]
    assert pool.slots(p, 1, gpus=8)[0].env == {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
    with pytest.raises(pool.PoolError, match=r"^JOBS=2 x 8 GPU\(s\) per instance .* is more than the 8 GPU\(s\)"):
        pool.slots(p, 2, gpus=8)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # the GPUs this machine gave us: slots split those
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in pool.slots(p1, 2, gpus=2)] == ["2", "3"]


def _dag(*specs):
    return {name: Instance(name, name.split("@")[0], tuple(up), None) for name, up in specs}


def test_the_pool_starts_upstream_first_and_measurements_alone(monkeypatch):
    started = []
    monkeypatch.setattr(pool, "_start", lambda root, name, slot, force: started.append((name, slot.index)) or
                        pool._Running(name, slot, None, 0.0))  # fmt: skip
    dag = _dag(("prepare@a", []), ("prepare@b", []), ("pretrain@x", ["prepare@a"]), ("bench", ["prepare@a"]),
               ("report", ["pretrain@x", "bench"]))  # fmt: skip
    slots = [pool.Slot(0, {}, (0,)), pool.Slot(1, {}, (1,))]
    todo, done, running = list(dag), set(), {}
    pool._fill(None, dag, todo, done, running, slots, False)
    assert started == [("prepare@a", 0), ("prepare@b", 1)]  # pretrain waits for prepare@a; both slots busy
    del running["prepare@a"]
    done.add("prepare@a")
    pool._fill(None, dag, todo, done, running, slots, False)
    assert started[-1] == ("pretrain@x", 0) and "bench" in todo  # bench waits for an idle pool
    running.clear()
    pool._fill(None, dag, todo, done, running, slots, False)
    assert started[-1] == ("bench", 0) and list(running) == ["bench"]  # alone: nothing else started beside it
    assert running["bench"].slot.cpus is None  # on the whole machine, not its slot's core
    running.clear()
    pool._fill(None, dag, todo, done, running, slots, False)
    assert started[-1] == ("report", 0)
