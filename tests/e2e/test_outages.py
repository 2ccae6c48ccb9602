"""Outages that need no operator: a provider's circuit opens on a run of transient failures, pauses sending
without burning attempts, probes about once a minute and closes by itself (core.circuit, core.provider_state).

Each row of the fault matrix (opens, stays open, a half-open probe fails, closes) is read off the requests the
simulated provider received, with the invariants checked on the same run.
"""

from __future__ import annotations

import itertools
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
    dose_event,
    min_gap_seconds,
    one_patient,
    patient_event,
    phone,
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


# The fault matrix's rows for the circuit: the same outage run to a point inside each phase, invariants checked there.
PHASES = {
    "opens": at_local("2027-03-11", 9, ABIDJAN, 2),
    "probe_fails": at_local("2027-03-11", 9, ABIDJAN, 10),
    "stays_open": at_local("2027-03-11", 12, ABIDJAN),
    "closes": at_local("2027-03-11", 15, ABIDJAN, 5),
}


@pytest.mark.parametrize("phase", list(PHASES))
def test_circuit_fault_matrix(phase: str, provider_requests: list[ProviderRequest]) -> None:
    data = {**six_hour_outage(families=3), "until": z(PHASES[phase])}
    out = run(data)
    assert_invariants(out, data)
    one_day = [by_type(out, f"a{n}")["1_day_reminder"] for n in range(1, 4)]
    tries = sorted((r for r in provider_requests if r.at >= OUTAGE[0]), key=lambda r: r.at)
    failed = [r for r in tries if r.status == 503]
    # Opens: exactly a run of FAILURES_TO_OPEN requests at the senders' pace, then none until the first probe.
    assert [r.at < OUTAGE[0] + timedelta(minutes=6) for r in failed[:FAILURES_TO_OPEN]] == [True] * FAILURES_TO_OPEN
    assert sum(m["attempts"] for m in one_day) <= FAILURES_TO_OPEN - 1 + (phase == "closes") * 3
    if phase == "opens":
        assert len(failed) == FAILURES_TO_OPEN and all(m["status"] == "pending" for m in one_day), describe(out)
        assert any("circuit open" in (m["last_error"] or "") for m in one_day)
    if phase in {"probe_fails", "stays_open"}:
        # Stays open, probing once a minute; each failed probe sends nothing else and burns nothing.
        probes = failed[FAILURES_TO_OPEN:]
        assert probes and min_gap_seconds(probes) >= 55
        minutes = (PHASES[phase] - probes[0].at).total_seconds() / 60
        assert 0.9 * minutes <= len(probes) <= minutes + 1
        assert all(m["status"] == "pending" and m["sent_at"] is None for m in one_day), describe(out)
    if phase == "closes":
        assert [r.status for r in tries if r.at >= OUTAGE[1]] == [201] * 3
        assert all(m["status"] in {"sent", "delivered"} for m in one_day), describe(out)


# ---------------------------------------------------------------------------------------------- failover


def with_kannel_fallback(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "fallback_provider": {"name": "kannel", "latency_ms": 100, "receipt_delay_seconds": 10}}


def test_the_same_outage_with_kannel_as_fallback_sends_on_time(provider_requests: list[ProviderRequest]) -> None:
    data = with_kannel_fallback(six_hour_outage(families=3))
    out = run(data)
    assert_invariants(out, data)

    nine = at_local("2027-03-11", 9, ABIDJAN)
    for n in range(1, 4):
        m = by_type(out, f"a{n}")["1_day_reminder"]
        [send] = sends_of(out, m["message_id"])
        # Through Kannel within minutes of 09:00 (the failures that open Orange's circuit, then the next minute),
        # settled by Kannel's DLR; the 7-day and overdue reminders, outside the outage, went through Orange.
        assert send["provider"] == "kannel" and m["status"] == "delivered", describe(out)
        assert nine <= utc(m["sent_at"]) < nine + timedelta(minutes=10), m
        assert m["attempts"] <= FAILURES_TO_OPEN
        for other in ("7_day_reminder", "overdue_reminder"):
            [before_or_after] = sends_of(out, by_type(out, f"a{n}")[other]["message_id"])
            assert before_or_after["provider"] == "orange"
    # Kannel carried the three 1-day reminders and nothing else: Orange took the traffic back after the outage.
    assert len([r for r in provider_requests if r.provider == "kannel"]) == 3


