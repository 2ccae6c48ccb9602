"""Provider-wide state shared by every function: the sending hold and the time of the last accepted send.

A provider-wide failure (no bundle left, revoked credentials) holds all sending for a while instead of
burning every message's attempts; the health check reports the hold and an alarm watches it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from core import store
from core.store import iso, parse_iso

_PROVIDER = "PROVIDER"
_HOLD = "HOLD"
_LAST_SEND = "LAST_SEND"
_FRESH_FOR = timedelta(seconds=5)  # a hold set by another instance is seen within this, at one read per 5 s

_cache: tuple[datetime, datetime | None] | None = None  # (read at, hold end)


def hold_until(now: datetime) -> datetime | None:
    """When the current hold ends, or None when sending is not held."""
    global _cache
    if _cache is None or not timedelta(0) <= now - _cache[0] < _FRESH_FOR:
        item = store.get_ops_value(_PROVIDER, _HOLD)
        until = parse_iso(item.text.split("|", 1)[0]) if item is not None and item.text else None
        _cache = (now, until)
    until = _cache[1]
    return until if until is not None and until > now else None


def hold_reason() -> str | None:
    """Why sending is (or was last) held."""
    item = store.get_ops_value(_PROVIDER, _HOLD)
    return item.text.split("|", 1)[1] if item is not None and item.text and "|" in item.text else None


def hold(until: datetime, reason: str) -> None:
    """Hold all sending until `until`."""
    global _cache
    store.put_ops_value(_PROVIDER, _HOLD, text=f"{iso(until)}|{reason}")
    _cache = None


def release() -> None:
    """End a hold now (operator command)."""
    global _cache
    store.delete_ops_value(_PROVIDER, _HOLD)
    _cache = None


def forget() -> None:
    """Drop the cached hold (tests and the embedded stack switch backends)."""
    global _cache
    _cache = None


def record_send(at: datetime) -> None:
    """Remember the last accepted send (health: time since the last send while work is due)."""
    store.put_ops_value(_PROVIDER, _LAST_SEND, text=iso(at))


def last_send() -> datetime | None:
    """When the provider last accepted a message."""
    item = store.get_ops_value(_PROVIDER, _LAST_SEND)
    return parse_iso(item.text) if item is not None and item.text else None
