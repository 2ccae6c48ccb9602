"""Clinic events, validated: what `plan_reminders` and `rappel import` accept, and why they refuse the rest.

Validation happens completely before anything is written, so a bad event is never half-applied.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from core.phone import InvalidPhoneNumber, mask_phones, normalize_phone
from core.texts import available_languages, clean_text
from core.zones import known_zone

SOURCE = "rappel.clinic"

Identifier = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]
# A producer's clock may run a little ahead of ours; an event stamped further ahead would freeze its record (every
# correct later update would look older), so it is refused.
MAX_CLOCK_SKEW = timedelta(minutes=5)


def _cleaned(value: Any) -> Any:
    # Validated as it will be sent, so a name of invisible characters is refused here, not at send time.
    return clean_text(value) if isinstance(value, str) else value


ShortText = Annotated[str, BeforeValidator(_cleaned), StringConstraints(min_length=1, max_length=40)]


class DetailType(StrEnum):
    PATIENT_UPSERTED = "PatientUpserted"
    DOSE_SCHEDULED = "DoseScheduled"
    DOSE_ADMINISTERED = "DoseAdministered"
    APPOINTMENT_CANCELLED = "AppointmentCancelled"


class _Detail(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class PatientUpserted(_Detail):
    """A patient was registered or changed (phone, zone, language, consent, preferred hour, name)."""

    patient_id: Identifier
    phone: Annotated[str, StringConstraints(min_length=3, max_length=32)]
    timezone: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    language: Annotated[str, StringConstraints(min_length=2, max_length=8)]
    sms_opt_in: bool
    display_name: ShortText
    preferred_hour: Annotated[int, Field(ge=0, le=23)] | None = None
    # The family renewed its consent at the clinic: this lifts a stop on the number (a routine update does not).
    sms_opt_in_renewed: bool = False
    # Texts that name neither the child nor the vaccine (a phone others may read); null or left out keeps the stored
    # flag (not discreet for a new patient).
    discreet: bool | None = None

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return None if value is None else known_zone(value)

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        if value not in available_languages():
            raise ValueError(f"unsupported language {value!r} (have: {', '.join(sorted(available_languages()))})")
        return value


class DoseScheduled(_Detail):
    """A dose is due on a date (a new appointment, or a reschedule of the same appointment_id)."""

    appointment_id: Identifier
    patient_id: Identifier
    vaccine: ShortText
    dose: Annotated[int, Field(ge=0, le=20)]
    due_date: date
    clinic: Annotated[str, BeforeValidator(_cleaned), StringConstraints(max_length=60)] | None = None


class DoseAdministered(_Detail):
    """The dose was given: its remaining reminders are cancelled."""

    appointment_id: Identifier
    administered_on: date


class AppointmentCancelled(_Detail):
    """The appointment will not happen: its remaining reminders are cancelled."""

    appointment_id: Identifier
    reason: Annotated[str, BeforeValidator(_cleaned), StringConstraints(max_length=200)] | None = None


Detail = PatientUpserted | DoseScheduled | DoseAdministered | AppointmentCancelled

_MODELS: dict[DetailType, type[Detail]] = {
    DetailType.PATIENT_UPSERTED: PatientUpserted,
    DetailType.DOSE_SCHEDULED: DoseScheduled,
    DetailType.DOSE_ADMINISTERED: DoseAdministered,
    DetailType.APPOINTMENT_CANCELLED: AppointmentCancelled,
}


class ClinicEvent(BaseModel):
    """An accepted clinic event: its id and time (for ordering and replays) and its validated detail."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    event_at: datetime
    detail_type: DetailType
    detail: Detail


class InvalidEvent(ValueError):
    """A refused event; `field` names what is wrong. It never echoes a phone number: a value quoted in the reason (a
    phone typed into the zone's column) is masked, since the reason reaches logs, the console and operators."""

    def __init__(self, field: str, reason: str) -> None:
        reason = mask_phones(reason)
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


_CALENDAR_DATE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


