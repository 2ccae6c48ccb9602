"""The demo's HTML report, rendered by a real browser (headless Chromium): its charts are there and drawn."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rappel_demo.demo import build_scenario, summarise
from rappel_demo.report import write_report
from rappel_local.scenario import load_scenario
from rappel_local.simulate import Simulation

pytestmark = pytest.mark.e2e
CHARTS = ("sends-per-day", "deliveries-per-day", "lateness", "failures-by-reason")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, which `make test` installs when missing (`make chromium`)."""
    found = shutil.which("chromium")
    assert found, "chromium is not installed: run `make chromium` (or `make test`, which does)"
    return found


def test_the_report_renders_with_its_charts(tmp_path: Path, chromium: str) -> None:
    scenario = load_scenario(build_scenario(children=12, days=12, seed=3, rate=5))
    document = Simulation(scenario).run().as_json()
    report = write_report(document, scenario, tmp_path / "report.html")
    summary = summarise(document, report)
    assert summary.invariants_ok

    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    for chart in CHARTS:
        match = re.search(rf'<svg[^>]*id="{chart}"[^>]*data-bars="(\d+)"', dom)
        assert match, f"chart {chart} missing from the rendered page"
    sends = int(re.search(r'id="sends-per-day"[^>]*data-bars="(\d+)"', dom).group(1))  # type: ignore[union-attr]
    assert sends > 0  # something was actually drawn
    assert dom.count('class="bar"') >= sends

    shot = tmp_path / "report.png"
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1100,1400", report.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 10_000  # a real rendering, not a blank page
