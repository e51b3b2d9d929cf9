"""The distribution as pip builds and installs it (#27): the wheel carries every module and the files the packages read
at run time (the report's template); ``pip install .`` declares what ``qkv/`` imports and nothing of the pipeline; the
``pipeline`` extra declares every other import of ``pipeline/`` (an AST scan); DVC is pinned to the tested version;
``qkv`` imports and builds a model where only torch, timm and what they require can be imported; requirements.in and
the hashed lock, requirements.txt, agree with pyproject.toml."""

from __future__ import annotations

import ast
import email
import importlib.metadata as md
import json
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("qkv", "pipeline")
STDLIB = set(sys.stdlib_module_names)
# Declared in the base although qkv/ does not import it: timm imports it (timm/layers), and its version must match
# torch's (requirements.in pins the pair).
BASE_NOT_IMPORTED = {"torchvision"}
# Declared in the pipeline extra although pipeline/ does not import them, each for a reason (pyproject.toml says which).
PIPELINE_NOT_IMPORTED = {
    "tabulate",  # pandas' DataFrame.to_markdown imports it
    "setuptools",  # <81: submitit 1.5.3 imports pkg_resources
    "ruamel-yaml-clib",  # DVC's fast YAML parser
}
# One model as the README builds it
MODEL = 'timm.create_model("qkv_xcit_nano_12_p16", qkv_embed="fsne", num_classes=10)'


def third_party_imports(package: str) -> dict[str, list[str]]:
    """Top-level names of every absolute import in ``package`` (function-level imports included), the standard library
    and the project's own packages left out, with the files that import each."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif (  # importlib.import_module("name") with a literal name
                isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and not node.args[0].value.startswith(".")
            ):
                names = [node.args[0].value]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in STDLIB and top not in PACKAGES:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return {name: sorted(files) for name, files in sorted(found.items())}


def distributions_of(package: str) -> dict[str, set[str]]:
    """The installed distributions (canonical names) that provide each third-party top-level import of ``package``."""
    providers = md.packages_distributions()
    missing = {name: files for name, files in third_party_imports(package).items() if name not in providers}
    assert not missing, f"imported by {package}/ but provided by no installed distribution: {missing}"
    return {name: {canonicalize_name(d) for d in providers[name]} for name in third_party_imports(package)}


def pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def declared() -> dict[str, dict[str, Requirement]]:
    """pyproject.toml's requirements: "" for the base, then each extra, by canonical name."""
    project = pyproject()
    groups = {"": project["dependencies"], **project.get("optional-dependencies", {})}
    return {g: {canonicalize_name(Requirement(r).name): Requirement(r) for r in reqs} for g, reqs in groups.items()}


def read_lock(path: Path) -> dict[str, tuple[Requirement, list[str]]]:
    """requirements.txt (pip's format, continuation lines joined): each requirement with its sha256 hashes."""
    text = re.sub(r"#.*", "", path.read_text()).replace("\\\n", " ")
    lock = {}
    for line in filter(str.strip, text.splitlines()):
        spec, *hashes = re.split(r"\s+--hash=", line.strip())
        req = Requirement(spec)
        lock[canonicalize_name(req.name)] = (req, hashes)
    return lock


def read_in(path: Path) -> dict[str, Requirement]:
    reqs = (Requirement(line.split("#")[0]) for line in path.read_text().splitlines() if line.split("#")[0].strip())
    return {canonicalize_name(r.name): r for r in reqs}


