"""A faithful model of the spec's scheduler (SMS-04 `processPendingMessages`), in virtual time, no AWS.

What the spec's TypeScript does, step by step:

* a cron job runs `processPendingMessages` every 5 minutes (`.everyFiveMinutes()`, on the wall clock's :00, :05, …);
  a run that finds the previous one still going (`isProcessing`) does nothing;
* `getPendingMessages` takes `status = pending AND scheduled_at <= now`, ordered by `scheduled_at`, limited to
  `batchSize * 5` (250 with the default batch size of 50);
* `createBatches` splits them into batches of `batchSize`; batches run one after the other with
  `await this.delay(2000)` between two batches (not after the last);
* inside a batch, `for (const message of messages) await this.smsService.sendMessage(message)`: one send at a time,
  each taking the provider's latency.

A send is stamped when the provider has answered (as the Orange simulator stamps the sends it accepts, after
its latency), so the model and the simulated pipeline are measured the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CYCLE_SECONDS = 300.0
BATCH_SIZE = 50
BATCHES_PER_CYCLE = 5
PAUSE_SECONDS = 2.0


@dataclass(frozen=True)
class SpecRun:
    """The model's outcome: when each message was sent, in seconds from the instant they all became due."""

    send_times: list[float]
    cycles: int
    skipped_cycles: int

    @property
    def makespan(self) -> float:
        """Last send − first due (all are due at 0)."""
        return max(self.send_times, default=0.0)


def simulate_spec(
    messages: int,
    *,
    latency_seconds: float,
    cycle_seconds: float = CYCLE_SECONDS,
    batch_size: int = BATCH_SIZE,
    batches_per_cycle: int = BATCHES_PER_CYCLE,
    pause_seconds: float = PAUSE_SECONDS,
    first_cycle_at: float = 0.0,
) -> SpecRun:
    """Drain `messages` reminders, all due at t = 0, the way the spec's scheduler would.

    `first_cycle_at` is when the first cron tick at or after the due instant fires (0 when the reminders fall due
    exactly on a 5-minute boundary, as the bench's burst does: 09:00 local).
    """
    if messages < 0 or latency_seconds < 0 or pause_seconds < 0:
        raise ValueError("messages, latency and pause must be >= 0")
    if cycle_seconds <= 0 or batch_size < 1 or batches_per_cycle < 1 or first_cycle_at < 0:
        raise ValueError("cycle must be > 0, batch size and batches per cycle >= 1, first cycle >= 0")
    per_cycle = batch_size * batches_per_cycle  # getPendingMessages' limit(batchSize * 5)
    times: list[float] = []
    remaining = messages
    tick = first_cycle_at
    busy_until = -math.inf
    cycles = skipped = 0
    while remaining > 0:
        if tick < busy_until:  # isProcessing: this cron run returns at once
            skipped += 1
            tick += cycle_seconds
            continue
        cycles += 1
        now = tick
        taken = min(per_cycle, remaining)
        remaining -= taken
        batches = [min(batch_size, taken - start) for start in range(0, taken, batch_size)]
        for index, size in enumerate(batches):
            for _ in range(size):
                now += latency_seconds  # sequential await sendMessage(message)
                times.append(now)
            if index < len(batches) - 1:
                now += pause_seconds  # await this.delay(2000)
        busy_until = now
        tick += cycle_seconds
    return SpecRun(send_times=times, cycles=cycles, skipped_cycles=skipped)
