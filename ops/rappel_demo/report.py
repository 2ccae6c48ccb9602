"""The demo's self-contained HTML report: hand-written inline SVG charts, no scripts, nothing fetched.

Every chart has its axes (values and a label) and its legend next to it; numbers are drawn only where they fit
(inside a bar when it is wide enough, else beside it); reminder types, statuses and reasons are named in words.
"""

from __future__ import annotations

import html
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.followup import families_in
from core.store import parse_iso

if TYPE_CHECKING:
    from rappel_local.scenario import Scenario

TYPES = ("7_day_reminder", "1_day_reminder", "overdue_reminder")
TYPE_LABELS = {"7_day_reminder": "7 days before", "1_day_reminder": "1 day before", "overdue_reminder": "1 day after"}
COLOURS = {"7_day_reminder": "#4e79a7", "1_day_reminder": "#f28e2b", "overdue_reminder": "#b07aa1"}
SMS_COLOUR = "#222222"
STATUS_LABELS = {
    "pending": "waiting",
    "queued": "being sent",
    "sent": "sent, no receipt yet",
    "delivered": "delivered",
    "failed": "not delivered",
    "dead_letter": "gave up after retries",
    "expired": "not sent in time",
    "cancelled": "cancelled",
}
OUTCOME_FIGURES = (
    ("given_by_due_date", "given by the due date", "#59a14f"),
    ("given_later", "given later", "#edc948"),
    ("not_given", "not given", "#e15759"),
)
OUTCOME_GROUPS = (("reached", "reached (a reminder delivered)"), ("not_reached", "not reached"))
LATENESS_BINS = (
    (0, 60, "< 1 min"),
    (60, 300, "1-5 min"),
    (300, 900, "5-15 min"),
    (900, 3600, "15-60 min"),
    (3600, 4 * 3600, "1-4 h"),
    (4 * 3600, 24 * 3600, "4-24 h"),
    (24 * 3600, float("inf"), "> 24 h"),
)
WIDTH = 960
FONT = 12  # px, the charts' text
CHAR = 0.62  # a character's width in em, rounded up for the widest fonts a browser may pick (DejaVu Sans)
STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222;line-height:1.4}"
    "h2{margin-top:2em;border-bottom:1px solid #ddd}figure{margin:0 0 1.5em}figcaption{color:#555;margin:.3em 0}"
    "svg{display:block;max-width:100%;height:auto;background:#fcfcfc;border:1px solid #e4e4e4}"
    "svg text{font:12px system-ui,sans-serif}"
    "svg .axis-label{font-weight:600}svg .axis{stroke:#888}svg .grid{stroke:#e8e8e8}"
    ".legend{display:flex;flex-wrap:wrap;gap:.4em 1.4em;margin:.3em 0}.legend span{white-space:nowrap}"
    ".swatch{display:inline-block;width:.9em;height:.9em;margin-right:.35em;vertical-align:-.1em;border-radius:2px}"
    "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 10px}"
    "td.n,th.n{text-align:right}th{background:#f4f4f4;text-align:left}"
    ".cards{display:flex;flex-wrap:wrap;gap:.8em}.card{border:1px solid #ddd;border-radius:6px;padding:.5em .9em;"
    "min-width:9em}.card b{display:block;font-size:1.5em}.empty{color:#666;font-style:italic}"
    "#follow-ups{width:100%}#follow-ups tr.clinic th{background:#e9eef5;padding-top:.5em}.when{white-space:nowrap}"
)


