"""The invariants of docs/lifecycle.md, checked on a simulation's output.

This is what e2e tests, the demo and the bench assert.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from core.phone import InvalidPhoneNumber, normalize_phone
from core.replies import Intent, match_keyword
from core.store import parse_iso
from core.timing import in_quiet_hours
from core.wanted import CONFIRMATION
from rappel_local.scenario import INBOUND_EVENT, OPERATOR_EVENTS

if TYPE_CHECKING:
    from core.settings import Settings
    from rappel_local.scenario import Scenario, ScenarioEvent

SETTLED = {"sent", "delivered", "failed", "cancelled", "expired"}


def check_invariants(
    scenario: Scenario,
    settings: Settings,
    messages: list[dict[str, Any]],
    sends: list[dict[str, Any]],
    not_applied: Collection[int] = (),
    counted: Mapping[str, float] | None = None,
    receipts_refused: int = 0,
) -> dict[str, Any]:
    """Each invariant's violations (empty lists when it holds) and the figures they rest on.

    `not_applied`: the ids (`id()`) of scenario events the pipeline refused or ignored; they change nothing, so
    they neither stop nor plan anything here. `counted`: the statistics counters' totals by name over the run (as
    tallied from the streams), checked against the messages. `receipts_refused`: the gateways' receipts that
    `delivery_receipt` did not answer 2xx (a crash, a refusal): neither gateway sends one again, so each is lost.
    """
    until = scenario.until
    # An event at or after `until` never ran (the run stops there): counted, it would stand for the appointment's
    # last schedule and hide what the ones before it called for.
    events = [e for e in sorted(scenario.events, key=lambda e: e.at) if id(e) not in not_applied and e.at < until]
    stops = _stop_times(events, settings)
    history = _History.of(events, settings)
    by_id = {m["message_id"]: m for m in messages}
    violations: dict[str, list[str]] = {
        "lost": [],
        "sent_twice": [],
        "status_disagrees_with_sends": [],
        "unattributed_sends": [],
        "sent_after_stop": [],
        "sent_after_deadline": [],
        "sent_in_quiet_hours": [],
        "rate_limit_exceeded": [],
        "sent_to_wrong_family": [],
        "missing": _missing(events, messages, stops, history, until),
        "counters_disagree": _counter_disagreements(messages, counted) if counted is not None else [],
        "receipts_refused": [f"{receipts_refused} delivery receipts were not answered 2xx"] if receipts_refused else [],
    }
    for m in messages:
        settled = m["status"] in SETTLED
        # A dead letter waits for a redrive until its deadline; past it, the dispatcher must have expired it,
        # unless its text is recorded (an ambiguous send that may have gone out waits for an operator).
        waiting = m["status"] in {"pending", "queued", "dead_letter"} and parse_iso(m["deadline"]) > until
        if not (settled or waiting or (m["status"] == "dead_letter" and m["text"])):
            violations["lost"].append(f"{m['message_id']} is {m['status']} past its deadline")
    # A reminder is carried by at most one accepted SMS (an SMS may carry several reminders).
    counts = Counter(mid for s in sends for mid in _carried(s))
    violations["sent_twice"] = sorted(mid for mid, n in counts.items() if n > 1)
    violations["status_disagrees_with_sends"] = [
        f"{m['message_id']} is {m['status']}, carried by {counts.get(m['message_id'], 0)} accepted SMS"
        for m in messages
        if not _status_agrees(m, counts.get(m["message_id"], 0))
    ]
    violations["unattributed_sends"] = [s["provider_message_id"] for s in sends if not _carried(s)]
    for send in sends:
        at = parse_iso(send["at"])
        for message_id in _carried(send):
            message = by_id.get(message_id)
            if message is None:
                continue
            for name in _send_violations(message, send, at, stops, history, settings):
                violations[name].append(message_id)
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


def _status_agrees(message: dict[str, Any], sends: int) -> bool:
    """Whether a message's status agrees with how many accepted SMS carried it: `sent` and `delivered` one (an
    ambiguous send none or one: the request may have been lost), `failed` one if it was sent (a failure receipt)
    else none, a dead letter after an ambiguous send at most one, and every other status none."""
    status, ambiguous = (
        message["status"],
        message.get("ambiguous") or (message.get("last_error") or "").startswith("ambiguous"),
    )
    if status in {"sent", "delivered"}:
        return sends <= 1 if ambiguous else sends == 1
    if status == "failed":
        return sends == (1 if message["sent_at"] else 0) or (ambiguous and sends <= 1)
    if status == "dead_letter" and ambiguous:
        return sends <= 1
    return sends == 0


def _carried(send: dict[str, Any]) -> list[str]:
    return list(send.get("message_ids") or ([send["message_id"]] if send.get("message_id") else []))


def _send_violations(
    message: dict[str, Any],
    send: dict[str, Any],
    at: datetime,
    stops: dict[_StopKey, list[tuple[datetime, bool]]],
    history: _History,
    settings: Settings,
) -> list[str]:
    """The invariants one reminder's send breaks. A reply's confirmation goes to the number that replied, stopped or
    not, and is about no appointment: only its deadline and quiet hours apply."""
    out = []
    if message["reminder_type"] == CONFIRMATION:
        return _timing_violations(message, at, history, settings)
    stop = _stop_for(stops, history, message["patient_id"], message["appointment_id"], message.get("due_date"), at)
    if stop is not None and at >= stop:
        out.append("sent_after_stop")
    out += _timing_violations(message, at, history, settings)
    owner = history.owner(message["appointment_id"], at)
    phone = history.phone(owner, at) if owner else None
    if owner is not None and (owner != message["patient_id"] or (phone is not None and phone != send["to"])):
        out.append("sent_to_wrong_family")
    return out


def _timing_violations(message: dict[str, Any], at: datetime, history: _History, settings: Settings) -> list[str]:
    out = []
    if at > parse_iso(message["deadline"]):
        out.append("sent_after_deadline")
    # The zone the patient had when the SMS went out, not the final one.
    zone = history.zone(message["patient_id"], at) or message["timezone"]
    if zone and in_quiet_hours(at, ZoneInfo(zone), settings.quiet_hours):
        out.append("sent_in_quiet_hours")
    return out


@dataclass
class _History:
    """What the accepted events said, over time: whose an appointment is, and each patient's phone and zone."""

    owners: dict[str, list[tuple[datetime, str]]] = field(default_factory=dict)
    phones: dict[str, list[tuple[datetime, str]]] = field(default_factory=dict)
    zones: dict[str, list[tuple[datetime, str]]] = field(default_factory=dict)
    due_dates: dict[str, list[tuple[datetime, str]]] = field(default_factory=dict)

    @classmethod
    def of(cls, events: list[ScenarioEvent], settings: Settings) -> _History:
        history = cls()
        for event in events:
            detail = event.detail
            if event.type == "DoseScheduled":
                appointment_id = str(detail.get("appointment_id"))
                history.owners.setdefault(appointment_id, []).append((event.at, str(detail.get("patient_id"))))
                history.due_dates.setdefault(appointment_id, []).append((event.at, str(detail.get("due_date"))))
            elif event.type == "PatientUpserted":
                patient_id = str(detail.get("patient_id"))
                phone = _e164(detail.get("phone"), settings)
                if phone is not None:
                    history.phones.setdefault(patient_id, []).append((event.at, phone))
                zone = detail.get("timezone") or settings.APP_TIMEZONE
                history.zones.setdefault(patient_id, []).append((event.at, str(zone)))
        return history

    @staticmethod
    def _at(timeline: list[tuple[datetime, str]] | None, at: datetime) -> str | None:
        if not timeline:
            return None
        i = bisect_right([t for t, _ in timeline], at)
        return timeline[i - 1][1] if i else None

    def owner(self, appointment_id: str, at: datetime) -> str | None:
        return self._at(self.owners.get(appointment_id), at)

    def phone(self, patient_id: str, at: datetime) -> str | None:
        return self._at(self.phones.get(patient_id), at)

    def zone(self, patient_id: str, at: datetime) -> str | None:
        return self._at(self.zones.get(patient_id), at)

    def patients_with_phone(self, phone: str) -> set[str]:
        return {p for p, timeline in self.phones.items() if any(number == phone for _, number in timeline)}


