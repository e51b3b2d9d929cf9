"""Resume state of a training run: what identifies it, atomic save and load, and every rank's random generators.

A checkpoint lives in a resume folder that DVC does not manage (DVC deletes a stage's outputs before
re-running it), on storage every rank can read (one node's disk, or a filesystem the nodes share). Rank 0
writes the state the ranks share (``checkpoint.pt``: weights, optimizer, scheduler, EMA, curves); every rank
writes its own random generators (``rank-<r>-epoch-<e>.pt``) before it, so a resumed rank continues its own
stream, on whichever node it runs. A checkpoint is loaded only under an identical fingerprint (world size
included), with ``torch.load(weights_only=True)`` (never unpickling arbitrary objects).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from pipeline.outputs import jsonable

__all__ = [
    "SHARED",
    "file_hash",
    "fingerprint",
    "load",
    "rank_file",
    "rng_state",
    "save_rank",
    "save_shared",
    "set_rng_state",
]

SHARED = "checkpoint.pt"


def file_hash(path: Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fingerprint(run, *, data_hash: str, init_weights: Path | None, world_size: int) -> dict:
    """Everything that determines the result of ``run`` (a :class:`pipeline.config.TrainConfig`): a checkpoint
    resumes only under an identical one. The runtime settings are left out: they change how a run is executed,
    not what it computes (threads can move the last bits of float sums, like another CPU model), so a run may
    resume with other threads, workers or checkpoint interval."""
    return json.loads(
        json.dumps(
            {
                "stage": run.stage,
                "net": jsonable(run.net),
                "seed": run.seed,
                "dataset": run.dataset,
                "recipe": jsonable(run.recipe),
                "device": run.device,
                "data_hash": data_hash,
                "init_weights": file_hash(init_weights) if init_weights else None,
                "world_size": world_size,
            },
            sort_keys=True,
        )
    )


def rank_file(folder: Path, rank: int, epoch: int) -> Path:
    return folder / f"rank-{rank}-epoch-{epoch}.pt"


def _atomic_save(path: Path, state: dict) -> None:
    """Written to a uniquely named file beside ``path``, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_rank(folder: Path, rank: int, epoch: int, state: dict) -> None:
    """One rank's own state after ``epoch`` epochs (before rank 0 writes the shared one)."""
    _atomic_save(rank_file(folder, rank, epoch), state)


def save_shared(folder: Path, epoch: int, fingerprint_: dict, state: dict) -> None:
    """Rank 0: the shared state after ``epoch`` epochs; then every older per-rank file is removed."""
    _atomic_save(folder / SHARED, {"fingerprint": json.dumps(fingerprint_, sort_keys=True), "epoch": epoch, **state})
    for old in folder.glob("rank-*-epoch-*.pt"):
        if int(old.stem.rsplit("-", 1)[1]) != epoch:
            old.unlink(missing_ok=True)


def load(folder: Path, expected: dict, rank: int) -> tuple[dict, dict] | None:
    """``(shared state, this rank's state)`` of the checkpoint in ``folder``, or None if there is none; an error
    naming the differing keys if it was written under another fingerprint, or naming the file a rank lacks."""
    path = folder / SHARED
    if not path.is_file():
        return None
    shared = torch.load(path, map_location="cpu", weights_only=True)
    saved = json.loads(shared["fingerprint"])
    if saved != expected:
        differ = sorted(k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k))
        raise ValueError(
            f"checkpoint {path} was written by a different configuration ({', '.join(differ)} "
            f"differ); delete {folder} to start this run from scratch"
        )
    own = rank_file(folder, rank, shared["epoch"])
    if not own.is_file():
        raise ValueError(
            f"checkpoint {path} (epoch {shared['epoch']}) has no state for rank {rank} ({own.name} is missing: "
            f"the resume folder must be on storage every node shares); delete {folder} to start over"
        )
    return shared, torch.load(own, map_location="cpu", weights_only=True)


def rng_state(device: torch.device) -> dict:
    """Torch's (CPU and, on a GPU, this rank's CUDA device's), NumPy's and Python's global generators."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)  # CUDA only
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)  # CUDA only
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(tuple(state["python"]) if not isinstance(state["python"], tuple) else state["python"])
