"""The provenance record in small temporary DVC repositories: dependency hashes equal to what `dvc repro` writes
to dvc.lock (computed by a stage command while `dvc repro` runs it), code identity limited to the instance's
sources, and the GPU entry of a CPU run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import yaml

from pipeline import provenance
from pipeline.outputs import json_bytes

ROOT = Path(__file__).resolve().parents[1]

DVC_YAML = """\
stages:
  make:
    cmd: mkdir -p made && echo made > made/x.txt
    outs:
      - made:
          cache: false
  run:
    matrix:
      size: [small]
      seed: [0]
    cmd: '{python} code.py results/${{item.size}}-${{item.seed}}.json'
    deps:
      - code.py
      - data
      - made
    params:
      - lr
    outs:
      - results/${{item.size}}-${{item.seed}}.json:
          cache: false
"""

# The stage command: notes the locks the parent `dvc repro` holds meanwhile, then writes its provenance record.
CODE = """\
import json, os, sys, time
from pathlib import Path
import zc.lockfile
from pipeline import provenance
from pipeline.outputs import json_bytes
try:
    zc.lockfile.LockFile(".dvc/tmp/lock").close()
    repo_lock = "free"
except zc.lockfile.LockError:
    repo_lock = "held"
rw = json.loads(Path(".dvc/tmp/rwlock").read_text())
rwlock = {mode: sorted(os.path.relpath(p) for p in rw[mode]) for mode in ("read", "write")}
record = provenance.record("run", {"lr": 0.1}, started=time.time(), extra={"repo_lock": repo_lock, "rwlock": rwlock})
out = Path(sys.argv[1])
out.parent.mkdir(exist_ok=True)
out.write_bytes(json_bytes(record))
"""


def _env(repo: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DVC_STAGE", "DVC_ROOT")}
    return {
        **env,
        "PYTHONPATH": str(ROOT),
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(repo / ".dvc-site"),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }


def sh(*args: str, cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, env=_env(cwd), capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def dvc(*args: str, cwd: Path) -> str:
    return sh(sys.executable, "-m", "dvc", *args, cwd=cwd)


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git + DVC repository, committed and reproduced: a `make` stage writing a git-tracked folder, and one
    matrix instance `run@small-0` reading a file, a data folder, that folder and a param."""
    repo = tmp_path / "repo"
    (repo / "data" / "sub").mkdir(parents=True)
    (repo / "data" / "a.txt").write_text("a\n")
    (repo / "data" / "sub" / "b.bin").write_bytes(bytes(range(256)) * 3)
    (repo / "code.py").write_text(CODE)
    (repo / "params.yaml").write_text("lr: 0.1\nunused: 1\n")
    (repo / "dvc.yaml").write_text(DVC_YAML.format(python=sys.executable))
    (repo / ".gitignore").write_text(".dvc-site/\n")
    sh("git", "init", "-q", cwd=repo)
    dvc("init", "-q", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "code", cwd=repo)
    dvc("repro", cwd=repo)  # writes dvc.lock, made/ and the result, all new to git
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "results", cwd=repo)
    return repo


def test_deps_hashed_as_in_dvc_lock_during_dvc_repro(repo):
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["run@small-0"]
    record = json.loads((repo / "results" / "small-0.json").read_text())
    # Read while `dvc repro` ran the command: it releases the repo lock for that time (dvc.stage.run.unlocked_repo)
    # and keeps its read/write locks on the instance's deps and outs.
    assert record["repo_lock"] == "free"
    assert {"code.py", "data", "made", "params.yaml"} <= set(record["rwlock"]["read"])
    assert record["rwlock"]["write"] == ["results/small-0.json"]
    assert record["stage"] == "run" and record["stage_instance"] == "run@small-0"
    assert record["deps"] == {d["path"]: {k: v for k, v in d.items() if k != "path"} for d in lock["deps"]}
    assert {path: d["md5"].endswith(".dir") for path, d in record["deps"].items()} == {
        "code.py": False,
        "data": True,
        "made": True,
    }
    assert record["dep_params"] == lock["params"] == {"params.yaml": {"lr": 0.1}}
    assert record["git_commit"] == sh("git", "rev-parse", "HEAD~1", cwd=repo).strip()  # the code's commit
    assert record["code_changed"] is False and record["changed_files"] is None  # not dvc.lock, made/, results/
    assert "git_dirty" not in record and record["gpu"] is None


def _record(repo: Path) -> dict:
    return provenance.record("run", {}, started=time.time(), dvc_stage="run@small-0", root=repo)


