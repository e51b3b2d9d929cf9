"""A training rank forks its loader workers only while none of its threads can be ending: every loader's workers are
forked at the start, before the rank joins its process group, and persist for the run. A fork while a thread ends
can hang the new worker for good in CPython before 3.11.8 (gh-112275): a two-rank run stalled so in CI, its rank
waiting for an evaluation worker stuck in ``os.fork`` while a thread ended (a previous pass's queue feeder; after
evaluation workers persisted, a thread with no Python frame, at the test loader's fork after the join)."""

from __future__ import annotations

import os
import threading

from pipeline.stages import pretrain
from pipeline.training import distributed

from .test_signals import _argv
from .tiny import prepare_synthetic, tiny_params, write_params

EVENTS: list | None = None  # while a test records: the threads alive at each fork, and "join" when the rank joins


def _before_fork() -> None:
    if EVENTS is not None:
        EVENTS.append(threading.enumerate())


os.register_at_fork(before=_before_fork)  # for this process's life: it records only while EVENTS is a list


def test_a_run_forks_every_loader_worker_before_it_joins_the_process_group(tmp_path, monkeypatch):
    """Three epochs on the timm path with 2 workers per loader: 6 forks (training, evaluation and test loaders),
    all before the rank joins the process group and none after, and no thread alive at one fork has ended by the
    next (the loaders started before keep their queue feeders for the run)."""
    global EVENTS
    join = distributed.join
    monkeypatch.setattr(distributed, "join", lambda env: (EVENTS.append("join"), join(env))[1])
    augment = {**tiny_params()["pretrain"]["recipe"]["augment"], "mode": "timm"}
    updates = tiny_params(pretrain={"epochs": 3, "augment": augment}, runtime={"workers": 2})
    params = write_params(tmp_path / "params.yaml", updates)
    data = prepare_synthetic(tmp_path / "prepared")
    EVENTS = []
    try:
        pretrain.main(_argv(tmp_path / "run", params, data))
    finally:
        events, EVENTS = EVENTS, None
    assert events.index("join") == 6 and len(events) == 7, events
    for earlier, later in zip(events[:5], events[1:6], strict=True):
        ended = [t.name for t in set(earlier) - set(later)]
        assert not ended, f"threads alive at one fork ended before the next: {ended}"
