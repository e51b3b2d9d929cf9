"""The cost plan as a table (the plan stage prints it, the report shows it): one row per training stage and backbone,
the prepared data and the total, with every rate's source and the input pipeline in the note. Plain data in (the
plan stage's JSON), a :class:`pipeline.reporting.tables.Table` out; torch-free."""

from __future__ import annotations

from pipeline.reporting.tables import Table, hours

__all__ = ["plan", "plan_workers"]

_PREFIXES = ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def _si(value: float, unit: str = "") -> str:
    """``6.15 G``, ``1.07 EFLOP``: three significant digits and an SI prefix."""
    for scale, prefix in _PREFIXES:
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:,.0f}{' ' + unit if unit else ''}"


def _many(n: int, unit: str) -> str:
    """``1 GPU``, ``8 GPUs``, ``2 CPU processes``."""
    if n == 1:
        return f"1 {unit}"
    return f"{n} {unit}es" if unit.endswith("s") else f"{n} {unit}s"


def _bytes(n: float) -> str:
    return _si(n, "B") if n >= 1e3 else f"{n:.0f} B"


def _wall(h: float | None) -> str:
    if h is None:
        return "n/a"
    if h >= 48:
        return f"{h / 24:.1f} days"
    if h >= 1:
        return f"{h:.1f} h"
    return f"{h * 60:.1f} min" if h * 60 >= 1 else f"{h * 3600:.0f} s"


def _rate(rate: dict | None) -> str:
    if rate is None:
        return "unknown"
    low, high = f"{rate['min']:,.0f}", f"{rate['max']:,.0f}"
    bound = ", LOADER-BOUND" if rate.get("loader_bound") else ""
    return f"{low if low == high else f'{low}–{high}'} ({', '.join(rate['kinds'])}{bound})"


def plan(data: dict | None) -> Table:
    """The plan stage's JSON (None: it has not run) as a table."""
    title = "Cost plan: images, FLOPs, device-hours and disk of every training stage"
    if data is None:
        columns = ["stage", "runs"]
        return Table("plan", title, columns, [["not run", ""]], "The plan stage has not run.")
    devices = data["devices"]
    unit = devices["unit"]
    columns = [
        "stage",
        "runs",
        f"train img/s per {unit}",
        "images trained",
        "images evaluated",
        "training FLOPs",
        f"{unit}-hours",
        f"wall time ({_many(devices['total'], unit)})",
        "disk kept",
        "resume checkpoint",
    ]
    prepared = data["prepare"]
    rows = [["prepare", f"{len(prepared['datasets'])} datasets", *["–"] * 6, _bytes(prepared["bytes"]), "–"]]
    for g in [*data["groups"], {**data["total"], "stage": "total", "backbone": "", "rate": None}]:
        rows.append(
            [
                f"{g['stage']} {g['backbone']}".strip(),
                f"{g['runs']}",
                "–" if g["stage"] == "total" else _rate(g["rate"]),
                _si(g["train_images"]),
                _si(g["eval_images"]),
                _si(g["train_flops"] + g["eval_flops"]),
                hours(g["device_hours"]),
                _wall(g["wall_hours"]),
                _bytes(g.get("disk_bytes", g.get("weights_bytes", 0))),
                _bytes(g["resume_bytes"]) + (" (largest)" if g["stage"] == "total" else ""),
            ]
        )
    return Table("plan", _title(title, data), columns, rows, "\n".join(_notes(data)))


def _title(title: str, data: dict) -> str:
    devices = data["devices"]
    where = f"{_many(devices['per_node'], devices['unit'])} per node x {_many(devices['nodes'], 'node')}"
    rehearsal = data["rehearsal"]
    of = f" (the real profile of a rehearsal: {rehearsal['overrides']} overrides undone)" if rehearsal else ""
    return f"{title} — profile {data['profile']}{of}, {where}"


def _notes(data: dict) -> list[str]:
    notes = [
        "Runs one after another on all the devices, scaling assumed linear; training FLOPs = 3 x forward FLOPs x "
        "images trained, plus forward FLOPs x images evaluated (a multiply-add = 1 flop, as timm's and XCiT's tables "
        "count). Images evaluated: the validation split every epoch, the test split at the end (twice with an EMA) "
        "and the diagnostic's. Disk kept: prepared data and every run's weights (float32, x2 with an EMA); resume "
        "checkpoint: what one running run holds (weights, AdamW's two moments, EMA).",
        "Training rates: " + ("; ".join(data["rate_sources"]) or "none known") + ". 'x FLOPs': scaled by the ratio "
        "of closed-form forward FLOPs on the same device; evaluation at the measured eval rate, else 3x the training "
        "rate.",
    ]
    notes += [f"Not used: {line}." for line in data["ignored"]]
    sizes = [
        f"{name} {d['train']:,}/{d['val']:,}/{d['test']:,}{'' if d['exact'] else ' (≈)'}"
        for name, d in data["prepare"]["datasets"].items()
    ]
    notes.append(
        "Splits train/val/test (references/compute.yaml, split by the profile's fractions; ≈: per-class rounding "
        "unknown, within classes/2): " + ", ".join(sizes) + "."
    )
    notes += [_input(entry, data["devices"]["unit"]) for entry in data["input"]]
    notes.append(_memory(data["memory"]))
    return notes