def test_code_changed_covers_only_the_instance_sources(repo):
    head = sh("git", "rev-parse", "HEAD", cwd=repo).strip()
    (repo / "results" / "small-0.json").write_text("{}\n")  # rewritten result, lock and upstream output: no
    (repo / "dvc.lock").write_text((repo / "dvc.lock").read_text() + "# rewritten\n")
    (repo / "made" / "x.txt").write_text("made again\n")
    (repo / "elsewhere.py").write_text("# not a dependency\n")
    record = _record(repo)
    assert record["git_commit"] == head
    assert record["code_changed"] is False and record["changed_files"] is None
    before = {path: d["md5"] for path, d in record["deps"].items()}

    (repo / "code.py").write_text(CODE + "# edited\n")
    (repo / "data" / "sub" / "new.txt").write_text("untracked\n")
    record = _record(repo)
    assert record["code_changed"] is True
    assert record["changed_files"] == ["code.py", "data/sub/new.txt"]
    after = {path: d["md5"] for path, d in record["deps"].items()}
    assert after["code.py"] != before["code.py"] and after["data"] != before["data"] and after["made"] == before["made"]

    sh("git", "checkout", "--", "code.py", cwd=repo)
    (repo / "data" / "sub" / "new.txt").unlink()
    (repo / "params.yaml").write_text("lr: 0.2\nunused: 1\n")
    sh("git", "add", "params.yaml", cwd=repo)  # staged counts too
    record = _record(repo)
    assert record["code_changed"] is True and record["changed_files"] == ["params.yaml"]
    assert record["dep_params"] == {"params.yaml": {"lr": 0.2}}


def test_outside_dvc_repro_no_instance(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_STAGE", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    record = provenance.record("run", {"lr": 0.1}, started=time.time() - 2, extra={"device": "cpu"})
    assert record["stage_instance"] is None and record["deps"] is None and record["dep_params"] is None
    assert record["code_changed"] is None and record["changed_files"] is None and record["git_commit"] is None
    assert record["params"] == {"lr": 0.1} and record["device"] == "cpu" and record["wall_time_s"] >= 2
    json_bytes(record)  # plain JSON


def test_record_holds_no_list_dvc_would_draw():
    """dvc.yaml declares provenance as a plot (to keep it out of DVC's metric views): DVC's plot reader draws a
    list of objects as a data series and fails on an empty list, so a record holds neither."""
    config = {"nets": [{"name": "a", "overrides": []}, {"name": "b", "overrides": [["patch_size", 8]]}], "ids": [1, 2]}
    record = provenance.record("run", config, started=time.time(), extra={"empty": []})
    assert record["params"] == {
        "nets": {"0": {"name": "a", "overrides": {}}, "1": {"name": "b", "overrides": {"0": ["patch_size", 8]}}},
        "ids": [1, 2],
    }
    assert record["empty"] == {}

    def lists(obj):
        if isinstance(obj, dict):
            for value in obj.values():
                yield from lists(value)
        elif isinstance(obj, list):
            yield obj

    assert all(items and not any(isinstance(v, (dict, list)) for v in items) for items in lists(record))


def test_unknown_instance_is_reported_not_raised(repo, capsys):
    record = provenance.record("run", {}, started=time.time(), dvc_stage="nope@x", root=repo)
    assert record["stage_instance"] == "nope@x" and record["deps"] is None and record["code_changed"] is None
    assert "dependencies of nope@x not recorded" in capsys.readouterr().err


def test_gpu_null_on_cpu(monkeypatch):
    torch = pytest.importorskip("torch")
    assert (provenance._gpu() is None) == (not torch.cuda.is_initialized())
    monkeypatch.delitem(sys.modules, "torch")
    assert provenance._gpu() is None
    cpu_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(is_initialized=lambda: False))
    monkeypatch.setitem(sys.modules, "torch", cpu_torch)
    assert provenance._gpu() is None


def test_gpu_entry_when_cuda_is_in_use(monkeypatch):
    cuda = types.SimpleNamespace(
        is_initialized=lambda: True, device_count=lambda: 2, get_device_name=lambda i: f"Fake GPU {i}"
    )
    fake = types.SimpleNamespace(cuda=cuda, version=types.SimpleNamespace(cuda="12.8"))
    monkeypatch.setitem(sys.modules, "torch", fake)
    monkeypatch.setattr(provenance, "_run", lambda *cmd, cwd=None: "570.1\n570.1\n")
    assert provenance._gpu() == {"models": ["Fake GPU 0", "Fake GPU 1"], "driver": "570.1", "cuda": "12.8"}


