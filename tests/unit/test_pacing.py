"""`core.pacing`: the pace of one sender instance and the lanes its provider calls run on."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import clock
from core.clock import VirtualClock
from core.pacing import Pacer, ThreadLanes, VirtualLanes, lanes_for

pytestmark = pytest.mark.unit

T0 = datetime(2027, 3, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
def virtual() -> VirtualClock:
    installed = VirtualClock(T0)
    previous = clock.install(installed)
    yield installed
    clock.install(previous)


def test_lanes_are_sized_from_the_pace_and_the_observed_latency() -> None:
    pacer = Pacer()
    for _ in range(40):
        pacer.observe(0.4)
    assert pacer.lanes_needed(12.5, most=8) == 6  # 12.5/s x 0.4 s = 5 in flight, and one spare
    assert pacer.lanes_needed(12.5, most=4) == 4
    for _ in range(40):
        pacer.observe(0.05)
    assert pacer.lanes_needed(2, most=8) == 2


def test_virtual_lanes_overlap_calls_and_the_pacer_spaces_their_requests(virtual: VirtualClock) -> None:
    """Four calls of 1 s each at a pace of 2/s on two lanes: requests every 0.5 s, all done after 2.5 s."""
    pacer = Pacer()
    requests: list[datetime] = []

    def call() -> str:
        pacer.wait(2)
        requests.append(clock.now())
        clock.sleep(1.0)  # the provider's latency, on the virtual clock
        return "ok"

    results = VirtualLanes(virtual).run([call] * 4, width=2)

    assert results == ["ok"] * 4
    assert sorted(requests) == [T0 + timedelta(seconds=s) for s in (0, 0.5, 1.0, 1.5)]
    assert virtual.now() == T0 + timedelta(seconds=2.5)


def test_one_lane_is_one_call_at_a_time(virtual: VirtualClock) -> None:
    def call() -> None:
        clock.sleep(1.0)

    VirtualLanes(virtual).run([call] * 3, width=1)
    assert virtual.now() == T0 + timedelta(seconds=3)


def test_thread_lanes_run_calls_at_the_same_time_and_keep_each_error_to_its_task() -> None:
    together = threading.Barrier(3, timeout=10)  # broken unless three tasks wait on it at once

    def meet() -> int:
        return together.wait()

    def fail() -> int:
        raise ValueError("this record only")

    results = ThreadLanes().run([meet, meet, meet, fail], width=4)

    assert sorted(r for r in results if isinstance(r, int)) == [0, 1, 2]
    assert [str(r) for r in results if isinstance(r, Exception)] == ["this record only"]


def test_lanes_follow_the_clock() -> None:
    assert isinstance(lanes_for(VirtualClock(T0)), VirtualLanes)
    assert isinstance(lanes_for(clock.SystemClock()), ThreadLanes)


def test_thread_lanes_carry_the_callers_context_variables() -> None:
    import contextvars

    who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")
    token = who.set("send_sms")
    try:
        assert ThreadLanes().run([who.get, who.get], width=2) == ["send_sms", "send_sms"]
    finally:
        who.reset(token)


@pytest.mark.parametrize("per_second", [3, 7, 12, 25])
def test_a_pace_never_fits_one_request_more_in_a_second(virtual: VirtualClock, per_second: int) -> None:
    """At 12/s the interval is 83,333.3 µs: rounded down to the microsecond, 13 requests would fit in one second."""
    pacer = Pacer()
    slots = []
    for _ in range(3 * per_second):
        pacer.wait(per_second)
        slots.append(clock.now())
    most = max(sum(1 for t in slots if start <= t < start + timedelta(seconds=1)) for start in slots)
    assert most == per_second


@settings(max_examples=200, deadline=None)
@given(
    per_second=st.integers(min_value=1, max_value=25),
    steps=st.lists(st.integers(min_value=-2_000, max_value=2_000), min_size=1, max_size=80),
)
def test_requests_taken_in_any_order_keep_the_pace(per_second: int, steps: list[int]) -> None:
    """Lanes ask for slots from their own instants, which may go back in time between two asks: the slots still
    never go back, and never fit one request more in a second."""
    virtual = VirtualClock(T0)
    previous = clock.install(virtual)
    try:
        pacer = Pacer()
        slots = []
        for step in steps:
            virtual.set(max(T0, virtual.now() + timedelta(milliseconds=step)))
            pacer.wait(per_second)
            slots.append(virtual.now())
    finally:
        clock.install(previous)
    assert slots == sorted(slots)
    assert max(sum(1 for t in slots if start <= t < start + timedelta(seconds=1)) for start in slots) <= per_second


@settings(max_examples=300, deadline=None)
@given(
    per_second=st.integers(min_value=1, max_value=25),
    batches=st.lists(
        st.tuples(st.integers(min_value=0, max_value=3), st.integers(min_value=1, max_value=30), st.integers(0, 900)),
        min_size=1,
        max_size=12,
    ),
)
def test_a_concurrency_slot_keeps_the_pace_when_lambda_moves_its_next_batch_to_another_environment(
    per_second: int, batches: list[tuple[int, int, int]]
) -> None:
    """A slot's batches run one after another, each in whichever of four environments Lambda picks, each request
    taking `latency` before the next (one lane): the slot's requests never fit one more in a second than its pace,
    even when a fresh environment starts right after another's last request."""
    virtual = VirtualClock(T0)
    previous = clock.install(virtual)
    try:
        environments = [Pacer() for _ in range(4)]
        requests = []
        for environment, size, latency_ms in batches:
            pacer = environments[environment]
            pacer.begin_batch(per_second)
            for _ in range(size):
                pacer.wait(per_second)
                requests.append(virtual.now())
                clock.sleep(latency_ms / 1000)
    finally:
        clock.install(previous)
    assert (
        max(sum(1 for t in requests if start <= t < start + timedelta(seconds=1)) for start in requests) <= per_second
    )


