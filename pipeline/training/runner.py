"""Running one training instance end to end, as both training stages do: hold its resume folder (a second run of
the instance at the same time is refused), check that every folder it writes is writable, fit (rewriting the
curves after every epoch, so ``dvc plots`` and ``tail -f`` follow a running job), then write the weights (raw,
and EMA when the recipe keeps one), metrics, record, curves and provenance all at once (rank 0), remove the resume
state and print a one-line summary. A run asked to stop (:mod:`pipeline.training.signals`) writes none of them: it
ends with one line saying where its resume state is, and exit status 128 + the signal's number."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline import provenance
from pipeline.config import TrainConfig, determinism
from pipeline.outputs import csv_bytes, json_bytes, write_outputs
from pipeline.training import distributed, folder_lock, signals
from pipeline.training.metrics import scores
from pipeline.training.train import fit

__all__ = ["TrainOutputs", "peak_rss_mib", "train_and_write"]


@dataclass(frozen=True)
class TrainOutputs:
    """Where a training instance writes (paths from dvc.yaml)."""

    weights: Path  # folder: raw.safetensors, and ema.safetensors when the recipe keeps an EMA
    metrics: Path  # JSON: the run's DVC metrics (a few numbers, :func:`pipeline.training.metrics.scores`)
    record: Path  # JSON: the run's whole record (what the report reads)
    curves: Path  # CSV, one row per epoch
    provenance: Path  # JSON
    resume_dir: Path  # resume checkpoints: not a DVC output, deleted after success

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainOutputs:
        """The outputs named on a training stage's command line (:func:`pipeline.cli.training_parser`)."""
        return cls(
            *map(Path, (args.weights_out, args.metrics, args.record, args.curves, args.provenance, args.resume_dir))
        )


def peak_rss_mib() -> float:
    """Peak host memory of this process (the rank) plus that of its largest finished child process (the DataLoader
    workers, once they have exited), in MiB: ``getrusage``'s ``ru_maxrss`` (KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


def _safetensors(model) -> bytes:
    from safetensors.torch import save_model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.safetensors"
        save_model(model, str(path))  # no metadata: safetensors orders it randomly
        return path.read_bytes()


def probe_writable(folders: list[Path], *, keep: bool = False) -> None:
    """Create each folder if missing, write and delete a file in it; a folder that cannot be written is one line.
    The folders created are removed again unless ``keep``."""
    for folder in folders:
        created = [p for p in (folder, *folder.parents) if not p.exists()]
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe.", suffix=".tmp")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ValueError(f"cannot write to {folder}: {exc.strerror or exc}; the run writes there") from None
        finally:
            for made in [] if keep else created:
                with contextlib.suppress(OSError):
                    made.rmdir()


def cpu_shortage(workers: int, ranks: int, cpus: int | None = None) -> str:
    """Why this node's ``ranks`` processes, each with ``workers`` loader workers, would starve on the CPUs this
    process may run on (its affinity: SLURM binds a job step to the CPUs it asked for), or "" if they fit."""
    cpus = len(os.sched_getaffinity(0)) if cpus is None else cpus
    need = ranks * (workers + 1)
    if cpus >= need:
        return ""
    return (
        f"this process may run on {cpus} CPU(s) (its affinity), but {ranks} rank(s) x (runtime.workers {workers} + 1) "
        f"want {need}: the loader will starve the device; under SLURM give the job step the job's CPUs (srun "
        "--cpus-per-task, as pipeline.cluster does), or lower runtime.workers"
    )


def train_and_write(run: TrainConfig, *, data: Path, outputs: TrainOutputs, init_weights: Path | None = None) -> None:
    """Fit ``run`` on the prepared dataset ``data``; rank 0 then writes ``outputs``, all or nothing (the curves
    are also rewritten, atomically, after every epoch). Rank 0 holds the resume folder from start to end."""
    main = distributed.launched_rank() == 0
    folders = [
        outputs.weights,
        *dict.fromkeys(p.parent for p in (outputs.metrics, outputs.record, outputs.curves, outputs.provenance)),
    ]
    probe_writable([outputs.resume_dir], keep=True)
    with signals.StopRequests(linger="TORCHELASTIC_RUN_ID" in os.environ) as stop:
        with folder_lock.hold(outputs.resume_dir) if main else contextlib.nullcontext():
            probe_writable(folders if main else [])
            if main and (short := cpu_shortage(run.runtime.workers, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))):
                print(f"{run.name}: warning: {short}", file=sys.stderr, flush=True)
            try:
                _train_and_write(run, data, outputs, init_weights, stop)
            except signals.Stopped as stopped:
                if main:
                    with contextlib.suppress(OSError):  # stderr may have gone with the dvc that started the run
                        print(f"{run.name}: {stopped.line}", file=sys.stderr, flush=True)
                sys.exit(stopped.status)


def _train_and_write(run: TrainConfig, data: Path, outputs: TrainOutputs, init_weights: Path | None, stop) -> None:
    started = time.time()

    def live_curves(curves: list[dict]) -> None:
        write_outputs({outputs.curves: csv_bytes(curves)})

    result = fit(
        run,
        data=data,
        resume_dir=outputs.resume_dir,
        init_weights=init_weights,
        progress=sys.stderr.isatty(),
        on_epoch=live_curves,
        stop=stop,
    )
    if not result.env.main:
        return
    weights = {outputs.weights / "raw.safetensors": _safetensors(result.model)}
    if result.ema is not None:
        weights[outputs.weights / "ema.safetensors"] = _safetensors(result.ema)
    extra = {"timing": result.timing, "world_size": result.env.world_size, "device": str(result.env.device)}
    extra["peak_rss_mib"] = peak_rss_mib()  # host memory, for the cost plan (pipeline/stages/plan.py --measured)
    extra["determinism"] = determinism.record(run.device, run.runtime.gpu_kernels)  # what a re-run promises
    write_outputs(
        {
            **weights,
            outputs.metrics: json_bytes(scores(result.metrics)),
            outputs.record: json_bytes(result.metrics),
            outputs.curves: csv_bytes(result.curves),
            outputs.provenance: json_bytes(provenance.record(run.stage, run, started=started, extra=extra)),
        }
    )
    shutil.rmtree(outputs.resume_dir, ignore_errors=True)
    m = result.metrics
    print(
        f"{run.name}: test top-1 {m['test_top1']:.2f} % on {m['dataset']}"
        f"{' (SYNTHETIC)' if m['synthetic'] else ''}, {result.timing['train_img_per_s']} img/s"
    )
