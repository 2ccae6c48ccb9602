"""How fast one sender instance goes: its pace (requests per second) and how many provider calls it keeps in flight.

Each instance paces its requests at floor(SMS_RATE_LIMIT_PER_SECOND / SMS_SENDER_MAX_CONCURRENCY), so all instances
together never pass the provider's limit. One call at a time would cap an instance at 1 / latency whatever its
pace (150 ms: 6.7/s; 400 ms: 2.5/s), so the records of a batch run on several lanes at once, as many as the pace
times the observed latency needs, at most SMS_SENDER_CALLS_IN_FLIGHT. In Lambda a lane is a thread; in the
embedded stack's virtual time (`VirtualLanes`) each lane keeps its own instant, so the simulated provider sees the
requests as concurrent ones would reach it.
"""

from __future__ import annotations

import contextvars
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from core import clock
from core.clock import VirtualClock

T = TypeVar("T")

# Until a call has been timed, a provider is assumed to answer in this long (Orange's usual, measured in bench/).
ASSUMED_LATENCY_SECONDS = 0.4


class Pacer:
    """Spaces one sender instance's provider requests at its pace; safe to share between the instance's lanes."""

    def __init__(self) -> None:
        self._next: datetime | None = None
        self._paused: datetime | None = None  # the latest pause's end (`_next` is never before it)
        self._lock = threading.Lock()
        self._latency = ASSUMED_LATENCY_SECONDS

    def pause_until(self, until: datetime) -> None:
        """Send nothing before `until` (the provider throttled this instance)."""
        with self._lock:
            if self._next is None or self._next < until:
                self._next = until
            if self._paused is None or self._paused < until:
                self._paused = until

    def begin_batch(self, per_second: float) -> None:
        """Send nothing for one interval from now, at the start of an invocation.

        Lambda runs a concurrency slot's batches one after another but not always in the same environment: the
        batch before this one may have ended, elsewhere, an instant after its last request. Its last request was
        made before this invocation began, so waiting one interval keeps the slot's requests 1/n s apart across
        the switch, and all slots together within the limit in every second. It costs each batch one interval
        (2% of a batch of 50 at any pace).
        """
        self.pause_until(clock.now() + interval(per_second))

    def wait(self, per_second: float, latest: datetime | None = None) -> datetime | None:
        """Sleep (on the installed clock) until this instance may send again; the slot is taken on return (None). A
        pause that came while a lane slept (another lane's request was throttled) sends it for a slot after the
        pause. A slot later than `latest` (a long pause: the invocation would end first) is neither waited for nor
        taken: it is returned."""
        while True:
            with self._lock:
                now = clock.now()
                slot = now if self._next is None or self._next <= now else self._next
                if latest is not None and slot > latest:
                    return slot
                self._next = slot + interval(per_second)
            clock.sleep((slot - now).total_seconds())
            with self._lock:
                if self._paused is None or self._paused <= clock.now():
                    return None

    def observe(self, seconds: float) -> None:
        """Note how long one provider call took (a moving average, so one slow call does not size the pool)."""
        with self._lock:
            self._latency = 0.8 * self._latency + 0.2 * max(0.0, seconds)

    def lanes_needed(self, per_second: float, most: int) -> int:
        """Calls in flight that keep the pace busy at the observed latency (one spare), between 1 and `most`."""
        with self._lock:
            return max(1, min(most, math.ceil(per_second * self._latency - 1e-9) + 1))


def interval(per_second: float) -> timedelta:
    """The spacing of one instance's requests at `per_second`."""
    # Rounded up to the microsecond (timedelta's resolution): rounded down, 1/12 s would fit 13 requests in a second.
    return timedelta(microseconds=math.ceil(1_000_000 / per_second))


class Lanes(Protocol):
    """Runs the tasks of one batch on up to `width` lanes at once; each result is the task's value or its error."""

    def run(self, tasks: Sequence[Callable[[], T]], width: int) -> list[T | Exception]: ...


def _outcome(task: Callable[[], T]) -> T | Exception:
    try:
        return task()
    except Exception as exc:  # the batch reports it for this record alone
        return exc


class ThreadLanes:
    """Lanes as threads (Lambda, a real clock)."""

    def run(self, tasks: Sequence[Callable[[], T]], width: int) -> list[T | Exception]:
        if width <= 1 or len(tasks) <= 1:
            return [_outcome(task) for task in tasks]
        # Each task runs in a copy of the caller's context, so what context variables carry (log correlation, the
        # function a call is attributed to) holds on the worker threads too.
        contexts = [contextvars.copy_context() for _ in tasks]
        with ThreadPoolExecutor(max_workers=min(width, len(tasks)), thread_name_prefix="send") as pool:
            return list(pool.map(lambda context, task: context.run(_outcome, task), contexts, tasks))


class VirtualLanes:
    """Lanes in virtual time: tasks run one after another, each on the lane free earliest, from that lane's own
    instant; the clock ends at the last lane's. Requests then reach the simulated provider as concurrent ones
    would, in the order of their instants (the pacer hands out slots in that order)."""

    def __init__(self, virtual: VirtualClock) -> None:
        self._clock = virtual

    def run(self, tasks: Sequence[Callable[[], T]], width: int) -> list[T | Exception]:
        start = self._clock.now()
        lanes = [start] * max(1, min(width, len(tasks)))
        results: list[T | Exception] = []
        for task in tasks:
            lane = lanes.index(min(lanes))
            self._clock.set(lanes[lane])
            results.append(_outcome(task))
            lanes[lane] = self._clock.now()
        self._clock.set(max(lanes))
        return results


def lanes_for(current: object) -> Lanes:
    """Threads on a real clock; lanes of virtual time under the embedded stack's virtual clock."""
    return VirtualLanes(current) if isinstance(current, VirtualClock) else ThreadLanes()
