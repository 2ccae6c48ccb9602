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

from core.settings import Settings

SOURCE = "rappel"


class DetailType(StrEnum):
    """The events Rappel publishes (the `detail-type` of each)."""

    PATIENT_OPTED_OUT = "PatientOptedOut"
    PATIENT_OPTED_IN = "PatientOptedIn"
    # A family not reached whose dose is overdue (once per appointment), and its close (core.followup).
    FOLLOW_UP_NEEDED = "FollowUpNeeded"
    FOLLOW_UP_CLOSED = "FollowUpClosed"


class EventNotPublished(RuntimeError):
    """EventBridge refused the event (its error code and message are in the text)."""


@functools.cache
def _events(region: str, endpoint: str) -> Any:
    return boto3.client("events", region_name=region, endpoint_url=endpoint or None)


def reset_clients() -> None:
    """Drop the cached client (the embedded stack and tests start new endpoints)."""
    _events.cache_clear()


def publish(detail_type: DetailType, detail: Mapping[str, Any], at: datetime, settings: Settings) -> None:
    """Put one event on the configured bus; raises EventNotPublished when EventBridge refuses it."""
    response = _events(settings.AWS_REGION, settings.AWS_ENDPOINT_URL).put_events(
        Entries=[
            {
                "Source": SOURCE,
                "DetailType": detail_type.value,
                "Detail": json.dumps(dict(detail), separators=(",", ":"), sort_keys=True),
                "EventBusName": settings.EVENT_BUS_NAME,
                "Time": at,
            }
        ]
    )
    if response.get("FailedEntryCount"):
        entry = (response.get("Entries") or [{}])[0]
        raise EventNotPublished(f"{detail_type.value}: {entry.get('ErrorCode')}: {entry.get('ErrorMessage')}")