def _input(entry: dict, unit: str) -> str:
    """One line on a stage's input pipeline: one core's rate on this project's and timm's stock path, and per
    backbone the rate the device's loader cores deliver against the device's own."""
    stage = entry["stage"]
    if entry["mode"] != "timm":
        return f"Input, {stage}: batched (in-memory tensors augmented a batch at a time: decodes nothing per image)."
    source = "JPEG files" if entry["decodes_jpeg"] else "tensors (no JPEG to decode: the JPEG rate is a lower bound)"
    per_size = {x["img_size"]: x for x in entry["backbones"].values()}
    rates = ", ".join(
        f"{x['per_core_img_per_s']:,.0f} img/s at {size} px (timm's stock path {x['timm_per_core_img_per_s']:,.0f}: "
        f"{x['ratio']:.2f}x)"
        for size, x in per_size.items()
    )
    first = next(iter(per_size.values()))
    load, cpus = first["load_1min"], first.get("cpus")
    busy = (f" THE MACHINE WAS BUSY (load {max(load):g} on {cpus} CPUs, less than a core free): the rates are low; "
            "re-measure on an idle machine." if cpus and max(load) > cpus - 0.5 else "")  # fmt: skip
    parts = []
    for b, x in entry["backbones"].items():
        if x["device_img_per_s"] is None:
            parts.append(f"{b} n/a (no device rate)")
            continue
        need = f"needs {x['cores_needed']:.1f} cores per {unit}"
        if x["loader_img_per_s"] is None:
            uncapped = "not capped: no JPEG decoded" if not entry["decodes_jpeg"] else "cores per device unknown"
            parts.append(f"{b} {need} ({uncapped})")
            continue
        bound = x["loader_img_per_s"] < x["device_img_per_s"]
        state = (f"LOADER-BOUND at {x['effective_img_per_s']:,.0f} img/s (the plan's hours use it)" if bound
                 else "fed")  # fmt: skip
        parts.append(
            f"{b} {need} for {x['device_img_per_s']:,.0f} img/s; {x['loader_cores']} loader cores give "
            f"{x['loader_img_per_s']:,.0f}: {state}"
        )
    cores = next(iter(entry["backbones"].values()))["cores_per_device"]
    have = f"{cores} CPU cores per {unit} (cluster.training), one for the rank" if cores else "cores per device unknown"
    return (
        f"Input, {stage} (timm transform, reads {source}): one CPU core decodes and transforms {rates} (best of "
        f"interleaved rounds on {entry['measured_on']}, one thread, 1-min load {load[0]:g} then {load[1]:g}); "
        f"{have}: {'; '.join(parts)}.{busy}"
    )


def _memory(memory: dict | None) -> str:
    if not memory:
        return "Peak host memory per rank: not measured (no training provenance record with peak_rss_mib given)."
    return (
        f"Peak host memory per rank: {memory['peak_rss_mib']:,.0f} MiB, measured in {memory['instance']} (profile "
        f"{memory['profile']}, {memory['hardware']}, {memory['world_size']} process(es), {memory['workers']} loader "
        "workers per rank; the rank's process plus its largest finished loader worker)."
    )


def plan_workers(data: dict, workers: int) -> list[str]:
    """Lines comparing each timm input pipeline's cores per device with ``runtime.workers`` (not part of the plan
    file: runtime settings reach no output)."""
    lines = []
    for entry in data["input"]:
        for b, x in entry.get("backbones", {}).items():
            if x["cores_needed"] is None:
                continue
            need = x["cores_needed"] - 1  # loader workers: the rank's own process has its core
            enough = "enough" if workers >= need else "TOO FEW: raise runtime.workers (and cores)"
            lines.append(
                f"{entry['stage']} {b}: one core {x['per_core_img_per_s']:,.0f} img/s (timm's stock path "
                f"{x['timm_per_core_img_per_s']:,.0f}, {x['ratio']:.2f}x); {need:.1f} loader cores per "
                f"{data['devices']['unit']} needed for {x['device_img_per_s']:,.0f} img/s; runtime.workers = {workers} "
                f"per rank: {enough}"
            )
    return lines
