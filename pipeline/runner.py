"""Running one training instance end to end, as both training stages do: fit, then write the weights, metrics,
curves and provenance all at once (rank 0), remove the resume state and print a one-line summary."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline import cli, provenance
from pipeline.config import TrainConfig
from pipeline.outputs import csv_bytes, json_bytes, write_outputs
from pipeline.train import fit

__all__ = ["TrainOutputs", "parse_args", "train_and_write"]


@dataclass(frozen=True)
class TrainOutputs:
    """Where a training instance writes (paths from dvc.yaml)."""

    model: Path  # safetensors weights
    metrics: Path  # JSON
    curves: Path  # CSV, one row per epoch
    provenance: Path  # JSON
    resume_dir: Path  # resume checkpoints: not a DVC output, deleted after success


def parse_args(
    stage: str, doc: str, argv: list[str] | None, inputs: dict[str, str]
) -> tuple[argparse.Namespace, TrainOutputs]:
    """The command line of a training stage: ``--params``, ``--seed``, the stage's ``inputs`` (``--flag: help``)
    and the outputs every training stage writes."""
    outputs = {
        "--model-out": "weights to write (safetensors)",
        "--metrics": "metrics JSON to write",
        "--curves": "per-epoch CSV to write",
        "--provenance": "provenance JSON to write",
        "--resume-dir": "where resume checkpoints live (not a DVC output)",
    }
    parser = cli.parser(f"python -m pipeline.{stage}", doc, {"--params": "params.yaml", **inputs, **outputs})
    parser.add_argument("--seed", required=True, type=int, help="entry of seeds")
    args = parser.parse_args(argv)
    paths = (args.model_out, args.metrics, args.curves, args.provenance, args.resume_dir)
    return args, TrainOutputs(*map(Path, paths))


def train_and_write(run: TrainConfig, *, data: Path, outputs: TrainOutputs, init_weights: Path | None = None) -> None:
    """Fit ``run`` on the prepared dataset ``data``; rank 0 then writes ``outputs``, all or nothing."""
    from safetensors.torch import save_model

    started = time.time()
    result = fit(run, data=data, resume_dir=outputs.resume_dir, init_weights=init_weights, progress=sys.stderr.isatty())
    if not result.env.main:
        return
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model.safetensors"
        save_model(result.model, str(weights))  # no metadata: safetensors orders it randomly
        blob = weights.read_bytes()
    extra = {"timing": result.timing, "world_size": result.env.world_size, "device": str(result.env.device)}
    write_outputs(
        {
            outputs.model: blob,
            outputs.metrics: json_bytes(result.metrics),
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
