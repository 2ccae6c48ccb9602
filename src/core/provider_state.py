"""Provider-wide state shared by every function: each provider's circuit and the time of the last accepted send.

The rules live in `core.circuit`; this module reads and writes the circuits (the ops table, through the store)
and caches them for a few seconds, so a sender pays one read per five seconds while all is well, a write per
transient failure, and nothing per accepted send unless a failure was counted before it.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from core import store
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
)
from core.circuit import route as route_by
from core.observability import logger
from core.settings import Settings
from core.store import OpsRecord, iso, parse_iso

_PROVIDER = "PROVIDER"
_LAST_SEND = "LAST_SEND"
_LONG_AGO = datetime(1970, 1, 1, tzinfo=UTC)
_FRESH_FOR = timedelta(seconds=5)  # a circuit opened by another instance is seen within this, at one read per 5 s


@dataclass(frozen=True)
class _Stored:
    """One provider's circuit as read, with the stored values a conditional write must find unchanged."""

    circuit: Circuit
    failures: float
    text: str | None


# (read at, what was read by provider): what this process last read.
_cache: tuple[datetime, dict[str, _Stored]] | None = None
_lock = threading.Lock()  # the sender's lanes share the cache


def rules(settings: Settings) -> CircuitRules:
    """The circuit thresholds of these settings."""
    return CircuitRules(
        failures_to_open=settings.SMS_CIRCUIT_FAILURES, probe_interval=PROBE_INTERVAL, hold_interval=HOLD_INTERVAL
    )


def _decode(record: OpsRecord) -> Circuit:
    try:
        return _decoded(record)
    except (ValueError, TypeError, AttributeError) as exc:
        # A kind or a time this version cannot read (a newer version's, after a rollback): an outage whose probe is
        # due, so that one request tests the provider and its answer rewrites the circuit in this version's terms.
        extra = {"provider": record.sk, "error": type(exc).__name__}
        logger.error("circuit unreadable: taken as an outage", extra=extra)
        return Circuit(
            provider=record.sk,
            failures=int(record.value or 0),
            retry_at=_LONG_AGO,
            kind=CircuitKind.OUTAGE,
            reason="circuit unreadable",
        )


def _decoded(record: OpsRecord) -> Circuit:
    state = json.loads(record.text) if record.text else {}
    return Circuit(
        provider=record.sk,
        failures=int(record.value or 0),
        retry_at=parse_iso(state["retry_at"]) if state.get("retry_at") else None,
        opened_at=parse_iso(state["opened_at"]) if state.get("opened_at") else None,
        kind=CircuitKind(state["kind"]) if state.get("kind") else None,
        reason=str(state.get("reason", "")),
    )


def _encode(circuit: Circuit) -> str:
    return json.dumps(
        {
            "retry_at": iso(circuit.retry_at) if circuit.retry_at else None,
            "opened_at": iso(circuit.opened_at) if circuit.opened_at else None,
            "kind": circuit.kind.value if circuit.kind else None,
            "reason": circuit.reason[:300],
        },
        sort_keys=True,
    )


def _read(now: datetime, *, fresh: bool = False) -> dict[str, _Stored]:
    """Every stored circuit, read at most every few seconds (always when `fresh`): one snapshot, so that a circuit
    and the values its conditional writes expect always come from the same read."""
    global _cache
    with _lock:
        if fresh or _cache is None or not timedelta(0) <= now - _cache[0] < _FRESH_FOR:
            records = store.read_circuits()
            _cache = (now, {str(r.sk): _Stored(_decode(r), float(r.value or 0), r.text) for r in records})
        return dict(_cache[1])


def circuits(now: datetime, *, fresh: bool = False) -> dict[str, Circuit]:
    """Every provider's circuit that is not simply closed (a provider absent here is closed, with no failure)."""
    return {name: stored.circuit for name, stored in _read(now, fresh=fresh).items()}


def open_circuits(settings: Settings, now: datetime, *, fresh: bool = False) -> tuple[Circuit, ...]:
    """The open circuits of the providers in use: one taken out of the settings keeps its last circuit stored, and
    nothing routes to it again to close it."""
    in_use = {p.value for p in settings.providers}
    return tuple(c for name, c in circuits(now, fresh=fresh).items() if c.is_open and name in in_use)


