"""Figure 1: N reminders due in the same minute, drained through the real pipeline in virtual time.

The reminders are seeded straight into the tables inside `Simulation(setup=...)` (patients, appointments and
pending messages, as planning would have written them), so the send-time re-checks find everything in order:
a mix of 7-day, 1-day and overdue reminders, all scheduled at 09:00 in Africa/Abidjan (UTC+0, inside the
allowed hours) with a 48-hour deadline. Then the dispatcher and the senders run as on AWS, with the Orange
simulator answering after `latency_ms`.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import lateness_seconds, lateness_summary, percentile, ratio
from bench.spec_model import simulate_spec
from core import store
from core.lifecycle import Status
from core.settings import Settings, sender_concurrency_within
from core.store import AppointmentRecord, MessageRecord, PatientRecord, iso, parse_iso
from core.timing import ReminderType
from rappel_local.invariants import max_in_one_second
from rappel_local.scenario import load_scenario
from rappel_local.simulate import Simulation

DUE_AT = datetime(2027, 3, 8, 9, 0, tzinfo=UTC)  # 09:00 in Africa/Abidjan (UTC+0), a Monday
ZONE = "Africa/Abidjan"
DEADLINE = timedelta(hours=48)
LATENCY_MS = 150.0
SLOW_LATENCY_MS = 400.0  # the same burst through a slower provider: calls in flight must still fill the limit
# One call at a time per sender, as before calls in flight: two senders then made at most 2 / latency SMS a second.
ONE_CALL_SENDERS = 2
WINDOW = timedelta(hours=24)
RECEIPTS_AFTER_WINDOW = int(2 * WINDOW.total_seconds())
TYPES = (ReminderType.SEVEN_DAY, ReminderType.ONE_DAY, ReminderType.OVERDUE)
_DUE_OFFSET_DAYS = {ReminderType.SEVEN_DAY: 7, ReminderType.ONE_DAY: 1, ReminderType.OVERDUE: -1}
_NAMES = (
    "Awa",
    "Kouassi",
    "Aminata",
    "Yao",
    "Mariam",
    "Koffi",
    "Fatou",
    "Adjoua",
    "Ibrahim",
    "Aya",
    "Moussa",
    "Affoué",
    "Brou",
    "N'Guessan",
    "Salimata",
    "Konan",
)
_CLINICS = ("CSU Abobo", "CSR Bingerville", "CSU Yopougon", "HG Port-Bouët", "")
_VACCINES = (("Penta", 1), ("Penta", 2), ("VPO", 3), ("RR", 1), ("PCV13", 2), ("Rota", 2))


def burst_scenario(n: int, rate: float, seed: int, latency_ms: float = LATENCY_MS) -> dict[str, Any]:
    """The scenario around the seeded burst: a stack at 08:55, the dispatcher's ticks on whole minutes."""
    return {
        "start": iso(DUE_AT - timedelta(minutes=5)),
        "until": iso(DUE_AT + WINDOW),
        "seed": seed,
        "settings": {
            "APP_TIMEZONE": ZONE,
            "SMS_RATE_LIMIT_PER_SECOND": str(rate),
            # five senders at 5/s each use all of a 25/s limit (two would pace at 12/s each: 24/s)
            "SMS_SENDER_MAX_CONCURRENCY": str(sender_concurrency_within(rate)),
        },
        # Receipts would arrive after the window: the burst measures sending; figure 4 counts receipts on the
        # nominal run, where they do arrive.
        "provider": {"name": "orange", "latency_ms": latency_ms, "receipt_delay_seconds": RECEIPTS_AFTER_WINDOW},
        "events": [],
    }