def write_report(document: dict[str, Any], scenario: Scenario, path: Path) -> Path:
    """Write the report for a simulation's output; returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    messages = document["messages"]
    days = [scenario.start.date() + timedelta(days=n) for n in range((scenario.until - scenario.start).days + 1)]
    body = [
        "<h1>Rappel — simulated program report</h1>",
        _headline(document, scenario),
        "<h2>Reminders by type and status</h2>",
        _status_table(messages),
        "<h2>Did the reminders work?</h2>",
        _outcomes(document["stats"].get("outcomes")),
        "<h2>Families to call, by clinic</h2>",
        follow_up_section(document.get("follow_ups")),
        "<h2>Reminders sent and SMS per day</h2>",
        _sms_vs_reminders(messages, document["sends"], days),
        "<h2>Reminders delivered per day</h2>",
        _delivered_per_day(messages, days),
        "<h2>How late reminders went out</h2>",
        _lateness(messages),
        "<h2>Reminders not sent or not delivered, and why</h2>",
        _reasons(messages),
    ]
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Rappel report</title>"
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>"
    )
    path.write_text(page, encoding="utf-8")
    return path


def type_label(reminder_type: str) -> str:
    """A reminder type as people say it ("7 days before")."""
    return TYPE_LABELS.get(reminder_type, reminder_type.replace("_", " "))


def reason_in_words(message: dict[str, Any]) -> str:
    """Why a reminder was not sent or not delivered, in words."""
    status, error = str(message["status"]), str(message.get("last_error") or "")
    detail = error.removeprefix("cancelled at send time: ").removeprefix("cancelled: ")
    if status == "failed":
        if not error:
            return "not delivered: the phone could not be reached"
        if error.startswith("text"):
            return "not sent: the text could not be composed"
        return f"refused by the SMS provider ({_code(error)})"
    if status == "dead_letter":
        return "gave up: sending kept failing"
    if status == "expired":
        if error.startswith("superseded"):
            return "not sent: a later reminder of the same dose went instead"
        if "next try" in error:
            return "not sent in time: the provider kept failing until the deadline"
        return "not sent in time: the deadline passed"
    if status == "cancelled":
        return f"cancelled: {_CANCELLED.get(detail, detail or 'no longer wanted')}"
    return STATUS_LABELS.get(status, status)


_CANCELLED = {
    "appointment administered": "the dose was given",
    "appointment cancelled": "the appointment was cancelled",
    "rescheduled": "the appointment was moved",
    "opted out": "the family opted out of SMS",
    "opted out (the number is stopped)": "the family opted out of SMS",
    "patient unknown": "no usable phone",
}


def _code(error: str) -> str:
    """The provider's code in an error such as "permanent SVC0004: ..." (or the first words)."""
    words = error.split(":")[0].split()
    return words[-1] if words else error[:30]


def _headline(document: dict[str, Any], scenario: Scenario) -> str:
    messages, sends = document["messages"], document["sends"]
    sent = sum(1 for m in messages if m["sent_at"])
    delivered = sum(1 for m in messages if m["status"] == "delivered")
    invariants = document["stats"]["invariants"]
    follow_ups = document.get("follow_ups")
    cards = [
        ("reminders planned", str(len(messages))),
        ("reminders sent", str(sent)),
        ("SMS sent", str(len(sends))),
        ("reminders per SMS", f"{sent / len(sends):.2f}" if sends else "-"),
        ("reminders delivered", f"{delivered / sent:.1%}" if sent else "-"),  # 99.5% is not 100%
        ("families to call", str(families_in(follow_ups)) if follow_ups is not None else "not recorded"),
    ]
    period = f"{scenario.start:%d %b %Y} to {scenario.until:%d %b %Y}"
    return (
        f"<p>{html.escape(period)}. A reminder is one message about one dose; an SMS is what a phone receives, and "
        "it carries every reminder due for that phone in one send slot (siblings, several vaccines). Invariants: "
        f"<strong>{'all hold' if invariants['ok'] else 'VIOLATED'}</strong>.</p><div class=cards>"
        + "".join(f"<div class=card><b>{html.escape(v)}</b>{html.escape(k)}</div>" for k, v in cards)
        + "</div>"
    )


def _status_table(messages: list[dict[str, Any]]) -> str:
    counts = Counter((m["reminder_type"], m["status"]) for m in messages)
    statuses = [s for s in STATUS_LABELS if any(status == s for _, status in counts)]
    head = "".join(f"<th class=n>{html.escape(STATUS_LABELS[s])}</th>" for s in statuses)
    rows = []
    for reminder_type in TYPES:
        cells = "".join(f"<td class=n>{counts.get((reminder_type, s), 0)}</td>" for s in statuses)
        total = sum(counts.get((reminder_type, s), 0) for s in statuses)
        rows.append(f"<tr><th>{type_label(reminder_type)}</th>{cells}<td class=n>{total}</td></tr>")
    return f"<table id=status-table><tr><th>reminder</th>{head}<th class=n>total</th></tr>{''.join(rows)}</table>"


