"""The flops stage end to end on a small configuration: files, contents, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from pipeline.stages import flops

ROOT = Path(__file__).resolve().parents[1]


def small_params(tmp_path: Path, **overrides) -> Path:
    """The embedded profile with the flops and forensics sections shrunk to a few configurations."""
    params = yaml.safe_load((ROOT / "profiles" / "embedded.yaml").read_text())
    params["flops"].update(models=["qkv_xcit_nano_12_p16"], variants=["linear", "fsne"], img_size=64, num_classes=[10])
    readings = params["forensics"]["readings"]
    params["forensics"].update(
        img_size=64, num_classes=[10, 1000], readings={k: readings[k] for k in ("sne-h=d/2", "fsne-gate-h=d")}
    )
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        params[section][key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def outputs(tmp_path: Path) -> dict[str, Path]:
    out = tmp_path / "out"
    return {"metrics": out / "metrics.json", "table": out / "table.csv", "provenance": out / "provenance.json"}


def run_stage(params: Path, files: dict[str, Path]) -> None:
    argv = ["--params", str(params)]
    for key, path in files.items():
        argv += [f"--{key}", str(path)]
    flops.main(argv)


def test_stage_writes_documented_files(tmp_path):
    files = outputs(tmp_path)
    run_stage(small_params(tmp_path), files)
    metrics = json.loads(files["metrics"].read_text())
    assert set(metrics) == {"profile", "models", "forensics", "checks"} and metrics["profile"] == "embedded"
    assert set(metrics["models"]["qkv_xcit_nano_12_p16"]["10"]) == {"linear", "fsne"}
    assert set(metrics["forensics"]) == {"10", "1000"}
    assert metrics["checks"]["configurations"] == 6
    assert metrics["checks"]["max_rel_diff_formula"] == 0.0
    rows = list(csv.DictReader(files["table"].read_text().splitlines()))
    assert [(r["section"], r["num_classes"], r["variant"]) for r in rows] == [
        ("main", "10", "linear"),
        ("main", "10", "fsne"),
        ("forensics", "10", "sne-h=d/2"),
        ("forensics", "10", "fsne-gate-h=d"),
        ("forensics", "1000", "sne-h=d/2"),
        ("forensics", "1000", "fsne-gate-h=d"),
    ]
    assert tuple(rows[0]) == flops.TABLE_COLUMNS
    assert all(r["params"] == r["params_formula"] for r in rows)
    provenance = json.loads(files["provenance"].read_text())
    assert provenance["stage"] == "flops" and provenance["params"]["counts"]["0"]["net"]["img_size"] == 64
    assert "wall_time_s" in provenance and "wall_time_s" not in files["metrics"].read_text()
    first = files["metrics"].read_bytes()
    run_stage(small_params(tmp_path), files)
    assert files["metrics"].read_bytes() == first, "metrics must be byte-identical on a re-run"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"flops__variants": ["linear", "snee"]}, "flops.variants: unknown variant 'snee'; known: linear, sne, psne"),
        ({"flops__models": ["xcit_nano"]}, "flops.models: unknown model 'xcit_nano'; known: qkv_xcit_{nano,tiny,"),
        ({"flops__img_size": "224"}, "flops.img_size: expected an integer, got '224'"),
        ({"flops__num_classes": [0]}, "flops.num_classes: expected positive integers, got [0]"),
        ({"flops__rel_tol": 2.0}, "flops.rel_tol: expected a number in [0, 1), got 2.0"),
        ({"flops__extra": 1}, "flops: unknown key(s) extra"),
        (
            {"flops__img_size": 60},
            "flops.img_size: 60 is not a positive multiple of qkv_xcit_nano_12_p16's patch size 16",
        ),
        (
            {"forensics__readings": {"x": {"qkv_embed": "sne", "qkv_shared": "first"}}},
            "forensics.readings.x: qkv_shared",
        ),
        ({"forensics__readings": {"x": {"embed": "sne"}}}, "forensics.readings.x: 'embed' is not a qkv_* model option"),
        ({"variants__fsne": {"qkv_embed": "fsne", "qkv_hidden": 0}}, "variants.fsne: qkv_hidden must be a positive"),
    ],
)
def test_bad_params_exit_with_message_and_no_outputs(tmp_path, capsys, overrides, message):
    files = outputs(tmp_path)
    with pytest.raises(SystemExit) as excinfo:
        run_stage(small_params(tmp_path, **overrides), files)
    assert excinfo.value.code != 0
    assert message in str(excinfo.value.code)
    assert not (tmp_path / "out").exists()


def test_command_line_bad_input_exits_1_with_one_line(tmp_path):
    import subprocess
    import sys

    files = outputs(tmp_path)
    argv = [
        sys.executable,
        "-m",
        "pipeline.stages.flops",
        "--params",
        str(small_params(tmp_path, flops__variants=["x"])),
    ]
    for key, path in files.items():
        argv += [f"--{key}", str(path)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("flops: error: flops.variants: unknown variant 'x'")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
