"""Every ``python -m`` entry point answers ``--help`` at once and in full: exit status 0, a usage line, a description
that is a whole sentence (not the docstring's first line cut at its end), a help text for every argument, and
nothing heavy (torch, timm, dvc, pandas, matplotlib) imported to print it. The entry points are found in the source
tree (a module with a ``__main__`` guard, a package with a ``__main__.py``), so a new one is covered as it is added,
and every ``python -m pipeline...`` command of dvc.yaml, the Makefile and the profiles must be among them. Also
``make help``: every target of the Makefile, one line each, without the venv."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "dvc", "pandas", "matplotlib")


def discovered() -> set[str]:
    """The runnable modules of pipeline/: ``python -m <module>`` works for each."""
    found = set()
    for path in (ROOT / "pipeline").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__main__":
            found.add(".".join(parts[:-1]))
        elif re.search(r"""^if __name__ == ["']__main__["']:""", path.read_text(), re.MULTILINE):
            found.add(".".join(parts))
    return found


def named() -> set[str]:
    """The modules the project's commands run with ``python -m``: dvc.yaml, the Makefile, the profiles."""
    files = [ROOT / "dvc.yaml", ROOT / "Makefile", ROOT / "params.yaml", *(ROOT / "profiles").glob("*.yaml")]
    return {m for f in files for m in re.findall(r"python -m (pipeline(?:\.\w+)*)", f.read_text())}


ENTRY_POINTS = sorted(discovered() | named())

# Runs the module as `python -m <module> --help` does (runpy, as __main__), then reports its exit status, what it
# printed and which heavy packages it imported.
PROBE = """
import contextlib, io, json, runpy, sys
module, heavy = sys.argv[1], sys.argv[2].split(",")
sys.argv = [module, "--help"]
out = io.StringIO()
status = 0
with contextlib.redirect_stdout(out):
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        status = exc.code
loaded = [name for name in heavy if name in sys.modules]
print(json.dumps({"status": status, "help": out.getvalue(), "imported": loaded}))
"""


def test_the_entry_points_are_found():
    """dvc.yaml's and the Makefile's commands name modules that have a main, and the discovery sees them all."""
    assert {"pipeline.config", "pipeline.stages.pretrain", "pipeline.cluster", "pipeline.training.launch"} <= set(
        ENTRY_POINTS
    )
    assert named() <= discovered(), f"run with python -m but no __main__: {sorted(named() - discovered())}"


def _description(text: str) -> str:
    """The paragraph after the usage lines, as one line ('' when the usage is followed by a section)."""
    blocks = text.strip().split("\n\n")
    if len(blocks) < 2 or re.match(r"^\S.*:$", blocks[1].splitlines()[0]):
        return ""
    return " ".join(blocks[1].split())


def _arguments_without_help(text: str) -> list[str]:
    """Arguments listed with no help text: an entry line (two spaces, then the flag or name) with nothing after it
    on that line and no deeper-indented line after it."""
    lines = text.splitlines()
    bare = []
    for i, line in enumerate(lines):
        if not re.match(r"^  \S", line) or re.match(r"^  \S.*?\s{2,}\S", line):
            continue
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if not re.match(r"^ {3,}\S", following):
            bare.append(line.strip())
    return bare


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help_is_complete_and_quick(module):
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-2000:]
    text = done.stdout
    assert text.startswith("usage: "), text
    description = _description(text)
    assert description, f"no description:\n{text}"
    assert description.endswith("."), f"description cut off: {description!r}"
    assert not _arguments_without_help(text), f"arguments with no help: {_arguments_without_help(text)}\n{text}"

    probe = subprocess.run(
        [sys.executable, "-c", PROBE, module, ",".join(HEAVY)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    seen = json.loads(probe.stdout)
    assert seen["status"] in (0, None), seen
    assert seen["help"] == text, "runpy's run differs from python -m's"
    assert not seen["imported"], f"--help imports {seen['imported']}: import them where they are used"


def _makefile_targets() -> list[str]:
    """Every rule target the Makefile names (not the venv stamp file, a variable), in order."""
    text = (ROOT / "Makefile").read_text()
    targets = []
    for match in re.finditer(r"^([A-Za-z0-9_.-]+(?: [A-Za-z0-9_.-]+)*)\s*:(?![:=])", text, re.MULTILINE):
        targets += [t for t in match[1].split() if not t.startswith(".") and t not in targets]
    phony = re.search(r"^\.PHONY:(.*)$", text, re.MULTILINE)[1].split()
    return targets + [t for t in phony if t not in targets]


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_help_lists_every_target_without_the_venv(tmp_path):
    """``make help`` (and ``make`` alone) in a folder holding only the Makefile, as on a fresh clone: no venv, no
    requirements.txt to build one from."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    # as a user's shell runs it: not a sub-make of `make test` (whose MAKEFLAGS/MAKELEVEL add "Entering directory")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    done = subprocess.run(["make", "help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Makefile"], "make help built something"
    described = {}
    for line in done.stdout.splitlines()[1:]:
        name, _, text = line.strip().partition(" ")
        described[name] = text.strip()
    targets = _makefile_targets()
    assert {"help", "repro", "test", "lint", "venv", "lock", "audit"} <= set(targets)
    assert list(described) == targets, f"make help lists {list(described)}, the Makefile has {targets}"
    assert all(described.values()), described
    plain = subprocess.run(["make"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert (plain.returncode, plain.stdout) == (0, done.stdout), "make with no target is make help"