def _e164(raw: Any, settings: Settings) -> str | None:
    try:
        return normalize_phone(str(raw), settings.SMS_DEFAULT_REGION)
    except InvalidPhoneNumber:
        return None


# A key of `_stop_times`: ("patient", id), ("number", E.164), ("appointment", id), ("due_date", "id|date").
_StopKey = tuple[str, str]


def _stop_times(events: list[ScenarioEvent], settings: Settings) -> dict[_StopKey, list[tuple[datetime, bool]]]:
    """When sending must stop (True) or may resume (False) for a patient (opt-out / in), a number (operator
    stop / explicit opt-in, or a family's reply with a keyword, from a number some patient has), an appointment
    (dose given, cancelled) or one due date of it (rescheduled)."""
    stops: dict[_StopKey, list[tuple[datetime, bool]]] = {}
    known_phones: set[str] = set()
    due_of: dict[str, str] = {}
    closed_at: dict[str, datetime] = {}  # the producer's stamp of an appointment's latest close
    for event in events:
        detail = event.detail
        if event.type == "PatientUpserted":
            stops.setdefault(("patient", str(detail.get("patient_id"))), []).append(
                (event.at, detail.get("sms_opt_in") is False)
            )
            phone = _e164(detail.get("phone"), settings)
            known_phones.update([phone] if phone else [])
            if phone is not None and detail.get("sms_opt_in") is True and detail.get("sms_opt_in_renewed") is True:
                stops.setdefault(("number", phone), []).append((event.at, False))
        elif event.type in OPERATOR_EVENTS or event.type == INBOUND_EVENT:
            change = _number_change(event, settings, known_phones)
            if change is not None:
                stops.setdefault(("number", change[0]), []).append((event.at, change[1]))
        elif event.type in {"DoseAdministered", "AppointmentCancelled"}:
            appointment_id = str(detail.get("appointment_id"))
            stops.setdefault(("appointment", appointment_id), []).append((event.at, True))
            closed_at[appointment_id] = event.time or event.at
        elif event.type == "DoseScheduled":
            # A reschedule (same appointment, new due date) stops the reminders of the old date; a schedule stamped
            # after a close books the appointment again (an older one, synced late, leaves the close standing).
            appointment_id, due = str(detail.get("appointment_id")), str(detail.get("due_date"))
            closed = closed_at.get(appointment_id)
            if closed is not None and (event.time or event.at) > closed:
                stops.setdefault(("appointment", appointment_id), []).append((event.at, False))
                del closed_at[appointment_id]
            previous = due_of.get(appointment_id)
            if previous is not None and previous != due:
                stops.setdefault(("due_date", f"{appointment_id}|{previous}"), []).append((event.at, True))
            stops.setdefault(("due_date", f"{appointment_id}|{due}"), []).append((event.at, False))
            due_of[appointment_id] = due
    return stops


