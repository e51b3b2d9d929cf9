"""The training rate of every backbone and variant the plan prices (images/s per device), and where it comes from.

In this order:

1. ``--img-per-s X``: X for the baseline variant of ``bench.backbone``, every other network scaled by its FLOPs;
2. the bench stage's measurements (``results/bench/metrics.json``), when they were taken for this profile, on
   its device, for its ``bench.backbone`` (checked by the baseline's forward FLOPs): every variant as measured,
   the other backbones scaled by their FLOPs;
3. on a CUDA profile, timm's published training benchmark (``references/compute.yaml``): the reference of the
   backbone's own architecture, or of the nearest one in forward FLOPs, scaled by the FLOPs of each network.

A scaled figure is labelled ``x FLOPs`` (scaled by the ratio of closed-form forward FLOPs, on the same device):
it assumes a variant costs time in proportion to its FLOPs, which the bench stage tests. Evaluation runs at the
measured eval rate where there is one, else at 3 x the training rate (a forward pass is a third of a step).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import BACKBONES, GpuReference, PlanConfig, network
from pipeline.planning.costs import forward_flops

__all__ = ["Rate", "Rates", "resolve"]

_MATCH_TOL = 0.01  # the bench's baseline forward GFLOPs (4 significant digits) within 1 % of the formula's
_TIMM_CLASSES = 1000  # timm's benchmark builds every model with its ImageNet head


@dataclass(frozen=True)
class Rate:
    train: float  # images/s per device
    eval: float
    kind: str  # "measured", "timm" or "given", with " x FLOPs" when scaled


@dataclass(frozen=True)
class _Anchor:
    train: float
    eval: float | None
    flops: int
    kind: str
    key: tuple  # (backbone, variant, classes) it was taken at; None for a timm reference


class Rates:
    """``rates(backbone, variant, classes)``: the :class:`Rate` of one network with a ``classes``-way head (None:
    no rate is known for this device); ``sources``: one line per figure used; ``ignored``: inputs passed over."""

    def __init__(self, cfg: PlanConfig, anchors: dict, sources: list[str], ignored: list[str], pick):
        self.cfg, self.anchors, self.sources, self.ignored, self._pick = cfg, anchors, sources, ignored, pick

    def __call__(self, backbone: str, variant: str, classes: int) -> Rate | None:
        anchor = self._pick(backbone, variant)
        if anchor is None:
            return None
        flops = forward_flops(self.cfg.nets[backbone, variant], classes)
        scale = anchor.flops / flops
        exact = anchor.key == (backbone, variant, classes) or (anchor.key is None and scale == 1)
        kind = anchor.kind if exact else f"{anchor.kind} x FLOPs"
        evaluated = anchor.eval * scale if anchor.eval is not None else 3 * anchor.train * scale
        return Rate(anchor.train * scale, evaluated, kind)


def resolve(cfg: PlanConfig, *, img_per_s: float | None, bench: Path | None, gpu: str | None = None) -> Rates:
    """The rates of ``cfg``'s networks, by the order of the module's docstring."""
    p = cfg.params
    bb, base = p.bench.backbone, p.bench.baseline
    k_src = cfg.splits(p.pretrain.dataset).classes
    f_base = forward_flops(cfg.nets[bb, base], k_src)
    ignored: list[str] = []
    if img_per_s is not None:
        if not math.isfinite(img_per_s) or img_per_s <= 0:
            raise ValueError(f"--img-per-s: expected a positive number of images/s per device, got {img_per_s:g}")
        anchor = _Anchor(img_per_s, None, f_base, "given", (bb, base, k_src))
        on = f"on one {gpu}" if gpu else "per device"
        line = f"given: --img-per-s {img_per_s:g} for {bb}/{base} {on}"
        return Rates(cfg, {"given": anchor}, [line], ignored, lambda b, v: anchor)
    measured = _bench(cfg, bench, f_base, k_src, ignored) if bench is not None else None
    if measured is not None:
        anchors, line = measured
        return Rates(cfg, anchors, [line], ignored, lambda b, v: anchors.get(v, anchors[base]))
    if p.device != "cuda":
        ignored.append("no GPU reference applies to a CPU profile: run the bench stage here, or give --img-per-s")
        return Rates(cfg, {}, [], ignored, lambda b, v: None)
    chosen = {b: _reference(cfg, b, base, k_src) for b in p.backbones}
    anchors = {b: _Anchor(r.train_img_per_s, None, f, "timm", None) for b, (r, f) in chosen.items()}
    return Rates(cfg, anchors, _cite(r for r, _ in chosen.values()), ignored, lambda b, v: anchors[b])


def _cite(references) -> list[str]:
    """One line per benchmark file: its GPU and precision, then each figure used with its line and batch."""
    files: dict[tuple, list[GpuReference]] = {}
    for r in dict.fromkeys(references):
        files.setdefault((r.source, r.gpu, r.precision), []).append(r)
    return [
        f"timm on one {gpu} ({precision}): "
        + ", ".join(f"{r.model} {r.train_img_per_s:,.2f} img/s (batch {r.batch_size}, line {r.line})" for r in refs)
        + f" in {source}"
        for (source, gpu, precision), refs in files.items()
    ]


def _reference(cfg: PlanConfig, backbone: str, base: str, classes: int) -> tuple[GpuReference, int]:
    """The timm reference of ``backbone``'s own architecture (label, patch, resolution, no overrides), else the
    nearest in forward FLOPs; with its FLOPs."""
    model = cfg.params.backbones[backbone]
    flops = {}
    for ref in cfg.compute.gpu_train:
        size = next(k for k, label in BACKBONES.items() if label == ref.backbone)
        timm = network(f"qkv_xcit_{size}_12_p{ref.patch}", "linear", {"qkv_embed": "linear"}, img_size=ref.img_size,
                       where="references/compute.yaml gpu_train")  # fmt: skip
        flops[ref] = forward_flops(timm, _TIMM_CLASSES)
    own = [r for r in flops if (r.backbone, r.patch, r.img_size) == model.setting and not model.arch_overrides().keys()
           - {"patch_size"}]  # fmt: skip
    if own:
        return own[0], flops[own[0]]
    target = forward_flops(cfg.nets[backbone, base], classes)
    nearest = min(flops, key=lambda r: abs(math.log(flops[r] / target)))
    return nearest, flops[nearest]


def _bench(cfg: PlanConfig, path: Path, f_base: int, k_src: int, ignored: list[str]):
    """The bench stage's rates as anchors (variant -> anchor) and their source line, or None (the reason in
    ``ignored``) when they were not measured for this profile, device and backbone."""
    p = cfg.params
    if not path.is_file():
        ignored.append(f"{path}: not there (the bench stage has not run)")
        return None
    try:
        data = json.loads(path.read_text())
        device, models, baseline = str(data["device"]), data["models"], data["baseline"]
        base_gflops = models[baseline]["forward_gflops_per_image"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{path}: not a bench metrics file ({type(exc).__name__}: {exc}); re-run: dvc repro bench"
        ) from None
    bb = p.bench.backbone
    where = f"measured for profile {data.get('profile')!r} on {device}"
    if data.get("profile") != p.profile or device.split(":")[0] != p.device:
        ignored.append(f"{path}: {where}, not for profile {p.profile!r} on {p.device}: not used")
        return None
    other_size = data.get("img_size") != p.backbones[bb].img_size
    if abs(base_gflops - 2 * f_base / 1e9) > _MATCH_TOL * base_gflops or other_size:
        ignored.append(f"{path}: {where}, but not on backbones.{bb} as params define it (its baseline's FLOPs or "
                       "resolution differ): not used; re-run: dvc repro bench")  # fmt: skip
        return None
    anchors = {
        v: _Anchor(m["train_img_per_s"], m["eval_img_per_s"], forward_flops(cfg.nets[bb, v], k_src), "measured",
                   (bb, v, k_src))
        for v, m in models.items()
        if (bb, v) in cfg.nets
    }  # fmt: skip
    line = (f"measured: the bench stage ({path}) on {device}{_hardware(path)}, {data.get('dtype')}, batch "
            f"{data.get('batch_size')} at {data.get('img_size')} px, every variant of backbones.{bb}")  # fmt: skip
    return anchors, line


def _hardware(bench: Path) -> str:
    """`` (<GPU or CPU model>)`` from the bench's provenance record beside it, if there is one."""
    try:
        record = json.loads((bench.parent / "provenance.json").read_text())
    except (OSError, ValueError):
        return ""
    gpu = (record.get("gpu") or {}).get("models") or []
    name = gpu[0] if gpu else (record.get("hardware") or {}).get("cpu")
    return f" ({name})" if name else ""
