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
_SECOND = timedelta(seconds=1)


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
    assert pacer.lanes_needed(12, most=8) == 6  # 12/s x 0.4 s = 4.8 in flight, and one spare
    assert pacer.lanes_needed(12, most=4) == 4
    for _ in range(40):
        pacer.observe(0.05)
    assert pacer.lanes_needed(2, most=8) == 2


def test_virtual_lanes_overlap_calls_and_the_pacer_holds_their_requests_to_the_window(virtual: VirtualClock) -> None:
    """Six calls of 1 s each at 2/s on two lanes: two requests a second, the third a full second after the first."""
    pacer = Pacer()
    requests: list[datetime] = []

    def call() -> str:
        pacer.wait(2)
        requests.append(clock.now())
        clock.sleep(1.0)  # the provider's latency, on the virtual clock
        return "ok"

    results = VirtualLanes(virtual).run([call] * 6, width=2)

    assert results == ["ok"] * 6
    window = _SECOND + timedelta(microseconds=1)
    assert sorted(requests) == [T0, T0, T0 + window, T0 + window, T0 + 2 * window, T0 + 2 * window]
    assert virtual.now() == T0 + 2 * window + _SECOND


def test_the_time_between_batches_is_made_up_not_lost(virtual: VirtualClock) -> None:
    """Ten batches of 60 at 12/s, 400 ms calls on six lanes: each batch ends with its last call's latency, which
    falls in the idle part of its last second, and the next batch's first requests use the room it left. A fixed
    spacing of 1/12 s would lose that latency at every batch (10 x (59/12 + 0.4) = 53.2 s); the window keeps the
    instance at 12 a second."""
    pacer = Pacer()
    requests: list[datetime] = []

    def call() -> None:
        pacer.wait(12)
        requests.append(clock.now())
        clock.sleep(0.4)

    for _ in range(10):
        VirtualLanes(virtual).run([call] * 60, width=6)

    elapsed = (virtual.now() - T0).total_seconds()
    assert elapsed < 600 / 12 + 1.0
    assert _most_in_one_second(requests) == 12


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
    assert _most_in_one_second(slots) == per_second


@settings(max_examples=200, deadline=None)
@given(
    per_second=st.integers(min_value=1, max_value=25),
    steps=st.lists(st.integers(min_value=-2_000, max_value=2_000), min_size=1, max_size=80),
)
def test_requests_taken_in_any_order_keep_the_window(per_second: int, steps: list[int]) -> None:
    """Lanes ask for slots from their own instants, which may go back in time between two asks."""
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
    assert _most_in_one_second(slots) <= per_second
    assert slots == sorted(slots)


def _most_in_one_second(instants: list[datetime]) -> int:
    return max(sum(1 for t in instants if start <= t < start + _SECOND) for start in instants)
