"""Project rules that code review would otherwise have to remember: the import layers (qkv <- pipeline helpers
<- stage and tool modules <- tests), no stage importing another, a torch-free config and report, each stage's
PARAMS and dependencies matching dvc.yaml, no published number in the code, and small modules."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names)
STAGES = sorted(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])  # module name = stage name
# entry points of the Makefile, not stages: make audit, rehearse, profile, cluster, schema
TOOLS = ["review.audit", "review.rehearse", "profile", "cluster.__main__", "params_schema"]
GROUPS = ["stages", "training", "data", "planning", "reporting", "cluster", "review"]  # pipeline's subpackages
PIPELINE = sorted(p for p in (ROOT / "pipeline").rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    """Absolute module names imported by ``path`` (relative imports resolved), anywhere in the file or only at
    module level."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])]
                )
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pipeline import config` is a module
    return found


def roots(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imports(path)}


@pytest.mark.parametrize("path", sorted((ROOT / "qkv").glob("*.py")), ids=lambda p: p.name)
def test_library_imports_only_torch_and_timm(path):
    third_party = roots(path) - STDLIB - {"__future__", "qkv"}
    assert third_party <= {"torch", "timm"}, f"{path.name} imports {sorted(third_party - {'torch', 'timm'})}"


@pytest.mark.parametrize("path", [*PIPELINE, *(ROOT / "tools").glob("*.py")], ids=lambda p: module_name(p))
def test_pipeline_does_not_import_tests(path):
    assert "tests" not in roots(path)


def _pipeline_modules(path: Path) -> set[str]:
    """The pipeline modules ``path`` imports (``pipeline.x`` for a name ``x`` of package ``pipeline``)."""
    known = {module_name(p) for p in PIPELINE}
    return {name for name in imports(path) if name in known and name != "pipeline"}


@pytest.mark.parametrize("path", PIPELINE, ids=lambda p: module_name(p))
def test_no_stage_or_tool_module_is_imported_by_another_module(path):
    """Stages talk through the files dvc.yaml declares; shared pieces live in helpers."""
    entry_points = {f"pipeline.stages.{name}" for name in STAGES} | {f"pipeline.{name}" for name in TOOLS}
    imported = _pipeline_modules(path) & entry_points
    assert not imported - {module_name(path)}, f"{module_name(path)} imports {sorted(imported)}"


def test_every_pipeline_module_is_a_stage_a_tool_or_a_helper():
    """The layers: stage and tool modules (named in dvc.yaml and the Makefile) import helpers; a helper never
    imports a stage or tool module (checked above), so a new module is a helper unless it is listed here. The
    stages folder holds the stages and nothing else."""
    assert {p.stem for p in (ROOT / "pipeline/stages").glob("*.py")} - {"__init__"} == set(STAGES)
    makefile = (ROOT / "Makefile").read_text()
    for tool in TOOLS:
        assert f"python -m pipeline.{tool.removesuffix('.__main__')}" in makefile, tool


def test_pipeline_is_grouped_by_concern():
    """Few modules at the top (what every group shares), no folder past ~15 modules, and a subpackage's
    __init__ holds only its docstring (saying what lives there), so importing a group runs no code of its own."""
    top = sorted(p.stem for p in (ROOT / "pipeline").glob("*.py") if p.stem != "__init__")
    assert len(top) <= 8, top
    for group in [*GROUPS, "config"]:
        folder = ROOT / "pipeline" / group
        assert len([p for p in folder.glob("*.py") if p.stem not in ("__init__", "__main__")]) <= 15, group
        init = ast.parse((folder / "__init__.py").read_text())
        assert ast.get_docstring(init), f"pipeline/{group}/__init__.py says what lives there"
        if group != "config":
            assert len(init.body) == 1, f"pipeline/{group}/__init__.py: its docstring only"


def test_config_and_report_never_import_torch():
    """The report (and everything it imports: config, results, tables, figures) is torch-free, so CI rebuilds it
    in seconds and a config can be checked without the library; both at module level and when run."""
    code = (
        "import sys; import pipeline.config, pipeline.stages.report, pipeline.reporting.results, "
        "pipeline.reporting.tables, pipeline.reporting.figures; "
        "bad = [m for m in ('torch', 'timm', 'qkv', 'numpy.random') if m in sys.modules and m != 'numpy.random']; "
        "assert not bad, bad"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    for path in (ROOT / "pipeline" / "config").glob("*.py"):
        top = {name.split(".")[0] for name in imports(path, top_level_only=True)}
        assert not top & {"torch", "timm", "qkv"}, f"{path.name} imports {sorted(top & {'torch', 'timm', 'qkv'})}"


def dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _template(key: str) -> str:
    """dvc.yaml's ``datasets.${key}`` / ``variants.${item.variant}`` spelt as PARAMS spells it."""
    return re.sub(r"\$\{(?:item\.)?(\w+)\}", r"{\1}", key).replace("{key}", "{dataset}")


@pytest.mark.parametrize("name", STAGES)
def test_stage_params_match_dvc_yaml_exactly(name):
    """PARAMS lists exactly the keys that reach the stage's outputs, as dvc.yaml tracks them: never `runtime`."""
    body = dvc_stages()[name].get("do", dvc_stages()[name])  # foreach / matrix stages keep it under `do`
    module = importlib.import_module(f"pipeline.stages.{name}")
    check, command = body["cmd"]  # the torch-free params check runs first, as a line of its own
    assert check == "python -m pipeline.config params.yaml"
    assert f" -m pipeline.stages.{name} " in command, "stage name must equal its module name"
    assert tuple(_template(k) for k in body["params"]) == module.PARAMS
    assert not any(k.split(".")[0] == "runtime" for k in module.PARAMS)


def _closure(module: str) -> set[str]:
    """Every pipeline module ``module`` imports, directly or through other pipeline modules."""
    paths = {module_name(p): p for p in PIPELINE}
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo += [m for m in _pipeline_modules(paths[current]) if m in paths]
        parent = current.rpartition(".")[0]
        if parent == "pipeline.config":  # importing pipeline.config.x runs pipeline/config/__init__ (the other
            todo.append(parent)  # groups' __init__ run nothing: test_pipeline_is_grouped_by_concern)
    return seen


@pytest.mark.parametrize("name", STAGES)
def test_stage_deps_list_exactly_the_code_it_runs(name):
    """A change to any pipeline module a stage imports must re-run it: dvc.yaml lists each one (a package by its
    folder), and nothing it does not import."""
    body = dvc_stages()[name].get("do", dvc_stages()[name])
    code = {d for d in body["deps"] if d.startswith("pipeline/")}
    needed = set()
    for module in _closure(f"pipeline.stages.{name}"):
        parts = module.split(".")
        if parts[1] == "config":
            needed.add("pipeline/config")
        elif module not in (f"pipeline.{g}" for g in GROUPS):  # a group's __init__: its docstring only
            needed.add("/".join(parts) + ".py")
    needed |= {
        f"pipeline/reporting/templates/{p.name}"
        for p in (ROOT / "pipeline/reporting/templates").glob("*")
        if name == "report"
    }
    assert code == needed, f"missing {sorted(needed - code)}, not imported {sorted(code - needed)}"
    # The library builds this stage's models (pipeline.config imports it only to check variants: no output of a
    # stage that builds no model can change with it).
    files = [ROOT / (m.replace(".", "/") + ".py") for m in _closure(f"pipeline.stages.{name}") if ".config" not in m]
    assert ("qkv" in body["deps"]) == any("qkv" in roots(f) for f in files if f.is_file())


def test_no_published_number_in_the_code():
    """Every number the paper or XCiT publishes comes from references/published.yaml, never from a literal."""
    published = yaml.safe_load((ROOT / "references" / "published.yaml").read_text())
    numbers = {c[k] for c in published["claims"] for k in ("baseline", "proposed", "params_m") if c[k] is not None}
    numbers |= {m["top1"] for m in published["xcit"]["models"]}
    for path in PIPELINE:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, float):
                assert node.value not in numbers, f"{path.name}:{node.lineno} types in {node.value}"
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found = [n for n in numbers if re.search(rf"(?<![\d.]){re.escape(str(n))}(?![\d])", node.value)]
                assert not found, f"{path.name}:{node.lineno} types in {found}"


@pytest.mark.parametrize("path", [*PIPELINE, *(ROOT / "tools").glob("*.py")], ids=lambda p: module_name(p))
def test_modules_and_functions_stay_small(path):
    """A module past ~300 lines or a function past ~60 wants splitting (a little slack for docstrings)."""
    source = path.read_text()
    assert source.count("\n") <= 320, f"{path.name}: {source.count(chr(10))} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.end_lineno - node.lineno < 62, (
                f"{path.name}: {node.name} has {node.end_lineno - node.lineno + 1} lines"
            )


def test_network_guard_refuses_non_loopback():
    import socket

    with socket.socket() as sock, pytest.raises(OSError, match="test attempted a network connection"):
        sock.connect(("192.0.2.1", 80))  # TEST-NET-1; refused by the guard before anything is sent
