"""`rappel demo` (what `make run` runs): a synthetic program simulated end to end, a summary and an HTML report."""

from __future__ import annotations

import random
import statistics as pystats
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from core.followup import families_in
from core.settings import sender_concurrency_within
from core.store import parse_iso
from core.texts import count_segments
from rappel_cli.importer import row_events
from rappel_demo.register import generate_register
from rappel_demo.report import type_label, write_report
from rappel_local.embedded import quiet_logs
from rappel_local.scenario import load_scenario
from rappel_local.simulate import Simulation

START = date(2027, 3, 1)


@dataclass(frozen=True)
class DemoSummary:
    """The headline figures of a demo run."""

    messages: int
    reminders_sent: int
    sends: int
    by_type: dict[str, dict[str, int]]
    delivery_rate: float | None
    lateness_p50: float | None
    lateness_p95: float | None
    segments_per_sms: float | None
    invariants_ok: bool
    invariants: dict[str, Any]
    report: Path
    outcomes: dict[str, Any] | None = None  # stats.outcomes of the simulation, when it records them
    follow_ups: list[dict[str, Any]] | None = None  # the open follow-ups (families to call), when recorded


def build_scenario(children: int, days: int, seed: int, rate: float) -> dict[str, Any]:
    """A program's register as clinic events, with the life of a real program: doses given, reschedules,
    opt-outs, numbers that fail or cannot be reached, and one provider outage."""
    rng = random.Random(seed)
    rows = generate_register(children, seed=seed, start=START, days=days)
    begin = datetime.combine(START, time(6, 0), tzinfo=UTC)
    until = datetime.combine(START + timedelta(days=days + 4), time(0, 0), tzinfo=UTC)
    events: list[dict[str, Any]] = []
    seen: set[str] = set()
    failing: list[dict[str, Any]] = []
    undeliverable: list[str] = []
    for row in rows:
        patient, dose = row_events(row.to_csv())
        if row.patient_id not in seen:
            seen.add(row.patient_id)
            events.append({"at": begin.isoformat(), "type": "PatientUpserted", "detail": patient})
            draw = rng.random()
            if draw < 0.01:
                failing.append({"to": row.phone, "status": 400, "message_id": "SVC0004"})
            elif draw < 0.02:
                undeliverable.append(row.phone)
            elif draw < 0.05:  # a family that opts out by SMS reply partway through
                at = begin + timedelta(days=rng.uniform(1, days))
                events.append(
                    {"at": at.isoformat(), "type": "PatientUpserted", "detail": {**patient, "sms_opt_in": False}}
                )
        events.append({"at": begin.isoformat(), "type": "DoseScheduled", "detail": dose})
        due = row.due_date if isinstance(row.due_date, date) else date.fromisoformat(row.due_date)
        fate = rng.random()
        if fate < 0.7:  # given on the day: the overdue reminder must not go out
            at = datetime.combine(due, time(11, 0), tzinfo=UTC) + timedelta(hours=rng.uniform(-2, 5))
            events.append(
                {
                    "at": at.isoformat(),
                    "type": "DoseAdministered",
                    "detail": {"appointment_id": row.appointment_id, "administered_on": due.isoformat()},
                }
            )
        elif fate < 0.8:  # rescheduled a week later, announced five days before the original date
            at = datetime.combine(due - timedelta(days=5), time(10, 0), tzinfo=UTC)
            moved = {**dose, "due_date": (due + timedelta(days=7)).isoformat()}
            events.append(
                {"at": max(at, begin + timedelta(minutes=1)).isoformat(), "type": "DoseScheduled", "detail": moved}
            )
    outage_start = datetime.combine(START + timedelta(days=min(10, days // 2)), time(8, 30), tzinfo=UTC)
    faults = [
        {"from": outage_start.isoformat(), "until": (outage_start + timedelta(hours=3)).isoformat(), "status": 503},
        *failing,
    ]
    return {
        "start": begin.isoformat(),
        "until": until.isoformat(),
        "seed": seed,
        "settings": {
            "APP_TIMEZONE": "Africa/Abidjan",
            "SMS_RATE_LIMIT_PER_SECOND": str(rate),
            "SMS_SENDER_MAX_CONCURRENCY": str(sender_concurrency_within(rate)),
        },
        "provider": {
            "name": "orange",
            "latency_ms": 150,
            "receipt_delay_seconds": 20,
            "faults": faults,
            "undeliverable": undeliverable,
        },
        "events": sorted(events, key=lambda e: e["at"]),
    }


def run_demo(*, children: int, days: int, seed: int, rate: float, report_path: Path, console: Console) -> DemoSummary:
    """Build, simulate, summarise, write the report."""
    scenario = load_scenario(build_scenario(children, days, seed, rate))
    console.print(
        f"Rappel demo: {children} children, {days} days from {START}, provider limit {rate:g} SMS/s, "
        f"{len(scenario.events)} clinic events"
    )
    with Progress(
        TextColumn("[bold]simulating"),
        BarColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("", total=(scenario.until - scenario.start).total_seconds())

        def advance(start: datetime, now: datetime, until: datetime) -> None:
            progress.update(task, completed=(now - start).total_seconds(), description=now.strftime("%Y-%m-%d %H:%M"))

        with quiet_logs():
            result = Simulation(scenario, progress=advance).run()
    document = result.as_json()
    summary = summarise(document, write_report(document, scenario, report_path))
    _print(summary, console)
    return summary


def summarise(document: dict[str, Any], report: Path) -> DemoSummary:
    """The headline figures from a simulation's output."""
    messages, sends = document["messages"], document["sends"]
    sent = [m for m in messages if m["sent_at"]]
    lateness = sorted((parse_iso(m["sent_at"]) - parse_iso(m["scheduled_at"])).total_seconds() for m in sent)
    delivered = sum(1 for m in messages if m["status"] == "delivered")
    failed_after_send = sum(1 for m in sent if m["status"] == "failed")
    segments = [count_segments(s["text"]) for s in sends]
    return DemoSummary(
        messages=len(messages),
        reminders_sent=len(sent),
        sends=len(sends),
        by_type=document["stats"]["by_type"],
        delivery_rate=delivered / (delivered + failed_after_send) if delivered + failed_after_send else None,
        lateness_p50=_percentile(lateness, 0.5),
        lateness_p95=_percentile(lateness, 0.95),
        segments_per_sms=pystats.fmean(segments) if segments else None,
        invariants_ok=bool(document["stats"]["invariants"]["ok"]),
        invariants=document["stats"]["invariants"],
        report=report,
        outcomes=document["stats"].get("outcomes"),
        follow_ups=document.get("follow_ups"),
    )


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, round(fraction * (len(values) - 1)))]


def _print(summary: DemoSummary, console: Console) -> None:
    statuses = sorted({s for counts in summary.by_type.values() for s in counts})
    table = Table(title="Reminders by type and status")
    table.add_column("reminder")
    for status in statuses:
        table.add_column(status, justify="right")
    for reminder_type, counts in sorted(summary.by_type.items()):
        table.add_row(type_label(reminder_type), *(str(counts.get(s, 0)) for s in statuses))
    console.print(table)
    rate = f"{summary.delivery_rate:.1%}" if summary.delivery_rate is not None else "-"
    p50 = f"{summary.lateness_p50:.0f} s" if summary.lateness_p50 is not None else "-"
    p95 = f"{summary.lateness_p95:.0f} s" if summary.lateness_p95 is not None else "-"
    seg = f"{summary.segments_per_sms:.2f}" if summary.segments_per_sms is not None else "-"
    per_reminder = f"{summary.sends / summary.reminders_sent:.2f}" if summary.reminders_sent else "-"
    console.print(
        f"Reminders sent: {summary.reminders_sent}; SMS accepted by the provider: {summary.sends} "
        f"({per_reminder} SMS per reminder: siblings and per-vaccine bookings share one SMS)"
    )
    console.print(f"Delivery rate {rate}; send lateness p50 {p50}, p95 {p95}; segments per SMS {seg}")
    checks = Counter({name: len(v) for name, v in summary.invariants["violations"].items()})
    for name, violations in sorted(checks.items()):
        mark = Text("ok", "green") if violations == 0 else Text(f"{violations} violation(s)", "red")
        console.print(Text.assemble(f"  invariant {name.replace('_', ' ')}: ", mark))
    console.print(
        f"  peak sends in one second: {summary.invariants['max_sends_in_one_second']} "
        f"(limit {summary.invariants['rate_limit_per_second']:g})"
    )
    _print_outcomes(summary, console)
    console.print(f"Report: {summary.report.resolve()}")


def _print_outcomes(summary: DemoSummary, console: Console) -> None:
    """Did the reminders work, and which families to call: what the report shows, in two lines and a table."""
    groups = summary.outcomes or {}
    if not any((groups.get(g) or {}).get("appointments") for g in ("reached", "not_reached")):
        console.print("Outcomes: not recorded in this run's output")
    else:
        table = Table(title="Appointments by family reached (a reminder delivered) or not")
        for column in ("family", "appointments", "given by the due date", "given later", "not given"):
            table.add_column(column, justify="left" if column == "family" else "right")
        for group, label in (("reached", "reached"), ("not_reached", "not reached")):
            row = groups.get(group) or {}
            n = int(row.get("appointments") or 0)
            cells = [f"{row.get(k, 0)} ({row.get(k, 0) / n:.0%})" if n else "0" for k in _OUTCOME_KEYS]
            table.add_row(label, str(n), *cells)
        console.print(table)
    if summary.follow_ups is None:
        console.print("Families to call: not recorded in this run's output")
        return
    console.print(families_line(summary.follow_ups))


def families_line(follow_ups: list[dict[str, Any]]) -> str:
    """The console's line of families to call, by clinic (a family once, however many appointments it has open)."""
    by_clinic: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in follow_ups:
        by_clinic[str(row.get("clinic") or "no clinic named")].append(row)
    where = ", ".join(f"{clinic} {families_in(rows)}" for clinic, rows in sorted(by_clinic.items()))
    listed = f" ({where}; listed in the report)" if where else ""
    return f"Families to call: {families_in(follow_ups)}{listed}"


_OUTCOME_KEYS = ("given_by_due_date", "given_later", "not_given")
