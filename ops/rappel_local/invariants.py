"""The invariants of docs/lifecycle.md, checked on a simulation's output.

This is what e2e tests, the demo and the bench assert.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from core.store import parse_iso
from core.timing import in_quiet_hours

if TYPE_CHECKING:
    from core.settings import Settings
    from rappel_local.scenario import Scenario

SETTLED = {"sent", "delivered", "failed", "cancelled", "expired"}


def check_invariants(
    scenario: Scenario, settings: Settings, messages: list[dict[str, Any]], sends: list[dict[str, Any]]
) -> dict[str, Any]:
    """Each invariant's violations (empty lists when it holds) and the figures they rest on."""
    until = scenario.until
    stops = _stop_times(scenario)
    by_id = {m["message_id"]: m for m in messages}
    violations: dict[str, list[str]] = {
        "lost": [],
        "sent_twice": [],
        "unattributed_sends": [],
        "sent_after_stop": [],
        "sent_after_deadline": [],
        "sent_in_quiet_hours": [],
        "rate_limit_exceeded": [],
    }
    for m in messages:
        settled = m["status"] in SETTLED
        waiting = m["status"] in {"pending", "queued"} and parse_iso(m["deadline"]) > until
        if not (settled or waiting or m["status"] == "dead_letter"):
            violations["lost"].append(f"{m['message_id']} is {m['status']} past its deadline")
    counts = Counter(s["message_id"] for s in sends if s["message_id"])
    violations["sent_twice"] = sorted(mid for mid, n in counts.items() if n > 1)
    violations["unattributed_sends"] = [s["provider_message_id"] for s in sends if not s["message_id"]]
    for send in sends:
        message = by_id.get(send["message_id"] or "")
        if message is None:
            continue
        at = parse_iso(send["at"])
        stop = min(
            (
                t
                for key, t in stops.items()
                if key
                in {
                    ("patient", message["patient_id"]),
                    ("appointment", message["appointment_id"]),
                    ("due_date", f"{message['appointment_id']}|{message.get('due_date')}"),
                }
            ),
            default=None,
        )
        if stop is not None and at >= stop:
            violations["sent_after_stop"].append(send["message_id"])
        if at > parse_iso(message["deadline"]):
            violations["sent_after_deadline"].append(send["message_id"])
        if message["timezone"] and in_quiet_hours(at, ZoneInfo(message["timezone"]), settings.quiet_hours):
            violations["sent_in_quiet_hours"].append(send["message_id"])
    peak = max_in_one_second([parse_iso(s["at"]) for s in sends])
    if peak > settings.SMS_RATE_LIMIT_PER_SECOND:
        violations["rate_limit_exceeded"].append(f"{peak} sends in one second")
    return {
        "ok": not any(violations.values()),
        "violations": violations,
        "max_sends_in_one_second": peak,
        "rate_limit_per_second": settings.SMS_RATE_LIMIT_PER_SECOND,
        "dead_letters": sum(1 for m in messages if m["status"] == "dead_letter"),
    }


def _stop_times(scenario: Scenario) -> dict[tuple[str, str], datetime]:
    """When sending must stop for a patient (opt-out) or an appointment (dose given, cancelled, rescheduled)."""
    stops: dict[tuple[str, str], datetime] = {}
    due_of: dict[str, str] = {}
    for event in sorted(scenario.events, key=lambda e: e.at):
        detail = event.detail
        if event.type == "PatientUpserted" and detail.get("sms_opt_in") is False:
            stops.setdefault(("patient", str(detail.get("patient_id"))), event.at)
        elif event.type in {"DoseAdministered", "AppointmentCancelled"}:
            stops.setdefault(("appointment", str(detail.get("appointment_id"))), event.at)
        elif event.type == "DoseScheduled":
            # A reschedule (same appointment, new due date) stops the reminders of the old date.
            appointment_id, due = str(detail.get("appointment_id")), str(detail.get("due_date"))
            previous = due_of.get(appointment_id)
            if previous is not None and previous != due:
                stops.setdefault(("due_date", f"{appointment_id}|{previous}"), event.at)
            due_of[appointment_id] = due
    return stops


def max_in_one_second(instants: list[datetime]) -> int:
    """The most sends in any sliding one-second window [t, t + 1 s)."""
    times = sorted(t.astimezone(UTC).timestamp() for t in instants)
    best, left = 0, 0
    for right, t in enumerate(times):
        while times[left] <= t - 1.0:
            left += 1
        best = max(best, right - left + 1)
    return best