# --- the charts ------------------------------------------------------------------------------------------------


def text_width(text: str, size: int = FONT) -> float:
    """A generous estimate of a text's drawn width in px."""
    return len(text) * size * CHAR


def nice_ticks(top: float, most: int = 5) -> list[float]:
    """0 and round steps (1, 2, 5 × 10^k) up to at least `top`, at most `most` + 1 of them."""
    top = max(top, 1)
    raw = top / most
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    step = max(step, 1)
    return [step * i for i in range(math.ceil(top / step) + 1)]


@dataclass(frozen=True)
class Frame:
    """A chart's plotting area inside its SVG, and the SVG's size."""

    height: int
    left: float
    right: float = 24
    top: float = 12
    bottom: float = 46

    @property
    def inner_width(self) -> float:
        return WIDTH - self.left - self.right

    @property
    def inner_height(self) -> float:
        return self.height - self.top - self.bottom

    @property
    def base(self) -> float:
        return self.height - self.bottom


def _svg(chart_id: str, frame: Frame, marks: int, parts: Iterable[str], description: str) -> str:
    return (
        f'<svg class=chart id="{chart_id}" data-bars="{marks}" width="{WIDTH}" height="{frame.height}" '
        f'viewBox="0 0 {WIDTH} {frame.height}" role=img aria-label="{html.escape(description)}">{"".join(parts)}</svg>'
    )


def _axis_labels(frame: Frame, x_label: str, y_label: str) -> list[str]:
    middle_y = frame.top + frame.inner_height / 2
    return [
        f'<text class=axis-label data-axis=x x="{frame.left + frame.inner_width / 2:.1f}" y="{frame.height - 8}" '
        f"text-anchor=middle>{html.escape(x_label)}</text>",
        f'<text class=axis-label data-axis=y x="16" y="{middle_y:.1f}" text-anchor=middle '
        f'transform="rotate(-90 16 {middle_y:.1f})">{html.escape(y_label)}</text>',
    ]


def _value_axis_y(frame: Frame, ticks: list[float]) -> list[str]:
    """The vertical value axis: grid lines and tick values."""
    parts = []
    for tick in ticks:
        y = frame.base - frame.inner_height * tick / ticks[-1]
        parts.append(
            f'<line class=grid x1="{frame.left}" x2="{WIDTH - frame.right}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class=tick data-axis=y x="{frame.left - 6}" y="{y + 4:.1f}" text-anchor=end>{tick:g}</text>'
        )
    parts.append(f'<line class=axis x1="{frame.left}" x2="{frame.left}" y1="{frame.top}" y2="{frame.base}"/>')
    parts.append(f'<line class=axis x1="{frame.left}" x2="{WIDTH - frame.right}" y1="{frame.base}" y2="{frame.base}"/>')
    return parts


def _value_axis_x(frame: Frame, ticks: list[float], suffix: str = "") -> list[str]:
    """The horizontal value axis (horizontal bar charts): grid lines and tick values."""
    parts = []
    for tick in ticks:
        x = frame.left + frame.inner_width * tick / ticks[-1]
        parts.append(
            f'<line class=grid x1="{x:.1f}" x2="{x:.1f}" y1="{frame.top}" y2="{frame.base}"/>'
            f'<text class=tick data-axis=x x="{x:.1f}" y="{frame.base + 16}" text-anchor=middle>{tick:g}{suffix}</text>'
        )
    parts.append(f'<line class=axis x1="{frame.left}" x2="{frame.left}" y1="{frame.top}" y2="{frame.base}"/>')
    parts.append(f'<line class=axis x1="{frame.left}" x2="{WIDTH - frame.right}" y1="{frame.base}" y2="{frame.base}"/>')
    return parts


def _legend(items: Iterable[tuple[str, str]], chart_id: str) -> str:
    spans = "".join(
        f'<span><i class=swatch style="background:{colour}"></i>{html.escape(label)}</span>' for label, colour in items
    )
    return f'<div class=legend data-chart="{chart_id}">{spans}</div>'


def _figure(legend: str, svg: str, caption: str) -> str:
    return f"<figure>{legend}{svg}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _per_day(messages: list[dict[str, Any]], field: str, days: list[date]) -> dict[date, Counter[str]]:
    out: dict[date, Counter[str]] = defaultdict(Counter)
    for m in messages:
        if m[field]:
            out[parse_iso(m[field]).date()][m["reminder_type"]] += 1
    return {d: out.get(d, Counter()) for d in days}


