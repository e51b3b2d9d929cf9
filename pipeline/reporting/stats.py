"""The statistics of the report: summaries over seeds, seed-paired differences and what a number of seeds can
detect. Torch-free; scipy's t distribution only.

A difference is *detected* by the report's rule when the two-sided ``confidence`` interval of the seed-paired
difference lies above zero, i.e. when its t statistic exceeds ``c = t[(1 + confidence) / 2, n - 1]``. With n
seeds and a seed standard deviation ``sd`` of the paired difference, a true difference ``d`` is detected with
probability ``P(T > c)``, T non-central t with n - 1 degrees of freedom and non-centrality ``d * sqrt(n) / sd``.
:func:`detectable` is the ``d`` at which that probability is ``power`` (solved exactly; the textbook
``(c + t[power, n - 1]) * sd / sqrt(n)`` underestimates it at 2-3 seeds), :func:`seeds_needed` the smallest n
that brings it down to a given difference.
"""

from __future__ import annotations

import math

__all__ = ["detectable", "detection_power", "paired", "pooled_sd", "seeds_needed", "summary", "t_quantile"]


def t_quantile(p: float, dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(p, dof))


def summary(values: list[float], confidence: float) -> dict:
    """n, mean, sample std and a t confidence interval of ``values`` (None where undefined)."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    mean = sum(values) / n
    if n == 1:
        return {"n": 1, "mean": mean, "std": None, "ci_low": None, "ci_high": None}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def paired(values: dict[int, float], baseline: dict[int, float], confidence: float) -> dict:
    """Summary of ``values[seed] - baseline[seed]`` over the seeds both have."""
    seeds = sorted(set(values) & set(baseline))
    return summary([values[s] - baseline[s] for s in seeds], confidence)


def pooled_sd(summaries: list[dict]) -> tuple[float | None, int]:
    """The pooled standard deviation of several summaries (sample standard deviations ``std`` of ``n`` values
    each): the root of their variances weighted by degrees of freedom, sum((n - 1) std^2) / sum(n - 1), over those
    with a std; and the smallest n among them. (None, the smallest n) when none has two values."""
    usable = [s for s in summaries if s["std"] is not None and s["n"] >= 2]
    if not usable:
        return None, min((s["n"] for s in summaries), default=0)
    dof = sum(s["n"] - 1 for s in usable)
    return math.sqrt(sum((s["n"] - 1) * s["std"] ** 2 for s in usable) / dof), min(s["n"] for s in usable)


def detection_power(difference: float, sd: float, n: int, confidence: float) -> float:
    """The probability that ``n`` seeds put the interval of a true ``difference`` above zero."""
    from scipy.stats import nct

    critical = t_quantile(0.5 + confidence / 2, n - 1)
    return float(nct.sf(critical, n - 1, difference * math.sqrt(n) / sd))


def detectable(sd: float | None, n: int, confidence: float, power: float) -> float | None:
    """The smallest true difference that ``n`` seeds detect with probability ``power`` (None below 2 seeds)."""
    if sd is None or n < 2:
        return None
    if sd == 0:
        return 0.0
    from scipy.optimize import brentq

    high = (t_quantile(0.5 + confidence / 2, n - 1) + t_quantile(power, n - 1) + 10) * sd / math.sqrt(n)
    return float(brentq(lambda d: detection_power(d, sd, n, confidence) - power, 0.0, high, xtol=1e-9))


def seeds_needed(sd: float | None, difference: float, confidence: float, power: float, limit: int = 1000) -> int | None:
    """The fewest seeds (at least 2) whose :func:`detectable` difference is at most ``|difference|``: None when no
    spread is known or more than ``limit`` would be needed."""
    if sd is None or difference == 0:
        return None
    if sd == 0:
        return 2

    def enough(n: int) -> bool:  # detectable() falls as n grows: bisect
        return detectable(sd, n, confidence, power) <= abs(difference)

    if not enough(limit):
        return None
    low, high = 2, limit
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle + 1, high)
    return low