def seed_burst(n: int, seed: int, settings: Settings) -> list[str]:
    """Write n patients, n appointments and n pending messages, all due at DUE_AT; returns the message ids.

    Batch writes, as a bulk import would do: the tables are new, so there is nothing for a condition to guard.
    """
    rng = random.Random(seed)
    created_at = DUE_AT - timedelta(days=10)
    event_at = iso(created_at)
    burst_day = DUE_AT.date()
    patients, appointments, messages = [], [], []
    for i in range(n):
        reminder_type = TYPES[i % len(TYPES)]
        patient_id, appointment_id = f"B{i:06d}", f"B{i:06d}-A"
        phone = f"+22507{rng.randrange(10**8):08d}"
        patients.append(
            PatientRecord(
                patient_id,
                phone=phone,
                timezone=ZONE,
                language="fr" if rng.random() < 0.7 else "en",
                sms_opt_in=True,
                display_name=rng.choice(_NAMES),
                preferred_hour=None,
                event_at=event_at,
                event_id=f"bench-{i}",
            )
        )
        due_date = (burst_day + timedelta(days=_DUE_OFFSET_DAYS[reminder_type])).isoformat()
        vaccine, dose = rng.choice(_VACCINES)
        appointments.append(
            AppointmentRecord(
                appointment_id,
                patient_id=patient_id,
                vaccine=vaccine,
                dose=dose,
                due_date=due_date,
                clinic=rng.choice(_CLINICS) or None,
                status="scheduled",
                event_at=event_at,
                event_id=f"bench-{i}",
            )
        )
        message_id = store.message_id_for(appointment_id, reminder_type.value, due_date, patient_id)
        messages.append(
            MessageRecord(
                message_id,
                patient_id=patient_id,
                appointment_id=appointment_id,
                reminder_type=reminder_type.value,
                due_date=due_date,
                status=Status.PENDING.value,
                scheduled_at=iso(DUE_AT),
                deadline=iso(DUE_AT + DEADLINE),
                due_shard=store.shard_of(message_id, settings.DUE_INDEX_SHARDS),
                due_at=iso(DUE_AT),
                created_at=iso(created_at),
            )
        )
    ids = [m.message_id for m in messages]
    if len(set(ids)) != n:
        raise RuntimeError("two seeded messages share an id")
    for model, records in ((PatientRecord, patients), (AppointmentRecord, appointments), (MessageRecord, messages)):
        with model.batch_write() as batch:
            for record in records:
                batch.save(record)
    return ids


def run_burst(
    n: int, rate: float, seed: int, progress: Any = None, latency_ms: float = LATENCY_MS
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the burst; returns (figures, the simulation's output document)."""
    scenario = load_scenario(burst_scenario(n, rate, seed, latency_ms))
    result = Simulation(scenario, progress=progress, setup=lambda settings: seed_burst(n, seed, settings)).run()
    document = result.as_json()
    return burst_figures(document, n, rate, latency_ms), document


def burst_figures(document: dict[str, Any], n: int, rate: float, latency_ms: float = LATENCY_MS) -> dict[str, Any]:
    """Makespan, its ratio to the ideal, the peak second and lateness, for ours and for the spec's model."""
    messages, sends = document["messages"], document["sends"]
    send_times = [parse_iso(s["at"]) for s in sends]
    makespan = (max(send_times) - DUE_AT).total_seconds() if send_times else None
    ideal = n / rate
    lateness = lateness_seconds(messages)
    by_type = {
        t.value: lateness_summary(lateness_seconds([m for m in messages if m["reminder_type"] == t.value]))
        for t in TYPES
    }
    # When each sender instance sent one SMS at a time, two instances made no more than 2 / latency a second
    # whatever the limit: the old ceiling, which the makespan is also divided by.
    latency_bound_rate = min(rate, ONE_CALL_SENDERS * 1000 / latency_ms)
    spec = simulate_spec(n, latency_seconds=latency_ms / 1000)
    spec_lateness = spec.send_times
    return {
        "reminders": n,
        "rate_limit_per_second": rate,
        "sender_max_concurrency": sender_concurrency_within(rate),
        "provider_latency_ms": latency_ms,
        "sent": sum(1 for m in messages if m["sent_at"]),
        "by_status": document["stats"]["by_status"],
        "makespan_seconds": makespan,
        "ideal_seconds": ideal,
        "makespan_over_ideal": ratio(makespan, ideal),
        "latency_bound_rate_per_second": latency_bound_rate,
        "latency_bound_ideal_seconds": n / latency_bound_rate,
        "makespan_over_latency_bound_ideal": ratio(makespan, n / latency_bound_rate),
        "max_sends_in_one_second": max_in_one_second(send_times),
        "lateness": lateness_summary(lateness),
        "lateness_by_type": by_type,
        "invariants_ok": bool(document["stats"]["invariants"]["ok"]),
        "invariant_violations": {k: len(v) for k, v in document["stats"]["invariants"]["violations"].items()},
        "handler_errors": document["stats"]["handler_errors"],
        "spec_model": {
            "makespan_seconds": spec.makespan,
            "cycles": spec.cycles,
            "skipped_cycles": spec.skipped_cycles,
            "max_sends_in_one_second": max_in_one_second([DUE_AT + timedelta(seconds=t) for t in spec.send_times]),
            "lateness": {
                "count": len(spec_lateness),
                "p50_seconds": percentile(spec_lateness, 0.5),
                "p99_seconds": percentile(spec_lateness, 0.99),
                "max_seconds": max(spec_lateness, default=None),
            },
        },
        "spec_over_ours": ratio(spec.makespan, makespan),
    }