def test_a_throttle_while_a_lane_waits_for_its_slot_holds_that_lane_back_too(virtual: VirtualClock) -> None:
    """A lane asleep until its slot when another lane's request gets a 429 (`pause_until`) must not send at that
    slot: the provider asked this instance for nothing before the pause's end."""
    pacer = Pacer()
    start = virtual.now()
    pacer.wait(5)  # lane A's slot: now; its request then gets a 429 ...
    paused_until = start + timedelta(seconds=5)
    advance = virtual.sleep

    def throttled_meanwhile(seconds: float) -> None:
        pacer.pause_until(paused_until)  # ... while lane B sleeps until its slot, 0.2 s on
        advance(seconds)

    virtual.sleep = throttled_meanwhile  # type: ignore[method-assign]
    pacer.wait(5)  # lane B

    assert virtual.now() >= paused_until


def test_a_throttle_after_the_first_send_moves_the_next_slot_past_its_end(virtual: VirtualClock) -> None:
    """An invocation that would end before the pause's end must see it (`latest`) and give its records back."""
    pacer = Pacer()
    start = virtual.now()
    assert pacer.wait(10) is None
    pacer.pause_until(start + timedelta(seconds=60))
    assert pacer.wait(10, latest=start + timedelta(seconds=5)) == start + timedelta(seconds=60)


def test_a_later_throttle_extends_the_pause_and_a_slot_at_the_latest_instant_is_taken(virtual: VirtualClock) -> None:
    pacer = Pacer()
    start = virtual.now()
    pacer.pause_until(start + timedelta(seconds=1))
    pacer.pause_until(start + timedelta(seconds=10))
    pacer.pause_until(start + timedelta(seconds=5))  # an earlier end does not shorten it
    end = start + timedelta(seconds=10)
    assert pacer.wait(10, latest=end) is None and virtual.now() == end


def test_one_slow_call_or_a_negative_one_hardly_moves_the_lanes() -> None:
    """A moving average: 0.4 s assumed, then one 2 s call is 0.72 s (9 lanes at 10/s with a spare), not 2 s (18)."""
    slow = Pacer()
    slow.observe(2.0)
    assert slow.lanes_needed(10, 50) == 9
    skewed = Pacer()
    skewed.observe(-10)  # a clock stepped back during the call: counted as no time, not as less than none
    assert skewed.lanes_needed(10, 50) == 5
