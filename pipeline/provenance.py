"""Where a result came from: stage instance, params, the code and data it read, software, hardware and wall time.

Kept apart from the metrics (a separate ``provenance.json`` beside each result), so that a re-run with
identical results leaves the metrics byte-identical, and out of DVC's metric views (see Shape, below).

Which instance. ``dvc repro`` (and ``dvc exp run``) starts every command line of a stage with ``DVC_STAGE`` set to
the instance's address (``pretrain@n12-linear-0``, or ``sub/dvc.yaml:name``) and ``DVC_ROOT`` to the repository
(DVC 3, ``dvc.stage.run.prepare_kwargs``); the launchers (torchrun, srun) pass the environment on to their ranks.
:func:`record` reads both, so no caller passes its instance name or repeats its dvc.yaml ``deps`` (a second copy of
the list would drift). An address's dvc.yaml is taken relative to the repository root (DVC writes it relative to
where ``dvc repro`` started). A run by hand has no ``DVC_STAGE``: its record has null dependencies, unless the
caller names the instance (``dvc_stage=``).

Dependencies as DVC sees them. The instance is read with DVC's own loader (``Repo.stage.load_one``: dvc.yaml,
params.yaml and dvc.lock, only read). No lock is needed: ``dvc repro`` releases its repo lock while a command runs
(``dvc.stage.run.unlocked_repo``) and holds its read/write locks on the instance's deps and outs, which reading
does not take (tests/test_provenance.py calls :func:`record` from a stage command under ``dvc repro``). Each
dependency is hashed by dvc_data's ``build`` with the arguments ``Output._get_hash_meta`` gives a dependency (its
hash name, DVC's .dvcignore filter, dry run), after the legacy-hash upgrade DVC makes when it saves
(``update_legacy_hash_name``): ``deps`` is what DVC writes to dvc.lock after the command (a file's ``md5`` of its
bytes, a folder's ``md5`` of its ``.dir`` listing ending in ``.dir``, size, file count), ``dep_params`` the lock's
``params``. DVC's state (hashes kept by inode, mtime and size in its site cache) makes the data folders the parent
has just hashed a lookup. Cost on the reference machine (2 CPUs): 0.25 s to import ``dvc.repo``, ~0.5 s to load the
instance (most of it parsing dvc.lock, which grows with the number of instances), a few ms to hash the code; paid
only when an instance is known, so importing this module stays cheap.

Code identity. ``git_commit`` is HEAD; ``code_changed`` says whether any dependency of the instance that no stage
writes (code, references, params files; not dvc.lock's outputs) differs from it: ``git status --porcelain``
limited to those paths (modified, staged or untracked), so results and dvc.lock rewritten by the run do not count;
``changed_files`` lists them (relative to the top of the git work tree; null when none).

Shape. ``deps`` is keyed by path; every list that is empty or holds an object (in the params echoed) is written as
an object keyed by position (:func:`pipeline.outputs.inert`): dvc.yaml declares the record as a plot, which keeps
it in git and in DVC's run-cache but out of ``dvc metrics show`` and ``dvc exp show``, and DVC then draws nothing
for it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.outputs import inert, jsonable, round_measurement

__all__ = ["FLOAT_ISA", "cpu_identity", "cpu_model", "record"]

_VERSIONED = ("torch", "torchvision", "timm", "fvcore", "numpy", "pandas", "matplotlib", "jinja2", "dvc", "pyyaml")


def _run(*cmd: str, cwd: str | Path | None = None) -> str | None:
    """A command's standard output, or None when it cannot run or fails."""
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, check=True, timeout=30, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


# The instruction sets that decide which float kernels run, and so how results round: fused multiply-add, the
# vector widths ATen dispatches on (DEFAULT, AVX2, AVX512) and the ISA levels oneDNN picks from (avx2_vnni,
# avx512_core: f/dq/bw/vl, avx512_core_vnni, avx512_core_bf16, avx512_core_fp16, amx), as Linux's /proc/cpuinfo
# names them ("flags" on x86, "Features" on aarch64). A hypervisor may hide some from a guest of the same model.
FLOAT_ISA = (
    "sse4_1", "avx", "f16c", "fma", "avx2", "avx_vnni",
    "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
    "asimd", "asimdhp", "fphp", "bf16", "i8mm", "sve", "sve2", "sme",
)  # fmt: skip


