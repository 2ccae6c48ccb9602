"""What Rappel tells the clinic system: events on EventBridge (source `rappel`), published from this one place.

A reply that opts a phone out or in changes what the clinic's own records should say (the family no longer wants
SMS); the clinic system learns of it from a `PatientOptedOut` / `PatientOptedIn` event on `EVENT_BUS_NAME`.
An event carries no full phone number: the masked form, and the patients' ids, which the clinic knows.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from core.settings import Settings

SOURCE = "rappel"


class DetailType(StrEnum):
    """The events Rappel publishes (the `detail-type` of each)."""

    PATIENT_OPTED_OUT = "PatientOptedOut"
    PATIENT_OPTED_IN = "PatientOptedIn"
    # A family not reached whose dose is overdue (one at a time per appointment), and its close (core.followup).
    FOLLOW_UP_NEEDED = "FollowUpNeeded"
    FOLLOW_UP_CLOSED = "FollowUpClosed"


class EventNotPublished(RuntimeError):
    """The event is not on the bus: EventBridge refused it, or the call failed (an outage, a throttle after
    botocore's retries). Its error code and message, or the error's type, are in the text."""


@functools.cache
def _events(region: str, endpoint: str) -> Any:
    return boto3.client("events", region_name=region, endpoint_url=endpoint or None)


def reset_clients() -> None:
    """Drop the cached client (the embedded stack and tests start new endpoints)."""
    _events.cache_clear()


def publish(detail_type: DetailType, detail: Mapping[str, Any], at: datetime, settings: Settings) -> None:
    """Put one event on the configured bus; raises EventNotPublished when it is not there (refused, or the call
    failed): callers keep what they must publish for later on that one error."""
    entry = {
        "Source": SOURCE,
        "DetailType": detail_type.value,
        "Detail": json.dumps(dict(detail), separators=(",", ":"), sort_keys=True),
        "EventBusName": settings.EVENT_BUS_NAME,
        "Time": at,
    }
    try:
        response = _events(settings.AWS_REGION, settings.AWS_ENDPOINT_URL).put_events(Entries=[entry])
    except (ClientError, BotoCoreError) as exc:
        raise EventNotPublished(f"{detail_type.value}: {type(exc).__name__}") from exc
    if response.get("FailedEntryCount"):
        entry = (response.get("Entries") or [{}])[0]
        raise EventNotPublished(f"{detail_type.value}: {entry.get('ErrorCode')}: {entry.get('ErrorMessage')}")
