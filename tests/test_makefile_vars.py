"""No Makefile variable reaches a shell unchecked: every variable a target pastes into its commands (PROFILE, STAGE,
TARGETS, SET, ARGS, JOBS, FORCE, PYTHON) is checked by make itself, as raw text, before any command runs. A bad value
stops make with one line naming the variable, its value and what is expected; good values give the same commands as
before. Only ``make -n``, in a folder holding the Makefile and an up-to-date venv stamp: nothing is run or installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")

# as a user's shell runs make: not a sub-make of `make test`
ENV = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
for _name in ("PROFILE", "STAGE", "TARGETS", "SET", "ARGS", "JOBS", "FORCE", "PYTHON"):
    ENV.pop(_name, None)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The Makefile with the files its venv stamp depends on, and the stamp newer than them (the venv is built)."""
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    for name in ("requirements.txt", "pyproject.toml"):
        (tmp_path / name).write_text("")
        os.utime(tmp_path / name, (1_000_000_000, 1_000_000_000))
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / ".installed").write_text("")
    return tmp_path


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def make(folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-n", *args], cwd=folder, env=env or ENV, capture_output=True, text=True, timeout=60)


# The hostile values, each of which would create the file `pwned` if it reached a shell (or make's $(shell)).
def hostile(folder: Path) -> list[str]:
    marker = folder / "pwned"
    return [
        f'x"; touch {marker}; echo "',  # quote and ;
        f"x'; touch {marker}; echo '",
        f"$(shell touch {marker})",  # make's own expansion: runs even under make -n unless the raw text is checked
        f"x$$(touch {marker})",  # $(...) as the shell sees it
        f"x`touch {marker}`",  # backquote
        f'x"\ntouch {marker}\necho "',  # newline
        f"x && touch {marker}",
        f"x&&touch {marker}",
        f"x|touch {marker}",
    ]


# Each variable: a target that uses it, the other variables that target needs, and the start of its error line.
USES = {
    "PROFILE": ("profile", [], "PROFILE='{}': expected a profile name"),
    "STAGE": ("audit", [], "STAGE='{}': expected a stage instance name"),
    "TARGETS": ("cluster-status", [], "TARGETS='{}': expected stage or instance names separated by spaces"),
    "SET": ("rehearse", ["PROFILE=paper"], "SET='{}': expected key.path=value items separated by spaces"),
    "ARGS": ("plan", ["PROFILE=paper"], "ARGS='{}': expected options of pipeline.stages.plan"),
    "JOBS": ("repro", [], "JOBS='{}': expected a positive integer"),
    "FORCE": ("profile", ["PROFILE=cifar"], "FORCE='{}': expected nothing, 0 or 1"),
    "PYTHON": ("lock", [], "PYTHON='{}': expected a Python command or path"),
}


def assert_refused(done: subprocess.CompletedProcess, variable: str, value: str) -> None:
    """Exit status 2, nothing printed on stdout (no command), one line on stderr: the variable, its value (a newline
    or tab shown as \\n, \\t), what is expected and an example."""
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done
    assert done.stdout == "", done.stdout
    assert len(lines) == 1, done.stderr
    shown = value.replace("\t", "\\t").replace("\n", "\\n")
    expected = USES[variable][2].format(shown)
    assert re.fullmatch(r"Makefile:\d+: \*\*\* (.*), e\.g\. (\S+)=.*\.  Stop\.", lines[0]), lines[0]
    message = lines[0].split("*** ", 1)[1]
    assert message.startswith(expected), (message, expected)
    assert f", e.g. {variable}=" in message, message


@pytest.mark.parametrize("variable", sorted(USES))
def test_hostile_values_stop_make_before_anything_runs(repo, variable):
    target, others, _ = USES[variable]
    before = files(repo)
    for value in hostile(repo):
        done = make(repo, target, *others, f"{variable}={value}")
        assert_refused(done, variable, value)
        assert files(repo) == before, f"{variable}={value!r} created {sorted(set(files(repo)) - set(before))}"


@pytest.mark.parametrize(
    "variable, value",
    [
        ("PROFILE", "../paper"),
        ("PROFILE", "--force"),
        ("PROFILE", "paper cifar"),
        ("PROFILE", "paper\t"),
        ("STAGE", "finetune@n12@x"),
        ("STAGE", "-x"),
        ("STAGE", "flops pretrain"),
        ("STAGE", "prepare/digits"),
        ("TARGETS", "pretrain a@b@c"),
        ("TARGETS", "pretrain --all"),
        ("TARGETS", "pretrain\nfinetune"),
        ("SET", "seeds=[0] backbones"),
        ("SET", "seeds=[0]\tbackbones=[n12]"),
        ("SET", "a.b=~/x"),
        ("SET", "a.b=*"),
        ("ARGS", "--nodes 2 >out"),
        ("ARGS", "--compute ~/x"),
        ("ARGS", "--gpu H*"),
        ("JOBS", "0"),
        ("JOBS", "00"),
        ("JOBS", "-1"),
        ("JOBS", "1.5"),
        ("JOBS", "2 "),
        ("FORCE", "2"),
        ("FORCE", "yes"),
        ("FORCE", "0 1"),
        ("PYTHON", "python3 -I"),
        ("PYTHON", "~/bin/python"),
    ],
)
def test_values_of_another_shape_are_refused(repo, variable, value):
    target, others, _ = USES[variable]
    assert_refused(make(repo, target, *others, f"{variable}={value}"), variable, value)


# The five commands of the brief and their output before the check was added, byte for byte.
@pytest.mark.parametrize(
    "args, output",
    [
        (
            ["audit", "STAGE=flops"],
            'test -n "flops" || { echo "usage: make audit STAGE=<stage instance, e.g. finetune@n12-sne-digits-0>"; '
            "exit 2; }\n"
            'python -m pipeline.review.audit "flops"\n',
        ),
        (
            ["profile", "PROFILE=cifar", "FORCE=1"],
            'test -n "cifar" || { echo "usage: make profile PROFILE=<embedded|cifar|paper> [FORCE=1]" >&2; exit 2; }\n'
            'python -m pipeline.profile "cifar" --force\n',
        ),
        (
            ["plan", "PROFILE=paper", "ARGS=--img-per-s 2500 --nodes 2"],
            'test -n "paper" || { echo "usage: make plan PROFILE=<embedded|cifar|paper> '
            "[ARGS='--img-per-s 2500 --nodes 2']\"; exit 2; }\n"
            "python -m pipeline.stages.plan --params profiles/paper.yaml --bench results/bench/metrics.json "
            "--img-per-s 2500 --nodes 2\n",
        ),
        (
            ["rehearse", "PROFILE=paper", "SET=pretrain.recipe.epochs=3 seeds=[0]"],
            'test -n "paper" || { echo "usage: make rehearse PROFILE=<cifar|paper> '
            "[SET='pretrain.recipe.epochs=3']\"; exit 2; }\n"
            'python -m pipeline.review.rehearse "paper" --set "pretrain.recipe.epochs=3" --set "seeds=[0]"\n',
        ),
        (
            ["repro", "JOBS=2"],
            "python -m pipeline.profile --check params.yaml\npython -m pipeline.cluster.pool --jobs 2\n",
        ),
    ],
)
def test_good_values_give_the_same_commands(repo, args, output):
    done = make(repo, *args)
    assert (done.returncode, done.stderr) == (0, ""), done
    assert done.stdout == output


@pytest.mark.parametrize(
    "args, command",
    [
        (["audit", "STAGE=finetune@n12-sne-digits-0"], 'python -m pipeline.review.audit "finetune@n12-sne-digits-0"'),
        (["audit", "STAGE=prepare@stl10"], 'python -m pipeline.review.audit "prepare@stl10"'),
        (["profile", "PROFILE=my_profile-2", "FORCE=0"], 'python -m pipeline.profile "my_profile-2"'),
        (["profile", "PROFILE=cifar", "FORCE="], 'python -m pipeline.profile "cifar"'),
        (
            ["cluster", "PROFILE=paper", "TARGETS=pretrain@s12-sne-0 finetune"],
            "python -m pipeline.cluster submit pretrain@s12-sne-0 finetune",
        ),
        (["cluster-status", "TARGETS=flops"], "python -m pipeline.cluster status flops"),
        (
            ["rehearse", "PROFILE=paper", "SET=seeds=[0] backbones=[n12] a.b=-1.5e-3 c=x:y,z+1"],
            'python -m pipeline.review.rehearse "paper" --set "seeds=[0]" --set "backbones=[n12]" '
            '--set "a.b=-1.5e-3" --set "c=x:y,z+1"',
        ),
        (
            ["plan", "PROFILE=paper", "ARGS=--img-per-s 4000 --gpu H100 --compute references/compute.yaml"],
            "python -m pipeline.stages.plan --params profiles/paper.yaml --bench results/bench/metrics.json "
            "--img-per-s 4000 --gpu H100 --compute references/compute.yaml",
        ),
        (["repro", "JOBS=12"], "python -m pipeline.cluster.pool --jobs 12"),
        (["lock", "PYTHON=/usr/bin/python3.11"], "rm -rf .lock-venv && /usr/bin/python3.11 -m venv .lock-venv"),
    ],
)
def test_good_values_reach_the_command(repo, args, command):
    done = make(repo, *args)
    assert (done.returncode, done.stderr) == (0, ""), done
    assert command in done.stdout.splitlines(), done.stdout


@pytest.mark.parametrize(
    "target, usage",
    [
        ("audit", 'test -n "" || { echo "usage: make audit STAGE='),
        ("profile", 'test -n "" || { echo "usage: make profile PROFILE='),
        ("plan", 'test -n "" || { echo "usage: make plan PROFILE='),
        ("rehearse", 'test -n "" || { echo "usage: make rehearse PROFILE='),
    ],
)
def test_an_unset_variable_still_gets_the_usage_line(repo, target, usage):
    done = make(repo, target)
    assert (done.returncode, done.stderr) == (0, ""), done
    assert done.stdout.startswith(usage), done.stdout


def test_a_variable_is_checked_only_for_the_targets_that_use_it(repo):
    """A stray PROFILE in the environment does not stop `make help` or `make repro` (which take none)."""
    env = {**ENV, "PROFILE": "a b; c", "STAGE": "`x`"}
    assert make(repo, "help", env=env).returncode == 0
    done = make(repo, "repro", env=env)
    assert (done.returncode, done.stderr) == (0, ""), done
    assert_refused(make(repo, "audit", env=env), "STAGE", "`x`")


def test_a_target_reached_as_a_prerequisite_checks_its_variables(repo):
    """Not only the goals named on the command line: the recipe's first line checks its target's variables."""
    (repo / "extra.mk").write_text("all: audit\n")
    done = make(repo, "-f", "Makefile", "-f", "extra.mk", "all", "STAGE=a;b")
    assert_refused(done, "STAGE", "a;b")


def test_python_is_checked_when_the_venv_is_built(repo):
    """PYTHON reaches a shell only when the venv stamp is out of date (-W: as if requirements.txt had changed)."""
    done = make(repo, "-W", "requirements.txt", "repro", "PYTHON=python3;x")
    assert_refused(done, "PYTHON", "python3;x")
    assert make(repo, "repro", "PYTHON=python3;x").returncode == 0  # the venv is built: PYTHON unused
    done = make(repo, "-W", "requirements.txt", "repro", "PYTHON=/usr/bin/python3.11")
    assert done.returncode == 0, done
    assert "test -x" in done.stdout and "/usr/bin/python3.11 -m venv .venv" in done.stdout


def test_make_help_still_lists_the_targets(repo):
    done = make(repo, "help")
    assert done.returncode == 0, done
    listed = subprocess.run(["make", "help"], cwd=repo, env=ENV, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed
    names = [line.split()[0] for line in listed.stdout.splitlines()[1:]]
    assert names == [
        "help",
        "venv",
        "repro",
        "lint",
        "schema",
        "test",
        "report-check",
        "profile",
        "plan",
        "rehearse",
        "cluster",
        "cluster-status",
        "cluster-cancel",
        "metrics",
        "exps",
        "plots",
        "audit",
        "lock",
    ]