def _number_change(event: ScenarioEvent, settings: Settings, known_phones: set[str]) -> tuple[str, bool] | None:
    """(number, stopped) for an operator's stop or opt-in, or a reply with a keyword from a number some patient has
    (a reply from an unknown number changes nothing)."""
    if event.type in OPERATOR_EVENTS:
        phone = _e164(event.detail.get("phone"), settings)
        return (phone, event.type == "OptOutByPhone") if phone is not None else None
    phone = _e164(event.detail.get("from"), settings)
    found = match_keyword(str(event.detail.get("text", "")))
    if phone is None or phone not in known_phones or found is None:
        return None
    return phone, found.intent is Intent.OPT_OUT


def _stopped_since(timeline: list[tuple[datetime, bool]] | None, at: datetime) -> datetime | None:
    """The start of the stop in force at `at` on one timeline, or None."""
    since = None
    for t, stopped in timeline or []:
        if t > at:
            break
        since = (since or t) if stopped else None
    return since


def _stop_for(
    stops: dict[_StopKey, list[tuple[datetime, bool]]],
    history: _History,
    patient_id: str,
    appointment_id: str,
    due_date: str | None,
    at: datetime,
) -> datetime | None:
    """When the stop in force at `at` for this patient's reminder of this appointment began, or None."""
    phone = history.phone(patient_id, at)
    keys: list[_StopKey] = [("patient", patient_id), ("appointment", appointment_id)]
    keys += [("due_date", f"{appointment_id}|{due_date}")] + ([("number", phone)] if phone else [])
    found = [s for s in (_stopped_since(stops.get(k), at) for k in keys) if s is not None]
    return min(found, default=None)


