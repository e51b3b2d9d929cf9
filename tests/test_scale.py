"""Training at paper scale, proven on the CPU with the same code: several gloo processes standing in for GPUs
and nodes, the timm loader path with workers, the paper profile's recipe, kills and exact resumes."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.cluster import process_tree
from pipeline.config import Augment, Dataset
from pipeline.outputs import write_outputs
from pipeline.stages import pretrain
from pipeline.training import launch

from .tiny import ROOT, paper_recipe, prepare_synthetic, tiny_params, write_params


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return prepare_synthetic(tmp_path_factory.mktemp("prepared"))


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PET_", "MASTER_"))}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]


def _probe(params: Path, data: Path, out: Path, nproc: int) -> list[dict]:
    out.mkdir(parents=True)
    cmd = [*_torchrun(nproc, str(ROOT / "tests" / "probe.py")), str(params), str(data), str(out)]
    if nproc == 1:
        cmd = [sys.executable, str(ROOT / "tests" / "probe.py"), str(params), str(data), str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank-{r}.json").read_text()) for r in range(nproc)]


def test_every_rank_draws_its_own_stream_and_evaluates_its_shard(tmp_path, synthetic):
    """Defects 1 and 5: the ranks' random streams (Mixup/CutMix, drop path) differ from each other and repeat for
    a seed and world size; the test split evaluated by 2 ranks, each its shard, gives one process's counts."""
    params = write_params(tmp_path / "params.yaml", tiny_params(runtime={"eval_batch_size": 5}))
    two = _probe(params, synthetic, tmp_path / "a", 2)
    again = _probe(params, synthetic, tmp_path / "b", 2)
    one = _probe(params, synthetic, tmp_path / "c", 1)[0]
    assert two[0]["torch"] != two[1]["torch"] and two[0]["numpy"] != two[1]["numpy"]
    assert [r["torch"] for r in two] == [r["torch"] for r in again]
    for rank in two:
        assert rank["test"]["top1"] == one["test"]["top1"] and rank["test"]["top5"] == one["test"]["top5"]
        assert rank["test"]["loss"] == pytest.approx(one["test"]["loss"], rel=1e-5)
        # the Q/K/V diagnostic sees the first test images whatever the world size; rank 0's BatchNorm statistics
        # are what every rank evaluates; the ranks notice when they disagree (a resume folder nodes do not share)
        assert rank["diagnostic"] == one["diagnostic"]
        assert rank["buffers"] == 0.0 and rank["same_seed"] and not rank["same_rank"]


def _argv(tmp: Path, params: Path, data: Path) -> list[str]:
    return [
        "--params", str(params), "--backbone", "n12", "--variant", "linear", "--seed", "0", "--data", str(data),
        "--weights-out", str(tmp / "weights"), "--metrics", str(tmp / "metrics.json"),
        "--record", str(tmp / "record.json"),
        "--curves", str(tmp / "curves.csv"), "--provenance", str(tmp / "provenance.json"),
        "--resume-dir", str(tmp.parent / "resume"),
    ]  # fmt: skip


def _outputs(tmp: Path) -> dict[str, bytes]:
    names = ("metrics.json", "record.json", "curves.csv", "weights/raw.safetensors", "weights/ema.safetensors")
    return {name: (tmp / name).read_bytes() for name in names}