def _day_ticks(frame: Frame, days: list[date], step: float) -> list[str]:
    every = max(1, math.ceil(text_width("00 Mar") / step) + 1)
    every = 7 if every <= 7 else every
    return [
        f'<text class=tick data-axis=x x="{frame.left + (i + 0.5) * step:.1f}" y="{frame.base + 16}" '
        f"text-anchor=middle>{day:%d %b}</text>"
        for i, day in enumerate(days)
        if i % every == 0
    ]


def _stacked_days(
    chart_id: str, days: list[date], per_day: dict[date, Counter[str]], line: dict[date, int] | None = None
) -> tuple[Frame, list[str], int]:
    """Bars per day stacked by reminder type (and a line of another count per day); the total above each bar
    when it fits the bar's width."""
    top = max([sum(c.values()) for c in per_day.values()] + list((line or {}).values()) + [1])
    ticks = nice_ticks(top)
    frame = Frame(height=300, left=56 + text_width(f"{ticks[-1]:g}"), top=22)
    step = frame.inner_width / max(len(days), 1)
    parts = [*_value_axis_y(frame, ticks), *_day_ticks(frame, days, step)]
    scale = frame.inner_height / ticks[-1]
    bars = 0
    for i, day in enumerate(days):
        x, y = frame.left + i * step, frame.base
        for reminder_type in TYPES:
            n = per_day[day].get(reminder_type, 0)
            if n:
                y -= n * scale
                bars += 1
                parts.append(
                    f'<rect class=bar x="{x + 1:.1f}" y="{y:.1f}" width="{max(step - 2, 1):.1f}" '
                    f'height="{n * scale:.1f}" fill="{COLOURS[reminder_type]}">'
                    f"<title>{day:%d %b}, {type_label(reminder_type)}: {n}</title></rect>"
                )
        total = sum(per_day[day].values())
        if total and text_width(str(total), 10) + 4 <= step and line is None:  # room to tell neighbours apart
            parts.append(
                f'<text class=value x="{x + step / 2:.1f}" y="{y - 3:.1f}" text-anchor=middle '
                f'style="font-size:10px">{total}</text>'
            )
    if line is not None:
        parts += _day_line(frame, days, step, scale, line)
    return frame, parts, bars


def _day_line(frame: Frame, days: list[date], step: float, scale: float, line: dict[date, int]) -> list[str]:
    points = [(frame.left + (i + 0.5) * step, frame.base - line.get(day, 0) * scale) for i, day in enumerate(days)]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{SMS_COLOUR}"><title>{day:%d %b}, SMS: {line.get(day, 0)}'
        "</title></circle>"
        for (x, y), day in zip(points, days, strict=True)
        if line.get(day, 0)
    )
    return [f'<polyline class=line points="{path}" fill=none stroke="{SMS_COLOUR}" stroke-width="1.5"/>', dots]


def _type_legend() -> list[tuple[str, str]]:
    return [(f"reminder {type_label(t)}", COLOURS[t]) for t in TYPES]


def _sms_vs_reminders(messages: list[dict[str, Any]], sends: list[dict[str, Any]], days: list[date]) -> str:
    reminders = _per_day(messages, "sent_at", days)
    sms = Counter(parse_iso(s["at"]).date() for s in sends)
    frame, parts, bars = _stacked_days("sms-vs-reminders", days, reminders, line=dict(sms))
    parts += _axis_labels(frame, "day", "per day")
    legend = _legend([*_type_legend(), ("SMS sent (line)", SMS_COLOUR)], "sms-vs-reminders")
    svg = _svg("sms-vs-reminders", frame, bars, parts, "reminders sent per day by type, and SMS sent per day")
    return _figure(
        legend,
        svg,
        f"{sum(sum(c.values()) for c in reminders.values())} reminders went out in {len(sends)} SMS: the line "
        "under the bars is what one SMS for several reminders saves.",
    )


