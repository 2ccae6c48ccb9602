"""Builders for clinic events used across suites."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

from core import clock
from core.events import make_envelope

_ids = itertools.count(1)


def envelope(
    detail_type: str, at: datetime | None = None, event_id: str | None = None, **detail: Any
) -> dict[str, Any]:
    """An EventBridge clinic event with a fresh id (or the given one)."""
    return make_envelope(detail_type, detail, event_id=event_id or f"evt-{next(_ids)}", at=at or clock.now())


def patient(patient_id: str = "p1", **overrides: Any) -> dict[str, Any]:
    """A PatientUpserted event."""
    detail = {
        "patient_id": patient_id,
        "phone": "+2250701020304",
        "timezone": "Africa/Abidjan",
        "language": "fr",
        "sms_opt_in": True,
        "display_name": "Awa",
    }
    at = overrides.pop("at", None)
    event_id = overrides.pop("event_id", None)
    return envelope("PatientUpserted", at, event_id, **{**detail, **overrides})


def dose(
    appointment_id: str = "a1", patient_id: str = "p1", due_date: str = "2027-03-20", **overrides: Any
) -> dict[str, Any]:
    """A DoseScheduled event."""
    detail = {
        "appointment_id": appointment_id,
        "patient_id": patient_id,
        "vaccine": "Penta",
        "dose": 2,
        "due_date": due_date,
        "clinic": "CSU Abobo",
    }
    at = overrides.pop("at", None)
    event_id = overrides.pop("event_id", None)
    return envelope("DoseScheduled", at, event_id, **{**detail, **overrides})
