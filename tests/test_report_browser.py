"""A real browser opens the report offline: every figure loads, no console errors, and a screenshot is taken."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from .test_report import build, fake_results, params_file

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=5000",
]


@pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true",
    reason="Debian's chromium is not installed here (.ci/run installs it for CI)",
)
def test_report_renders_offline_in_headless_chromium(tmp_path):
    assert CHROMIUM, "chromium must be installed in CI (.ci/run installs Debian's chromium package)"
    out = build(tmp_path, fake_results(tmp_path / "results"), params_file(tmp_path))
    url = (out / "index.html").as_uri()
    profile = [f"--user-data-dir={tmp_path / 'chrome-profile'}"]
    dom = subprocess.run([CHROMIUM, *FLAGS, *profile, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-images-ok="true"' in dom.stdout, "a figure did not load"
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == [], console
    screenshot = tmp_path / "report.png"
    shot = subprocess.run(
        [CHROMIUM, *FLAGS, *profile, "--window-size=1280,2400", f"--screenshot={screenshot}", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.read_bytes()[:4] == b"\x89PNG"
    print(f"screenshot: {screenshot}")
