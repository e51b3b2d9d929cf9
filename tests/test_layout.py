"""Project rules that code review would otherwise have to remember: import direction, and each stage's
PARAMS / module file matching its dvc.yaml entry."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names)


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", sorted((ROOT / "qkv").glob("*.py")), ids=lambda p: p.name)
def test_library_imports_only_torch_and_timm(path):
    third_party = imported_roots(path) - STDLIB - {"__future__"}
    assert third_party <= {"torch", "timm"}, f"{path.name} imports {sorted(third_party - {'torch', 'timm'})}"


@pytest.mark.parametrize("path", sorted((ROOT / "pipeline").glob("*.py")), ids=lambda p: p.name)
def test_pipeline_does_not_import_tests(path):
    assert "tests" not in imported_roots(path)


def dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_stage_params_and_module_match_dvc_yaml(name):
    stage = dvc_stages()[name]
    body = stage.get("do", stage)  # foreach / matrix stages keep their definition under `do`
    module = importlib.import_module(f"pipeline.{name}")
    assert f" -m pipeline.{name} " in body["cmd"], "stage name must equal its module name"
    sections = tuple(p.split(".")[0] for p in body["params"])  # `datasets.${key}` reads section `datasets`
    assert sections == module.PARAMS
    assert f"pipeline/{name}.py" in body["deps"]


def test_network_guard_refuses_non_loopback():
    import socket

    with socket.socket() as sock, pytest.raises(OSError, match="test attempted a network connection"):
        sock.connect(("192.0.2.1", 80))  # TEST-NET-1; refused by the guard before anything is sent
