"""Resume state of a training run: what identifies it, atomic save and load, and the random generators.

A checkpoint lives in a resume folder that DVC does not manage (DVC deletes a stage's outputs before
re-running it). It is loaded only under an identical fingerprint, with ``torch.load(weights_only=True)``
(never unpickling arbitrary objects).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from pipeline.outputs import jsonable

__all__ = ["file_hash", "fingerprint", "load", "rng_state", "save", "set_rng_state"]


def file_hash(path: Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fingerprint(run, *, data_hash: str, init_weights: Path | None, world_size: int) -> dict:
    """Everything that determines the result of ``run`` (a :class:`pipeline.config.TrainConfig`): a checkpoint
    resumes only under an identical one. The runtime settings are left out: they change how a run is executed,
    not what it computes (threads can move the last bits of float sums, like another CPU model), so a
    run may resume with other threads, workers or checkpoint interval."""
    return json.loads(
        json.dumps(
            {
                "stage": run.stage,
                "net": jsonable(run.net),
                "seed": run.seed,
                "dataset": run.dataset,
                "recipe": jsonable(run.recipe),
                "data_hash": data_hash,
                "init_weights": file_hash(init_weights) if init_weights else None,
                "world_size": world_size,
            },
            sort_keys=True,
        )
    )


def save(path: Path, state: dict) -> None:
    """Atomic: written beside, then renamed over the previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: Path, expected: dict) -> dict | None:
    """The checkpoint at ``path`` (None if there is none); an error naming the differing keys if it was written
    under another fingerprint."""
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved = json.loads(state["fingerprint"])
    if saved != expected:
        differ = sorted(k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k))
        raise ValueError(
            f"checkpoint {path} was written by a different configuration ({', '.join(differ)} "
            f"differ); delete {path.parent} to start this run from scratch"
        )
    return state


def rng_state() -> dict:
    """Torch's, NumPy's and Python's global generators."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(tuple(state["python"]) if not isinstance(state["python"], tuple) else state["python"])