def route(settings: Settings, now: datetime, skip: tuple[str, ...] = ()) -> Route:
    """Where a request may go now, in the providers' failover order less `skip` (see `core.circuit.route`)."""
    return route_by(tuple(p.value for p in settings.providers if p.value not in skip), circuits(now), now)


def paused_until(settings: Settings, now: datetime) -> datetime | None:
    """When sending may resume, while no provider may take a request; None when one may."""
    return route(settings, now).paused_until


def take_route(settings: Settings, now: datetime, skip: tuple[str, ...] = ()) -> Route:
    """The provider for the next request, having claimed its probe when its circuit is open (one sender probes;
    the others go on down the failover order, or wait); never one in `skip` (found down by this request)."""
    order = tuple(p.value for p in settings.providers if p.value not in skip)
    known = _read(now)
    for _ in order:
        chosen = route_by(order, {name: stored.circuit for name, stored in known.items()}, now)
        if chosen.provider is None or not chosen.probe:
            return chosen
        stored = known[chosen.provider]
        claimed = probe_claimed(stored.circuit, now, rules(settings))
        if store.replace_circuit_state(chosen.provider, stored.text, _encode(claimed)):
            _forget_cache()
            return chosen
        known = _read(now, fresh=True)
    return route_by(order, {name: stored.circuit for name, stored in known.items()}, now)


def record_answer(provider: str, now: datetime) -> None:
    """The provider answered (accepted, refused one number, throttled): a run of failures ends, an open circuit
    closes. Free while nothing was counted: this process's last read says whether there is anything to close."""
    stored = _read(now).get(provider)
    if stored is None:
        return
    if not store.close_circuit(provider, stored.failures, stored.text):
        # It moved since this process read it (a failure counted, a probe claimed): read it again and close that.
        stored = _read(now, fresh=True).get(provider)
        if stored is not None:
            store.close_circuit(provider, stored.failures, stored.text)
    _forget_cache()


def record_transient_failure(provider: str, now: datetime, settings: Settings, reason: str) -> Circuit:
    """Count one transient failure (5xx, connection error, timeout) and open the circuit when the run is long
    enough, or keep it open after a failed probe. Returns the circuit as it now is: open means the failure was
    the provider's, not the message's."""
    record = store.count_circuit_failure(provider)
    counted = _decode(record)
    after = after_transient_failure(counted, now, rules(settings), reason)
    if after != counted and not store.replace_circuit_state(provider, record.text, _encode(after)):
        after = circuits(now, fresh=True).get(provider, counted)  # another sender opened it first
    _forget_cache()
    return after


def hold(provider: str, now: datetime, settings: Settings, reason: str, until: datetime | None = None) -> Circuit:
    """Open the provider's circuit as a hold (a provider-wide refusal: no bundle, revoked credentials; a quota
    spent, `until` the provider's Retry-After)."""
    stored = _read(now, fresh=True).get(provider, _Stored(Circuit(provider), 0.0, None))
    after = held(stored.circuit, now, rules(settings), reason, until)
    if not store.replace_circuit_state(provider, stored.text, _encode(after)):
        after = circuits(now, fresh=True).get(provider, after)
    _forget_cache()
    return after


def release() -> list[Circuit]:
    """Close every circuit now (operator command, after buying a bundle or fixing credentials); what they were.
    A circuit that moved while it was being closed (a probe claimed) is read again and closed."""
    closed = []
    for _ in range(3):
        remaining = store.read_circuits()
        if not remaining:
            break
        closed += [_decode(r) for r in remaining if store.close_circuit(str(r.sk), float(r.value or 0), r.text)]
    _forget_cache()
    return closed


def _forget_cache() -> None:
    global _cache
    with _lock:
        _cache = None


def forget() -> None:
    """Drop the cached circuits (tests and the embedded stack switch backends)."""
    _forget_cache()


def record_send(at: datetime) -> None:
    """Remember the last accepted send (health: time since the last send while work is due), never moving it back:
    the tally's batches from two shards may arrive in any order."""
    store.put_ops_text_if_later(_PROVIDER, _LAST_SEND, iso(at))


def last_send() -> datetime | None:
    """When a provider last accepted a message."""
    item = store.get_ops_value(_PROVIDER, _LAST_SEND)
    return parse_iso(item.text) if item is not None and item.text else None
