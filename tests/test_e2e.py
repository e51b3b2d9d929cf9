"""One end-to-end `dvc repro` on a tiny profile, in a temporary copy of the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".git", ".venv", ".dvc/cache", ".dvc/tmp", "results", "dvc.lock", ".pytest_cache", ".ruff_cache"}


def tiny_profile(params: dict) -> dict:
    """Few, small configurations of the same pipeline: seconds instead of minutes."""
    params["flops"].update(models=["qkv_xcit_nano_12_p16"], img_size=32, num_classes=[10])
    readings = params["forensics"]["readings"]
    params["forensics"].update(img_size=32, num_classes=[10], readings={k: readings[k] for k in list(readings)[:3]})
    params["datasets"] = {
        "synthetic": dict(
            source="synthetic", img_size=16, val_fraction=0.2, test_fraction=0.2, seed=0, num_classes=3, per_class=20
        ),
        "digits": dict(source="digits", img_size=16, val_fraction=0.1, test_fraction=0.2, seed=0),
    }
    return params


def sh(*args: str, cwd: Path) -> str:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(cwd / ".dvc-site"),
    }
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.e2e
def test_dvc_repro_then_nothing_to_do(tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(
        ROOT,
        repo,
        ignore=lambda d, names: [
            n for n in names if str((Path(d) / n).relative_to(ROOT)) in SKIP or n == "__pycache__"
        ],
    )
    params = tiny_profile(yaml.safe_load((repo / "params.yaml").read_text()))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git", "init", "-q", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny", cwd=repo)
    dvc = str(Path(sys.executable).parent / "dvc")

    first = sh(dvc, "repro", cwd=repo)
    for stage in ("flops", "prepare@synthetic", "prepare@digits"):
        assert f"Running stage '{stage}'" in first
    metrics = json.loads((repo / "results/flops/metrics.json").read_text())
    assert set(metrics["models"]["qkv_xcit_nano_12_p16"]["10"]) == set(params["flops"]["variants"])
    assert json.loads((repo / "results/prepare/synthetic.json").read_text())["synthetic"] is True
    assert (repo / "data/prepared/digits/data.safetensors").is_file()
    assert (repo / "dvc.lock").is_file()

    second = sh(dvc, "repro", cwd=repo)
    assert "Running stage" not in second
    assert "Data and pipelines are up to date" in second
    shown = json.loads(sh(dvc, "metrics", "show", "--json", cwd=repo))
    assert "results/flops/metrics.json" in json.dumps(shown)

    # Changing one transfer dataset's params re-runs that dataset's instance alone.
    params["datasets"]["digits"]["seed"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    third = sh(dvc, "repro", cwd=repo)
    assert "Running stage 'prepare@digits'" in third
    assert "Running stage" not in third.replace("Running stage 'prepare@digits'", "")
