"""pretrain / finetune on a tiny profile: learning, determinism, resume after kill -9, torchrun, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.config import Dataset
from pipeline.outputs import write_outputs
from pipeline.stages import finetune, pretrain

from .tiny import ROOT, tiny_params, write_params


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    from pipeline.stages import prepare

    base = tmp_path_factory.mktemp("prepared")
    out = {}
    for name, entry in tiny_params()["datasets"].items():
        files, _ = prepare.run(name, Dataset(**entry))
        write_outputs({base / name / k: v for k, v in files.items()})
        out[name] = base / name
    return out


def pretrain_argv(tmp: Path, params: Path, data: Path, variant: str = "linear", seed: int = 0) -> list[str]:
    out = tmp / f"{variant}-{seed}"
    return [
        "--params",
        str(params),
        "--backbone",
        "n12",
        "--variant",
        variant,
        "--seed",
        str(seed),
        "--data",
        str(data),
        "--weights-out",
        str(out / "weights"),
        "--metrics",
        str(out / "metrics.json"),
        "--record",
        str(out / "record.json"),
        "--curves",
        str(out / "curves.csv"),
        "--provenance",
        str(out / "provenance.json"),
        "--resume-dir",
        str(tmp / "resume" / f"{variant}-{seed}"),
    ]


def outputs(tmp: Path, variant: str = "linear", seed: int = 0) -> dict[str, bytes]:
    out = tmp / f"{variant}-{seed}"
    return {
        name: (out / name).read_bytes()
        for name in ("metrics.json", "record.json", "curves.csv", "weights/raw.safetensors")
    }


def test_pretrain_learns_and_writes_outputs(tmp_path, prepared):
    params = write_params(tmp_path / "params.yaml", tiny_params(pretrain={"epochs": 6}))
    pretrain.main(pretrain_argv(tmp_path, params, prepared["synthetic"], "fsne"))
    metrics = json.loads((tmp_path / "fsne-0" / "record.json").read_text())
    curves = (tmp_path / "fsne-0" / "curves.csv").read_text().splitlines()
    assert curves[0] == "epoch,lr,train_loss,train_top1,val_loss,val_top1,val_top5" and len(curves) == 7
    first, last = (float(curves[i].split(",")[2]) for i in (1, -1))
    assert last < first, "training loss must decrease"
    assert metrics["test_top1"] > 100 / 3 + 15, f"no better than chance: {metrics['test_top1']}"
    assert metrics["synthetic"] is True and metrics["lr_effective"] == pytest.approx(3.2e-2 * 16 / 512)
    assert set(metrics["qkv_similarity"]) == {"blocks.0.attn.qkv"}
    assert metrics["profile"] == "embedded" and 0 < metrics["gflops"] < 0.01
    provenance = json.loads((tmp_path / "fsne-0" / "provenance.json").read_text())
    assert provenance["timing"]["train_img_per_s"] > 0 and provenance["world_size"] == 1
    assert "img_per_s" not in (tmp_path / "fsne-0" / "record.json").read_text()
    assert not (tmp_path / "resume" / "fsne-0").exists(), "resume state is removed after success"


def test_same_seed_gives_identical_bytes(tmp_path, prepared):
    params = write_params(tmp_path / "params.yaml", tiny_params(seeds=[0, 1]))
    pretrain.main(pretrain_argv(tmp_path / "a", params, prepared["synthetic"]))
    pretrain.main(pretrain_argv(tmp_path / "b", params, prepared["synthetic"]))
    assert outputs(tmp_path / "a") == outputs(tmp_path / "b")
    pretrain.main(pretrain_argv(tmp_path / "c", params, prepared["synthetic"], seed=1))
    assert outputs(tmp_path / "c", seed=1)["record.json"] != outputs(tmp_path / "a")["record.json"]


TIMM_AUGMENT = {"mode": "timm", "auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.25, "scale_min": 0.5, "hflip": 0.5}


def _run(tmp: Path, prepared: dict, name: str, **updates) -> dict[str, bytes]:
    params = write_params(tmp / f"{name}.yaml", tiny_params(**updates))
    pretrain.main(pretrain_argv(tmp / name, params, prepared["synthetic"], "fsne"))
    return outputs(tmp / name, "fsne")


def test_runtime_settings_do_not_change_the_result(tmp_path, prepared):
    """The `runtime` section is listed by no stage in dvc.yaml, because it cannot change what is computed: the
    checkpoint interval, the number of loader workers (timm path, with RandAugment and random erasing) and how often
    the host reads the device's loss sums (sync_every) leave every byte alike; threads and the evaluation batch
    reorder float sums, so their outputs (metrics, curves, weights) stay within the audit's tolerances."""
    from pipeline import config
    from pipeline.review.compare import compare_outputs

    timm = {"augment": {**tiny_params()["pretrain"]["recipe"]["augment"], **TIMM_AUGMENT}, "epochs": 3}
    base = _run(tmp_path, prepared, "base", pretrain=timm)
    for name, runtime in (
        ("every2", {"checkpoint_every": 2}),
        ("workers2", {"workers": 2}),
        ("sync3", {"sync_every": 3}),
    ):
        assert _run(tmp_path, prepared, name, pretrain=timm, runtime=runtime) == base, f"runtime {runtime}"
    tolerances = config.load_audit(tmp_path / "base.yaml")
    for name, runtime in (("threads2", {"threads": 2}), ("eval7", {"eval_batch_size": 7})):
        _run(tmp_path, prepared, name, pretrain=timm, runtime=runtime)
        verdict, details = compare_outputs(tmp_path / "base/fsne-0", tmp_path / name / "fsne-0", list(base), tolerances)
        assert verdict == "identical" or verdict.startswith("equal within tolerance"), (runtime, verdict, details)