def _nodes(tmp: Path, params: Path, data: Path, port: int) -> list[subprocess.Popen]:
    """Two nodes of one process each, started by pipeline.training.launch from SLURM's variables, sharing the resume
    folder (the filesystem two cluster nodes share)."""
    procs = []
    for node in (0, 1):
        slurm = {"SLURM_JOB_ID": "7", "SLURM_NNODES": "2", "SLURM_NODEID": str(node), launch.NODE_TASK: "1"}
        env = _env(**slurm, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        cmd = [
            sys.executable,
            "-m",
            "pipeline.training.launch",
            "--nproc-per-node",
            "1",
            "-m",
            "pipeline.stages.pretrain",
        ]
        procs.append(
            subprocess.Popen(
                [*cmd, *_argv(tmp, params, data)],
                cwd=ROOT,
                env=env,
                start_new_session=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        )
    return procs


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every process below it, as a node that fails takes them all (torchrun starts its
    workers in sessions of their own, so killing its process group would leave them running)."""
    for member in [pid, *process_tree.descendants(pid)]:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _wait(procs: list[subprocess.Popen]) -> list[str]:
    logs = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        logs.append(err)
    return logs


@pytest.mark.e2e
def test_two_nodes_with_the_paper_recipe_resume_exactly_after_a_kill(tmp_path, synthetic):
    """Defects 2, 3, 6, 8, 9 on two processes standing in for two nodes (launched from SLURM's variables): the
    paper profile's recipe with every component on (RandAugment, pixel erasing, repeated augmentation,
    Mixup/CutMix, label smoothing, EMA, drop path) on the timm loader path with 2 persistent workers per rank.
    Killed after a checkpoint, restarted, it ends byte-identical to an uninterrupted run: each rank restored
    its own generators from the shared folder. One log line per epoch, the resume announced."""
    epochs = 16  # an epoch takes a fraction of a second: room to kill the run between two checkpoints
    params = write_params(tmp_path / "params.yaml", tiny_params(**paper_recipe(epochs=epochs)))
    whole = tmp_path / "whole" / "out"
    logs = _wait(_nodes(whole, params, synthetic, _free_port()))
    lines = [line for line in logs[0].splitlines() if line.startswith("pretrain@n12-linear-0 epoch ")]
    assert len(lines) == epochs and "ETA" in lines[0] and "img/s" in lines[0], logs[0][-2000:]
    assert not any(" epoch " in line for line in logs[1].splitlines()), "only rank 0 logs"

    killed = tmp_path / "killed" / "out"
    procs = _nodes(killed, params, synthetic, _free_port())
    shared = killed.parent / "resume" / "checkpoint.pt"
    deadline = time.time() + 300
    while not shared.exists() and all(p.poll() is None for p in procs) and time.time() < deadline:
        time.sleep(0.05)
    for proc in procs:
        _kill_tree(proc.pid)
    ends = [proc.communicate()[1] for proc in procs]
    assert shared.exists() and not (killed / "metrics.json").exists(), f"no checkpoint to resume: {ends[0][-2000:]}"
    epoch = torch.load(shared, weights_only=True)["epoch"]
    assert 1 <= epoch < epochs and {p.name for p in shared.parent.glob("rank-*")} == {
        f"rank-0-epoch-{epoch}.pt",
        f"rank-1-epoch-{epoch}.pt",
    }
    assert len((killed / "curves.csv").read_text().splitlines()) >= epoch + 1, "live curves lag behind"
    logs = _wait(_nodes(killed, params, synthetic, _free_port()))
    assert f"pretrain@n12-linear-0: resumed from epoch {epoch} of {epochs}" in logs[0]
    assert _outputs(killed) == _outputs(whole)
    timings = [json.loads((out / "provenance.json").read_text())["timing"] for out in (whole, killed)]
    assert [t["resumed_from_epoch"] for t in timings] == [0, epoch]  # the record says what this process trained
    assert timings[1]["train_images"] < timings[0]["train_images"]
    metrics = json.loads((whole / "record.json").read_text())
    assert metrics["world_size"] == 2 and metrics["weights"] == "raw"
    assert metrics["test_top1"] == metrics["raw_test_top1"] and "ema_test_top1" in metrics


def test_a_run_resumes_only_with_its_own_world_size(tmp_path, synthetic):
    params = write_params(tmp_path / "params.yaml", tiny_params(runtime={"checkpoint_every": 1}))
    resume = tmp_path / "resume"
    resume.mkdir()
    fingerprint = {"world_size": 4}
    torch.save({"fingerprint": json.dumps(fingerprint), "epoch": 1}, resume / "checkpoint.pt")
    with pytest.raises(SystemExit) as excinfo:
        pretrain.main(_argv(tmp_path / "out", params, synthetic))
    message = str(excinfo.value.code)
    assert "was written by a different configuration" in message and "world_size" in message
    assert f"delete {resume}" in message and not (tmp_path / "out").exists()


def test_ema_weights_are_saved_and_the_chosen_ones_reported(tmp_path, synthetic):
    """Defect 4: the EMA is written beside the raw weights; `weights` picks what test_top1 reports (and what
    fine-tuning starts from); both accuracies are in the metrics."""
    for weights in ("raw", "ema"):
        params = write_params(
            tmp_path / f"{weights}.yaml", tiny_params(pretrain={"ema_decay": 0.5, "weights": weights})
        )
        out = tmp_path / weights / "out"
        pretrain.main(_argv(out, params, synthetic))
        metrics = json.loads((out / "record.json").read_text())
        assert metrics["weights"] == weights and metrics["test_top1"] == metrics[f"{weights}_test_top1"]
        assert {p.name for p in (out / "weights").iterdir()} == {"raw.safetensors", "ema.safetensors"}
    assert (tmp_path / "raw/out/weights/ema.safetensors").read_bytes() == (
        tmp_path / "ema/out/weights/ema.safetensors"
    ).read_bytes()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_asked_for_without_a_gpu_is_an_error_not_a_cpu_run(tmp_path, synthetic):
    """Defect 7."""
    params = write_params(tmp_path / "params.yaml", tiny_params(device="cuda"))
    with pytest.raises(SystemExit) as excinfo:
        pretrain.main(_argv(tmp_path / "out", params, synthetic))
    assert "device: 'cuda' asked for, but torch" in str(excinfo.value.code)
    assert "sees no CUDA device here" in str(excinfo.value.code) and not (tmp_path / "out").exists()


def test_a_world_size_that_does_not_divide_the_batch_is_refused(tmp_path, synthetic):
    params = write_params(tmp_path / "params.yaml", tiny_params(pretrain={"batch_size": 15}))
    cmd = _torchrun(2, "-m", "pipeline.stages.pretrain", *_argv(tmp_path / "out", params, synthetic))
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "pretrain: error: pretrain.recipe.batch_size: 15 is not divisible by 2 processes" in done.stderr
    assert not (tmp_path / "out").exists()


def test_repeated_augmentation_spreads_each_image_over_the_ranks():
    """Defect 9: timm's RepeatAugSampler (DeiT's and XCiT's RASampler), seeded by the run's seed: an epoch has as
    many samples as the dataset, each drawn image 3 times, its copies on different ranks, every copy transformed
    under its own seed."""
    from collections import Counter

    from pipeline.data.samples import EpochSampler

    ranks = [EpochSampler(24, train=True, seed=0, rank=r, world_size=3, repeats=3) for r in range(3)]
    draws = [list(s) for s in ranks]
    indices = [i for d in draws for i, _ in d]
    assert len(indices) == 24 and set(Counter(indices).values()) == {3}
    assert all(len({i for i, _ in d}) == len(d) for d in draws), "one rank got two copies of an image"
    assert len({seed for d in draws for _, seed in d}) == 24
    other_seed = EpochSampler(24, train=True, seed=1, rank=0, world_size=3, repeats=3)
    assert [i for i, _ in other_seed] != [i for i, _ in draws[0]]


def test_repeated_augmentation_needs_an_image_per_rank(synthetic):
    from pipeline.data.loaders import build_loaders

    augment = Augment("timm", 0.5, 0, 0.5, None, None, 0.25, "pixel", 3, "bicubic", 1.0)
    with pytest.raises(ValueError, match="augment.repeated_aug: 3 needs at least one training image per process"):
        build_loaders(
            synthetic, augment, img_size=16, batch_size=0, eval_batch_size=8, workers=0, seed=0, world_size=100
        )


def test_repeated_augmentation_that_leaves_less_than_a_batch_is_refused(tmp_path):
    """timm's RepeatAugSampler keeps floor(n / 256) * 256 / world_size images per rank (n >= 256)."""
    from pipeline.data.loaders import build_loaders
    from pipeline.stages import prepare

    entry = {**tiny_params()["datasets"]["synthetic"], "img_size": 8, "per_class": 170}  # 306 training images
    files, _ = prepare.run("big", Dataset(**entry))
    write_outputs({tmp_path / k: v for k, v in files.items()})
    augment = Augment("timm", 0.5, 0, 0.5, None, None, 0.25, "pixel", 3, "bicubic", 1.0)
    with pytest.raises(ValueError, match=r"RepeatAugSampler keeps 128 of the 306 training images per process"):
        build_loaders(tmp_path, augment, img_size=8, batch_size=140, eval_batch_size=8, workers=0, seed=0,
                           world_size=2)  # fmt: skip


def test_random_erasing_uses_the_recipes_mode(synthetic):
    from pipeline.data.loaders import build_loaders

    augment = Augment("timm", 0.5, 0, 0.5, None, None, 0.25, "pixel", 1, "bicubic", 1.0)
    loader = build_loaders(synthetic, augment, img_size=16, batch_size=8, eval_batch_size=8, workers=0, seed=0)
    erasing = loader.train.erasing  # on the device, after normalisation (pipeline/data/finish.py)
    assert erasing.mode == "pixel" and erasing.probability == 0.25
    assert not [t for t in loader.train.loader.dataset.transform.transforms if type(t).__name__ == "RandomErasing"]


def test_the_prepared_images_are_memory_mapped_not_copied(synthetic):
    """Defect 6: every rank maps the one prepared file (the page cache holds it once) and reads only the rows a
    batch needs."""
    import numpy as np

    from pipeline.data.loaders import build_loaders

    augment = Augment("batched", 0.0, 0, 1.0, None, None, 0.0, "const", 1, "bicubic", 1.0)
    loader = build_loaders(synthetic, augment, img_size=16, batch_size=8, eval_batch_size=8, workers=0, seed=0)
    assert isinstance(loader.train.images, np.memmap) and str(loader.train.images.filename).endswith("data.safetensors")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ["--standalone", "-m", "pipeline.stages.pretrain", "--x"]),
        ({"PET_NNODES": "2", "PET_NODE_RANK": "1"}, ["-m", "pipeline.stages.pretrain", "--x"]),
        (
            {
                "SLURM_JOB_ID": "42",
                "SLURM_NNODES": "2",
                "SLURM_NODEID": "1",
                launch.NODE_TASK: "1",
                "MASTER_ADDR": "n1",
            },
            [
                "--nnodes",
                "2",
                "--node-rank",
                "1",
                "--master-addr",
                "n1",
                "--master-port",
                "29542",
                "-m",
                "pipeline.stages.pretrain",
                "--x",
            ],
        ),  # fmt: skip
    ],
)
def test_launcher_takes_the_nodes_from_the_environment(env, expected):
    cmd = launch.command(["--nproc-per-node", "8", "-m", "pipeline.stages.pretrain", "--x"], env)
    assert cmd[:6] == [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "8", *cmd[5:6]]
    assert cmd[5:] == expected


