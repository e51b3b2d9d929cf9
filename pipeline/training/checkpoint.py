"""Resume state of a training run: what identifies it, atomic save and checked load, every rank's random
generators and the disk checks before a run (the lock that keeps two runs out of one resume folder:
:mod:`pipeline.training.folder_lock`).

A checkpoint lives in a resume folder that DVC does not manage (DVC deletes a stage's outputs before
re-running it), on storage every rank can read (one node's disk, or a filesystem the nodes share). Rank 0
writes the state the ranks share (``checkpoint.pt``: weights, optimizer, scheduler, EMA, curves, and where the
run is: ``epoch`` epochs and ``step`` steps of the next); every rank writes its own (``rank-<r>-epoch-<e>.pt``,
``rank-<r>-epoch-<e>-step-<s>.pt`` part-way through an epoch: its random generators, last loss and its sums of
the epoch so far) before it, so a resumed rank continues its own stream, on whichever node it runs. A checkpoint
is loaded only under an identical fingerprint (world size included), with ``torch.load(weights_only=True)``
(never unpickling arbitrary objects); a file that is unreadable, truncated, incomplete or refused is one line
naming it. A failed write (a full disk, a folder made read-only) is one line naming the checkpoint, leaves no
temporary file and keeps the previous checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import pickle
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from pipeline.outputs import jsonable

__all__ = [
    "SHARED",
    "check_space",
    "file_hash",
    "fingerprint",
    "load",
    "rank_file",
    "restore",
    "rng_state",
    "save_rank",
    "save_shared",
    "set_rng_state",
    "size_estimate",
]

SHARED = "checkpoint.pt"
SHARED_KEYS = ("fingerprint", "epoch", "model", "optimizer", "scheduler", "ema", "curves")
RANK_KEYS = ("rng", "last_finite")
_WRITE_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}

log = logging.getLogger("pipeline.training.checkpoint")


def file_hash(path: Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fingerprint(run, *, data_hash: str, init_weights: Path | None, world_size: int) -> dict:
    """Everything that determines the result of ``run`` (a :class:`pipeline.config.TrainConfig`): a checkpoint
    resumes only under an identical one. The runtime settings are left out: they change how a run is executed,
    not what it computes (threads can move the last bits of float sums, like another CPU model), so a run may
    resume with other threads, workers or checkpoint interval; except a CUDA run's ``gpu_kernels``, which decide
    whether its result is bitwise reproducible (:mod:`pipeline.config.determinism`): a run half on fast kernels
    would carry a promise it cannot keep."""
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
                **({"gpu_kernels": run.runtime.gpu_kernels} if run.device == "cuda" else {}),
            },
            sort_keys=True,
        )
    )


def rank_file(folder: Path, rank: int, epoch: int, step: int = 0) -> Path:
    return folder / f"rank-{rank}-epoch-{epoch}{f'-step-{step}' if step else ''}.pt"


def _atomic_save(path: Path, state: dict) -> None:
    """Serialised in memory, written to a uniquely named file beside ``path`` (flushed to disk), then renamed
    over it; a failed write removes its temporary file, leaves ``path`` as it was and says which file it was."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        _write(fd, buffer.getbuffer())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        reason = _WRITE_ERRORS.get(exc.errno, exc.strerror or str(exc))
        raise ValueError(
            f"cannot write checkpoint {path}: {reason} (it needs {buffer.tell() / 1e6:.1f} MB); the previous resume "
            f"state in {path.parent} is kept: free space or make the folder writable, then run dvc repro to resume"
        ) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _write(fd: int, data) -> None:
    """``data`` into the open file ``fd``, flushed to the disk (a rename after it never exposes an empty file after
    a crash), then closed."""
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def save_rank(folder: Path, rank: int, epoch: int, step: int, state: dict) -> None:
    """One rank's own state after ``epoch`` epochs and ``step`` steps (before rank 0 writes the shared one)."""
    _atomic_save(rank_file(folder, rank, epoch, step), state)


def save_shared(folder: Path, epoch: int, step: int, fingerprint_: dict, state: dict) -> None:
    """Rank 0: the shared state after ``epoch`` epochs and ``step`` steps; then every other per-rank file."""
    fingerprint_ = json.dumps(fingerprint_, sort_keys=True)
    _atomic_save(folder / SHARED, {"fingerprint": fingerprint_, "epoch": epoch, "step": step, **state})
    current = rank_file(folder, 0, epoch, step).name.split("-", 2)[2]  # "epoch-<e>.pt", "epoch-<e>-step-<s>.pt"
    for old in folder.glob("rank-*.pt"):
        if old.name.split("-", 2)[2] != current:
            old.unlink(missing_ok=True)