def test_a_403_on_orange_fails_over_to_kannel_without_burning_attempts(
    provider_requests: list[ProviderRequest],
) -> None:
    seven = at_local("2027-03-05", 9, ABIDJAN)
    window = (seven - timedelta(minutes=1), seven + timedelta(hours=3))
    events = [e for n in range(1, 4) for e in one_patient(DUE, number=n)]
    faults = [{"from": z(window[0]), "until": z(window[1]), "status": 403}]
    data = with_kannel_fallback(scenario("2027-03-01T00:00:00Z", "2027-03-07T00:00:00Z", events, faults=faults))
    out = run(data)
    assert_invariants(out, data)

    seven_day = [m for m in out["messages"] if m["reminder_type"] == "7_day_reminder"]
    assert {m["status"] for m in seven_day} == {"delivered"}, describe(out)
    assert all(m["attempts"] == 1 for m in seven_day), "a provider-wide refusal burnt an attempt"
    assert all(seven <= utc(m["sent_at"]) < seven + timedelta(minutes=5) for m in seven_day)
    providers = [s["provider"] for m in seven_day for s in sends_of(out, m["message_id"])]
    assert providers.count("kannel") >= 2 and len(providers) == 3
    # Held, not failing: Orange is probed every 30 minutes, not every minute.
    refused = [r for r in provider_requests if r.provider == "orange" and r.status == 403]
    assert 1 <= len(refused) <= 1 + (window[1] - window[0]) / timedelta(minutes=30)


def test_an_ambiguous_timeout_on_the_first_provider_is_never_sent_again_on_the_second(
    provider_requests: list[ProviderRequest],
) -> None:
    """Orange takes the request and its answer never comes (a read timeout), then fails for hours: the reminder
    is recorded sent (assume_sent) and Kannel never gets it, though Kannel takes everything else meanwhile."""
    seven = at_local("2027-03-05", 9, ABIDJAN)
    faults = [
        {"from": z(seven - timedelta(minutes=1)), "until": z(seven + timedelta(seconds=30)), "timeout": "after_send"},
        {"from": z(seven + timedelta(seconds=30)), "until": z(seven + timedelta(hours=4)), "status": 503},
    ]
    events = [*one_patient(DUE, number=1), *one_patient(DUE, number=2)]
    data = with_kannel_fallback(scenario("2027-03-01T00:00:00Z", "2027-03-07T00:00:00Z", events, faults=faults))
    out = run(data)
    assert_invariants(out, data)

    sends = [
        s for m in out["messages"] if m["reminder_type"] == "7_day_reminder" for s in sends_of(out, m["message_id"])
    ]
    assert len(sends) == 2 and all(len(sends_of(out, mid)) == 1 for s in sends for mid in s["message_ids"])
    ambiguous = [m for m in out["messages"] if m.get("ambiguous")]
    assert len(ambiguous) >= 1, describe(out)
    for m in ambiguous:
        assert [s["provider"] for s in sends_of(out, m["message_id"])] == ["orange"]
        assert not [r for r in provider_requests if r.provider == "kannel" and r.to == phone_of(out, m)]


def phone_of(out: dict[str, Any], message: dict[str, Any]) -> str:
    [send] = sends_of(out, message["message_id"])
    return str(send["to"])


def test_one_number_the_provider_always_fails_neither_holds_back_the_others_nor_escapes_its_dead_letter(
    provider_requests: list[ProviderRequest],
) -> None:
    """Orange answers 503 to one number only: its failures open the circuit, and it is the most urgent reminder due
    (a 1-day one), so it would be every probe and keep the circuit open over everyone else's reminders. A probe is
    the reminder that has waited longest: once the others are due, one of them probes, the circuit closes, and that
    number's reminder goes on failing on a provider that works, into a dead letter."""
    bad = phone(99)
    events = [
        patient_event("2027-03-01T08:00:00Z", "p99", bad, preferred_hour=8),
        dose_event("2027-03-01T08:00:00Z", "a99", "p99", "2027-03-16"),
    ]
    for n in range(1, 6):  # their 7-day reminders are due at 09:00 on 2027-03-15, an hour after its 1-day one
        events += one_patient("2027-03-22", number=n, name=f"Enfant{n}")
    data = scenario("2027-03-15T00:00:00Z", "2027-03-16T00:00:00Z", events, faults=[{"to": bad, "status": 503}])

    out = run(data)

    for n in range(1, 6):
        seven_day = by_type(out, f"a{n}")["7_day_reminder"]
        assert utc(seven_day["sent_at"]) - utc(seven_day["scheduled_at"]) < timedelta(minutes=5), describe(out)
    failing = by_type(out, "a99")["1_day_reminder"]  # dead-lettered, then expired at its deadline unredriven
    assert failing["status"] == "expired", describe(out)
    assert "(retries exhausted: transient 503" in failing["last_error"]
    assert not [r for r in provider_requests if r.to != bad and r.status != 201]