# The nominal day of each reminder, from the due date: planning may move the hour, never the day.
_NOMINAL_DAY = {"7_day_reminder": -7, "1_day_reminder": -1, "overdue_reminder": 1}


def _missing(
    events: list[ScenarioEvent],
    messages: list[dict[str, Any]],
    stops: dict[_StopKey, list[tuple[datetime, bool]]],
    history: _History,
    until: datetime,
) -> list[str]:
    """Reminders an accepted schedule called for that were never created, checked independently of the timing
    code: for each appointment's final owner and due date, every reminder whose nominal day falls strictly after
    the day the schedule arrived and before `until`, and whose stop had not begun by that day's start."""
    have = {(m["appointment_id"], m["patient_id"], m["due_date"], m["reminder_type"]) for m in messages}
    out = []
    for appointment_id, timeline in history.due_dates.items():
        scheduled_at, due = timeline[-1]
        owner = history.owner(appointment_id, until)
        zone_name = history.zone(owner, until) if owner else None
        if owner is None or zone_name is None or history.phone(owner, until) is None:
            continue
        zone = ZoneInfo(zone_name)
        try:
            due_day = date.fromisoformat(due)
        except ValueError:
            continue
        first_day = scheduled_at.astimezone(zone).date() + timedelta(days=1)
        for reminder_type, offset in _NOMINAL_DAY.items():
            day = due_day + timedelta(days=offset)
            start = datetime.combine(day, datetime.min.time(), zone)
            end = start + timedelta(days=1)
            if day < first_day or end > until:
                continue
            # Any stop in force during the nominal day excuses the reminder (it may have been stopped before its hour).
            if any(
                _stop_for(stops, history, owner, appointment_id, due, t) is not None
                for t in (start, start + timedelta(hours=12), end - timedelta(seconds=1))
            ):
                continue
            if (appointment_id, owner, due, reminder_type) not in have:
                out.append(f"{appointment_id} {reminder_type} for {due} ({owner}) was never planned")
    return out


def max_in_one_second(instants: list[datetime]) -> int:
    """The most sends in any sliding one-second window [t, t + 1 s)."""
    times = sorted(t.astimezone(UTC).timestamp() for t in instants)
    best, left = 0, 0
    for right, t in enumerate(times):
        while times[left] <= t - 1.0:
            left += 1
        best = max(best, right - left + 1)
    return best


def _counter_disagreements(messages: list[dict[str, Any]], counted: Mapping[str, float]) -> list[str]:
    """Where the tallied counters differ from the messages: each reminder is sent once, and its ending (delivered,
    failed, expired) is counted net of corrections, so these totals must equal what the messages say."""
    truth = {
        "sent": sum(1 for m in messages if m["sent_at"]),
        **{status: sum(1 for m in messages if m["status"] == status) for status in ("delivered", "failed", "expired")},
    }
    return [
        f"{name}: counted {counted.get(name, 0):g}, the messages say {expected}"
        for name, expected in truth.items()
        if round(counted.get(name, 0), 6) != expected
    ]