def _delivered_per_day(messages: list[dict[str, Any]], days: list[date]) -> str:
    frame, parts, bars = _stacked_days("deliveries-per-day", days, _per_day(messages, "delivered_at", days))
    parts += _axis_labels(frame, "day", "reminders delivered")
    svg = _svg("deliveries-per-day", frame, bars, parts, "reminders delivered per day by type")
    return _figure(_legend(_type_legend(), "deliveries-per-day"), svg, "By the day the delivery receipt came.")


def _lateness(messages: list[dict[str, Any]]) -> str:
    counts = Counter(_lateness_bin(m) for m in messages if m["sent_at"])
    items = [(label, counts.get(label, 0)) for _, _, label in LATENESS_BINS]
    ticks = nice_ticks(max(n for _, n in items))
    frame = Frame(height=260, left=56 + text_width(f"{ticks[-1]:g}"), top=24)
    step = frame.inner_width / len(items)
    scale = frame.inner_height / ticks[-1]
    parts = _value_axis_y(frame, ticks)
    for i, (label, n) in enumerate(items):
        x, h = frame.left + i * step, n * scale
        parts.append(
            f'<rect class=bar x="{x + step * 0.15:.1f}" y="{frame.base - h:.1f}" width="{step * 0.7:.1f}" '
            f'height="{h:.1f}" fill="#76b7b2"><title>{label}: {n}</title></rect>'
            f'<text class=value x="{x + step / 2:.1f}" y="{frame.base - h - 4:.1f}" text-anchor=middle>{n}</text>'
            f'<text class=tick data-axis=x x="{x + step / 2:.1f}" y="{frame.base + 16}" text-anchor=middle>'
            f"{html.escape(label)}</text>"
        )
    parts += _axis_labels(frame, "sent after its scheduled time by", "reminders")
    svg = _svg("lateness", frame, len(items), parts, "how late reminders were sent")
    return _figure("", svg, "Late sends come from quiet hours, the provider's rate limit and the outage.")


def _lateness_bin(message: dict[str, Any]) -> str:
    seconds = (parse_iso(message["sent_at"]) - parse_iso(message["scheduled_at"])).total_seconds()
    return next(label for low, high, label in LATENESS_BINS if low <= seconds < high)


def _horizontal_bars(
    chart_id: str, items: list[tuple[str, int]], x_label: str, y_label: str, colour: str = "#76b7b2"
) -> str:
    """One bar per item with its label on the left and its number inside the bar (or beside it if narrow)."""
    row = 26
    ticks = nice_ticks(max([n for _, n in items] + [1]))
    longest = max(text_width(label) for label, _ in items)
    frame = Frame(height=row * len(items) + 12 + 50, left=34 + longest + 10, right=30 + text_width(f"{ticks[-1]:g}"))
    scale = frame.inner_width / ticks[-1]
    parts = _value_axis_x(frame, ticks)
    for i, (label, n) in enumerate(items):
        y, w = frame.top + i * row, n * scale
        parts.append(
            f'<text class=tick data-axis=y x="{frame.left - 8}" y="{y + row / 2 + 4:.1f}" text-anchor=end>'
            f"{html.escape(label)}</text>"
            f'<rect class=bar x="{frame.left}" y="{y + 3:.1f}" width="{w:.1f}" height="{row - 6}" fill="{colour}">'
            f"<title>{html.escape(label)}: {n}</title></rect>{_bar_number(frame.left, y, w, row, n)}"
        )
    parts += _axis_labels(frame, x_label, y_label)
    return _svg(chart_id, frame, len(items), parts, f"{y_label} by {x_label}")


def _bar_number(left: float, y: float, w: float, row: int, n: int, fill: str = "#fff") -> str:
    """A bar's number inside its end when it fits, else just past it."""
    fits = text_width(str(n)) + 8 <= w
    x, anchor, colour = (left + w - 4, "end", fill) if fits else (left + w + 4, "start", "#222")
    return (
        f'<text class=value data-inside="{str(fits).lower()}" x="{x:.1f}" y="{y + row / 2 + 4:.1f}" '
        f'text-anchor={anchor} fill="{colour}">{n}</text>'
    )


def _reasons(messages: list[dict[str, Any]]) -> str:
    ended = ("failed", "expired", "dead_letter", "cancelled")
    reasons = Counter(reason_in_words(m) for m in messages if m["status"] in ended).most_common(12)
    if not reasons:
        return '<p class=empty id="failures-by-reason">Every reminder was sent and delivered.</p>'
    svg = _horizontal_bars("failures-by-reason", reasons, "reminders", "reason")
    return _figure(
        "", svg, "Cancelled reminders are mostly good news: the dose was given or the appointment moved before."
    )


