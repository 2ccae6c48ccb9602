"""Provider-wide state shared by every function: the sending hold and the time of the last accepted send.

A provider-wide failure (no bundle left, revoked credentials) holds all sending for a while instead of
burning every message's attempts; the health check reports the hold and an alarm watches it.
"""

from __future__ import annotations

from datetime import datetime

from core import store
from core.store import iso, parse_iso

_PROVIDER = "PROVIDER"
_HOLD = "HOLD"
_LAST_SEND = "LAST_SEND"


def hold_until(now: datetime) -> datetime | None:
    """When the current hold ends, or None when sending is not held."""
    item = store.get_ops_value(_PROVIDER, _HOLD)
    if item is None or not item.text:
        return None
    until = parse_iso(item.text.split("|", 1)[0])
    return until if until > now else None


def hold_reason() -> str | None:
    """Why sending is (or was last) held."""
    item = store.get_ops_value(_PROVIDER, _HOLD)
    return item.text.split("|", 1)[1] if item is not None and item.text and "|" in item.text else None


def hold(until: datetime, reason: str) -> None:
    """Hold all sending until `until`."""
    store.put_ops_value(_PROVIDER, _HOLD, text=f"{iso(until)}|{reason}")


def release() -> None:
    """End a hold now (operator command, or a send that succeeded)."""
    store.delete_ops_value(_PROVIDER, _HOLD)


def record_send(at: datetime) -> None:
    """Remember the last accepted send (health: time since the last send while work is due)."""
    store.put_ops_value(_PROVIDER, _LAST_SEND, text=iso(at))


def last_send() -> datetime | None:
    """When the provider last accepted a message."""
    item = store.get_ops_value(_PROVIDER, _LAST_SEND)
    return parse_iso(item.text) if item is not None and item.text else None