def test_launcher_in_a_slurm_batch_script_starts_one_task_per_node():
    env = {"SLURM_JOB_ID": "42", "SLURM_NNODES": "4", "SLURM_GPUS_ON_NODE": "8", "SLURM_CPUS_ON_NODE": "64"}
    cmd = launch.command(["-m", "pipeline.stages.pretrain", "--x"], env)
    assert cmd[:7] == [
        "srun",
        "--nodes=4",
        "--ntasks=4",
        "--ntasks-per-node=1",
        "--cpus-per-task=64",
        "--kill-on-bad-exit=1",
        f"--export=ALL,{launch.NODE_TASK}=1",
    ]
    assert cmd[8:] == [
        "-m",
        "pipeline.training.launch",
        "--nproc-per-node",
        "8",
        "-m",
        "pipeline.stages.pretrain",
        "--x",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nproc-per-node"], "--nproc-per-node needs a positive number, got nothing"),
        (["--nproc-per-node", "x", "-m", "m"], "--nproc-per-node needs a positive number, got ['x']"),
        (
            ["pipeline.stages.pretrain"],
            "usage: python -m pipeline.training.launch [--nproc-per-node N] -m MODULE ARGS...",
        ),
    ],
)
def test_launcher_bad_arguments_are_one_line(argv, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        launch.command(argv, {})