# --- the wheel ---


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel pip builds from a copy of the project (the build writes build/ and *.egg-info next to the sources:
    not in the checkout, where build/ is a DVC stage's output), offline, with the venv's setuptools."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["--wheel-dir", str(work / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = (work / "dist").glob("*.whl")
    return built


def wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(archive.read(name))


def test_wheel_holds_every_module_and_package_file(wheel):
    """Every file of qkv/ and pipeline/ (the modules and the data they read, e.g. the report's template) is in the
    wheel, and nothing else of the repository (tests, tools, results) is."""
    with zipfile.ZipFile(wheel) as archive:
        names = {n for n in archive.namelist() if ".dist-info/" not in n}
    sources = {
        str(p.relative_to(ROOT))
        for package in PACKAGES
        for p in (ROOT / package).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    assert "pipeline/reporting/templates/report.html.j2" in sources
    assert sorted(sources - names) == [], "files of the packages missing from the wheel"
    assert sorted(names - sources) == [], "files in the wheel that are not the packages'"


def test_report_template_loads_from_the_installed_wheel(wheel, tmp_path):
    """The report stage finds its template next to its module when it runs from the wheel's files (an editable
    install reads them from the clone, which hid its absence: TemplateNotFound)."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path)
    probe = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from jinja2 import Environment, FileSystemLoader
        from pipeline.stages import report
        assert report.__file__.startswith({str(tmp_path)!r}), report.__file__
        Environment(loader=FileSystemLoader(str(report.TEMPLATE.parent))).get_template(report.TEMPLATE.name)
        """
    )
    done = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_wheel_declares_the_library_alone_and_the_pipeline_as_an_extra(wheel):
    """METADATA's Requires-Dist: the base is exactly the distributions of qkv/'s imports (and torchvision, which timm
    imports); the `pipeline` extra is every other distribution pipeline/ imports, plus the few it needs without
    importing them; DVC is pinned to the version the code's use of its internals was tested on."""
    meta = wheel_metadata(wheel)
    assert "pipeline" in (meta.get_all("Provides-Extra") or []), "no pipeline extra"
    groups: dict[str, dict[str, Requirement]] = {}
    for text in meta.get_all("Requires-Dist"):
        req = Requirement(text)
        extras = re.findall(r'extra == "([^"]+)"', str(req.marker)) if req.marker else [""]
        assert len(extras) == 1, f"{text}: expected no marker or one extra"
        groups.setdefault(extras[0], {})[canonicalize_name(req.name)] = req

    qkv_dists = set().union(*distributions_of("qkv").values())
    assert set(groups[""]) == qkv_dists | BASE_NOT_IMPORTED, "the library's requirements are not qkv/'s imports"

    pipeline_dists = set().union(*distributions_of("pipeline").values())
    expected = (pipeline_dists - set(groups[""])) | PIPELINE_NOT_IMPORTED
    assert set(groups["pipeline"]) == expected, "the pipeline extra is not pipeline/'s other imports"
    assert str(groups["pipeline"]["dvc"].specifier) == "==3.67.1"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_import_is_declared(package):
    """Each third-party top-level import of the package (AST scan, function-level imports included) is provided by a
    distribution pyproject.toml declares: qkv/'s in the base, pipeline/'s in the base or the pipeline extra."""
    groups = declared()
    allowed = set(groups[""]) | (set(groups.get("pipeline", {})) if package == "pipeline" else set())
    undeclared = {
        name: (sorted(dists), third_party_imports(package)[name])
        for name, dists in distributions_of(package).items()
        if not dists & allowed
    }
    assert not undeclared, f"imports of {package}/ whose distribution pyproject.toml does not declare: {undeclared}"


# --- qkv alone ---


def requirement_closure(roots: list[str]) -> set[str]:
    """The installed distributions ``roots`` need: the transitive closure of their Requires-Dist, markers evaluated for
    this interpreter (with the extras each requirement asks for)."""
    environment = default_environment()
    seen: set[tuple[str, str]] = set()
    todo = [(canonicalize_name(r), "") for r in roots]
    while todo:
        name, extra = todo.pop()
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        for text in md.requires(name) or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({**environment, "extra": extra}):
                todo += [(canonicalize_name(req.name), e) for e in ["", *sorted(req.extras)]]
    return {name for name, _ in seen}


def test_qkv_imports_with_only_torch_and_timm(wheel, tmp_path):
    """The wheel's qkv, with all its submodules, imports and builds a model in a process that can import only the
    standard library and the distributions torch and timm require (transitively): any other top-level import raises
    ImportError, as it would where only `pip install .` ran. The pipeline's packages (pandas, dvc, ...) are not
    among them."""
    allowed_dists = requirement_closure(["torch", "timm"])
    assert not {"dvc", "pandas", "fvcore", "matplotlib"} & allowed_dists, "a pipeline package comes with torch/timm"
    modules = {
        name
        for name, dists in md.packages_distributions().items()
        if {canonicalize_name(d) for d in dists} & allowed_dists
    }
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path / "site")
    probe = textwrap.dedent(
        f"""
        import importlib, importlib.util, json, os, pkgutil, sys, sysconfig

        # the standard library: its names, and every module in its folders (e.g. _sysconfigdata_*, which sysconfig
        # imports and is not in stdlib_module_names)
        stdlib = {{sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib")}}
        stdlib |= {{os.path.join(folder, "lib-dynload") for folder in stdlib}}
        STDLIB = set(sys.stdlib_module_names) | set(sys.builtin_module_names)
        STDLIB |= {{m.name for m in pkgutil.iter_modules(sorted(stdlib))}}
        ALLOWED = STDLIB | set({sorted(modules)!r}) | {{"qkv"}}
        blocked = set()

        class OnlyTorchAndTimm:
            # wraps every finder: a top-level name outside ALLOWED is absent (import raises ModuleNotFoundError,
            # importlib.util.find_spec returns None), as where only torch, timm and their requirements are installed
            def __init__(self, finder):
                self.finder = finder

            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] not in ALLOWED:
                    blocked.add(name.partition(".")[0])
                    return None
                find = getattr(self.finder, "find_spec", None)
                return find(name, path, target) if find else None

            def invalidate_caches(self):
                getattr(self.finder, "invalidate_caches", lambda: None)()

        sys.meta_path[:] = [OnlyTorchAndTimm(finder) for finder in sys.meta_path]
        sys.path.insert(0, {str(tmp_path / "site")!r})
        import qkv
        assert qkv.__file__.startswith({str(tmp_path / "site")!r}), qkv.__file__
        submodules = [m.name for m in pkgutil.walk_packages(qkv.__path__, "qkv.")]
        for name in submodules:
            importlib.import_module(name)
        import timm, torch
        model = {MODEL}
        logits = model.eval()(torch.rand(1, 3, 224, 224))
        assert logits.shape == (1, 10), logits.shape
        # the gate works: the pipeline's packages, installed in this venv, are absent here
        assert importlib.util.find_spec("dvc") is None
        try:
            import pandas
        except ModuleNotFoundError:
            pass
        else:
            raise AssertionError("pandas imports behind the gate")
        print(json.dumps({{"submodules": submodules, "blocked": sorted(blocked)}}))
        """
    )
    done = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert "qkv.xcit" in seen["submodules"]
    # what torch and timm try and do without (optional imports), besides the gate's own check
    assert {"dvc", "pandas"} <= set(seen["blocked"])
    assert "pipeline" not in seen["blocked"], "qkv tried to import the pipeline"


