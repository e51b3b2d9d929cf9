"""The README and the chapters of docs/ against the repository: the README stays a front door (size), and what
they show a reader to type or open exists: relative links and their #anchors, `make` targets, `python -m`
modules, stage instance names (computed from dvc.yaml and the profiles, never listed here), repository paths
and dotted names of the project's modules. Torch-free and offline: text, YAML and the AST only."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.doc_checks import CHECKS, DOCS, LINK, README, README_MAX_BYTES, ROOT, instances, load, parse


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
@pytest.mark.parametrize("check", CHECKS, ids=lambda f: f.__name__)
def test_docs_point_at_what_exists(path, check):
    problems = check(load(path))
    assert not problems, "\n".join(problems)


def test_readme_is_a_front_door():
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, (
        f"README.md is {size:,} bytes, expected at most {README_MAX_BYTES:,}: move reference material into a "
        "chapter of docs/ and link it from the README's list of chapters"
    )


def test_every_chapter_is_listed_in_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall(load(README).prose)}
    missing = [p.relative_to(ROOT).as_posix() for p in DOCS[1:] if p.resolve() not in linked]
    assert not missing, f"README.md links no chapter {', '.join(missing)}: expected a line for each in its list"


def test_the_checks_catch_a_broken_example(tmp_path):
    """Each check fails on a document that breaks its rule, and names the file, the line and the offending text:
    a passing run means something."""
    (tmp_path / "other.md").write_text("# A heading\n")
    broken = parse(
        "broken.md",
        "# Title\n\n"
        "[gone](missing.md) [bad anchor](other.md#nope) [self](#no-such) [out](../../../../etc/passwd)\n\n"
        "```sh\n"
        "make no-such-target PROFILE=paper\n"
        "python -m pipeline.no_such_module\n"
        "python -m pipeline.stages   # a package without __main__\n"
        "make audit STAGE=finetune@sne-digits-0\n"
        "```\n\n"
        "Read `pipeline/no_such.py`, call `qkv.no_such_function` and run `dvc repro pretrain@n12-nope-0`.\n",
        tmp_path,
        root=tmp_path,
    )
    found = {check.__name__: check(broken) for check in CHECKS}
    expected = {  # check -> the offending text each of its messages names, in order
        "check_links": ["(missing.md)", "(other.md#nope)", "(#no-such)", "(../../../../etc/passwd)"],
        "check_make": ["`make no-such-target`"],
        "check_modules": ["pipeline.no_such_module", "pipeline.stages"],
        "check_stages": ["'finetune@sne-digits-0'", "'pretrain@n12-nope-0'"],
        "check_paths": ["pipeline/no_such.py"],
        "check_dotted": ["pipeline.no_such_module", "qkv.no_such_function"],
    }
    for name, texts in expected.items():
        assert len(found[name]) == len(texts), (name, found[name])
        for message, text in zip(found[name], texts, strict=True):
            assert message.startswith("broken.md:") and text in message, (name, message)
    assert "expected" in found["check_modules"][0] and "__main__.py" in found["check_modules"][1]
    assert "expected one of: a-heading" in found["check_links"][1]
    assert "outside the repository" in found["check_links"][3]
    assert "no target of the Makefile" in found["check_make"][0]


def test_the_instances_are_dvcs_own():
    """The stage check's names resolve dvc.yaml as DVC does: for the active params.yaml, DVC's own list."""
    listed = subprocess.run(
        [sys.executable, "-m", "dvc", "stage", "list", "--name-only"], cwd=ROOT, capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert instances(params) == set(listed.stdout.split()), "dvc.yaml resolved by tests/test_docs.py != dvc stage list"