@pytest.mark.parametrize("fault", [{"status": 503}, {"timeout": "before_send"}], ids=["refusing", "hung"])
def test_families_whose_reminders_fell_in_an_outage_are_called(fault: dict[str, Any]) -> None:
    """Four families' 1-day and overdue reminders fall in a two-day Orange outage. Refusing (503), the reminders
    expire and the families are called. Hung (it takes connections and never answers), each request is ambiguous and
    recorded sent under the default policy: no receipt ever comes, and the families were left as if reached. Past the
    backstop they are called too."""
    outage = (at_local("2027-03-11", 8, ABIDJAN, 55), at_local("2027-03-13", 17, ABIDJAN))
    events: list[dict[str, Any]] = []
    for n in range(1, 5):  # registered after their 7-day reminder's day
        events += [
            patient_event("2027-03-09T08:00:00Z", f"p{n}", phone(n)),
            dose_event("2027-03-09T08:00:00Z", f"a{n}", f"p{n}", "2027-03-12"),
        ]
    lateness = {"REMINDER_1_DAY_MAX_LATENESS_HOURS": 2, "REMINDER_OVERDUE_MAX_LATENESS_HOURS": 2}
    data = scenario(
        "2027-03-09T00:00:00Z",
        "2027-03-16T00:00:00Z",
        events,
        faults=[{"from": z(outage[0]), "until": z(outage[1]), **fault}],
        settings=lateness,
    )
    out = run(data)
    assert out["stats"]["invariants"]["ok"] and out["sends"] == [], describe(out)
    assert {f["appointment_id"] for f in out["follow_ups"]} == {"a1", "a2", "a3", "a4"}, describe(out)


def test_a_lone_reminder_outlives_an_outage_of_both_providers() -> None:
    """Orange and its Kannel fallback both answer 503 for three hours from 09:00; the 1-day reminder's deadline is
    19:00. Alone, it spent its attempts before both circuits opened: two on Orange, then, failed over, one on each
    Kannel try, and was dead-lettered at 09:29 (then expired). A failure on the provider an SMS failed over to is the
    outage's, not the message's: no attempt is spent, and the reminder goes out once the providers are back."""
    outage = (at_local("2027-03-11", 8, ABIDJAN, 55), at_local("2027-03-11", 12, ABIDJAN))
    fault = [{"from": z(outage[0]), "until": z(outage[1]), "status": 503}]
    data = scenario("2027-03-10T00:00:00Z", "2027-03-12T00:00:00Z", one_patient(DUE), faults=fault)
    data["fallback_provider"] = {"name": "kannel", "latency_ms": 100, "receipt_delay_seconds": 10, "faults": fault}
    out = run(data)
    one_day = by_type(out, "a1")["1_day_reminder"]
    assert one_day["status"] == "delivered", describe(out)
    assert utc(one_day["sent_at"]) < outage[1] + timedelta(minutes=5), describe(out)


def hung_orange(events: list[dict[str, Any]], hang: tuple[Any, Any]) -> dict[str, Any]:
    """Orange hung on every endpoint through `hang`. A token fetched on the 7-day reminders' day is still good then,
    so the hang meets the sends, not a token request (a send whose token request hangs is not ambiguous)."""
    faults = [{"from": z(hang[0]), "until": z(hang[1]), "timeout": "any_request"}]
    month = 30 * 24 * 3600
    return scenario("2027-03-01T00:00:00Z", "2027-03-14T00:00:00Z", events, faults=faults, token_lifetime_seconds=month)


