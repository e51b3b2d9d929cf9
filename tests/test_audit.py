"""The audit's comparison of committed and re-run metrics (the end-to-end audit runs in test_e2e)."""

from __future__ import annotations

from pipeline.audit import compare_metrics


def test_compare_metrics_splits_by_tolerance():
    old = {"top1": 95.0, "loss": 0.3, "name": "a", "per": {"b0": [0.1, 0.2]}, "n": 3}
    new = {"top1": 95.0000004, "loss": 0.31, "name": "a", "per": {"b0": [0.1, 0.2000001]}, "n": 3}
    beyond, within = compare_metrics(old, new, abs_tol=1e-6)
    assert beyond == ["loss: 0.3 -> 0.31"]
    assert within == ["per.b0.1: 0.2 -> 0.2000001", "top1: 95.0 -> 95.0000004"]
    assert compare_metrics(old, {**old, "name": "b", "extra": 1}, 1.0)[0] == ["extra: None -> 1", "name: 'a' -> 'b'"]
    assert compare_metrics(old, old, 0.0) == ([], [])