def _first_processor(cpuinfo: str) -> dict[str, str]:
    """The ``key: value`` lines of the first processor in /proc/cpuinfo's text (a machine's processors are one
    model)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_identity(cpuinfo: str | None = None) -> dict:
    """The CPU as provenance records it, from /proc/cpuinfo's text (read when ``cpuinfo`` is None):

    - ``cpu``: the model name with the numbers that identify the model, since a virtual machine may show a name
      as vague as ``AMD EPYC``: ``AMD EPYC (family 25, model 17, stepping 1)`` on x86; the implementer, part,
      variant and revision on aarch64, whose /proc/cpuinfo has no model name;
    - ``cpu_microcode``: the microcode revision (x86; None elsewhere);
    - ``cpu_isa``: which of :data:`FLOAT_ISA` it has, in that order.

    Off Linux: the platform's processor name, without numbers, microcode or instruction sets."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields = _first_processor(cpuinfo)
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:  # x86
        numbers = [("family", "cpu family"), ("model", "model"), ("stepping", "stepping")]
    else:  # aarch64
        numbers = [(key.lower(), key) for key in ("CPU implementer", "CPU part", "CPU variant", "CPU revision")]
    numbers = ", ".join(f"{label} {fields[key]}" for label, key in numbers if key in fields)
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return {
        "cpu": f"{name} ({numbers})" if numbers else name,
        "cpu_microcode": fields.get("microcode"),
        "cpu_isa": [isa for isa in FLOAT_ISA if isa in flags],
    }


def cpu_model() -> str:
    """The CPU's model, for labelling a record or a measurement: :func:`cpu_identity`'s ``cpu``."""
    return cpu_identity()["cpu"]


def _cpu_capability(torch) -> str | None:
    """The instruction set ATen's CPU kernels dispatch to (``DEFAULT``, ``AVX2``, ``AVX512``, ...: the CPU's best,
    or ``ATEN_CPU_CAPABILITY``); None when torch is not imported."""
    get = getattr(getattr(getattr(torch, "backends", None), "cpu", None), "get_cpu_capability", None)
    return get() if get is not None else None