def test_the_model_trains_at_its_own_resolution(tmp_path, prepared):
    """model.img_size is the one statement of the resolution: data prepared at 16 px is resized by the loader to
    the model's 32 px, so the metrics' GFLOPs are those of what was trained."""
    from pipeline import config
    from pipeline.training.model import forward_flops

    params = write_params(tmp_path / "params.yaml", tiny_params(model={"img_size": 32}))
    pretrain.main(pretrain_argv(tmp_path, params, prepared["synthetic"]))
    metrics = json.loads((tmp_path / "linear-0" / "record.json").read_text())
    net = config.load_pretrain(params, "n12", "linear", 0).net
    assert net.img_size == 32 and metrics["gflops"] == round(forward_flops(net, 3) / 1e9, 6)
    from torch.nn.modules.module import register_module_forward_pre_hook

    seen = set()  # the input sizes every forward pass of the model received
    hook = register_module_forward_pre_hook(
        lambda module, args: seen.add(tuple(args[0].shape[-2:])) if type(module).__name__ == "Xcit" else None
    )
    try:
        pretrain.main(pretrain_argv(tmp_path / "again", params, prepared["synthetic"]))
    finally:
        hook.remove()
    assert seen == {(32, 32)}


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_resume_after_kill_gives_the_same_result(tmp_path, prepared):
    params = write_params(tmp_path / "params.yaml", tiny_params(pretrain={"epochs": 12}))
    pretrain.main(pretrain_argv(tmp_path / "whole", params, prepared["synthetic"]))
    argv = pretrain_argv(tmp_path / "killed", params, prepared["synthetic"])
    checkpoint = tmp_path / "killed" / "resume" / "linear-0" / "checkpoint.pt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.stages.pretrain", *argv],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed: make the test run longer"
    assert checkpoint.exists() and not (tmp_path / "killed" / "linear-0" / "metrics.json").exists()
    resumed = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= resumed < 12
    pretrain.main(argv)
    assert outputs(tmp_path / "killed") == outputs(tmp_path / "whole")


def test_checkpoint_from_another_configuration_is_refused(tmp_path, prepared):
    params = write_params(tmp_path / "params.yaml", tiny_params())
    checkpoint = tmp_path / "resume" / "linear-0" / "checkpoint.pt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"fingerprint": json.dumps({"stage": "pretrain", "seed": 0, "train": {"epochs": 99}})}, checkpoint)
    with pytest.raises(SystemExit) as excinfo:
        pretrain.main(pretrain_argv(tmp_path, params, prepared["synthetic"]))
    message = str(excinfo.value.code)
    assert "was written by a different configuration" in message and "train" in message
    assert f"delete {checkpoint.parent}" in message


