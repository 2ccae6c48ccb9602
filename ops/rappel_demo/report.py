"""The demo's self-contained HTML report: inline SVG charts, no scripts, no network."""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.store import parse_iso

if TYPE_CHECKING:
    from rappel_local.scenario import Scenario

TYPES = ("7_day_reminder", "1_day_reminder", "overdue_reminder")
COLOURS = {"7_day_reminder": "#4e79a7", "1_day_reminder": "#f28e2b", "overdue_reminder": "#e15759"}
LATENESS_BINS = (
    (0, 60, "< 1 min"),
    (60, 300, "1-5 min"),
    (300, 900, "5-15 min"),
    (900, 3600, "15-60 min"),
    (3600, 4 * 3600, "1-4 h"),
    (4 * 3600, 24 * 3600, "4-24 h"),
    (24 * 3600, float("inf"), "> 24 h"),
)


def write_report(document: dict[str, Any], scenario: Scenario, path: Path) -> Path:
    """Write the report for a simulation's output; returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    messages = document["messages"]
    days = [scenario.start.date() + timedelta(days=n) for n in range((scenario.until - scenario.start).days + 1)]
    sends = _per_day(messages, "sent_at", days)
    deliveries = _per_day(messages, "delivered_at", days)
    lateness = Counter(_lateness_bin(m) for m in messages if m["sent_at"])
    reasons = Counter(_reason(m) for m in messages if m["status"] in {"failed", "expired", "dead_letter", "cancelled"})
    status_counts = Counter(m["status"] for m in messages)
    invariants = document["stats"]["invariants"]
    body = [
        "<h1>Rappel — simulated program report</h1>",
        f"<p>{html.escape(scenario.start.isoformat())} to {html.escape(scenario.until.isoformat())}: "
        f"{len(messages)} reminders, {sum(1 for m in messages if m['sent_at'])} sent, carried by "
        f"{len(document['sends'])} SMS accepted by the provider (reminders for one phone in one send slot share "
        "one SMS). Invariants: "
        f"<strong>{'all hold' if invariants['ok'] else 'VIOLATED'}</strong>.</p>",
        _table(status_counts),
        "<h2>Sends per day by reminder type</h2>",
        _stacked_bars("sends-per-day", days, sends),
        "<h2>Deliveries per day by reminder type</h2>",
        _stacked_bars("deliveries-per-day", days, deliveries),
        "<h2>Send lateness (sent − scheduled)</h2>",
        _bars("lateness", [(label, lateness.get(label, 0)) for _, _, label in LATENESS_BINS]),
        "<h2>Not sent or not delivered, by reason</h2>",
        _bars("failures-by-reason", reasons.most_common(12)),
    ]
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        "svg{background:#fafafa;border:1px solid #ddd}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}.legend span{margin-right:1em}"
    )
    legend = "".join(f'<span style="color:{COLOURS[t]}">■ {t}</span>' for t in TYPES)
    page = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Rappel report</title>"
        f"<style>{style}</style></head><body><div class=legend>{legend}</div>{''.join(body)}</body></html>"
    )
    path.write_text(page, encoding="utf-8")
    return path


def _per_day(messages: list[dict[str, Any]], field: str, days: list[date]) -> dict[date, Counter[str]]:
    out: dict[date, Counter[str]] = defaultdict(Counter)
    for m in messages:
        if m[field]:
            out[parse_iso(m[field]).date()][m["reminder_type"]] += 1
    return {d: out.get(d, Counter()) for d in days}


def _lateness_bin(message: dict[str, Any]) -> str:
    seconds = (parse_iso(message["sent_at"]) - parse_iso(message["scheduled_at"])).total_seconds()
    return next(label for low, high, label in LATENESS_BINS if low <= seconds < high)


def _reason(message: dict[str, Any]) -> str:
    error = (message.get("last_error") or message["status"]).split(":")
    label = f"{message['status']}: {error[1].strip() if len(error) > 1 else error[0]}"
    return label[:60]


def _table(counts: Counter[str]) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in sorted(counts.items()))
    return f"<table id=status-table>{rows}</table>"


def _stacked_bars(chart_id: str, days: list[date], per_day: dict[date, Counter[str]]) -> str:
    width, height, pad = 960, 260, 30
    top = max([sum(c.values()) for c in per_day.values()] + [1])
    step = (width - 2 * pad) / max(len(days), 1)
    bars = []
    for i, day in enumerate(days):
        y = float(height - pad)
        for reminder_type in TYPES:
            n = per_day[day].get(reminder_type, 0)
            if not n:
                continue
            h = (height - 2 * pad) * n / top
            y -= h
            bars.append(
                f'<rect class=bar x="{pad + i * step:.1f}" y="{y:.1f}" width="{max(step - 1, 1):.1f}" '
                f'height="{h:.1f}" fill="{COLOURS[reminder_type]}"><title>{day} {reminder_type}: {n}</title></rect>'
            )
    labels = "".join(
        f'<text x="{pad + i * step:.1f}" y="{height - 8}" font-size="9">{d.strftime("%d/%m")}</text>'
        for i, d in enumerate(days)
        if i % 7 == 0
    )
    axis = f'<text x="2" y="{pad - 8}" font-size="10">max {top}/day</text>'
    return (
        f'<svg class=chart id="{chart_id}" data-bars="{len(bars)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{axis}{"".join(bars)}{labels}</svg>'
    )


def _bars(chart_id: str, items: list[tuple[str, int]]) -> str:
    width, row = 960, 22
    height = max(row * len(items) + 10, 40)
    top = max([n for _, n in items] + [1])
    parts = []
    for i, (label, n) in enumerate(items):
        w = (width - 420) * n / top
        parts.append(
            f'<text x="4" y="{i * row + 16}" font-size="11">{html.escape(label)}</text>'
            f'<rect class=bar x="400" y="{i * row + 4}" width="{w:.1f}" height="{row - 6}" fill="#76b7b2">'
            f"<title>{html.escape(label)}: {n}</title></rect>"
            f'<text x="{404 + w:.1f}" y="{i * row + 16}" font-size="11">{n}</text>'
        )
    return (
        f'<svg class=chart id="{chart_id}" data-bars="{len(items)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{"".join(parts)}</svg>'
    )
