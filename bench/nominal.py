"""Figure 2: a nominal load through the real pipeline, clinic events to receipts, in virtual time.

The demo's own scenario (`rappel_demo.demo.build_scenario`: a synthetic register across several zones and both
languages, doses given, rescheduled, opt-outs, a few numbers that fail or cannot be reached) for a couple of
hundred children whose doses fall due over a few days, without the demo's three-hour provider outage: that is an
incident, not a nominal day. Reminders go out at 09:00 (7-day, 1-day) or 14:00 (overdue) local time in each
family's zone, so the load arrives as small daily waves, as it would in a real program.
"""

from __future__ import annotations

from typing import Any

from bench.common import lateness_seconds, lateness_summary
from core.store import parse_iso
from rappel_demo.demo import build_scenario
from rappel_local.invariants import max_in_one_second
from rappel_local.scenario import load_scenario
from rappel_local.simulate import Simulation


def nominal_scenario(children: int, days: int, seed: int, rate: float) -> dict[str, Any]:
    """The demo's scenario without its provider outage (faults with a time window); failing numbers stay."""
    document = build_scenario(children, days, seed, rate)
    provider = document["provider"]
    provider["faults"] = [f for f in provider.get("faults", []) if "from" not in f and "until" not in f]
    return document


def run_nominal(
    children: int, days: int, seed: int, rate: float, progress: Any = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run it; returns (figures, the simulation's output document)."""
    scenario_doc = nominal_scenario(children, days, seed, rate)
    scenario = load_scenario(scenario_doc)
    document = Simulation(scenario, progress=progress).run().as_json()
    messages, sends = document["messages"], document["sends"]
    # Reminders whose send time had already passed when the register was loaded at the start (still before their
    # deadline, so planned and sent at once) are catch-ups: their lateness is the load's, not the engine's.
    catch_up = [m for m in messages if parse_iso(m["scheduled_at"]) < scenario.start]
    planned_ahead = [m for m in messages if parse_iso(m["scheduled_at"]) >= scenario.start]
    lateness = lateness_seconds(planned_ahead)
    by_type: dict[str, Any] = {}
    for reminder_type in sorted({m["reminder_type"] for m in messages}):
        of_type = [m for m in planned_ahead if m["reminder_type"] == reminder_type]
        by_type[reminder_type] = lateness_summary(lateness_seconds(of_type))
    simulated = scenario.until - scenario.start
    figures = {
        "children": children,
        "due_dates_over_days": days,
        "simulated_days": simulated.total_seconds() / 86400,
        "clinic_events": len(scenario.events),
        "messages": len(messages),
        "sends": len(sends),
        "reminders_sent": sum(1 for m in messages if m["sent_at"]),
        # An SMS may carry several reminders for one phone (siblings, per-vaccine bookings).
        "sms_per_delivered_reminder": len(sends) / max(1, document["stats"]["by_status"].get("delivered", 0)),
        "by_status": document["stats"]["by_status"],
        "delivered": document["stats"]["by_status"].get("delivered", 0),
        "lateness": lateness_summary(lateness),
        "catch_up_reminders": len(catch_up),
        "catch_up_sent": sum(1 for m in catch_up if m["sent_at"]),
        "lateness_including_catch_up": lateness_summary(lateness_seconds(messages)),
        "lateness_by_type": by_type,
        "max_sends_in_one_second": max_in_one_second([parse_iso(s["at"]) for s in sends]),
        "invariants_ok": bool(document["stats"]["invariants"]["ok"]),
        "invariant_violations": {k: len(v) for k, v in document["stats"]["invariants"]["violations"].items()},
        "handler_errors": document["stats"]["handler_errors"],
    }
    return figures, document
