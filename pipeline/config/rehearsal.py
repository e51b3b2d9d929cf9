"""The ``rehearsal`` section: which keys a rehearsal of a GPU profile may change, and what it changed.

A rehearsal (``make rehearse PROFILE=paper``, :mod:`pipeline.review.rehearse`) runs a GPU profile's whole DAG on a
CPU. Its params file is the real profile with a short list of overrides, and only of two kinds:

* **size knobs** (:data:`SIZE_KNOBS`): how much is trained, on how many processes, on which device — epochs,
  batch, seeds, variants, backbones, held-out fractions, runtime, the bench's repetitions, device, launcher;
* **data knobs** (:data:`DATA_KNOBS`): where the datasets are (the rehearsal writes its own small ones) and
  whether their files are checked against the published md5 sums (its stand-ins cannot match them).

Every other key — the recipe's components, the models, the image sizes, the report's statistics — stays as the
profile sets it. The section records each override as ``key: {profile: <real value>, rehearsal: <value>}``;
in a real profile it is ``null``. The report labels a rehearsal's every page and table, and the plan stage
(:mod:`pipeline.stages.plan`) plans the real profile: :func:`real_profile` puts the profile's values back.
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass
from typing import Any

from pipeline.config.schema import ParamsError, check_name

__all__ = ["DATA_KNOBS", "SIZE_KNOBS", "Rehearsal", "get_key", "is_knob", "put_key", "real_profile"]

# Keys (glob patterns over dotted paths) that change how much runs and where, never what is computed.
SIZE_KNOBS = (
    "seeds",
    "backbones",  # a subset of the profile's entries
    "device",
    "launcher",
    "pretrain.variants",
    "finetune.variants",
    "bench.variants",
    "*.recipe.epochs",
    "*.recipe.warmup_epochs",
    "*.recipe.batch_size",
    "*.recipe.diagnostic_images",
    "datasets.*.val_fraction",
    "datasets.*.stats_max_images",
    "runtime.*",
    "bench.batch_size",
    "bench.eval_batch_size",
    "bench.warmup",
    "bench.rounds",
    "bench.loader_batches",
    "bench.loader_workers",
    "bench.threads",
)
# Keys that say where the data are and how they are checked.
DATA_KNOBS = ("datasets.*.root", "datasets.*.download", "datasets.*.checksums")


def is_knob(key: str) -> bool:
    """Whether a rehearsal may override the dotted ``key``."""
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in SIZE_KNOBS + DATA_KNOBS)


def get_key(data: dict, key: str) -> Any:
    """The value at dotted ``key`` of a params mapping; a KeyError names the first missing part."""
    node: Any = data
    for i, part in enumerate(key.split(".")):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(".".join(key.split(".")[: i + 1]))
        node = node[part]
    return node


def put_key(data: dict, key: str, value: Any) -> None:
    """Set dotted ``key`` of a params mapping (its parent must exist)."""
    *parents, last = key.split(".")
    node = get_key(data, ".".join(parents)) if parents else data
    if not isinstance(node, dict):
        raise KeyError(".".join(parents))
    node[last] = value


@dataclass(frozen=True)
class Rehearsal:
    """A rehearsal's record of itself: the profile it rehearses and every key it changed."""

    of: str  # the profile rehearsed (profiles/<of>.yaml)
    overrides: dict[str, dict[str, Any]]  # dotted key -> {"profile": real value, "rehearsal": value used}

    def check(self, where: str) -> None:
        check_name(f"{where}.of", self.of)
        for key, pair in self.overrides.items():
            if not is_knob(key):
                raise ParamsError(
                    f"{where}.overrides.{key}: not a size or data knob; a rehearsal may change only "
                    f"{', '.join(SIZE_KNOBS + DATA_KNOBS)}"
                )
            if not isinstance(pair, dict) or set(pair) != {"profile", "rehearsal"}:
                raise ParamsError(f"{where}.overrides.{key}: expected {{profile: <value>, rehearsal: <value>}}")


def real_profile(data: dict) -> dict:
    """The params mapping of the profile a rehearsal was derived from (``data`` itself if it is not one)."""
    section = data.get("rehearsal")
    if not section:
        return data
    real = copy.deepcopy(data)
    for key, pair in section["overrides"].items():
        put_key(real, key, copy.deepcopy(pair["profile"]))
    real["rehearsal"] = None
    return real