def _read(path: Path, folder: Path, required: tuple[str, ...]) -> dict:
    """The state in checkpoint ``path``, or one line naming it and what is wrong."""
    fix = f"delete {folder} to start over"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"checkpoint {path} holds objects other than tensors and plain values and was refused unread (this "
            f"pipeline never writes such a file: it may be hostile); {fix}"
        ) from None
    except Exception as exc:  # torch reports a damaged file as RuntimeError, EOFError, OSError, KeyError, ...
        detail = type(exc).__name__ + (f": {str(exc).split('. ')[0].strip()[:160]}" if str(exc).strip() else "")
        raise ValueError(f"checkpoint {path} is unreadable, truncated or corrupt ({detail}); {fix}") from None
    _require(state, required, path, folder)
    return state


def _require(state: dict, keys: tuple[str, ...], path: Path, folder: Path) -> None:
    missing = [k for k in keys if k not in state] if isinstance(state, dict) else list(keys)
    if missing:
        raise ValueError(
            f"checkpoint {path} is incomplete: it has no {', '.join(missing)}; delete {folder} to start over"
        )


def load(folder: Path, expected: dict, rank: int) -> tuple[dict, dict] | None:
    """``(shared state, this rank's state)`` of the checkpoint in ``folder``, or None if there is none; one line
    naming the file if it is unreadable or incomplete, if it was written under another fingerprint (with the
    differing keys), or if this rank's own file is missing."""
    path = folder / SHARED
    if not path.is_file():
        return None
    shared = _read(path, folder, ("fingerprint",))
    try:
        saved = json.loads(shared["fingerprint"])
        differ = sorted(k for k in set(saved) | set(expected) if saved.get(k) != expected.get(k))
    except (TypeError, ValueError, AttributeError):
        raise ValueError(f"checkpoint {path} has an unreadable fingerprint; delete {folder} to start over") from None
    if differ:
        raise ValueError(
            f"checkpoint {path} was written by a different configuration ({', '.join(differ)} "
            f"differ); delete {folder} to start this run from scratch"
        )
    _require(shared, SHARED_KEYS, path, folder)
    epoch, step = shared["epoch"], shared.get("step", 0)
    own = rank_file(folder, rank, epoch, step)
    if not own.is_file():
        raise ValueError(
            f"checkpoint {path} (epoch {epoch}{f' step {step}' if step else ''}) has no state for rank {rank} "
            f"({own.name} is missing: the resume folder must be on storage every node shares); delete {folder} to "
            "start over"
        )
    return shared, _read(own, folder, RANK_KEYS + (("partial",) if step else ()))


def restore(folder: Path, saved: tuple[dict, dict], stateful: dict, device: torch.device) -> None:
    """Load a checkpoint :func:`load` returned into ``stateful`` (its keys' objects with ``load_state_dict``;
    None: skipped) and this rank's generators; one line if the saved state does not fit them (the code changed
    since it was written)."""
    shared, own = saved
    try:
        for key, obj in stateful.items():
            if obj is not None:
                obj.load_state_dict(shared[key])
        set_rng_state(own["rng"], device)
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ValueError(
            f"checkpoint {folder / SHARED} does not fit this run ({detail}); delete {folder} to start over"
        ) from None


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


def size_estimate(model: torch.nn.Module, ema: torch.nn.Module | None) -> int:
    """Bytes of a checkpoint: the weights and buffers, two optimizer moments per weight (AdamW's; SGD keeps
    fewer), the EMA, and a margin for the rest."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return int((weights + 2 * params + (weights if ema is not None else 0)) * 1.05) + (1 << 16)


def check_space(folder: Path, needs: int, name: str) -> None:
    """Log what a checkpoint takes against the free space of ``folder``; refuse to start if it cannot hold one
    more (a checkpoint is written beside the previous one before it replaces it)."""
    free = shutil.disk_usage(next(p for p in (folder, *folder.parents) if p.exists())).free
    log.info("%s: a resume checkpoint takes about %.1f MB; %.1f GB free in %s", name, needs / 1e6, free / 1e9, folder)
    if free < needs:
        raise ValueError(
            f"{folder}: a resume checkpoint needs about {needs / 1e6:.1f} MB but only {free / 1e6:.1f} MB are free "
            "there; free space or move the workspace before training"
        )
