"""The determinism policy: what configure_torch sets for each device and runtime.gpu_kernels (the CUDA flags are
settable on a CPU-only build), the setting's check in params, what a training run records and what the audit reads
back from a record (the audit's refusal and verdict line are in test_audit)."""

from __future__ import annotations

import dataclasses
import os
import re

import pytest
import torch

from pipeline.config import ParamsError, determinism, load, load_pretrain
from pipeline.training import checkpoint
from pipeline.training.distributed import configure_torch

from .tiny import tiny_params, write_params


@pytest.fixture
def torch_settings(monkeypatch):
    """Leave torch's global settings and CUBLAS_WORKSPACE_CONFIG as the test found them."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.benchmark,
        cudnn.deterministic,
        cudnn.allow_tf32,
        matmul.allow_tf32,
        torch.utils.deterministic.fill_uninitialized_memory,
        torch.get_num_threads(),
    )
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32 = saved[2:6]
    torch.utils.deterministic.fill_uninitialized_memory = saved[6]
    torch.set_num_threads(saved[7])


def _flags() -> dict:
    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn.benchmark": torch.backends.cudnn.benchmark,
        "cudnn.deterministic": torch.backends.cudnn.deterministic,
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


FAST = {
    "deterministic_algorithms": False,
    "cudnn.benchmark": True,
    "cudnn.deterministic": False,
    "cudnn.allow_tf32": True,
    "matmul.allow_tf32": True,
    "CUBLAS_WORKSPACE_CONFIG": None,
}
DETERMINISTIC = {
    "deterministic_algorithms": True,
    "cudnn.benchmark": False,
    "cudnn.deterministic": True,
    "cudnn.allow_tf32": False,
    "matmul.allow_tf32": False,
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
}


@pytest.mark.parametrize("first", ["fast", "deterministic"])
def test_cuda_kernels_are_set_as_asked_whatever_came_before(torch_settings, first):
    configure_torch("cuda", 0, first)  # a process configures once; the second call must still set every flag
    configure_torch(torch.device("cuda", 0), 0, "deterministic")
    assert _flags() == DETERMINISTIC
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG")
    configure_torch("cuda", 0, "fast")
    assert _flags() == FAST
    assert torch.utils.deterministic.fill_uninitialized_memory is False
    assert not torch.cuda.is_initialized()  # nothing here starts CUDA: the training stages call it before init


@pytest.mark.parametrize("gpu_kernels", determinism.GPU_KERNELS)
def test_cpu_runs_deterministic_algorithms_with_either_setting(torch_settings, gpu_kernels):
    torch.use_deterministic_algorithms(False)
    configure_torch(torch.device("cpu"), 1, gpu_kernels)
    assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 1
    assert torch.utils.deterministic.fill_uninitialized_memory is False
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


def test_gpu_kernels_default_and_check(tmp_path):
    params = tiny_params()
    params["runtime"].pop("gpu_kernels", None)
    assert load(write_params(tmp_path / "default.yaml", params)).runtime.gpu_kernels == "fast"
    params["runtime"]["gpu_kernels"] = "exact"
    message = "runtime.gpu_kernels: 'exact' is not one of: fast, deterministic"
    with pytest.raises(ParamsError, match=f"^{re.escape(message)}$"):
        load(write_params(tmp_path / "bad.yaml", params))


def test_a_cuda_checkpoint_resumes_only_under_the_same_gpu_kernels(tmp_path):
    path = write_params(tmp_path / "params.yaml", tiny_params())
    run = load_pretrain(path, "n12", "linear", 0)

    def fingerprint(device: str, gpu_kernels: str) -> dict:
        runtime = dataclasses.replace(run.runtime, gpu_kernels=gpu_kernels)
        changed = dataclasses.replace(run, device=device, runtime=runtime)
        return checkpoint.fingerprint(changed, data_hash="d", init_weights=None, world_size=1)

    assert fingerprint("cpu", "fast") == fingerprint("cpu", "deterministic")  # a CPU run is the same either way
    assert "gpu_kernels" not in fingerprint("cpu", "fast")
    assert fingerprint("cuda", "fast") != fingerprint("cuda", "deterministic")


def test_record_and_what_the_audit_reads_back():
    assert determinism.record("cpu", "fast") == {"device": "cpu", "gpu_kernels": "fast", "bitwise": True}
    assert determinism.record("cuda:0", "fast") == {"device": "cuda", "gpu_kernels": "fast", "bitwise": False}
    assert determinism.record("cuda:3", "deterministic")["bitwise"] is True
    # Records from before the entry: read by their device (the CPU runs were deterministic, CUDA ran fast).
    assert determinism.committed({"device": "cpu"}) == determinism.record("cpu", "fast")
    assert determinism.committed({"device": "cuda:0"})["bitwise"] is False
    assert determinism.committed({"stage": "prepare"}) is None  # a stage that trains nothing promises nothing
    entry = determinism.record("cuda", "deterministic")
    assert determinism.committed({"device": "cuda:0", "determinism": entry}) == entry


def test_refusals_name_the_instance_the_setting_and_the_remedy():
    fast, exact, cpu = (
        determinism.record("cuda", "fast"),
        determinism.record("cuda", "deterministic"),
        determinism.record("cpu", "fast"),
    )
    assert determinism.refusal("pretrain@s12-sne-0", fast, "cuda", "deterministic") == (
        "pretrain@s12-sne-0 ran on cuda with runtime.gpu_kernels: fast (cuDNN autotuner, TF32): GPU runs are not "
        "bitwise reproducible and drift past audit.abs_tol over a run, so a re-run cannot confirm it; re-run it with "
        "runtime.gpu_kernels: deterministic and commit that result to audit it, or compare seeds instead (the "
        "report's spread over seeds)"
    )
    assert determinism.refusal("p@x", exact, "cuda", "fast") == (
        "p@x ran on cuda with runtime.gpu_kernels: deterministic, but params.yaml now says runtime.gpu_kernels: "
        "fast: a re-run with those kernels cannot confirm it; set runtime.gpu_kernels: deterministic (it re-runs "
        "nothing) and audit again"
    )
    assert determinism.refusal("p@x", cpu, "cuda", "deterministic") == (
        "p@x ran on cpu, but params.yaml now says device: cuda: a run on another device cannot reproduce it "
        "bitwise; set device: cpu to audit it"
    )
    assert determinism.refusal("p@x", exact, "cuda", "deterministic") is None
    assert determinism.refusal("p@x", cpu, "cpu", "deterministic") is None  # the CPU ignores the setting
    assert determinism.promise(fast) is None
    assert determinism.promise(exact).startswith("bitwise promise: CUDA, runtime.gpu_kernels: deterministic")


def test_unmet_conditions_are_noted_one_by_one():
    cpu = determinism.record("cpu", "fast")
    old = {"hardware": {"cpu": "AMD EPYC", "torch_threads": 1}, "packages": {"torch": "2.14.1"}, "world_size": 1}
    assert determinism.unmet(cpu, old, old) == []
    new = {**old, "hardware": {"cpu": "Intel Xeon", "torch_threads": 1}, "world_size": 2}
    assert determinism.unmet(cpu, old, new) == [
        "note: CPU model: committed AMD EPYC, re-run Intel Xeon: bitwise equality is not promised across CPU models; "
        "audit.abs_tol and audit.weights_abs_tol apply",
        "note: process count: committed 1, re-run 2: bitwise equality is not promised across process counts; "
        "audit.abs_tol and audit.weights_abs_tol apply",
    ]
    assert determinism.unmet(cpu, old, {}) == []  # nothing recorded, nothing to say
    assert determinism.unmet(determinism.record("cuda", "fast"), old, new) == []  # no promise, no conditions
