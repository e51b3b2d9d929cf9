"""Reading the pipeline's result files for the report, and the statistics and verdicts computed from them.

No torch here: the report stage reads JSON and CSV only and never recomputes a result.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

__all__ = ["load_json", "paired", "summary", "verdict"]


def load_json(path: Path, profile: str) -> dict | None:
    """A result file, or None when its stage instance has not run. A malformed file, or one written under
    another profile, is an error naming the file."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: malformed or truncated result file ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    found = data.get("profile")
    if found != profile:
        raise ValueError(
            f"{path} was written by profile {found!r}, but params.yaml is profile {profile!r}: results "
            "of two profiles are never mixed (re-run the stage, or restore its results)"
        )
    return data


def _t_quantile(confidence: float, dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, dof))


def summary(values: list[float], confidence: float) -> dict:
    """n, mean, sample std and a t confidence interval of ``values`` (None where undefined)."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    mean = sum(values) / n
    if n == 1:
        return {"n": 1, "mean": mean, "std": None, "ci_low": None, "ci_high": None}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = _t_quantile(confidence, n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def paired(values: dict[int, float], baseline: dict[int, float], confidence: float) -> dict:
    """Summary of ``values[seed] - baseline[seed]`` over the seeds both have."""
    seeds = sorted(set(values) & set(baseline))
    return summary([values[s] - baseline[s] for s in seeds], confidence)


@dataclass(frozen=True)
class Verdict:
    claim: str
    outcome: str  # "reproduced", "not reproduced", "not run at this profile"
    detail: str


RULE = (
    "A claim is tested only when the profile trains on the claim's datasets with the claim's backbone; otherwise "
    "it is 'not run at this profile'. A tested claim is 'reproduced' when, for at least one proposed variant, the "
    "{confidence:.0%} confidence interval of the seed-paired difference to the linear baseline lies above zero and "
    "contains the published difference; otherwise 'not reproduced'."
)


def verdict(claim: dict, *, tested: bool, differences: dict[str, dict]) -> Verdict:
    """The verdict on one published claim from the paired differences (variant -> summary) of this run."""
    published = claim["proposed"] - claim["baseline"]
    if not tested:
        return Verdict(
            claim["id"],
            "not run at this profile",
            f"needs {claim['backbone']} trained on {', '.join(claim['datasets'])}",
        )
    matching = [
        v
        for v, d in differences.items()
        if d["ci_low"] is not None and d["ci_low"] > 0 and d["ci_low"] <= published <= d["ci_high"]
    ]
    if matching:
        return Verdict(
            claim["id"], "reproduced", f"published +{published:.1f} pp inside the interval of {', '.join(matching)}"
        )
    shown = (
        "; ".join(
            f"{v}: {d['mean']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]"
            for v, d in differences.items()
            if d["ci_low"] is not None
        )
        or "fewer than two paired seeds"
    )
    return Verdict(claim["id"], "not reproduced", f"published +{published:.1f} pp; measured {shown}")