def _gpu() -> dict | None:
    """The GPU models, driver and CUDA version of a run that uses CUDA; None on CPU (torch not imported, or CUDA
    never initialised by this process)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    models = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]  # CUDA only
    smi = _run("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader")  # CUDA only
    drivers = sorted({line.strip() for line in (smi or "").splitlines() if line.strip()})  # CUDA only
    return {"models": models, "driver": ", ".join(drivers) or None, "cuda": torch.version.cuda}  # CUDA only


def _dep_entry(dep) -> dict:
    """One dependency as dvc.lock records it after DVC saves the stage."""
    from dvc.cachemgr import LEGACY_HASH_NAMES
    from dvc_data.hashfile.build import build

    dep.update_legacy_hash_name()  # what Output.save does first: a changed legacy (md5-dos2unix) entry becomes md5
    _, meta, obj = build(dep.local_cache, dep.fs_path, dep.fs, dep.hash_name, ignore=dep.dvcignore, dry_run=True)
    entry: dict[str, Any] = {"path": dep.def_path}
    if dep.hash_name not in LEGACY_HASH_NAMES:
        entry["hash"] = "md5"
    entry["md5"] = obj.hash_info.value
    entry.update({k: v for k, v in meta.to_dict().items() if k != "isdir"})
    return entry


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b + os.sep) or b.startswith(a + os.sep)


def _dvc_view(root: str, address: str) -> tuple[list[dict], dict, list[str]]:
    """The instance's dependencies and params as dvc.lock records them, and the paths (relative to ``root``) of
    its sources: params files and the dependencies that no stage writes (none of dvc.lock's outputs)."""
    from dvc.dependency import ParamsDependency
    from dvc.repo import Repo

    file, _, name = address.rpartition(":")
    parts = [p for p in Path(file or "dvc.yaml").parts if p not in ("..", ".")]  # relative to where repro started
    with Repo(root) as repo:
        stage = repo.stage.load_one(os.path.join(repo.root_dir, *parts), name)
        base = os.path.dirname(stage.path)
        lock = stage.dvcfile.lockfile_contents.get("stages", {})  # read by load_one already
        written = [os.path.join(base, out["path"]) for entry in lock.values() for out in entry.get("outs", [])]
        deps, params, sources = [], {}, []
        for dep in sorted(stage.deps, key=lambda d: d.def_path):
            relative = os.path.relpath(dep.fs_path, repo.root_dir)
            if isinstance(dep, ParamsDependency):
                params[dep.def_path] = dep.read_params()
                sources.append(relative)
                continue
            deps.append(_dep_entry(dep))
            if not any(_overlaps(dep.fs_path, path) for path in written):
                sources.append(relative)
    return deps, params, sources


def _changed_files(root: str, paths: list[str]) -> list[str] | None:
    """Files under ``paths`` that differ from HEAD (modified, staged or untracked), relative to the top of the git
    work tree; None outside git."""
    if not paths:
        return []
    out = _run("git", "status", "--porcelain=v1", "-z", "--untracked-files=all", "--", *paths, cwd=root)
    if out is None:
        return None
    files, entries = [], iter(out.split("\0"))
    for entry in entries:
        if entry:
            files.append(entry[3:])
            if entry[0] in "RC":  # a rename or copy: the original path follows
                next(entries, None)
    return sorted(files)


def _code(root: str, address: str | None) -> dict:
    """The keys naming the instance, its dependencies and whether its sources differ from the git commit."""
    commit = _run("git", "rev-parse", "HEAD", cwd=root)
    keys: dict[str, Any] = {"stage_instance": address, "deps": None, "dep_params": None}
    keys.update(git_commit=commit.strip() if commit else None, code_changed=None, changed_files=None)
    if address is None:
        return keys
    try:
        deps, params, sources = _dvc_view(root, address)
    except Exception as exc:  # a record without hashes beats losing a finished run's outputs
        print(f"provenance: dependencies of {address} not recorded: {exc}", file=sys.stderr)
        return keys
    changed = _changed_files(root, sources) if commit else None
    keys.update(deps={dep.pop("path"): dep for dep in deps}, dep_params=params, changed_files=changed or None)
    keys["code_changed"] = None if changed is None else bool(changed)
    return keys


def record(
    stage: str,
    config: Any,
    *,
    started: float,
    extra: dict | None = None,
    dvc_stage: str | None = None,
    root: str | Path | None = None,
) -> dict:
    """The provenance of one stage run: ``config`` (the stage's loaded params object, recorded as resolved), the
    DVC instance with its dependencies' hashes, git commit and whether the instance's sources differ from it,
    package versions, hardware (GPUs when CUDA is in use) and the wall time since ``started`` (a ``time.time()``).

    ``dvc_stage`` (default: ``$DVC_STAGE``, which ``dvc repro`` sets) is the instance's address and ``root`` (default:
    ``$DVC_ROOT``, else the working directory) the repository."""
    wall = round_measurement(time.time() - started)
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    torch = sys.modules.get("torch")
    address = dvc_stage or os.environ.get("DVC_STAGE") or None
    root = str(root or os.environ.get("DVC_ROOT") or os.getcwd())
    affinity = len(os.sched_getaffinity(0))  # the CPUs this process may run on (SLURM binds a job step)
    return inert(
        {
            "stage": stage,
            "argv": sys.argv,
            "params": jsonable(config),
            **_code(root, address),
            "python": platform.python_version(),
            "packages": versions,
            "hardware": {
                "machine": platform.machine(),
                **cpu_identity(),
                "cpu_capability": _cpu_capability(torch),
                "cpu_count": os.cpu_count(),
                "cpu_affinity": affinity,
                "torch_threads": torch.get_num_threads() if torch is not None else None,
            },
            "gpu": _gpu(),
            "host": platform.node(),
            "wall_time_s": wall,
            **(extra or {}),
        }
    )
