"""The report's figures: one function per figure, matplotlib only, byte-identical on re-run.

Each function takes plain data (lists and dicts read from result files) and returns a Figure; :func:`save`
writes it as PNG and SVG without timestamps or software tags. Published (ImageNet) and reproduced numbers are
always drawn in separate panels, so a reduced-profile result is never placed as if it were an ImageNet one.
"""

from __future__ import annotations

import functools
import io

__all__ = ["accuracy_vs_cost", "save", "similarity", "training_curves", "transfer_bars"]


@functools.cache
def _pyplot():
    """matplotlib's pyplot on the Agg backend with the report's settings, imported by the first figure drawn (not
    by importing this module: the report stage answers --help without matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    matplotlib.pyplot.rcParams.update({"svg.hashsalt": "qkv-report", "figure.dpi": 100, "font.size": 9})
    return matplotlib.pyplot


class _Pyplot:
    """``plt.<name>`` is pyplot's ``<name>``, pyplot imported on first use."""

    def __getattr__(self, name: str):
        return getattr(_pyplot(), name)


plt = _Pyplot()
_COLORS = {"linear": "#4c4c4c", "sne": "#1f77b4", "psne": "#2ca02c", "fsne": "#d62728"}


def _color(variant: str, i: int) -> str:
    return _COLORS.get(variant, plt.rcParams["axes.prop_cycle"].by_key()["color"][i % 10])


def _finish(fig, ax, *, xlabel: str, ylabel: str, title: str, legend: bool):
    """Labels, title, a light grid and (when something was drawn) the legend of a single-panel figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7)
    return fig


def save(fig) -> dict[str, bytes]:
    """PNG and SVG bytes of ``fig``, with no metadata that changes between runs."""
    out = {}
    for fmt, metadata in (("png", {"Software": None}), ("svg", {"Date": None, "Creator": None})):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, metadata=metadata, bbox_inches="tight")
        out[fmt] = buffer.getvalue()
    plt.close(fig)
    return out


def accuracy_vs_cost(published: list[dict], reproduced: list[dict], *, cost: str, reproduced_label: str):
    """Top-1 against parameters (``cost='params_m'``) or GFLOPs (``cost='gflops'``): published points on the
    left, reproduced means with std error bars on the right."""
    label = {"params_m": "parameters (M)", "gflops": "GFLOPs (fvcore)"}[cost]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    points = [p for p in published if p.get(cost) is not None]
    for p in points:
        left.scatter(
            p[cost],
            p["top1"],
            color=_color(p.get("variant", ""), 0),
            marker="o" if p["kind"] == "baseline" else "*",
            s=60,
            zorder=3,
        )
        left.annotate(p["label"], (p[cost], p["top1"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    left.margins(x=0.25, y=0.15)  # room for the labels
    left.set_title("published (ImageNet-1k)")
    if not points:
        left.text(0.5, 0.5, "no published values for this axis", ha="center", va="center", transform=left.transAxes)
    for i, r in enumerate(reproduced):
        right.errorbar(
            r[cost],
            r["mean"],
            yerr=r["std"],
            fmt="o",
            capsize=3,
            color=_color(r["variant"], i),
            label=f"{r['variant']} (n={r['n']})",
        )
    right.set_title(f"reproduced ({reproduced_label})")
    if reproduced:
        right.legend(fontsize=7)
    else:
        right.text(0.5, 0.5, "not run", ha="center", va="center", transform=right.transAxes)
    for ax in (left, right):
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
    return fig


def training_curves(curves: dict[str, list[dict]], *, title: str):
    """Validation top-1 per epoch, one line per variant (mean over seeds)."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for i, (variant, rows) in enumerate(curves.items()):
        ax.plot(
            [r["epoch"] for r in rows],
            [r["val_top1"] for r in rows],
            marker=".",
            color=_color(variant, i),
            label=variant,
        )
    return _finish(fig, ax, xlabel="epoch", ylabel="val top-1 (%)", title=title, legend=bool(curves))


def transfer_bars(rows: list[dict], datasets: list[str], variants: list[str]):
    """Mean test top-1 per target dataset and variant, std error bars; missing runs left empty."""
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(datasets) + 1), 3.2))
    width = 0.8 / max(1, len(variants))
    for i, variant in enumerate(variants):
        xs, means, stds = [], [], []
        for j, dataset in enumerate(datasets):
            row = next((r for r in rows if r["variant"] == variant and r["dataset"] == dataset), None)
            if row is not None and row["n"]:
                xs.append(j + (i - (len(variants) - 1) / 2) * width)
                means.append(row["mean"])
                stds.append(row["std"] or 0.0)
        ax.bar(xs, means, width, yerr=stds, capsize=2, color=_color(variant, i), label=variant)
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("transfer")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    return fig


def similarity(per_variant: dict[str, list[float]], *, title: str):
    """Largest pairwise cosine between Q, K and V per XCA block, one line per variant: a collapsed embedding
    (Q = K = V) sits at 1.0."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for i, (variant, values) in enumerate(per_variant.items()):
        ax.plot(range(len(values)), values, marker="o", color=_color(variant, i), label=variant)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.text(0, 0.97, "collapse: Q = K = V", fontsize=7, va="top")
    ax.set_ylim(-0.2, 1.05)
    return _finish(
        fig, ax, xlabel="XCA block", ylabel="max cosine(Q,K | Q,V | K,V)", title=title, legend=bool(per_variant)
    )
