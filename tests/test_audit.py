"""The audit's comparison of committed and re-run metrics (the end-to-end audit runs in test_e2e)."""

from __future__ import annotations

import re

import pytest

from pipeline.audit import compare_metrics

from .tiny import tiny_params, write_params


def test_compare_metrics_splits_by_tolerance():
    old = {"top1": 95.0, "loss": 0.3, "name": "a", "per": {"b0": [0.1, 0.2]}, "n": 3}
    new = {"top1": 95.0000004, "loss": 0.31, "name": "a", "per": {"b0": [0.1, 0.2000001]}, "n": 3}
    beyond, within = compare_metrics(old, new, abs_tol=1e-6)
    assert beyond == ["loss: 0.3 -> 0.31"]
    assert within == ["per.b0.1: 0.2 -> 0.2000001", "top1: 95.0 -> 95.0000004"]
    assert compare_metrics(old, {**old, "name": "b", "extra": 1}, 1.0)[0] == ["extra: None -> 1", "name: 'a' -> 'b'"]
    assert compare_metrics(old, old, 0.0) == ([], [])


@pytest.mark.parametrize(
    "section, message",
    [
        ({"abs_tol": 0.01}, "audit: missing key(s) ratio_rel_tol"),
        ({"abs_tol": 0.01, "ratio_rel_tol": -0.1}, "audit.ratio_rel_tol: must not be negative, got -0.1"),
        ({"abs_tol": "0.01", "ratio_rel_tol": 0.25}, "audit.abs_tol: expected a finite number, got '0.01'"),
        ({"abs_tol": 0.01, "ratio_rel_tol": 0.25, "rel_tol": 1.0}, "audit: unknown key(s) rel_tol"),
    ],
)
def test_audit_params_are_checked(tmp_path, section, message):
    from pipeline.config import ParamsError, load_audit

    params = tiny_params()
    params["audit"] = section
    path = write_params(tmp_path / "params.yaml", params)
    with pytest.raises(ParamsError, match=re.escape(message)):
        load_audit(path)