def _json_date(value: Any, field: str) -> Any:
    # EventBridge carries JSON: dates arrive as text and are parsed strictly (YYYY-MM-DD, real calendar dates), not
    # as whatever `date.fromisoformat` takes (a week date such as 2027-W12-6 would be planned as some day).
    if value is None:
        return value  # the model says whether it may be missing
    if not isinstance(value, str):  # a number would be taken for a Unix time
        raise InvalidEvent(field, f"must be a YYYY-MM-DD text, not {type(value).__name__}")
    if not _CALENDAR_DATE.fullmatch(value):
        raise InvalidEvent(field, f"not a YYYY-MM-DD date: {value[:20]!r}")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidEvent(field, f"not a calendar date: {value[:20]!r}") from None


def _years_from(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year + years)
    except ValueError:  # 29 February
        return day.replace(year=day.year + years, day=28)


class ClinicEnvelope(EventBridgeModel):
    """The EventBridge envelope of a clinic event: Powertools' model, narrowed to what the clinic system sends."""

    model_config = ConfigDict(populate_by_name=True)

    id: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    source: Literal["rappel.clinic"]
    detail_type: DetailType = Field(alias="detail-type")
    detail: dict[str, Any]

    @field_validator("time")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("must carry a UTC offset or Z")
        return value.astimezone(UTC)


def parse_event(envelope: Any, *, default_region: str, now: datetime, max_years_ahead: int) -> ClinicEvent:
    """Validate an EventBridge envelope from the clinic system; raises InvalidEvent naming the bad field."""
    if not isinstance(envelope, dict):
        raise InvalidEvent("event", "must be a JSON object")
    try:
        parsed = ClinicEnvelope.model_validate(envelope)
    except ValidationError as exc:
        raise _invalid(exc, prefix="") from None
    if parsed.time - now > MAX_CLOCK_SKEW:
        ahead = timedelta(seconds=int((parsed.time - now).total_seconds()))  # to the second: 84 days, 12:02:34
        raise InvalidEvent(
            "time", f"is {ahead} ahead of our clock (at most {MAX_CLOCK_SKEW}): check the sending system's clock"
        )
    detail = _parse_detail(parsed.detail_type, parsed.detail, default_region)
    _check_dates(detail, now.date(), max_years_ahead)
    return ClinicEvent(event_id=parsed.id, event_at=parsed.time, detail_type=parsed.detail_type, detail=detail)


def _invalid(exc: ValidationError, *, prefix: str) -> InvalidEvent:
    """The first error of a validation, as the field it names (`detail.phone`, `time`) and why."""
    first = exc.errors()[0]
    path = ".".join(str(part) for part in first["loc"])
    field = ".".join(part for part in (prefix, path) if part) or prefix or "event"
    return InvalidEvent(field, first["msg"])


def _parse_detail(detail_type: DetailType, raw: dict[str, Any], default_region: str) -> Detail:
    raw = dict(raw)
    for name in ("due_date", "administered_on"):
        if name in raw:
            raw[name] = _json_date(raw[name], f"detail.{name}")
    if detail_type is DetailType.PATIENT_UPSERTED and isinstance(raw.get("phone"), str):
        try:
            raw["phone"] = normalize_phone(raw["phone"], default_region)
        except InvalidPhoneNumber as exc:
            raise InvalidEvent("detail.phone", str(exc)) from None
    try:
        return _MODELS[detail_type].model_validate(raw)
    except ValidationError as exc:
        raise _invalid(exc, prefix="detail") from None


def _check_dates(detail: Detail, today: date, max_years_ahead: int) -> None:
    if isinstance(detail, DoseScheduled):
        if detail.due_date > _years_from(today, max_years_ahead):
            raise InvalidEvent("detail.due_date", f"more than {max_years_ahead} years ahead")
        if detail.due_date < _years_from(today, -max_years_ahead):
            raise InvalidEvent("detail.due_date", f"more than {max_years_ahead} years in the past")
    if isinstance(detail, DoseAdministered) and (detail.administered_on - today).days > 1:
        raise InvalidEvent("detail.administered_on", "is in the future")


def make_envelope(detail_type: str, detail: dict[str, Any], *, event_id: str, at: datetime) -> dict[str, Any]:
    """An EventBridge envelope as the clinic system would put it (used by import, simulate and the samples)."""
    return {
        "version": "0",
        "id": event_id,
        "detail-type": detail_type,
        "source": SOURCE,
        "account": "000000000000",
        "time": at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": "us-east-1",
        "resources": [],
        "detail": detail,
    }