def test_a_hung_orange_is_probed_with_a_read_that_sends_nothing(provider_requests: list[ProviderRequest]) -> None:
    """Orange takes connections and never answers, on every endpoint, from 08:55 to 09:20 (its gateway down).
    The requests that open its circuit get no answer and are recorded sent under the default policy: lost. Each
    probe after them was a real reminder too, lost the same way, one family a minute for as long as the hang
    lasted. A probe now first reads Orange's contracts, which sends nothing: while that gets no answer no reminder
    is risked, and the families after the first ones are reminded once Orange answers again."""
    hang = (at_local("2027-03-11", 8, ABIDJAN, 55), at_local("2027-03-11", 9, ABIDJAN, 20))
    families = 8
    events = [e for n in range(1, families + 1) for e in one_patient(DUE, number=n, name=f"Enfant{n}")]
    data = hung_orange(events, hang)
    out = run(data)
    # The project's own checker: the recheck in `assert_invariants` takes an unanswered send for one never made.
    assert out["stats"]["invariants"]["ok"], describe(out)

    unanswered = [r for r in provider_requests if hang[0] <= r.at < hang[1]]
    assert all(r.status is None for r in unanswered)
    assert len(unanswered) == FAILURES_TO_OPEN, describe(out)
    one_day = [by_type(out, f"a{n}")["1_day_reminder"] for n in range(1, families + 1)]
    after = [m for m in one_day if utc(m["sent_at"]) >= hang[1]]
    assert len(after) == families - FAILURES_TO_OPEN, describe(out)
    for m in after:
        assert m["status"] == "delivered" and len(sends_of(out, m["message_id"])) == 1, m
        assert utc(m["sent_at"]) - hang[1] < timedelta(minutes=3), m


def test_a_hung_orange_probes_without_costing_kannel_a_reminder(provider_requests: list[ProviderRequest]) -> None:
    """The same hang with Kannel as fallback, for two hours: the families whose reminders come due while it lasts
    (at 10:00) go through Kannel. Orange's probe used to take one of them and lose it to the hang; its read now
    tells Orange is still silent, and that reminder goes through Kannel with the rest."""
    hang = (at_local("2027-03-11", 8, ABIDJAN, 55), at_local("2027-03-11", 11, ABIDJAN))
    nine = [e for n in range(1, 4) for e in one_patient(DUE, number=n, name=f"Enfant{n}")]
    ten = [e for n in range(4, 9) for e in one_patient(DUE, number=n, name=f"Enfant{n}", preferred_hour=10)]
    data = hung_orange(nine + ten, hang)
    out = run(with_kannel_fallback(data))
    assert out["stats"]["invariants"]["ok"], describe(out)

    unanswered = [r for r in provider_requests if r.provider == "orange" and hang[0] <= r.at < hang[1]]
    assert len(unanswered) == FAILURES_TO_OPEN and all(r.status is None for r in unanswered), describe(out)
    kannel = [r for r in provider_requests if r.provider == "kannel"]
    assert len(kannel) == 5 and all(r.status == 202 for r in kannel), describe(out)
    ten_am = at_local("2027-03-11", 10, ABIDJAN)
    assert all(ten_am <= r.at < ten_am + timedelta(minutes=5) for r in kannel), kannel


def test_a_hung_orange_still_gets_a_real_probe_every_half_hour(provider_requests: list[ProviderRequest]) -> None:
    """A contracts read silent on its own, while sends work, must not keep the circuit open for good: every thirtieth
    failure of the run the probe's SMS goes all the same. Through a two-hour hang that costs a reminder every half
    hour (the SMS gets no answer), not one a minute."""
    hang = (at_local("2027-03-11", 8, ABIDJAN, 55), at_local("2027-03-11", 10, ABIDJAN, 55))
    events = [e for n in range(1, 9) for e in one_patient(DUE, number=n, name=f"Enfant{n}")]
    out = run(hung_orange(events, hang))
    assert out["stats"]["invariants"]["ok"], describe(out)

    unanswered = sorted(r.at for r in provider_requests if hang[0] <= r.at < hang[1])
    probes = unanswered[FAILURES_TO_OPEN:]
    assert 3 <= len(probes) <= 4, unanswered
    assert min(b - a for a, b in itertools.pairwise(probes)) >= timedelta(minutes=25), probes
