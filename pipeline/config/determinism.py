"""What a training run's result promises about a re-run, by ``device`` and ``runtime.gpu_kernels``: the policy,
written once. The training stages record it in their provenance (:func:`record`); the audit reads it back
(:func:`committed`), refuses a re-run that cannot confirm the result (:func:`refusal`), names the promise on its
verdict line (:func:`promise`) and notes each recorded condition of the promise that the re-run did not meet
(:func:`unmet`). docs/auditing.md shows the same policy as a table.

- ``cpu`` (either setting): deterministic algorithms; bitwise-identical results for the same seed on the same CPU
  model, torch build, ``runtime.threads``, ``runtime.eval_batch_size`` and process count; exact resume.
- ``cuda`` with ``fast`` (the default): timm's and XCiT's settings, cuDNN's autotuner and TF32; not bitwise
  reproducible, resume not exact; two runs differ by the end at the level of seed-to-seed noise.
- ``cuda`` with ``deterministic``: deterministic algorithms, cuDNN's deterministic kernels without the autotuner,
  no TF32, ``CUBLAS_WORKSPACE_CONFIG`` set; bitwise on the same GPU model, driver, CUDA/cuDNN/torch versions and
  process count (PyTorch's reproducibility notes); exact resume; slower, by how much depends on the model.

Torch-free: the audit imports it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CUBLAS_WORKSPACE", "GPU_KERNELS", "committed", "promise", "record", "refusal", "unmet"]

GPU_KERNELS = ("fast", "deterministic")  # runtime.gpu_kernels; the first is the default
CUBLAS_WORKSPACE = ":4096:8"  # CUBLAS_WORKSPACE_CONFIG for deterministic cuBLAS (PyTorch's reproducibility notes)

_PROMISE = {
    "cpu": "CPU, deterministic algorithms, same CPU model, torch build, threads, evaluation batch and processes",
    "cuda": "CUDA, runtime.gpu_kernels: deterministic, same GPU model, driver, CUDA/cuDNN/torch versions and processes",
}
# The conditions of each promise that provenance records: (key, what it is, the plural in a note).
_CONDITIONS = {
    "cpu": (
        ("hardware.cpu", "CPU model", "CPU models"),
        ("packages.torch", "torch version", "torch builds"),
        ("hardware.torch_threads", "thread count", "thread counts"),
        ("params.runtime.eval_batch_size", "evaluation batch", "evaluation batches"),
        ("world_size", "process count", "process counts"),
    ),
    "cuda": (
        ("gpu.models", "GPU model", "GPU models"),
        ("gpu.driver", "driver", "drivers"),
        ("gpu.cuda", "CUDA version", "CUDA versions"),
        ("packages.torch", "torch version", "torch builds"),
        ("params.runtime.eval_batch_size", "evaluation batch", "evaluation batches"),
        ("world_size", "process count", "process counts"),
    ),
}


def record(device: str, gpu_kernels: str) -> dict:
    """The provenance's ``determinism`` entry of a run on ``device`` (``cpu``, ``cuda`` or ``cuda:<n>``)."""
    kind = device.split(":")[0]
    return {"device": kind, "gpu_kernels": gpu_kernels, "bitwise": kind == "cpu" or gpu_kernels == "deterministic"}


def committed(provenance: dict) -> dict | None:
    """The ``determinism`` entry of a stage's provenance record; None for a stage that trains nothing (no
    ``device`` in its record). A training record written before the entry existed is read by its ``device``: the
    code then made CPU runs deterministic and CUDA runs with ``fast`` kernels, the only ones it had."""
    if isinstance(provenance.get("determinism"), dict):
        return provenance["determinism"]
    device = provenance.get("device")
    return record(device, "fast") if isinstance(device, str) else None


def promise(entry: dict) -> str | None:
    """The verdict line's words for a bitwise promise; None when the run made none."""
    return f"bitwise promise: {_PROMISE[entry['device']]}" if entry.get("bitwise") else None


def refusal(name: str, entry: dict, device: str, gpu_kernels: str) -> str | None:
    """Why a re-run with the current params (``device``, ``runtime.gpu_kernels``) cannot confirm instance ``name``'s
    committed result, as one line; None when it can."""
    ran = entry["device"]
    if not entry.get("bitwise"):
        return (
            f"{name} ran on {ran} with runtime.gpu_kernels: {entry['gpu_kernels']} (cuDNN autotuner, TF32): GPU runs "
            "are not bitwise reproducible and drift past audit.abs_tol over a run, so a re-run cannot confirm it; "
            "re-run it with runtime.gpu_kernels: deterministic and commit that result to audit it, or compare seeds "
            "instead (the report's spread over seeds)"
        )
    if device != ran:
        return (
            f"{name} ran on {ran}, but params.yaml now says device: {device}: a run on another device cannot "
            f"reproduce it bitwise; set device: {ran} to audit it"
        )
    if ran == "cuda" and gpu_kernels != "deterministic":
        return (
            f"{name} ran on cuda with runtime.gpu_kernels: deterministic, but params.yaml now says "
            f"runtime.gpu_kernels: {gpu_kernels}: a re-run with those kernels cannot confirm it; set "
            "runtime.gpu_kernels: deterministic (it re-runs nothing) and audit again"
        )
    return None


def _get(data: dict, key: str) -> Any:
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def unmet(entry: dict, old: dict, new: dict) -> list[str]:
    """A note for each recorded condition of ``entry``'s bitwise promise on which the committed provenance record
    ``old`` and the re-run's ``new`` differ: there the tolerances judge, not byte equality."""
    if not entry.get("bitwise"):
        return []
    notes = []
    for key, what, across in _CONDITIONS[entry["device"]]:
        a, b = _get(old, key), _get(new, key)
        if a is not None and b is not None and a != b:
            notes.append(
                f"note: {what}: committed {a}, re-run {b}: bitwise equality is not promised across {across}; "
                "audit.abs_tol and audit.weights_abs_tol apply"
            )
    return notes