def _outcomes(outcomes: dict[str, Any] | None) -> str:
    if not outcomes or not any((outcomes.get(g) or {}).get("appointments") for g, _ in OUTCOME_GROUPS):
        return (
            '<p class=empty id="outcomes-empty">Outcomes not recorded: this run\'s output has no appointment '
            "outcomes yet (given by the due date, later, or not at all).</p>"
        )
    frame = Frame(height=2 * 44 + 12 + 50, left=34 + text_width(OUTCOME_GROUPS[0][1]) + 10, right=36)
    parts = _value_axis_x(frame, [0, 25, 50, 75, 100], "%")
    for i, (group, label) in enumerate(OUTCOME_GROUPS):
        figures = outcomes.get(group) or {}
        total = int(figures.get("appointments") or 0)
        y, x = frame.top + i * 44, frame.left
        parts.append(
            f'<text class=tick data-axis=y x="{frame.left - 8}" y="{y + 20:.1f}" text-anchor=end>{html.escape(label)}'
            f'</text><text class=note x="{frame.left - 8}" y="{y + 36:.1f}" text-anchor=end fill="#555">'
            f"{total} appointments</text>"
        )
        for key, name, colour in OUTCOME_FIGURES:
            n = int(figures.get(key) or 0)
            w = frame.inner_width * n / total if total else 0
            if w:
                parts.append(
                    f'<rect class=bar x="{x:.1f}" y="{y + 6:.1f}" width="{w:.1f}" height="30" fill="{colour}">'
                    f"<title>{html.escape(label)}, {name}: {n} of {total}</title></rect>"
                )
                if text_width(str(n)) + 8 <= w:
                    parts.append(
                        f'<text class=value data-inside=true x="{x + w / 2:.1f}" y="{y + 25:.1f}" '
                        f"text-anchor=middle>{n}</text>"
                    )
            x += w
    parts += _axis_labels(frame, "share of the group's appointments", "family")
    svg = _svg("outcomes", frame, 2, parts, "appointments given by the due date, later or not, reached or not")
    legend = _legend([(name, colour) for _, name, colour in OUTCOME_FIGURES], "outcomes")
    return _figure(legend, svg, "Reached: at least one reminder for the appointment was delivered.")


def follow_up_section(follow_ups: list[dict[str, Any]] | None) -> str:
    """The families to call, by clinic: a row per open appointment, each family counted once."""
    if follow_ups is None:
        return '<p class=empty id="follow-ups-empty">Follow-ups not recorded in this run\'s output.</p>'
    if not follow_ups:
        return (
            '<p class=empty id="follow-ups-empty">No follow-up: no family with an overdue dose went without a '
            "delivered reminder.</p>"
        )
    by_clinic: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in follow_ups:
        by_clinic[row.get("clinic") or "no clinic named"].append(row)
    sections = []
    for clinic, rows in sorted(by_clinic.items()):
        lines = "".join(
            f"<tr><td>{html.escape(str(r['patient_id']))}</td><td>{html.escape(str(r['appointment_id']))}</td>"
            f"<td>{'<br>'.join(html.escape(_words(x)) for x in r.get('reasons') or [])}</td>"
            f"<td class=when>{html.escape(_when(r.get('at')))}</td></tr>"
            for r in sorted(rows, key=lambda r: str(r.get("at")))
        )
        sections.append(
            f"<tr class=clinic><th colspan=4>{html.escape(clinic)} — {families_in(rows)} to call</th></tr>{lines}"
        )
    return (
        f"<p>{families_in(follow_ups)} families with an overdue dose that no reminder reached, by clinic.</p>"
        "<table id=follow-ups><tr><th>patient</th><th>appointment</th><th>why no reminder reached them</th>"
        f"<th>open since</th></tr>{''.join(sections)}</table>"
    )


def _words(reason: str) -> str:
    for raw, label in TYPE_LABELS.items():
        reason = reason.replace(raw, label)
    return reason.replace("_", " ")


def _when(at: Any) -> str:
    return f"{parse_iso(at):%d %b %Y %H:%M}" if at else "-"
