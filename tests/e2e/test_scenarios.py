"""End-to-end scenarios through `rappel simulate`: docs/lifecycle.md's invariants checked on the output of every run.

Each scenario is a small dict (a few patients, a few weeks) run by `simulate()` on moto, the Orange simulator
over HTTP and a virtual clock. `assert_invariants` checks the output twice: through `stats["invariants"]`
(rappel_local.invariants) and by recomputing the key invariants here from `messages` and `sends`, so a bug in
the checker cannot hide one in the pipeline (the last tests break outputs on purpose to show both halves bite).
Fault injection wraps the write functions of dispatch and send (a crash before or after the N-th write), the
simulation's SQS receive (duplicate deliveries), the provider call inside the idempotent function (a concurrent
duplicate), the dispatcher (overlapping runs) and an operator's DLQ redrive (with every copy there twice).
Three scenarios are shipped as ops/rappel_local/scenarios/{dose_given,outage,optout}.json for `rappel simulate`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import json
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import rappel_local.simulate as simulate_module
from core import dispatch, pacing, queue, sending, store
from rappel_local.simulate import simulate
from tests.e2e.conftest import ProviderRequest

pytestmark = pytest.mark.e2e

# ---------------------------------------------------------------------------------------------- builders

ABIDJAN = "Africa/Abidjan"  # UTC+0 all year
NAIROBI = "Africa/Nairobi"  # UTC+3 all year
PARIS = "Europe/Paris"


def phone(n: int) -> str:
    """A valid Côte d'Ivoire mobile number, distinct per n."""
    return f"+22507010203{n:02d}"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def z(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def at_local(day: str, hour: int, zone: str, minute: int = 0) -> datetime:
    """The UTC instant of a local wall time."""
    return datetime.combine(date.fromisoformat(day), time(hour, minute), ZoneInfo(zone)).astimezone(UTC)


def patient_event(
    at: str,
    patient_id: str,
    number: str,
    *,
    zone: str = ABIDJAN,
    language: str = "fr",
    opt_in: bool = True,
    name: str = "Awa",
    preferred_hour: int | None = None,
) -> dict[str, Any]:
    detail: dict[str, Any] = {
        "patient_id": patient_id,
        "phone": number,
        "timezone": zone,
        "language": language,
        "sms_opt_in": opt_in,
        "display_name": name,
    }
    if preferred_hour is not None:
        detail["preferred_hour"] = preferred_hour
    return {"at": at, "type": "PatientUpserted", "detail": detail}


def dose_event(at: str, appointment_id: str, patient_id: str, due: str, vaccine: str = "Penta") -> dict[str, Any]:
    return {
        "at": at,
        "type": "DoseScheduled",
        "detail": {
            "appointment_id": appointment_id,
            "patient_id": patient_id,
            "vaccine": vaccine,
            "dose": 1,
            "due_date": due,
            "clinic": "CSU Abobo",
        },
    }


def administered_event(at: str, appointment_id: str, on: str) -> dict[str, Any]:
    return {"at": at, "type": "DoseAdministered", "detail": {"appointment_id": appointment_id, "administered_on": on}}


def cancelled_event(at: str, appointment_id: str) -> dict[str, Any]:
    return {"at": at, "type": "AppointmentCancelled", "detail": {"appointment_id": appointment_id}}


def scenario(
    start: str,
    until: str,
    events: list[dict[str, Any]],
    *,
    settings: dict[str, Any] | None = None,
    faults: list[dict[str, Any]] | None = None,
    **provider: Any,
) -> dict[str, Any]:
    return {
        "start": start,
        "until": until,
        "settings": {"APP_TIMEZONE": ABIDJAN, **(settings or {})},
        "provider": {
            "name": "orange",
            "latency_ms": 150,
            "receipt_delay_seconds": 20,
            "faults": faults or [],
            **provider,
        },
        "events": events,
    }


def one_patient(due: str, *, zone: str = ABIDJAN, number: int = 1, **kwargs: Any) -> list[dict[str, Any]]:
    """A patient and one dose, announced on 2027-03-01 at 08:00 UTC."""
    return [
        patient_event("2027-03-01T08:00:00Z", f"p{number}", phone(number), zone=zone, **kwargs),
        dose_event("2027-03-01T08:00:00Z", f"a{number}", f"p{number}", due),
    ]


# ---------------------------------------------------------------------------------------------- output helpers


def by_type(out: dict[str, Any], appointment_id: str, due: str | None = None) -> dict[str, dict[str, Any]]:
    """An appointment's messages by reminder type (one due date)."""
    found = {}
    for m in out["messages"]:
        if m["appointment_id"] == appointment_id and (due is None or m["due_date"] == due):
            assert m["reminder_type"] not in found, f"two {m['reminder_type']} for {appointment_id} {due}"
            found[m["reminder_type"]] = m
    return found


def sends_of(out: dict[str, Any], message_id: str) -> list[dict[str, Any]]:
    """The accepted SMS that carried this reminder (a grouped SMS carries several)."""
    return [s for s in out["sends"] if message_id in s["message_ids"]]


def describe(out: dict[str, Any]) -> str:
    """A compact dump for assertion messages."""
    rows = [
        f"{m['message_id'][:12]} {m['appointment_id']} {m['due_date']} {m['reminder_type']:<16} {m['status']:<11}"
        f" sched={m['scheduled_at']} sent={m['sent_at']} attempts={m['attempts']} err={m['last_error']}"
        for m in out["messages"]
    ]
    rows += [f"SEND {s['at']} {s['to']} {str(s['message_id'])[:12]}" for s in out["sends"]]
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------- invariants

SETTLED = {"sent", "delivered", "failed", "cancelled", "expired"}
WITH_ONE_SEND = {"sent", "delivered"}  # a failed message has one send when a receipt failed it, none when refused


@dataclass
class _Timeline:
    """What the clinic said about patients and appointments, in event order (the scenario is the truth)."""

    patients: dict[str, list[tuple[datetime, dict[str, Any]]]] = field(default_factory=lambda: defaultdict(list))
    appointments: dict[str, list[tuple[datetime, str, str]]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def of(cls, scenario_dict: dict[str, Any]) -> _Timeline:
        timeline = cls()
        due_of: dict[str, str] = {}
        for event in sorted(scenario_dict["events"], key=lambda e: utc(e["at"])):
            at, detail = utc(event["at"]), event["detail"]
            if event["type"] == "PatientUpserted":
                timeline.patients[detail["patient_id"]].append((at, detail))
            elif event["type"] == "DoseScheduled":
                due_of[detail["appointment_id"]] = detail["due_date"]
                timeline.appointments[detail["appointment_id"]].append((at, "scheduled", detail["due_date"]))
            elif event["type"] in {"DoseAdministered", "AppointmentCancelled"}:
                aid = detail["appointment_id"]
                timeline.appointments[aid].append((at, event["type"], due_of.get(aid, "")))
        return timeline

    def patient_at(self, patient_id: str, instant: datetime) -> dict[str, Any] | None:
        """The patient as the clinic last described them at or before `instant`."""
        current = None
        for at, detail in self.patients.get(patient_id, []):
            if at <= instant:
                current = detail
        return current

    def appointment_at(self, appointment_id: str, instant: datetime) -> tuple[str, str] | None:
        """(status, due date) of the appointment at `instant`."""
        current = None
        for at, status, due in self.appointments.get(appointment_id, []):
            if at <= instant:
                current = (status, due)
        return current

    def zone_of(self, patient_id: str) -> str:
        details = self.patients.get(patient_id, [])
        return details[-1][1].get("timezone", ABIDJAN) if details else ABIDJAN


def _quiet_hours(scenario_dict: dict[str, Any]) -> tuple[time, time] | None:
    settings = scenario_dict.get("settings", {})
    if str(settings.get("SMS_QUIET_HOURS_ENABLED", "true")).lower() in {"false", "0", "no"}:
        return None
    start = time.fromisoformat(str(settings.get("SMS_QUIET_HOURS_START", "20:00")))
    end = time.fromisoformat(str(settings.get("SMS_QUIET_HOURS_END", "08:00")))
    return None if start == end else (start, end)


def _quiet(wall: time, quiet: tuple[time, time]) -> bool:
    start, end = quiet
    return start <= wall < end if start < end else (wall >= start or wall < end)


def min_gap_seconds(requests: list[ProviderRequest]) -> float:
    """The shortest time between two consecutive provider requests (an open circuit sends one probe at a time)."""
    instants = sorted(r.at for r in requests)
    return min((b - a).total_seconds() for a, b in itertools.pairwise(instants))


def max_per_second(instants: list[datetime]) -> int:
    """The most instants in any window [t, t + 1 s) (recomputed here, not taken from rappel_local)."""
    times = sorted(i.timestamp() for i in instants)
    best = 0
    for i, t in enumerate(times):
        j = i
        while j < len(times) and times[j] < t + 1.0:
            j += 1
        best = max(best, j - i)
    return best


def assert_invariants(
    out: dict[str, Any],
    scenario_dict: dict[str, Any],
    *,
    dead_letters_ok: bool = False,
    handler_errors_ok: bool = False,
) -> None:
    """docs/lifecycle.md's invariants 1-5 on a simulation's output.

    Checked via stats["invariants"] and recomputed independently.
    """
    dump = describe(out)
    checked = out["stats"]["invariants"]
    # The project's own checker first.
    assert checked["ok"], f"{checked['violations']}\n{dump}"
    assert all(not v for v in checked["violations"].values()), checked["violations"]
    if not handler_errors_ok:
        assert out["stats"]["handler_errors"] == 0, dump

    until = utc(scenario_dict["until"])
    timeline = _Timeline.of(scenario_dict)
    settings = scenario_dict.get("settings", {})
    quiet = _quiet_hours(scenario_dict)
    messages = {m["message_id"]: m for m in out["messages"]}
    assert len(messages) == len(out["messages"]), "a message id appears twice in messages"

    _nothing_lost(out, until, dead_letters_ok, dump)
    per_message = _sent_once_each(out, messages, timeline, dump)
    _never_when_stopped(out, messages, timeline, quiet, dump)
    _under_the_rate_limit(out, scenario_dict, settings, checked)
    _never_backwards(out, per_message)


def _nothing_lost(out: dict[str, Any], until: datetime, dead_letters_ok: bool, dump: str) -> None:
    """Invariant 1: settled, or pending/queued with its deadline still ahead."""
    for m in out["messages"]:
        legit_waiting = m["status"] in {"pending", "queued"} and utc(m["deadline"]) > until
        allowed = m["status"] in SETTLED or legit_waiting or (dead_letters_ok and m["status"] == "dead_letter")
        assert allowed, f"{m['message_id']} is {m['status']} (deadline {m['deadline']}, run until {z(until)})\n{dump}"
        assert m["attempts"] >= 0


def _sent_once_each(out: dict[str, Any], messages: dict[str, Any], timeline: _Timeline, dump: str) -> Counter[str]:
    """Invariant 2: every accepted SMS carries known reminders (or is a reply's confirmation, which carries none
    and is its own message), none carried twice; the counts."""
    per_message = Counter(mid for s in out["sends"] for mid in s["message_ids"] or [s["message_id"]])
    assert all(
        s["message_ids"] or messages.get(s["message_id"] or "", {}).get("reminder_type") == "confirmation"
        for s in out["sends"]
    ), f"a provider-accepted send matches no message\n{dump}"
    carried = [(send, messages[mid]) for send in out["sends"] for mid in send["message_ids"]]
    twice = sorted(mid for mid, n in per_message.items() if n > 1)
    assert not twice, f"sent twice: {twice}\n{dump}"
    for mid, m in messages.items():
        n = per_message.get(mid, 0)
        if m["status"] in WITH_ONE_SEND:
            assert n == 1, f"{mid} is {m['status']} but the provider accepted it {n} times\n{dump}"
            assert m["sent_at"] is not None and m["text"]
        elif m["status"] == "failed":
            assert n == (1 if m["sent_at"] else 0), f"{mid} failed, sent_at={m['sent_at']}, {n} sends\n{dump}"
        elif m["status"] == "dead_letter" and (m["last_error"] or "").startswith("ambiguous"):
            assert n <= 1, f"{mid} was dead-lettered after an ambiguous send, yet accepted {n} times\n{dump}"
        else:
            assert n == 0, f"{mid} is {m['status']} yet the provider accepted it\n{dump}"
    for send, m in carried:
        assert send["text"] == m["text"], f"{m['message_id']}: the text sent is not the text recorded"
        patient = timeline.patient_at(m["patient_id"], utc(send["at"]))
        assert patient is not None and send["to"] == patient["phone"], f"sent to the wrong number: {send}"

    return per_message


def _never_when_stopped(
    out: dict[str, Any], messages: dict[str, Any], timeline: _Timeline, quiet: tuple[time, time] | None, dump: str
) -> None:
    """Invariant 3: never to an opted-out number, for a dose given / cancelled / rescheduled, after the deadline,
    in quiet hours."""
    carried = [(send, messages[mid]) for send in out["sends"] for mid in send["message_ids"]]
    for send, m in carried:
        at = utc(send["at"])
        patient = timeline.patient_at(m["patient_id"], at)
        assert patient is not None and patient["sms_opt_in"], f"{m['message_id']} sent at {send['at']} after opt-out"
        appointment = timeline.appointment_at(m["appointment_id"], at)
        assert appointment == ("scheduled", m["due_date"]), (
            f"{m['message_id']} ({m['due_date']}) sent at {send['at']} while the appointment was {appointment}\n{dump}"
        )
        assert at <= utc(m["deadline"]), f"{m['message_id']} sent at {send['at']} after its deadline {m['deadline']}"
        assert at >= utc(m["scheduled_at"]), f"{m['message_id']} sent at {send['at']} before {m['scheduled_at']}"
        if quiet is not None:
            local = at.astimezone(ZoneInfo(timeline.zone_of(m["patient_id"])))
            assert not _quiet(local.time(), quiet), f"{m['message_id']} sent at {local.isoformat()} in quiet hours"
    # Pre-due reminders never on or after the due date (local).
    for m in out["messages"]:
        if m["sent_at"] and m["reminder_type"] not in {"overdue_reminder", "confirmation"}:
            local = utc(m["sent_at"]).astimezone(ZoneInfo(timeline.zone_of(m["patient_id"])))
            assert local.date() < date.fromisoformat(m["due_date"]), f"{m['message_id']} sent on/after the due date"


def _under_the_rate_limit(
    out: dict[str, Any], scenario_dict: dict[str, Any], settings: dict[str, Any], checked: dict[str, Any]
) -> None:
    """Ours, and the provider's when the scenario sets a lower one."""
    limit = float(settings.get("SMS_RATE_LIMIT_PER_SECOND", 5))
    peak = max_per_second([utc(s["at"]) for s in out["sends"]])
    assert peak <= limit, f"{peak} sends in one second (limit {limit})"
    assert checked["max_sends_in_one_second"] == peak
    provider_limit = scenario_dict.get("provider", {}).get("rate_limit_per_second")
    if provider_limit is not None:
        assert peak <= max(1, provider_limit)


def _never_backwards(out: dict[str, Any], per_message: Counter[str]) -> None:
    """Invariants 4 and 5, as far as the output shows: timestamps agree with the status; nothing re-pended."""
    for m in out["messages"]:
        if m["status"] == "delivered":
            assert m["sent_at"] and m["delivered_at"] and m["delivered_at"] >= m["sent_at"], m
        if m["status"] in {"pending", "cancelled", "expired"}:
            assert m["sent_at"] is None and m["delivered_at"] is None, m
        if m["queued_at"] is not None:
            assert m["queued_at"] >= m["scheduled_at"], m
        if m["sent_at"] is not None:
            assert m["queued_at"] is not None and m["sent_at"] >= m["queued_at"], m

    # 5. Nothing silently re-pended: a pending message left in the output has never been sent.
    for m in out["messages"]:
        if m["status"] == "pending":
            assert m["sent_at"] is None and per_message.get(m["message_id"], 0) == 0


# ---------------------------------------------------------------------------------------------- run helpers


def run(scenario_dict: dict[str, Any]) -> dict[str, Any]:
    """Run a scenario through `rappel simulate`'s entry point and return its JSON output."""
    out = simulate(copy.deepcopy(scenario_dict)).as_json()
    json.dumps(out)  # the output must be JSON as printed by `rappel simulate --json`
    return out


# ---------------------------------------------------------------------------------------------- scenarios


def dose_given_scenario() -> dict[str, Any]:
    """scenarios/dose_given.json: a1's dose is given between its 7-day and 1-day reminders; a2 (Paris) never is."""
    due = "2027-03-12"
    events = [
        *one_patient(due),
        *one_patient(due, number=2, zone=PARIS, language="en", name="Kofi"),
        administered_event("2027-03-07T10:00:00Z", "a1", "2027-03-07"),
    ]
    return scenario("2027-03-01T00:00:00Z", "2027-03-16T00:00:00Z", events)


def test_dose_given_between_seven_day_and_one_day_reminders() -> None:
    data = dose_given_scenario()
    out = run(data)
    assert_invariants(out, data)

    given = by_type(out, "a1")
    assert set(given) == {"7_day_reminder", "1_day_reminder", "overdue_reminder"}
    assert given["7_day_reminder"]["status"] == "delivered"
    assert given["1_day_reminder"]["status"] == "cancelled"
    assert given["overdue_reminder"]["status"] == "cancelled"
    assert "administered" in given["1_day_reminder"]["last_error"]
    assert len([s for s in out["sends"] if s["to"] == phone(1)]) == 1
    assert len(sends_of(out, given["7_day_reminder"]["message_id"])) == 1
    # 09:00 local on due - 7, within the first dispatcher minute.
    sent = utc(given["7_day_reminder"]["sent_at"])
    assert at_local("2027-03-05", 9, ABIDJAN) <= sent < at_local("2027-03-05", 9, ABIDJAN, 2)

    # The control patient, never vaccinated, gets all three, each at 09:00 / 14:00 Paris time.
    control = by_type(out, "a2")
    assert {t: m["status"] for t, m in control.items()} == {
        "7_day_reminder": "delivered",
        "1_day_reminder": "delivered",
        "overdue_reminder": "delivered",
    }
    for reminder_type, (day, hour) in {
        "7_day_reminder": ("2027-03-05", 9),
        "1_day_reminder": ("2027-03-11", 9),
        "overdue_reminder": ("2027-03-13", 14),
    }.items():
        local = utc(control[reminder_type]["sent_at"]).astimezone(ZoneInfo(PARIS))
        assert (local.date().isoformat(), local.hour) == (day, hour)
        assert control[reminder_type]["text"] and "Kofi" in control[reminder_type]["text"]


def test_reschedule_and_cancellation() -> None:
    old, new = "2027-03-12", "2027-03-19"
    events = [
        *one_patient(old),
        # a1 moves after its 7-day reminder went out; a2 moves before anything went out.
        dose_event("2027-03-07T10:00:00Z", "a1", "p1", new),
        patient_event("2027-03-01T08:00:00Z", "p2", phone(2), name="Kofi"),
        dose_event("2027-03-01T08:00:00Z", "a2", "p2", old),
        dose_event("2027-03-02T10:00:00Z", "a2", "p2", new),
        # And one appointment cancelled outright after its 7-day reminder.
        dose_event("2027-03-01T08:00:00Z", "a3", "p2", old, vaccine="Polio"),
        cancelled_event("2027-03-08T12:00:00Z", "a3"),
    ]
    data = scenario("2027-03-01T00:00:00Z", "2027-03-22T00:00:00Z", events)
    out = run(data)
    assert_invariants(out, data)

    before = by_type(out, "a1", old)
    assert before["7_day_reminder"]["status"] == "delivered"
    assert utc(before["7_day_reminder"]["sent_at"]) < utc("2027-03-07T10:00:00Z")
    assert before["1_day_reminder"]["status"] == "cancelled"
    assert before["overdue_reminder"]["status"] == "cancelled"
    assert "rescheduled" in before["1_day_reminder"]["last_error"]
    for appointment_id in ("a1", "a2"):
        after = by_type(out, appointment_id, new)
        assert {t: m["status"] for t, m in after.items()} == {
            "7_day_reminder": "delivered",
            "1_day_reminder": "delivered",
            "overdue_reminder": "delivered",
        }
        assert utc(after["1_day_reminder"]["sent_at"]).date() == date(2027, 3, 18)
        # The text is rendered at send time from the appointment as it stands: the new date.
        assert "19" in after["1_day_reminder"]["text"]
    never = by_type(out, "a2", old)
    assert {m["status"] for m in never.values()} == {"cancelled"}
    cancelled = by_type(out, "a3")
    assert cancelled["7_day_reminder"]["status"] == "delivered"
    assert {cancelled["1_day_reminder"]["status"], cancelled["overdue_reminder"]["status"]} == {"cancelled"}
    assert "appointment cancelled" in cancelled["1_day_reminder"]["last_error"]
    assert len([s for s in out["sends"] if s["to"] == phone(1)]) == 4
    assert len([s for s in out["sends"] if s["to"] == phone(2)]) == 4


OPTOUT_AT = "2027-03-08T12:00:00Z"


def optout_scenario() -> dict[str, Any]:
    """scenarios/optout.json: p1 (two doses) opts out after its 7-day reminders went out; p2 stays in."""
    due = "2027-03-12"
    events = [
        *one_patient(due),
        dose_event("2027-03-01T08:00:00Z", "a1b", "p1", "2027-03-10", vaccine="Polio"),
        *one_patient(due, number=2, name="Kofi"),
        patient_event(OPTOUT_AT, "p1", phone(1), opt_in=False),
    ]
    return scenario("2027-03-01T00:00:00Z", "2027-03-16T00:00:00Z", events)


def test_opt_out_midway_stops_everything_after_it() -> None:
    data = optout_scenario()
    out = run(data)
    assert_invariants(out, data)

    mine = [m for m in out["messages"] if m["patient_id"] == "p1"]
    sent = [m for m in mine if m["sent_at"]]
    assert {m["reminder_type"] for m in sent} == {"7_day_reminder"} and len(sent) == 2
    assert all(utc(s["at"]) < utc(OPTOUT_AT) for s in out["sends"] if s["to"] == phone(1))
    later = [m for m in mine if utc(m["scheduled_at"]) > utc(OPTOUT_AT)]
    assert len(later) == 4 and {m["status"] for m in later} == {"cancelled"}
    assert all("opted out" in m["last_error"] for m in later)
    assert {m["status"] for m in out["messages"] if m["patient_id"] == "p2"} == {"delivered"}


SHORT_OUTAGE = (at_local("2027-03-05", 9, ABIDJAN) - timedelta(minutes=1), at_local("2027-03-05", 9, ABIDJAN, 25))
LONG_OUTAGE = (at_local("2027-03-11", 9, ABIDJAN) - timedelta(minutes=1), at_local("2027-03-11", 20, ABIDJAN))


def outage_scenario() -> dict[str, Any]:
    """scenarios/outage.json: Orange answers 503 for 26 minutes at the 7-day reminder, then for 11 hours from the
    1-day reminder's send time, longer than its 10-hour lateness. Retries are raised to 10 so that the deadline,
    not the retry budget, is what ends the second one."""
    faults = [{"from": z(start), "until": z(end), "status": 503} for start, end in (SHORT_OUTAGE, LONG_OUTAGE)]
    return scenario(
        "2027-03-01T00:00:00Z",
        "2027-03-14T00:00:00Z",
        one_patient("2027-03-12"),
        faults=faults,
        settings={"SMS_MAX_RETRIES": 10},
    )


def test_provider_outages_shorter_and_longer_than_the_deadline(provider_requests: list[ProviderRequest]) -> None:
    data = outage_scenario()
    out = run(data)
    assert_invariants(out, data)
    reminders = by_type(out, "a1")

    # Shorter than the 48-hour lateness: sent late, once, after retries; once the circuit opened, the probes
    # (one a minute) burnt no attempt.
    late = reminders["7_day_reminder"]
    assert late["status"] == "delivered" and late["attempts"] > 1, describe(out)
    assert SHORT_OUTAGE[1] <= utc(late["sent_at"]) < utc(late["deadline"])
    assert len(sends_of(out, late["message_id"])) == 1
    before = [r for r in provider_requests if r.at < LONG_OUTAGE[0]]
    assert late["attempts"] <= 3 < len(before)  # SMS_CIRCUIT_FAILURES failures open it; the rest were probes
    assert min_gap_seconds(before[3:]) >= 55

    # Longer than the 1-day reminder's 10 hours: expired, never sent late; probed once a minute to its deadline.
    lost = reminders["1_day_reminder"]
    assert lost["status"] == "expired" and lost["sent_at"] is None, describe(out)
    assert not sends_of(out, lost["message_id"])
    tries = [r for r in provider_requests if LONG_OUTAGE[0] <= r.at < LONG_OUTAGE[1]]
    assert lost["attempts"] < 3 < len(tries) and all(r.status == 503 for r in tries)
    assert min_gap_seconds(tries[3:]) >= 55
    assert max(r.at for r in tries) < utc(lost["deadline"])
    assert utc(lost["deadline"]) < LONG_OUTAGE[1]

    # After the outage, the overdue reminder goes out as planned.
    assert reminders["overdue_reminder"]["status"] == "delivered"


def test_throttled_provider_still_sends_everything_once(provider_requests: list[ProviderRequest]) -> None:
    due = "2027-03-12"
    events = [e for n in range(1, 7) for e in one_patient(due, number=n, name=f"Enfant{n}")]
    # Our limit (4/s over two senders) is above the provider's (1/s): six reminders due at 09:00 at once.
    data = scenario(
        "2027-03-01T00:00:00Z",
        "2027-03-06T00:00:00Z",
        events,
        settings={"SMS_RATE_LIMIT_PER_SECOND": 4, "SMS_SENDER_MAX_CONCURRENCY": 2},
        rate_limit_per_second=1,
    )
    out = run(data)
    assert_invariants(out, data)

    seven = [m for m in out["messages"] if m["reminder_type"] == "7_day_reminder"]
    assert len(seven) == 6 and {m["status"] for m in seven} == {"delivered"}, describe(out)
    assert len(out["sends"]) == 6
    throttled = [r for r in provider_requests if r.status == 429]
    assert throttled, "the provider never throttled: the scenario does not test throttling"
    # Throttling is back-pressure: the refused requests were retried without counting as attempts.
    assert all(m["attempts"] == 1 for m in seven)
    assert len(provider_requests) == 6 + len(throttled)
    assert max_per_second([utc(s["at"]) for s in out["sends"]]) <= 1


def test_failing_numbers_permanent_error_and_undeliverable(provider_requests: list[ProviderRequest]) -> None:
    """p9's number is refused (400 SVC0004), p8's is accepted but never delivered, p2 is the control."""
    due = "2027-03-12"
    faults = [{"to": phone(9), "status": 400, "message_id": "SVC0004"}]
    events = [*one_patient(due, number=9), *one_patient(due, number=8), *one_patient(due, number=2)]
    data = scenario("2027-03-01T00:00:00Z", "2027-03-15T00:00:00Z", events, faults=faults, undeliverable=[phone(8)])
    out = run(data)
    assert_invariants(out, data)

    # Permanent: failed after exactly one request each, nothing accepted.
    refused = by_type(out, "a9")
    assert len(refused) == 3
    for m in refused.values():
        assert m["status"] == "failed" and m["attempts"] == 1 and m["sent_at"] is None, describe(out)
        assert "SVC0004" in m["last_error"]
    assert len([r for r in provider_requests if r.to == phone(9)]) == 3
    assert not [s for s in out["sends"] if s["to"] == phone(9)]

    # Undeliverable: sent once, then failed by its DeliveryImpossible receipt, never sent again.
    undelivered = by_type(out, "a8")
    for m in undelivered.values():
        assert m["status"] == "failed" and m["sent_at"] is not None and m["attempts"] == 1, describe(out)
        assert len(sends_of(out, m["message_id"])) == 1
    assert len([r for r in provider_requests if r.to == phone(8)]) == 3

    assert {m["status"] for m in by_type(out, "a2").values()} == {"delivered"}


@pytest.mark.parametrize("policy", ["assume_sent", "dead_letter"])
def test_ambiguous_timeout_after_send(policy: str, provider_requests: list[ProviderRequest]) -> None:
    due = "2027-03-12"
    seven = at_local("2027-03-05", 9, ABIDJAN)
    faults = [
        {"from": z(seven - timedelta(minutes=1)), "until": z(seven + timedelta(minutes=1)), "timeout": "after_send"}
    ]
    settings = {} if policy == "assume_sent" else {"SMS_ON_AMBIGUOUS_SEND": policy}
    data = scenario("2027-03-01T00:00:00Z", "2027-03-14T00:00:00Z", one_patient(due), faults=faults, settings=settings)
    out = run(data)
    assert_invariants(out, data, dead_letters_ok=policy == "dead_letter")

    m = by_type(out, "a1")["7_day_reminder"]
    window = [r for r in provider_requests if seven - timedelta(minutes=1) <= r.at < seven + timedelta(minutes=1)]
    assert len(window) == 1 and window[0].status is None  # the one request, whose answer never came
    assert len(sends_of(out, m["message_id"])) == 1  # the provider did take it
    if policy == "assume_sent":
        # Recorded as sent and flagged; its receipt, found by the recipient, settles it and teaches us Orange's id.
        assert m["status"] == "delivered" and m["ambiguous"] is True and m["attempts"] == 1, describe(out)
        assert m["provider_message_id"] == sends_of(out, m["message_id"])[0]["provider_message_id"]
    else:
        # Left for an operator: Orange's receipt names only the recipient, which is no proof that this SMS went out.
        assert m["status"] == "dead_letter" and "ambiguous" in m["last_error"], describe(out)
    assert len([r for r in provider_requests if r.to == phone(1)]) == 3  # never resent; the other two went out


def test_no_bundle_window_holds_sending_without_burning_attempts(provider_requests: list[ProviderRequest]) -> None:
    due = "2027-03-12"
    seven = at_local("2027-03-05", 9, ABIDJAN)
    window = (seven - timedelta(minutes=1), seven + timedelta(minutes=70))
    faults = [{"from": z(window[0]), "until": z(window[1]), "status": 403}]
    events = [e for n in range(1, 4) for e in one_patient(due, number=n)]
    data = scenario("2027-03-01T00:00:00Z", "2027-03-07T00:00:00Z", events, faults=faults)
    out = run(data)
    assert_invariants(out, data)

    seven_day = [m for m in out["messages"] if m["reminder_type"] == "7_day_reminder"]
    assert {m["status"] for m in seven_day} == {"delivered"}, describe(out)
    assert all(m["attempts"] == 1 for m in seven_day), "a provider-wide hold burnt a message's attempts"
    assert all(utc(m["sent_at"]) >= window[1] for m in seven_day)
    refused = [r for r in provider_requests if r.status == 403]
    # One probe per 30-minute hold, not one per message and retry.
    assert 1 <= len(refused) <= 3, refused
    assert all(window[0] <= r.at < window[1] for r in refused)


# ---------------------------------------------------------------------------------------------- fault injection

_running = threading.local()


def _track_handlers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Note which Lambda function the simulation is invoking (crashes are injected in dispatch and send only)."""
    original = simulate_module.invoke  # type: ignore[attr-defined]

    def invoke(function: str, event: dict[str, Any]) -> Any:
        _running.function = function
        try:
            return original(function, event)
        finally:
            _running.function = None

    monkeypatch.setattr(simulate_module, "invoke", invoke)


@pytest.fixture
def handler_tracking(monkeypatch: pytest.MonkeyPatch) -> None:
    _track_handlers(monkeypatch)


def _in_dispatch_or_send() -> bool:
    return getattr(_running, "function", None) in {"dispatch_due", "send_sms"}


class InjectedCrash(RuntimeError):
    """A Lambda instance dying between two writes."""


@dataclass
class CrashInjector:
    """Raise at the `nth` call of one write function made by dispatch_due or send_sms, before or after it."""

    point: str
    nth: int
    when: str  # "before": the write never happens; "after": it happens, then the instance dies
    calls: int = 0
    crashed: bool = False

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not _in_dispatch_or_send():
                return function(*args, **kwargs)
            self.calls += 1
            if self.calls != self.nth:
                return function(*args, **kwargs)
            self.crashed = True
            if self.when == "before":
                raise InjectedCrash(f"crash before {self.point} #{self.nth}")
            function(*args, **kwargs)
            raise InjectedCrash(f"crash after {self.point} #{self.nth}")

        return wrapper


@dataclass
class CallCounter:
    """Counts the calls of one write point made by dispatch_due or send_sms (the baseline for choosing N)."""

    calls: int = 0

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if _in_dispatch_or_send():
                self.calls += 1
            return function(*args, **kwargs)

        return wrapper


WRITE_POINTS = ("transition", "enqueue", "put_dead_letter", "send", "bind_to_sms")


def install_at(point: str, wrapper: CrashInjector | CallCounter, monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrap one write point where dispatch and send look it up (module attributes, read at call time)."""
    if point == "transition":
        monkeypatch.setattr(store, "transition", wrapper.wrap(store.transition))
    elif point == "bind_to_sms":
        monkeypatch.setattr(store, "bind_to_sms", wrapper.wrap(store.bind_to_sms))
    elif point == "enqueue":
        monkeypatch.setattr(queue, "enqueue", wrapper.wrap(queue.enqueue))
    elif point == "put_dead_letter":
        monkeypatch.setattr(queue, "put_dead_letter", wrapper.wrap(queue.put_dead_letter))
    elif point == "send":
        # The Powertools-idempotent provider call: "before" dies before the request leaves, "after" once the
        # provider accepted and the idempotency record is saved, but before "sent" is written.
        original = sending._idempotent_send

        def idempotent_send(settings: Any) -> Any:
            idempotent = original(settings)
            return dataclasses.replace(idempotent, send_once=wrapper.wrap(idempotent.send_once))

        idempotent_send.cache_clear = original.cache_clear  # type: ignore[attr-defined]
        monkeypatch.setattr(sending, "_idempotent_send", idempotent_send)
    else:
        raise ValueError(point)


def crash_scenario() -> dict[str, Any]:
    """Small but with every write path: sends, a receipt, cancellations, retries and dead letters.

    p1 gets its three reminders; p2's dose is given after its 7-day reminder; every request to p3's number
    fails with 503, so with one retry allowed each of its reminders is dead-lettered (DLQ copy + status write).
    p1 and p2 share a zone and due date, so their reminders travel in one batch.
    """
    due = "2027-03-08"
    events = [
        *one_patient(due, number=1),
        *one_patient(due, number=2, name="Kofi"),
        *one_patient(due, number=3, zone=PARIS, name="Fatou"),
        administered_event("2027-03-03T12:00:00Z", "a2", "2027-03-03"),
    ]
    return scenario(
        "2027-02-28T00:00:00Z",
        "2027-03-10T12:00:00Z",
        events,
        faults=[{"to": phone(3), "status": 503}],
        settings={"SMS_MAX_RETRIES": 1},
    )


def _summary(out: dict[str, Any]) -> dict[str, tuple[str, int, int]]:
    """Each message's outcome, its recorded attempts, and how often the provider accepted it.

    `sent` and `delivered` count as one outcome: when a crash falls between the provider's acceptance and our
    "sent" write, the delivery receipt can arrive before we know the provider's id for the message; it is then
    answered 200 and counted as unknown (docs/providers.md#delivery-receipts), and the message stays `sent`.
    """
    outcome = {"delivered": "sent"}
    return {
        m["message_id"]: (outcome.get(m["status"], m["status"]), m["attempts"], len(sends_of(out, m["message_id"])))
        for m in out["messages"]
    }


@pytest.fixture(scope="module")
def crash_baseline() -> dict[str, Any]:
    """The crash scenario without a crash, and how often dispatch and send call each write point."""
    monkeypatch = pytest.MonkeyPatch()
    try:
        _track_handlers(monkeypatch)
        counters = {point: CallCounter() for point in WRITE_POINTS}
        for point, counter in counters.items():
            install_at(point, counter, monkeypatch)
        data = crash_scenario()
        out = run(data)
    finally:
        monkeypatch.undo()
    assert_invariants(out, data, dead_letters_ok=True)
    return {"out": out, "calls": {p: c.calls for p, c in counters.items()}}


def test_crash_baseline(crash_baseline: dict[str, Any]) -> None:
    """Without a crash: what every crash run must end with, and enough calls at each point to crash at."""
    out, calls = crash_baseline["out"], crash_baseline["calls"]
    assert {m["status"] for m in by_type(out, "a1").values()} == {"delivered"}
    a2 = by_type(out, "a2")
    assert a2["7_day_reminder"]["status"] == "delivered"
    assert {a2["1_day_reminder"]["status"], a2["overdue_reminder"]["status"]} == {"cancelled"}
    # Dead-lettered; those whose deadline passed before `until` were then expired by the dispatcher.
    a3 = by_type(out, "a3")
    assert {m["status"] for m in a3.values()} == {"dead_letter", "expired"}
    assert all(m["status"] == "dead_letter" or "dead letter not redriven" in m["last_error"] for m in a3.values())
    # The N values of CRASHES below must stay within what the scenario does.
    assert all(calls[point] >= max((n for p, _, n in CRASHES if p == point), default=0) for point in WRITE_POINTS)


# The gaps between two writes in the baseline's first days whose recovery differs, in the order of the run. No
# counter is written on these paths (tally_changes counts from the streams), so a crash right after a status write
# is the handler dying with that write made.
CRASHES = [
    ("transition", "before", 1),  # enqueued, not claimed: the sender claims the record that reaches it first
    ("transition", "after", 1),  # enqueued and claimed, the dispatcher dies right after
    ("enqueue", "after", 2),  # enqueued, the dispatcher dies before claiming: the sender claims it
    ("send", "before", 2),  # the request never leaves
    ("transition", "before", 2),  # the provider answered 503, the retry is not recorded
    ("transition", "after", 2),  # retry recorded (pending, attempts + 1), the record is redelivered
    ("put_dead_letter", "before", 1),  # retries exhausted: neither the DLQ copy nor the status written
    ("put_dead_letter", "after", 1),  # DLQ copy written, status not
    ("transition", "after", 4),  # dead_letter written, the record is redelivered
    ("transition", "after", 5),  # between the two claims of one dispatcher run
    ("enqueue", "before", 4),  # neither enqueued nor claimed: pending and due for the next run
    ("send", "before", 3),  # first record of a two-record batch, before its request
    ("send", "after", 3),  # the provider accepted, "sent" not written: the idempotency record must replay
    ("transition", "after", 7),  # sent written, the record is redelivered
    ("send", "after", 4),  # the second record of the batch accepted, not recorded
]


@pytest.mark.parametrize(("point", "when", "nth"), CRASHES, ids=[f"{p}-{w}-{n}" for p, w, n in CRASHES])
def test_crash_between_writes_loses_nothing_and_sends_nothing_twice(
    point: str,
    when: str,
    nth: int,
    crash_baseline: dict[str, Any],
    handler_tracking: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    injector = CrashInjector(point, nth, when)
    install_at(point, injector, monkeypatch)
    data = crash_scenario()
    out = run(data)
    assert injector.crashed, f"the run made only {injector.calls} {point} calls"
    assert_invariants(out, data, dead_letters_ok=True, handler_errors_ok=True)
    # Recovered by itself: every message ends as it does without the crash, sent exactly as often.
    assert _summary(out) == _summary(crash_baseline["out"]), describe(out)


def test_duplicate_sqs_deliveries_send_nothing_twice(
    crash_baseline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQS is at-least-once: every batch is delivered a second time, to the next sender instance."""
    duplicated = deliver_every_batch_twice(monkeypatch)
    data = crash_scenario()
    out = run(data)
    assert duplicated, "no batch was delivered twice"
    assert_invariants(out, data, dead_letters_ok=True)
    assert _summary(out) == _summary(crash_baseline["out"]), describe(out)


def deliver_every_batch_twice(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the simulator's event source deliver each batch a second time, to the next sender instance; returns
    the SQS message ids delivered again (filled as the run goes)."""
    original = simulate_module._receive_together
    held: list[list[dict[str, Any]]] = []
    duplicated: list[str] = []

    def receive(sqs: Any, settings: Any) -> list[dict[str, Any]]:
        if held:
            batch = held.pop()
            duplicated.extend(m["MessageId"] for m in batch)
            return batch
        (batch,) = original(sqs, settings, 1)
        if batch:
            held.append(copy.deepcopy(batch))
        return batch

    def receive_together(sqs: Any, settings: Any, pollers: int) -> list[list[dict[str, Any]]]:
        return [receive(sqs, settings) for _ in range(pollers)]

    monkeypatch.setattr(simulate_module, "_receive_together", receive_together)
    return duplicated


def test_concurrent_duplicate_inside_the_provider_call_is_refused(
    crash_baseline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worst duplicate: a second copy of a record is processed while the first is inside the provider call.

    It passes every status check (the message is still `queued`, same version) and reaches the idempotent function
    with the same (message_id, attempt) key while the first holds the in-progress record: Powertools must refuse it.
    """
    from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError

    real_provider_for = sending.provider_for  # type: ignore[attr-defined]
    refused: list[str] = []
    got_through: list[str] = []
    nested = {"active": False}

    class DuplicatingProvider:
        def __init__(self, settings: Any, name: str | None = None) -> None:
            self._settings = settings
            self._real = real_provider_for(settings, name)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._real, name)

        def send(self, *, to: str, text: str, message_id: str, before_request: Any, **limits: Any) -> Any:
            if not nested["active"]:
                nested["active"] = True
                try:
                    message = store.get_message(message_id)
                    assert message is not None and message.status == "queued"
                    item = queue.QueuedMessage(message_id, int(message.version))
                    outcome = sending.send_queued(item, self._settings, pacing.Pacer())
                    got_through.append(f"{message_id}: {outcome}")
                except IdempotencyAlreadyInProgressError:
                    refused.append(message_id)
                finally:
                    nested["active"] = False
            return self._real.send(to=to, text=text, message_id=message_id, before_request=before_request, **limits)

    monkeypatch.setattr(sending, "provider_for", DuplicatingProvider)
    data = crash_scenario()
    out = run(data)
    assert not got_through, got_through
    assert len(refused) == crash_baseline["calls"]["send"]
    assert_invariants(out, data, dead_letters_ok=True)
    assert _summary(out) == _summary(crash_baseline["out"]), describe(out)


def test_overlapping_dispatchers_claim_each_message_once(
    crash_baseline: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two dispatcher runs per tick, and inside the first, a whole second run between its query and its claims."""
    original_invoke = simulate_module.invoke  # type: ignore[attr-defined]
    original_claim = dispatch._claim
    interleaved = {"runs": 0, "inside": False}

    def claim(message: Any, now: datetime, settings: Any) -> str:
        if not interleaved["inside"]:
            interleaved["inside"] = True
            try:
                dispatch.dispatch_due(settings)  # the overlapping run: reads, claims and enqueues first
                interleaved["runs"] += 1
            finally:
                interleaved["inside"] = False
        return original_claim(message, now, settings)

    def invoke(function: str, event: dict[str, Any]) -> Any:
        result = original_invoke(function, event)
        if function == "dispatch_due":
            result = original_invoke(function, event)
        return result

    monkeypatch.setattr(dispatch, "_claim", claim)
    monkeypatch.setattr(simulate_module, "invoke", invoke)
    data = crash_scenario()
    out = run(data)
    assert interleaved["runs"] > 0
    assert_invariants(out, data, dead_letters_ok=True)
    assert _summary(out) == _summary(crash_baseline["out"]), describe(out)


def test_operator_redrive_sends_each_dead_letter_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries exhausted during an outage, then `rappel redrive` after it, with every DLQ copy there twice."""
    import boto3

    from core import clock
    from core.settings import load_settings

    seven = at_local("2027-03-05", 9, ABIDJAN)
    redrive_at = seven + timedelta(hours=3)
    events = [
        *one_patient("2027-03-12"),
        # Nothing else happens at redrive time: a clinic event wakes the simulation then.
        patient_event(z(redrive_at), "p2", phone(2), name="Kofi"),
    ]
    faults = [{"from": z(seven - timedelta(minutes=1)), "until": z(seven + timedelta(hours=1)), "status": 503}]
    data = scenario(
        "2027-03-01T00:00:00Z", "2027-03-07T00:00:00Z", events, faults=faults, settings={"SMS_MAX_RETRIES": 1}
    )
    original = simulate_module.invoke  # type: ignore[attr-defined]
    redriven: list[Any] = []

    def invoke(function: str, event: dict[str, Any]) -> Any:
        if function == "plan_reminders" and not redriven and clock.now() >= redrive_at:
            settings = load_settings()
            sqs = boto3.client("sqs", region_name=settings.AWS_REGION)
            copies = sqs.receive_message(
                QueueUrl=settings.DEAD_LETTER_QUEUE_URL, MaxNumberOfMessages=10, VisibilityTimeout=0
            ).get("Messages", [])
            assert len(copies) == 1
            sqs.send_message(QueueUrl=settings.DEAD_LETTER_QUEUE_URL, MessageBody=copies[0]["Body"])
            redriven.append(queue.redrive(settings))
        return original(function, event)

    monkeypatch.setattr(simulate_module, "invoke", invoke)
    out = run(data)
    assert redriven, "the redrive never ran"
    assert_invariants(out, data)
    m = by_type(out, "a1")["7_day_reminder"]
    assert m["status"] == "delivered" and m["attempts"] == 3, describe(out)  # two failed, one after the redrive
    assert redrive_at <= utc(m["sent_at"]) < redrive_at + timedelta(minutes=2)
    assert len(sends_of(out, m["message_id"])) == 1


@pytest.mark.parametrize(
    ("name", "build"),
    [("dose_given", dose_given_scenario), ("outage", outage_scenario), ("optout", optout_scenario)],
)
def test_shipped_scenario_files_are_the_tested_ones(name: str, build: Callable[[], dict[str, Any]]) -> None:
    """ops/rappel_local/scenarios/<name>.json, for `rappel simulate`, is exactly what the test above runs."""
    from pathlib import Path

    import rappel_local

    path = Path(rappel_local.__file__).parent / "scenarios" / f"{name}.json"
    assert json.loads(path.read_text(encoding="utf-8")) == build()


def test_crash_after_acceptance_then_dose_given_before_redelivery(
    handler_tracking: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seven = at_local("2027-03-05", 9, ABIDJAN)
    events = [*one_patient("2027-03-12"), administered_event(z(seven + timedelta(minutes=5)), "a1", "2027-03-05")]
    data = scenario("2027-03-01T00:00:00Z", "2027-03-07T00:00:00Z", events)
    injector = CrashInjector("send", 1, "after")
    install_at("send", injector, monkeypatch)
    out = run(data)
    assert injector.crashed
    sends = [s for s in out["sends"] if s["to"] == phone(1)]
    assert len(sends) == 1 and utc(sends[0]["at"]) < seven + timedelta(minutes=5)  # once, before the dose: fine
    m = by_type(out, "a1")["7_day_reminder"]
    assert m["status"] in {"sent", "delivered"}, describe(out)  # it went out before the dose was given
    assert_invariants(out, data, handler_errors_ok=True)


# ---------------------------------------------------------------------------------------------- the checkers


def _break(out: dict[str, Any], how: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    broken = copy.deepcopy(out)
    how(broken)
    return broken


def _message(out: dict[str, Any], appointment_id: str, reminder_type: str) -> dict[str, Any]:
    return by_type(out, appointment_id)[reminder_type]


def _send_of(out: dict[str, Any], appointment_id: str, reminder_type: str) -> dict[str, Any]:
    return sends_of(out, _message(out, appointment_id, reminder_type)["message_id"])[0]


def _resend(out: dict[str, Any]) -> None:
    out["sends"].append(dict(_send_of(out, "a1", "1_day_reminder")))


def _send_late(out: dict[str, Any]) -> None:
    m = _message(out, "a1", "1_day_reminder")
    _send_of(out, "a1", "1_day_reminder")["at"] = z(utc(m["deadline"]) + timedelta(minutes=1))


def _send_at_night(out: dict[str, Any]) -> None:
    _send_of(out, "a1", "7_day_reminder")["at"] = z(at_local("2027-03-01", 21, ABIDJAN))


def _send_after_dose_given(out: dict[str, Any]) -> None:
    m = _message(out, "a2", "1_day_reminder")
    m.update(status="sent", sent_at=m["scheduled_at"], queued_at=m["scheduled_at"], text="Rappel")
    out["sends"].append({"at": m["scheduled_at"], "to": phone(2), "text": "Rappel", "message_id": m["message_id"],
                         "message_ids": [m["message_id"]], "provider_message_id": "x"})  # fmt: skip


def _lose(out: dict[str, Any]) -> None:
    _message(out, "a3", "7_day_reminder")["status"] = "pending"


def _record_as_cancelled(out: dict[str, Any]) -> None:
    _message(out, "a1", "overdue_reminder").update(status="cancelled", sent_at=None, delivered_at=None)


@pytest.mark.parametrize(
    ("how", "caught_by"),
    [
        (_resend, "sent twice"),
        (_send_late, "after its deadline"),
        (_send_at_night, "quiet hours"),
        (_send_after_dose_given, "while the appointment was"),
        (_lose, "is pending"),
        (_record_as_cancelled, "yet the provider accepted it"),
    ],
    ids=lambda v: getattr(v, "__name__", v),
)
def test_assert_invariants_catches_what_it_claims_to(
    how: Callable[[dict[str, Any]], None], caught_by: str, crash_baseline: dict[str, Any]
) -> None:
    """The independent half of `assert_invariants` on outputs broken on purpose (stats["invariants"] left ok)."""
    broken = _break(crash_baseline["out"], how)
    with pytest.raises(AssertionError, match=caught_by):
        assert_invariants(broken, crash_scenario(), dead_letters_ok=True)


def test_check_invariants_stops_the_old_dates_reminders_at_a_reschedule() -> None:
    """rappel_local.invariants: a send of an old due date's reminder after the reschedule is a violation."""
    from core.settings import build_settings
    from rappel_local.invariants import check_invariants
    from rappel_local.scenario import load_scenario

    events = [*one_patient("2027-03-12"), dose_event("2027-03-07T10:00:00Z", "a1", "p1", "2027-03-19")]
    data = scenario("2027-03-01T00:00:00Z", "2027-03-22T00:00:00Z", events)
    old = {"message_id": "m-old", "patient_id": "p1", "appointment_id": "a1", "due_date": "2027-03-12",
           "reminder_type": "1_day_reminder", "status": "sent", "deadline": "2027-03-11T19:00:00.000Z",
           "timezone": ABIDJAN}  # fmt: skip
    before = {"at": "2027-03-05T09:00:00.000Z", "to": phone(1), "text": "t", "message_id": "m-old"}
    after = {**before, "at": "2027-03-11T09:00:00.000Z"}
    settings = build_settings()
    for send, expected in ((before, []), (after, ["m-old"])):
        result = check_invariants(load_scenario(data), settings, [old], [send])
        assert result["violations"]["sent_after_stop"] == expected


def test_the_dispatcher_runs_on_whole_minutes_and_only_when_something_is_due(monkeypatch: pytest.MonkeyPatch) -> None:
    """The virtual clock skips idle dispatcher runs, but never one that had work, and never runs off the minute."""
    from core import clock

    events = [
        *one_patient("2027-03-10"),
        *one_patient("2027-03-12", number=2),
        # Clinic events between the reminders wake the clock at odd seconds: no dispatcher run may follow them.
        patient_event("2027-03-04T10:17:33Z", "p3", phone(3), name="Awa"),
        administered_event("2027-03-11T12:00:07Z", "a2", "2027-03-11"),
    ]
    data = scenario("2027-03-01T00:00:00Z", "2027-03-14T00:00:00Z", events)
    original = simulate_module.invoke  # type: ignore[attr-defined]
    runs: list[tuple[datetime, dict[str, Any]]] = []

    def invoke(function: str, event: dict[str, Any]) -> Any:
        result = original(function, event)
        if function == "dispatch_due":
            runs.append((clock.now(), result))
        return result

    monkeypatch.setattr(simulate_module, "invoke", invoke)
    out = run(data)
    assert_invariants(out, data)
    assert runs, "the dispatcher never ran"
    assert all(at.second == 0 and at.microsecond == 0 for at, _ in runs), [at for at, _ in runs]
    assert all(result["claimed"] or result["expired"] or result["held"] for _, result in runs), runs
    sent = [m for m in out["messages"] if m["sent_at"]]
    assert len(runs) >= len({m["queued_at"] for m in sent}) > 0