def test_two_process_torchrun_matches_one_process(tmp_path, prepared):
    """Same global batch and the same images in every global batch (the ranks split it); the runs differ
    through BatchNorm, whose statistics are per process on CPU (SyncBatchNorm needs a GPU), and through the
    crop offsets, which each rank draws from its own generator. Tolerance: final train loss within 5 %
    relative, test top-1 within 10 points."""
    params = write_params(tmp_path / "params.yaml", tiny_params(pretrain={"epochs": 4}))
    pretrain.main(pretrain_argv(tmp_path / "one", params, prepared["synthetic"]))
    argv = pretrain_argv(tmp_path / "two", params, prepared["synthetic"])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "pipeline.stages.pretrain",
            *argv,
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "linear-0" / "record.json").read_text())
    two = json.loads((tmp_path / "two" / "linear-0" / "record.json").read_text())
    assert two["world_size"] == 2 and two["global_batch"] == one["global_batch"]
    loss = [
        float((tmp_path / d / "linear-0" / "curves.csv").read_text().splitlines()[-1].split(",")[2])
        for d in ("one", "two")
    ]
    assert abs(loss[0] - loss[1]) <= 0.05 * loss[0], loss
    assert abs(one["test_top1"] - two["test_top1"]) <= 10


def test_finetune_from_pretrained(tmp_path, prepared):
    params = write_params(tmp_path / "params.yaml", tiny_params())
    pretrain.main(pretrain_argv(tmp_path, params, prepared["synthetic"], "fsne"))
    out = tmp_path / "ft"
    argv = [
        "--params",
        str(params),
        "--backbone",
        "n12",
        "--variant",
        "fsne",
        "--dataset",
        "digits",
        "--seed",
        "0",
        "--data",
        str(prepared["digits"]),
        "--pretrained",
        str(tmp_path / "fsne-0" / "weights"),
        "--weights-out",
        str(out / "weights"),
        "--metrics",
        str(out / "metrics.json"),
        "--record",
        str(out / "record.json"),
        "--curves",
        str(out / "curves.csv"),
        "--provenance",
        str(out / "provenance.json"),
        "--resume-dir",
        str(tmp_path / "resume-ft"),
    ]
    finetune.main(argv)
    metrics = json.loads((out / "record.json").read_text())
    assert metrics["num_classes"] == 10 and metrics["dataset"] == "digits" and metrics["stage"] == "finetune"
    missing = list(argv)
    missing[argv.index("--pretrained") + 1] = str(tmp_path / "nowhere")
    with pytest.raises(SystemExit, match="no pretrained weights for variant 'fsne' at .*nowhere"):
        finetune.main(missing)


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        (dict(pretrain={"lr": 1.0e6, "epochs": 3}), "non-finite loss"),
        (dict(pretrain={"batch_size": 4096}), "batch size 4096 x 1 process(es) is larger than the training split"),
        (dict(pretrain={"warmup_epochs": 2}), "pretrain.recipe.warmup_epochs: 2 must be below epochs (2)"),
        (dict(pretrain={"lr": 0.0}), "pretrain.recipe.lr: expected a positive number, got 0.0"),
        (dict(pretrain={"epochs": -1}), "pretrain.recipe.epochs: expected a positive integer, got -1"),
        (dict(pretrain={"epochs": "2"}), "pretrain.recipe.epochs: expected an integer, got '2'"),
        (dict(pretrain={"batch_size": 0}), "pretrain.recipe.batch_size: expected a positive integer, got 0"),
        (dict(model={"embed_dim": 30}), "backbones.n12: embed_dim=30 is not divisible by num_heads=4"),
        (
            dict(variants={"linear": {"qkv_embed": "linear"}, "fsne": {"qkv_embed": "fsne", "qkv_hidden": 0}}),
            "variants.fsne: qkv_hidden must be a positive integer, got 0",
        ),
        (dict(pretrain={"variants": ["linear", "mlp"]}), "pretrain.variants: unknown variant 'mlp'"),
        (dict(pretrain={"dataset": "cifar"}), "pretrain.dataset: 'cifar' is not an entry of the datasets section"),
        # every stage checks the whole file, so the first stage dvc runs refuses it
        (dict(finetune={"variants": ["psne"]}), "finetune.variants: 'psne' has no pretrained weights"),
        (dict(variants={"linear": {"qkv_embed": "linear"}, "x;touch": {}}), "variants: 'x;touch' is not a valid name"),
        (dict(model={"img_size": 18}), "backbones.n12.img_size: 18 is not a positive multiple of patch_size 4"),
        (dict(model={"img_size": 2}), "backbones.n12.img_size: 2 is not a positive multiple of patch_size 4"),
        (dict(seeds=[]), "seeds: expected at least one seed"),
        (dict(runtime={"checkpoint_every": 0}), "runtime.checkpoint_every: expected a positive integer, got 0"),
    ],
)
def test_pretrain_bad_input(tmp_path, prepared, updates, message):
    params = write_params(tmp_path / "params.yaml", tiny_params(**updates))
    argv = pretrain_argv(tmp_path, params, prepared["synthetic"])
    if message is None:
        pretrain.main(argv)
        return
    with pytest.raises(SystemExit) as excinfo:
        pretrain.main(argv)
    assert message in str(excinfo.value.code)
    assert not (tmp_path / "linear-0").exists(), "no outputs after a failure"


