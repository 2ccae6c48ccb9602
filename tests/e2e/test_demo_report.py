"""The demo's HTML report, rendered by a real browser (headless Chromium): its charts are there and drawn, every
chart has its axes with values and labels, no text overflows its box, and people's words replace identifiers.

The layout is measured in the page: a copy of the report gets a script that reads each element's
getBoundingClientRect once Chromium has laid it out and writes what it found into the DOM, which `--dump-dom`
returns. The report itself has no script."""

from __future__ import annotations

import copy
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from rappel_demo.demo import build_scenario, summarise
from rappel_demo.report import write_report
from rappel_local.scenario import Scenario, load_scenario
from rappel_local.simulate import Simulation

pytestmark = pytest.mark.e2e
CHARTS = ("sms-vs-reminders", "deliveries-per-day", "lateness")
WINDOW = (1100, 1400)
# Reads the laid-out page: per chart its axis labels, numeric ticks and any text outside the SVG or outside the
# bar it is drawn in; tick labels that collide; HTML boxes whose text overflows; the page's visible text.
LAYOUT_PROBE = """
<script>
(() => {
  const inside = (a, b) => a.left >= b.left - 0.5 && a.right <= b.right + 0.5 && a.top >= b.top - 0.5
    && a.bottom <= b.bottom + 0.5;
  const overlap = (a, b) => a.left < b.right - 0.5 && b.left < a.right - 0.5 && a.top < b.bottom - 0.5
    && b.top < a.bottom - 0.5;
  const name = (el) => `${el.tagName.toLowerCase()}.${el.getAttribute('class') || ''} "${el.textContent.trim()}"`;
  const charts = {};
  for (const svg of document.querySelectorAll('svg.chart')) {
    const box = svg.getBoundingClientRect();
    const texts = [...svg.querySelectorAll('text')];
    const ticks = (axis) => [...svg.querySelectorAll(`text.tick[data-axis=${axis}]`)];
    const numeric = (axis) => ticks(axis).filter((t) => /^\\d+(\\.\\d+)?%?$/.test(t.textContent.trim())).length;
    const collisions = [];
    for (const axis of ['x', 'y']) {
      const list = ticks(axis);
      for (let i = 1; i < list.length; i++) {
        if (overlap(list[i - 1].getBoundingClientRect(), list[i].getBoundingClientRect())) {
          collisions.push(`${name(list[i - 1])} / ${name(list[i])}`);
        }
      }
    }
    charts[svg.id] = {
      x_label: (svg.querySelector('text.axis-label[data-axis=x]') || {}).textContent || '',
      y_label: (svg.querySelector('text.axis-label[data-axis=y]') || {}).textContent || '',
      numeric_ticks: numeric('x') + numeric('y'),
      bars: svg.querySelectorAll('.bar').length,
      outside_svg: texts.filter((t) => !inside(t.getBoundingClientRect(), box)).map(name),
      outside_bar: texts.filter((t) => t.dataset.inside === 'true').filter((t) => {
        const bar = t.previousElementSibling;
        return !bar || !inside(t.getBoundingClientRect(), bar.getBoundingClientRect());
      }).map(name),
      collisions,
      width: box.width,
    };
  }
  const boxes = [...document.querySelectorAll('td, th, .card, .legend span, h1, h2, h3, p, figcaption')];
  const page = document.documentElement;
  const result = {
    charts,
    legends: [...document.querySelectorAll('.legend')].map((l) => l.dataset.chart),
    overflowing: boxes.filter((el) => el.scrollWidth > el.clientWidth + 1 || el.getBoundingClientRect().right
      > page.clientWidth + 0.5).map(name),
    page_overflows: page.scrollWidth > page.clientWidth,
    text: document.body.innerText,
  };
  const out = document.createElement('pre');
  out.id = 'layout-check';
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
})();
</script>
"""


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium, which `make test` installs when missing (`make chromium`)."""
    found = shutil.which("chromium")
    assert found, "chromium is not installed: run `make chromium` (or `make test`, which does)"
    return found


@pytest.fixture(scope="module")
def simulated() -> tuple[dict[str, Any], Scenario]:
    scenario = load_scenario(build_scenario(children=12, days=12, seed=3, rate=5))
    return Simulation(scenario).run().as_json(), scenario


def _flags(profile: Path, width: int = WINDOW[0], height: int = WINDOW[1]) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        f"--user-data-dir={profile}",
    ]


def _layout(chromium: str, report: Path, tmp_path: Path, width: int = WINDOW[0]) -> tuple[str, dict[str, Any]]:
    """The rendered DOM of the report and what the probe measured in it."""
    probed = tmp_path / f"probed-{width}.html"
    probed.write_text(report.read_text(encoding="utf-8").replace("</body>", LAYOUT_PROBE + "</body>"))
    dom = subprocess.run(
        [chromium, *_flags(tmp_path / "profile", width), "--dump-dom", probed.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    found = re.search(r'<pre id="layout-check">(.*?)</pre>', dom, re.S)
    assert found, "the layout probe did not run"
    raw = found.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")
    return dom, json.loads(raw)


def _assert_reads_well(layout: dict[str, Any], charts: tuple[str, ...]) -> None:
    for chart in sorted({*charts, *layout["charts"]}):  # the charts named, and any other drawn
        measured = layout["charts"].get(chart)
        assert measured, f"chart {chart} missing from the rendered page"
        assert measured["x_label"].strip() and measured["y_label"].strip(), f"{chart}: an axis has no label"
        assert measured["numeric_ticks"] >= 2, f"{chart}: its value axis has no values"
        assert measured["outside_svg"] == [], f"{chart}: text outside the chart: {measured['outside_svg']}"
        assert measured["outside_bar"] == [], f"{chart}: a number does not fit its bar: {measured['outside_bar']}"
        assert measured["collisions"] == [], f"{chart}: axis labels collide: {measured['collisions']}"
    legends = set(layout["legends"])
    assert {"sms-vs-reminders", "deliveries-per-day"} <= legends  # each legend next to its chart
    assert layout["overflowing"] == [], f"text overflows its box: {layout['overflowing']}"
    assert not layout["page_overflows"]
    text = layout["text"]
    for identifier in ("7_day_reminder", "1_day_reminder", "overdue_reminder", "dead_letter", "failed: failed"):
        assert identifier not in text, f"{identifier!r} shown to people"
    assert "7 days before" in text and "1 day after" in text


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    return int(width), int(height)


def test_the_report_renders_with_its_charts(
    simulated: tuple[dict[str, Any], Scenario], tmp_path: Path, chromium: str
) -> None:
    document, scenario = simulated
    report = write_report(document, scenario, tmp_path / "report.html")
    summary = summarise(document, report)
    assert summary.invariants_ok
    assert "<script" not in report.read_text()  # self-contained and static: nothing runs, nothing is fetched
    assert not re.search(r"""(src|href)=["']?https?:""", report.read_text())

    dom, layout = _layout(chromium, report, tmp_path)
    _assert_reads_well(layout, CHARTS)
    sends = layout["charts"]["sms-vs-reminders"]["bars"]
    assert sends > 0  # something was actually drawn
    assert dom.count('class="bar"') >= sends
    outcomes = document["stats"].get("outcomes")
    if outcomes and any(group["appointments"] for group in outcomes.values()):
        _assert_reads_well(layout, ("outcomes",))
    else:
        assert 'id="outcomes-empty"' in dom and "Outcomes not recorded" in layout["text"]
    follow_ups = document.get("follow_ups")
    if follow_ups:
        assert dom.count("<tr>") >= len(follow_ups)
        assert all(row["patient_id"] in layout["text"] for row in follow_ups)
    else:
        assert 'id="follow-ups-empty"' in dom

    shot = tmp_path / "report.png"
    subprocess.run(
        [chromium, *_flags(tmp_path / "profile"), f"--screenshot={shot}", report.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert _png_size(shot) == WINDOW
    assert shot.stat().st_size > 30_000  # a real rendering with its charts, not a blank page


@pytest.mark.parametrize("width", [1100, 700])
def test_outcomes_and_follow_ups_read_well(
    simulated: tuple[dict[str, Any], Scenario], tmp_path: Path, chromium: str, width: int
) -> None:
    """The outcomes chart and the follow-up list by clinic, with figures and reasons checked by hand: their
    numbers fit their bars, the list names every family under its clinic, at a laptop's width and a narrow one."""
    document, scenario = copy.deepcopy(simulated[0]), simulated[1]
    document["stats"]["outcomes"] = {
        "reached": {"appointments": 140, "given_by_due_date": 101, "given_later": 27, "not_given": 12},
        "not_reached": {"appointments": 9, "given_by_due_date": 1, "given_later": 3, "not_given": 5},
    }
    document["follow_ups"] = [
        {
            "patient_id": "P-0012",
            "appointment_id": "A-0012-3",
            "clinic": "CSU Abobo",
            "reasons": [
                "7 days before: undeliverable, the phone could not be reached (DeliveryImpossible)",
                "1 day before: refused by the SMS provider (permanent SVC0004: invalid destination address)",
            ],
            "at": "2027-03-12T00:00:00.000Z",
        },
        {
            "patient_id": "P-0044",
            "appointment_id": "A-0044-1",
            "clinic": "HG Yopougon",
            "reasons": ["1 day after: not sent, the family opted out of SMS"],
            "at": "2027-03-15T00:00:00.000Z",
        },
        {"patient_id": "P-0051", "appointment_id": "A-0051-2", "clinic": None, "reasons": [], "at": None},
    ]
    report = write_report(document, scenario, tmp_path / "report.html")
    dom, layout = _layout(chromium, report, tmp_path, width)
    _assert_reads_well(layout, (*CHARTS, "outcomes"))
    assert "outcomes" in layout["legends"]
    assert layout["charts"]["outcomes"]["bars"] == 6  # three segments in each of the two groups
    chart = dom.split('id="outcomes"')[1].split("</svg>")[0]
    drawn = re.findall(r'<text class="value" data-inside="true"[^>]*>(\d+)</text>', chart)
    assert sorted(drawn, key=int) == ["1", "3", "5", "12", "27", "101"]
    text = layout["text"]
    assert "CSU Abobo — 1 to call" in text and "HG Yopougon — 1 to call" in text and "no clinic named" in text
    assert text.index("CSU Abobo") < text.index("P-0012") < text.index("HG Yopougon") < text.index("P-0044")
    assert "the family opted out of SMS" in text
