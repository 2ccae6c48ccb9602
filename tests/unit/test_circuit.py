"""The circuit's rules (core.circuit): when a provider's circuit opens, where a request goes, when it probes."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from core.circuit import (
    HOLD_INTERVAL,
    PROBE_INTERVAL,
    Circuit,
    CircuitKind,
    CircuitRules,
    Route,
    after_transient_failure,
    held,
    probe_claimed,
    probe_sends_unanswered,
    route,
)

NOW = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)
RULES = CircuitRules(failures_to_open=3, probe_interval=PROBE_INTERVAL, hold_interval=HOLD_INTERVAL)
ORDER = ("orange", "kannel")


def test_a_run_of_failures_opens_the_circuit_at_the_threshold_and_not_before() -> None:
    two = after_transient_failure(Circuit("orange", failures=2), NOW, RULES, "http_503")
    assert not two.is_open
    three = after_transient_failure(Circuit("orange", failures=3), NOW, RULES, "http_503")
    assert (three.retry_at, three.opened_at, three.kind) == (NOW + PROBE_INTERVAL, NOW, CircuitKind.OUTAGE)


def test_a_failed_probe_keeps_it_open_until_the_next_probe_and_keeps_when_it_opened() -> None:
    opened = after_transient_failure(Circuit("orange", failures=3), NOW, RULES, "http_503")
    later = NOW + timedelta(hours=2)
    probing = probe_claimed(replace(opened, failures=4), later, RULES)  # the claim set the next probe
    again = after_transient_failure(probing, later + timedelta(seconds=2), RULES, "connect_timeout")
    assert (again.retry_at, again.opened_at, again.reason) == (later + PROBE_INTERVAL, NOW, "connect_timeout")
    # A failure of an open circuit whose next probe time has passed sets one interval from now.
    stale = after_transient_failure(opened, later, RULES, "http_503")
    assert stale.retry_at == later + PROBE_INTERVAL


def test_a_hold_waits_the_hold_interval_and_its_failed_probe_waits_it_again() -> None:
    hold = held(Circuit("orange"), NOW, RULES, "403/50")
    assert (hold.retry_at, hold.kind) == (NOW + HOLD_INTERVAL, CircuitKind.HOLD)
    probing = probe_claimed(hold, NOW + HOLD_INTERVAL, RULES)
    assert probing.retry_at == NOW + 2 * HOLD_INTERVAL
    # A transient failure once the hold's probe is due (no claim moved it): another hold interval, not a probe's.
    failed = after_transient_failure(probing, NOW + 2 * HOLD_INTERVAL, RULES, "http_503")
    assert (failed.retry_at, failed.kind) == (NOW + 3 * HOLD_INTERVAL, CircuitKind.HOLD)


def test_routes_in_failover_order() -> None:
    outage = after_transient_failure(Circuit("orange", failures=3), NOW, RULES, "http_503")
    assert route(ORDER, {}, NOW) == Route("orange")
    # A closed circuit that has counted failures still takes traffic.
    assert route(ORDER, {"orange": Circuit("orange", failures=2)}, NOW) == Route("orange")
    # Open: the next provider takes it, until the first one's probe is due; then the probe goes first.
    assert route(ORDER, {"orange": outage}, NOW) == Route("kannel")
    assert route(ORDER, {"orange": outage}, NOW + PROBE_INTERVAL) == Route("orange", probe=True)
    # Both open: nowhere until the earliest probe.
    kannel = held(Circuit("kannel"), NOW, RULES, "403")
    assert route(ORDER, {"orange": outage, "kannel": kannel}, NOW) == Route(None, paused_until=NOW + PROBE_INTERVAL)
    # No provider left to try (each found down by this request): nowhere, and no time to wait for.
    assert route((), {"orange": outage}, NOW) == Route(None)
    # A provider not (or no longer) in the order is not a reason to wait.
    assert route(("orange",), {"orange": outage, "kannel": kannel}, NOW).paused_until == NOW + PROBE_INTERVAL


@given(
    failures=st.lists(st.booleans(), min_size=1, max_size=40),
    threshold=st.integers(min_value=1, max_value=10),
)
def test_the_circuit_opens_exactly_when_a_run_reaches_the_threshold(failures: list[bool], threshold: int) -> None:
    """Any sequence of answers (True) and transient failures (False): the circuit is open exactly when the last
    `threshold` outcomes since the last answer were failures (an answer closes it and ends the run)."""
    rules = replace(RULES, failures_to_open=threshold)
    circuit = Circuit("orange")
    run = 0
    for at, answered in enumerate(failures):
        now = NOW + timedelta(seconds=at)
        if answered:
            circuit, run = Circuit("orange"), 0
        else:
            run += 1
            circuit = after_transient_failure(replace(circuit, failures=run), now, rules, "x")
        assert circuit.is_open == (run >= threshold)
        if circuit.is_open:
            assert circuit.retry_at is not None and circuit.retry_at > now


def test_a_probe_whose_read_gets_no_answer_sends_its_sms_at_every_thirtieth_failure_only() -> None:
    """A read silent on its own, sends working, would otherwise keep the circuit open for good."""
    sends = [n for n in range(1, 100) if probe_sends_unanswered(Circuit("orange", failures=n))]
    assert sends == [30, 60, 90]