# --- requirements.in and the lock ---


def test_requirements_in_and_lock_agree_with_pyproject():
    """Every requirement of pyproject.toml (base and extras) is in requirements.in, and requirements.in holds nothing
    else; requirements.txt pins each, for this platform, to a version that satisfies both files."""
    groups = declared()
    wanted = {name: req for reqs in groups.values() for name, req in reqs.items()}
    direct = read_in(ROOT / "requirements.in")
    lock = read_lock(ROOT / "requirements.txt")
    assert sorted(set(wanted) - set(direct)) == [], "in pyproject.toml, not in requirements.in"
    assert sorted(set(direct) - set(wanted)) == [], "in requirements.in, not in pyproject.toml"
    environment = default_environment()
    for name in sorted(wanted):
        assert name in lock, f"{name} is not in requirements.txt: run `make lock`"
        pin, _ = lock[name]
        (version,) = [s.version for s in pin.specifier if s.operator == "=="]
        assert pin.marker is None or pin.marker.evaluate(environment), f"{pin}: not installed on this platform"
        for source, req in (("pyproject.toml", wanted[name]), ("requirements.in", direct[name])):
            assert req.specifier.contains(version, prereleases=True), f"requirements.txt's {pin} fails {source}'s {req}"


def test_lock_pins_every_package_with_hashes_and_markers():
    """requirements.txt is a hashed lock: each package pinned to one version with at least one sha256; torch's
    Linux-only CUDA wheels carry their marker, so the lock installs on other platforms too."""
    lock = read_lock(ROOT / "requirements.txt")
    assert len(lock) > 100
    for name, (req, hashes) in lock.items():
        assert [s.operator for s in req.specifier] == ["=="], f"{req}: not an exact pin"
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), f"{name}: no sha256 hash"
    cuda = [name for name in lock if name.startswith("nvidia-") or name in ("triton", "cuda-toolkit", "cuda-bindings")]
    assert len(cuda) >= 15
    for name in cuda:
        marker = lock[name][0].marker
        assert marker is not None, f"{name}: installed on every platform"
        for platform, wanted in (("linux", True), ("darwin", False), ("win32", False)):
            assert marker.evaluate({"sys_platform": platform}) == wanted, f"{name}; {marker}: on {platform}?"
