"""Outages that need no operator: a provider's circuit opens on a run of transient failures, pauses sending
without burning attempts, probes about once a minute and closes by itself (core.circuit, core.provider_state).

Each row of the fault matrix (opens, stays open, a half-open probe fails, closes) is read off the requests the
simulated provider received, with the invariants checked on the same run.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.e2e.conftest import ProviderRequest
from tests.e2e.test_scenarios import (
    ABIDJAN,
    assert_invariants,
    at_local,
    by_type,
    describe,
    min_gap_seconds,
    one_patient,
    run,
    scenario,
    sends_of,
    utc,
    z,
)

pytestmark = pytest.mark.e2e

DUE = "2027-03-12"
# Six hours of 503 on every call, from just before the 1-day reminders' 09:00 to 15:00 (their deadline is 19:00).
OUTAGE = (at_local("2027-03-11", 8, ABIDJAN, 55), at_local("2027-03-11", 15, ABIDJAN))
FAILURES_TO_OPEN = 3  # SMS_CIRCUIT_FAILURES' default


def six_hour_outage(families: int) -> dict[str, Any]:
    events = [e for n in range(1, families + 1) for e in one_patient(DUE, number=n, name=f"Enfant{n}")]
    faults = [{"from": z(OUTAGE[0]), "until": z(OUTAGE[1]), "status": 503}]
    return scenario("2027-03-01T00:00:00Z", "2027-03-14T00:00:00Z", events, faults=faults)


def test_a_six_hour_outage_needs_no_operator(provider_requests: list[ProviderRequest]) -> None:
    data = six_hour_outage(families=3)
    out = run(data)
    assert_invariants(out, data)  # no dead letter among them: dead_letters_ok is False

    one_day = [by_type(out, f"a{n}")["1_day_reminder"] for n in range(1, 4)]
    for m in one_day:
        assert m["status"] == "delivered", describe(out)
        assert OUTAGE[1] <= utc(m["sent_at"]) < utc(m["deadline"]), m
        assert len(sends_of(out, m["message_id"])) == 1
        # Only the failures before the circuit opened were the message's: far from the retry budget.
        assert m["attempts"] <= FAILURES_TO_OPEN
    tries = sorted((r for r in provider_requests if OUTAGE[0] <= r.at < OUTAGE[1]), key=lambda r: r.at)
    assert all(r.status == 503 for r in tries)

    # Opens: after a run of FAILURES_TO_OPEN failures, requests stop coming at the senders' pace.
    # Stays open, probing: from then on, at most one request a minute, and about one every minute.
    probes = tries[FAILURES_TO_OPEN:]
    assert min_gap_seconds(probes) >= 55
    open_minutes = (OUTAGE[1] - probes[0].at).total_seconds() / 60
    assert 0.9 * open_minutes <= len(probes) <= open_minutes + 1
    # A half-open probe that fails burns no attempt: hundreds of failed probes, attempts still within the budget.
    assert sum(m["attempts"] for m in one_day) < len(tries)

    # Closes by itself: the first probe after the outage is accepted, and the rest follow at once.
    after = sorted(utc(m["sent_at"]) for m in one_day)
    assert after[-1] - OUTAGE[1] < timedelta(minutes=3), after