# /proc/cpuinfo of two guests that both call their CPU "AMD EPYC" (the first is this project's reference machine,
# flags shortened), of an Intel host, and of an aarch64 host (no model name there).
_ZEN4_PROCESSOR = """\
processor	: {}
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 17
model name	: AMD EPYC
stepping	: 1
microcode	: 0x1000065
flags		: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16 \
avx512_vnni hypervisor
"""
EPYC_ZEN4 = "\n".join(_ZEN4_PROCESSOR.format(i) for i in range(2))  # one block per processor, as Linux writes it
EPYC_ZEN2 = """\
processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 23
model		: 49
model name	: AMD EPYC
stepping	: 0
microcode	: 0x830107a
flags		: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 hypervisor
"""
XEON = """\
processor	: 0
vendor_id	: GenuineIntel
cpu family	: 6
model		: 143
model name	: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
stepping	: 8
microcode	: 0x2b000590
flags		: fma sse4_1 avx f16c avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 avx512_fp16 \
amx_bf16 amx_tile amx_int8 avx_vnni
"""
GRAVITON = """\
processor	: 0
BogoMIPS	: 2100.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop \
sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x1
CPU part	: 0xd40
CPU revision	: 1
"""


def test_the_cpu_record_tells_two_cpus_of_one_vague_name_apart():
    """A VM may name its CPU only "AMD EPYC": the record adds family, model and stepping (in ``cpu``, the field the
    audit compares), the microcode and the instruction sets that change float results."""
    zen4, zen2 = provenance.cpu_identity(EPYC_ZEN4), provenance.cpu_identity(EPYC_ZEN2)
    assert zen4 == {
        "cpu": "AMD EPYC (family 25, model 17, stepping 1)",
        "cpu_microcode": "0x1000065",
        "cpu_isa": ["sse4_1", "avx", "f16c", "fma", "avx2", "avx512f", "avx512dq", "avx512bw", "avx512vl",
                    "avx512_vnni", "avx512_bf16"],
    }  # fmt: skip
    assert zen2 == {
        "cpu": "AMD EPYC (family 23, model 49, stepping 0)",
        "cpu_microcode": "0x830107a",
        "cpu_isa": ["sse4_1", "avx", "f16c", "fma", "avx2"],
    }
    assert provenance.cpu_identity(XEON) == {
        "cpu": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz (family 6, model 143, stepping 8)",
        "cpu_microcode": "0x2b000590",
        "cpu_isa": ["sse4_1", "avx", "f16c", "fma", "avx2", "avx_vnni", "avx512f", "avx512dq", "avx512bw", "avx512vl",
                    "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"],
    }  # fmt: skip
    graviton = provenance.cpu_identity(GRAVITON)
    assert graviton["cpu"].endswith("(cpu implementer 0x41, cpu part 0xd40, cpu variant 0x1, cpu revision 1)")
    assert graviton["cpu_microcode"] is None
    assert graviton["cpu_isa"] == ["asimd", "asimdhp", "fphp", "bf16", "i8mm", "sve"]
    assert provenance.cpu_identity("")["cpu_isa"] == []  # no /proc/cpuinfo: the platform's name only


def test_the_record_holds_the_cpu_identity_and_torchs_dispatch(tmp_path, monkeypatch):
    monkeypatch.delenv("DVC_STAGE", raising=False)
    monkeypatch.chdir(tmp_path)
    identity = provenance.cpu_identity
    monkeypatch.setattr(provenance, "cpu_identity", lambda cpuinfo=None: identity(EPYC_ZEN4))
    cpu = types.SimpleNamespace(get_cpu_capability=lambda: "AVX512")
    fake = types.SimpleNamespace(backends=types.SimpleNamespace(cpu=cpu), get_num_threads=lambda: 2)
    monkeypatch.setitem(sys.modules, "torch", fake)
    monkeypatch.setattr(provenance, "_gpu", lambda: None)
    hardware = provenance.record("run", {}, started=time.time())["hardware"]
    assert {k: hardware[k] for k in ("cpu", "cpu_microcode", "cpu_capability", "torch_threads")} == {
        "cpu": "AMD EPYC (family 25, model 17, stepping 1)",
        "cpu_microcode": "0x1000065",
        "cpu_capability": "AVX512",
        "torch_threads": 2,
    }
    assert hardware["cpu_isa"][-2:] == ["avx512_vnni", "avx512_bf16"]
    monkeypatch.delitem(sys.modules, "torch")
    assert provenance.record("run", {}, started=time.time())["hardware"]["cpu_capability"] is None  # torch-free


def test_the_cpu_capability_is_torchs():
    torch = pytest.importorskip("torch")
    assert provenance._cpu_capability(torch) == torch.backends.cpu.get_cpu_capability()