def test_nan_message_names_step_lr_and_last_loss(tmp_path, prepared):
    params = write_params(tmp_path / "params.yaml", tiny_params(pretrain={"lr": 1.0e6, "epochs": 3}))
    with pytest.raises(SystemExit) as excinfo:
        pretrain.main(pretrain_argv(tmp_path, params, prepared["synthetic"]))
    message = str(excinfo.value.code)
    assert "at epoch" in message and ", step " in message and ", lr " in message and "last finite loss" in message


def test_a_loss_checked_every_few_steps_names_the_steps_it_covers(tmp_path, prepared):
    params = write_params(tmp_path / "params.yaml", tiny_params(pretrain={"lr": 1.0e6, "epochs": 3},
                                                                 runtime={"sync_every": 3}))  # fmt: skip
    with pytest.raises(SystemExit) as excinfo:
        pretrain.main(pretrain_argv(tmp_path, params, prepared["synthetic"]))
    message = str(excinfo.value.code)
    assert "non-finite loss at epoch" in message and "last finite loss" in message, message
    assert ", one of steps " in message or ", step " in message, message
    assert not (tmp_path / "linear-0" / "metrics.json").exists()


def test_the_fp16_step_scales_the_loss_and_skips_an_overflowing_update():
    """The step GPUs without native bf16 take (fp16 autocast + GradScaler), run on the CPU: it trains, and an
    update whose gradients overflow is skipped with the scale lowered, as torch.amp.GradScaler does on CUDA."""
    from pipeline.training.recipe import train_step

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 3))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    step = dict(optimizer=optimizer, criterion=torch.nn.CrossEntropyLoss(), amp=torch.float16, scaler=scaler,
                clip_grad=1.0)  # fmt: skip
    first = train_step(net, x, y, **step)[0].item()
    for _ in range(30):
        last = train_step(net, x, y, **step)[0].item()
    assert last < first
    before = [p.detach().clone() for p in net.parameters()]
    scaler.update(2.0**127)  # the next backward overflows fp16
    train_step(net, x, y, **step)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True)), "the step was not skipped"
    assert scaler.get_scale() < 2.0**127


def test_finetune_variant_without_pretraining_is_a_params_error(tmp_path, prepared):
    params = write_params(tmp_path / "params.yaml", tiny_params(finetune={"variants": ["linear", "sne"]}))
    with pytest.raises(SystemExit, match="finetune.variants: 'sne' has no pretrained weights"):
        finetune.main(
            [
                "--params",
                str(params),
                "--backbone",
                "n12",
                "--variant",
                "sne",
                "--dataset",
                "digits",
                "--seed",
                "0",
                "--data",
                "x",
                "--pretrained",
                "x",
                "--weights-out",
                "x",
                "--metrics",
                "x",
                "--record",
                "x",
                "--curves",
                "x",
                "--provenance",
                "x",
                "--resume-dir",
                "x",
            ]
        )
