"""The DAG of stage instances as DVC sees it (``dvc.yaml`` resolved, ``dvc status``), for :mod:`pipeline.cluster`:
which instances exist, what each needs first, which are not up to date, and where a training run's live curves
are. Read through DVC's own Python API (the index graph behind ``dvc dag`` and ``dvc status``), never by parsing
dvc.yaml again."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DagError", "Instance", "curves_epochs", "scan", "selected"]

TRAINING = ("pretrain", "finetune", "bench")  # the stages that run on the training resources (GPUs)


class DagError(ValueError):
    """A stage name the DAG does not have, or a DVC project that cannot be read."""


@dataclass(frozen=True)
class Instance:
    name: str  # as dvc names it: pretrain@n12-sne-0, flops
    stage: str  # the stage it is an instance of: pretrain, flops
    upstream: tuple[str, ...]  # the instances whose outputs it reads
    curves: str | None  # its curves file (a training run rewrites it every epoch), relative to the workspace

    @property
    def training(self) -> bool:
        return self.stage in TRAINING


def _repo(root: Path):
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        return Repo(str(root), _wait_for_lock=True)  # a running job's dvc holds the lock for moments
    except DvcException as exc:
        raise DagError(f"{root}: not a DVC project ({exc}); run this in the repository") from None


def scan(root: Path) -> tuple[dict[str, Instance], set[str]]:
    """Every stage instance of the workspace at ``root``, upstream before downstream (dvc.yaml's order among
    independent ones), and the instances a ``dvc repro`` would run: those ``dvc status`` reports changed (deps,
    params, command or outputs differ from dvc.lock, or never run) or a running job holds locked, and everything
    downstream of them. One DVC session, under its lock (a job's dvc may be writing dvc.lock)."""
    import networkx as nx
    from dvc.lock import LockError

    with _repo(root) as repo, repo.lock:
        graph = repo.index.graph  # an edge from each stage to every stage it depends on
        order = {stage: i for i, stage in enumerate(graph.nodes)}
        topo = nx.lexicographical_topological_sort(graph.reverse(copy=False), key=order.__getitem__)
        dag, changed = {}, set()
        for stage in topo:
            curves = next((str(o.def_path) for o in stage.outs if str(o.def_path).endswith("curves.csv")), None)
            upstream = tuple(s.addressing for s in sorted(graph.successors(stage), key=order.__getitem__))
            dag[stage.addressing] = Instance(stage.addressing, stage.addressing.split("@")[0], upstream, curves)
            try:  # stage by stage: a stage a job is running has its outputs write-locked
                if stage.status() or any(up in changed for up in upstream):  # upstream first: reaches descendants
                    changed.add(stage.addressing)
            except LockError:  # being run right now: not up to date yet
                changed.add(stage.addressing)
    return dag, changed


def selected(dag: dict[str, Instance], targets: list[str]) -> list[str]:
    """``targets`` (instance names, or a stage name for all its instances) and everything upstream of them, in
    DAG order; all instances if ``targets`` is empty."""
    if not targets:
        return list(dag)
    wanted: set[str] = set()
    for target in targets:
        hits = [n for n, inst in dag.items() if n == target or (inst.stage == target and "@" in n)]
        if not hits:
            near = sorted({inst.stage for inst in dag.values()})
            raise DagError(
                f"{target!r} is not a stage or stage instance of dvc.yaml (stages: {', '.join(near)}; "
                "`dvc stage list` names every instance)"
            )
        wanted.update(hits)
    for inst in reversed(list(dag.values())):  # downstream first: one pass reaches every ancestor
        if inst.name in wanted:
            wanted.update(inst.upstream)
    return [n for n in dag if n in wanted]


def curves_epochs(root: Path, inst: Instance, since: float = 0.0) -> int | None:
    """Epochs a training instance has finished, from its live curves (None before the first, or if the file was
    last written before ``since``: a previous run's)."""
    if inst.curves is None:
        return None
    path = Path(root) / inst.curves
    try:
        if path.stat().st_mtime < since:
            return None
        rows = [line for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return None
    return max(len(rows) - 1, 0) or None
