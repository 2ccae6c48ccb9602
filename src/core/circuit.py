"""A provider's circuit: the pure rules for when sending to a provider pauses, probes and resumes.

An outage (a run of transient failures: 5xx, connection errors, timeouts) opens the circuit: sending to that
provider pauses without burning any message's attempts, one request probes it about once a minute, and the first
probe it accepts closes the circuit again. A provider-wide refusal (no bundle left, revoked credentials) is a
hold: the same circuit, opened at once, probed every 30 minutes. No I/O here: `provider_state`
reads and writes the circuits, these functions decide.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

# An outage is probed about once a minute: soon enough that reminders go out within a minute or two of the
# provider's return, rare enough to cost nothing. A hold is probed every 30 minutes: a bundle is bought by a person.
PROBE_INTERVAL = timedelta(minutes=1)
HOLD_INTERVAL = timedelta(minutes=30)


# A probe whose read (a request that sends nothing) gets no answer sends no SMS, except at every thirtieth failure of
# the run: a read that is silent on its own while sends work then delays sending by half an hour at most, never for
# good, and a real hang costs one reminder every half hour instead of one a minute.
SEND_PROBE_EVERY = 30


class CircuitKind(StrEnum):
    """Why a circuit is open: an outage (probed often) or a hold (a provider-wide refusal, probed rarely)."""

    OUTAGE = "outage"
    HOLD = "hold"


@dataclass(frozen=True)
class Circuit:
    """One provider's circuit as stored: the current run of transient failures and, when open, until when.

    `retry_at` is None while the circuit is closed; once set, nothing is sent to the provider before it, and the
    first sender to claim the probe after it moves it on by one probe interval (so one request probes at a time).
    """

    provider: str
    failures: int = 0
    retry_at: datetime | None = None
    opened_at: datetime | None = None
    kind: CircuitKind | None = None
    reason: str = ""

    @property
    def is_open(self) -> bool:
        """Whether sending to this provider is paused (or only probing)."""
        return self.retry_at is not None

    def probe_due(self, now: datetime) -> bool:
        """Open, and its next probe may go now."""
        return self.retry_at is not None and self.retry_at <= now


@dataclass(frozen=True)
class CircuitRules:
    """How many transient failures in a row open a circuit, and how often an open one is probed."""

    failures_to_open: int
    probe_interval: timedelta
    hold_interval: timedelta

    def interval(self, kind: CircuitKind) -> timedelta:
        """How long an open circuit of this kind waits before its next probe."""
        return self.hold_interval if kind is CircuitKind.HOLD else self.probe_interval


def after_transient_failure(circuit: Circuit, now: datetime, rules: CircuitRules, reason: str) -> Circuit:
    """The circuit after one more transient failure (`circuit.failures` already counts it): opened when the run
    reaches the threshold, re-opened for another interval when it was a failed probe."""
    if circuit.is_open:
        if circuit.retry_at is not None and circuit.retry_at > now:
            return replace(circuit, reason=reason)  # the probe's claim has set the next one already
        kind = circuit.kind or CircuitKind.OUTAGE
        return replace(circuit, retry_at=now + rules.interval(kind), reason=reason)
    if circuit.failures >= rules.failures_to_open:
        return replace(
            circuit, retry_at=now + rules.probe_interval, opened_at=now, kind=CircuitKind.OUTAGE, reason=reason
        )
    return circuit


def held(circuit: Circuit, now: datetime, rules: CircuitRules, reason: str, until: datetime | None = None) -> Circuit:
    """The circuit after a provider-wide refusal: open as a hold until the next hold probe (or `until`, when the
    provider said when to come back)."""
    return replace(
        circuit,
        retry_at=until or now + rules.hold_interval,
        opened_at=circuit.opened_at or now,
        kind=CircuitKind.HOLD,
        reason=reason,
    )


def probe_sends_unanswered(circuit: Circuit) -> bool:
    """Whether a probe whose read got no answer (`circuit.failures` counting it) sends its SMS all the same."""
    return circuit.failures % SEND_PROBE_EVERY == 0


def probe_claimed(circuit: Circuit, now: datetime, rules: CircuitRules) -> Circuit:
    """The circuit once a sender has taken its due probe: the next probe waits one more interval."""
    return replace(circuit, retry_at=now + rules.interval(circuit.kind or CircuitKind.OUTAGE))


@dataclass(frozen=True)
class Route:
    """Where the next request goes: a provider (`probe` when its circuit is open), or nowhere until `paused_until`."""

    provider: str | None
    probe: bool = False
    paused_until: datetime | None = None


def route(order: tuple[str, ...], circuits: dict[str, Circuit], now: datetime) -> Route:
    """The first provider in failover order that may take a request now: closed, or open with its probe due (a
    probe of the first provider goes before traffic on the second, so traffic returns once it answers again);
    else nowhere until the earliest probe."""
    for name in order:
        circuit = circuits.get(name)
        if circuit is None or not circuit.is_open:
            return Route(name)
        if circuit.probe_due(now):
            return Route(name, probe=True)
    retry_times = [c.retry_at for name, c in circuits.items() if c.retry_at is not None and name in order]
    return Route(None, paused_until=min(retry_times) if retry_times else None)
