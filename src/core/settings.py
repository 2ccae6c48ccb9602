"""Every knob of Rappel, validated once at start-up.

Names are the environment variables (the spec's `SMS_*` / `APP_TIMEZONE` kept as they were). An invalid
value stops the function with a message that names the variable; see `load_settings`.
"""

from __future__ import annotations

import functools
import re
from datetime import time
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.phone import known_region
from core.providers.orange import SENDER_NAME
from core.zones import known_zone


class AmbiguousSendPolicy(StrEnum):
    """What to do when the provider may or may not have accepted a message (timeout after the request left)."""

    ASSUME_SENT = "assume_sent"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


class ProviderName(StrEnum):
    ORANGE = "orange"
    KANNEL = "kannel"


# The setting that holds each provider's endpoint.
PROVIDER_ENDPOINTS: dict[ProviderName, str] = {
    ProviderName.ORANGE: "ORANGE_API_BASE_URL",
    ProviderName.KANNEL: "KANNEL_SENDSMS_URL",
}


_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_hhmm(value: str) -> time:
    """'09:00' -> time(9, 0); raises ValueError naming the expected format."""
    match = _HHMM.match(value.strip())
    if not match:
        raise ValueError(f"expected a local time as HH:MM (00:00-23:59), got {value!r}")
    return time(int(match.group(1)), int(match.group(2)))


PositiveInt = Annotated[int, Field(gt=0)]


class Settings(BaseSettings):
    """Configuration from the environment; see README "Settings" for what each one does."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True)

    # The spec's variables, with the spec's defaults except where docs/architecture.md#departures-from-the-spec
    # changes them.
    SMS_BATCH_SIZE: Annotated[int, Field(ge=1, le=100)] = 50
    SMS_PROCESSING_INTERVAL_MINUTES: Annotated[int, Field(ge=1, le=60)] = 1
    SMS_MAX_RETRIES: Annotated[int, Field(ge=0, le=20)] = 3
    SMS_RETRY_DELAY_MINUTES: Annotated[int, Field(ge=1, le=24 * 60)] = 5
    APP_TIMEZONE: str = "UTC"
    # A finished reminder must outlive its deadline (at most 336 h after its send time): planning creates a wanted
    # reminder whose record is missing, so one deleted sooner would be planned, and sent, a second time.
    SMS_RETENTION_DAYS: Annotated[int, Field(ge=15, le=3650)] = 30
    SMS_HEALTH_CHECK_INTERVAL_MINUTES: Annotated[int, Field(ge=1, le=24 * 60)] = 30
    SMS_ALERT_PENDING_THRESHOLD: Annotated[int, Field(ge=1)] = 1000
    SMS_ALERT_FAILURE_RATE: Annotated[float, Field(gt=0, le=1)] = 0.1
    SMS_ALERT_PROCESSING_DELAY_MINUTES: Annotated[int, Field(ge=1)] = 120
    # Ours: health reports the provider balance below this many units (Orange availableUnits).
    SMS_ALERT_BALANCE_UNITS: Annotated[int, Field(ge=0)] = 1000

    # Provider and pacing.
    SMS_PROVIDER: ProviderName = ProviderName.ORANGE
    # Ordered failover list ("orange,kannel"): sends go to the first whose circuit is closed. Empty: SMS_PROVIDER alone.
    SMS_PROVIDERS: str = ""
    # This many transient provider failures in a row open its circuit (core.circuit: pause, probe, resume).
    SMS_CIRCUIT_FAILURES: Annotated[int, Field(ge=1, le=100)] = 3
    SMS_RATE_LIMIT_PER_SECOND: Annotated[float, Field(ge=2, le=1000)] = 5.0
    SMS_SENDER_MAX_CONCURRENCY: Annotated[int, Field(ge=2, le=1000)] = 5
    SMS_SENDER_CALLS_IN_FLIGHT: Annotated[int, Field(ge=1, le=32)] = 8
    SMS_ON_AMBIGUOUS_SEND: AmbiguousSendPolicy = AmbiguousSendPolicy.ASSUME_SENT
    SMS_GROUP_BY_PHONE: bool = True
    SMS_DISCREET_TEXTS: bool = False
    SMS_MIN_GAP_HOURS: Annotated[int, Field(ge=0, le=72)] = 12
    SMS_MAX_SEGMENTS: Annotated[int, Field(ge=1, le=10)] = 3
    SMS_DEFAULT_REGION: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] = "CI"
    DUE_INDEX_SHARDS: Annotated[int, Field(ge=1, le=100)] = 8
    # How often the follow-up pass (families no reminder reached) runs, on its own schedule.
    FOLLOW_UP_PASS_MINUTES: Annotated[int, Field(ge=5, le=60)] = 15

    # Quiet hours, in the patient's local time; a send time inside them moves to their end.
    SMS_QUIET_HOURS_ENABLED: bool = True
    SMS_QUIET_HOURS_START: str = "20:00"
    SMS_QUIET_HOURS_END: str = "08:00"

    # Per reminder type: offset from the due date in days, local time of day, and how late it may still go out.
    REMINDER_7_DAY_OFFSET_DAYS: Annotated[int, Field(ge=-60, le=-2)] = -7
    REMINDER_7_DAY_TIME: str = "09:00"
    REMINDER_7_DAY_MAX_LATENESS_HOURS: Annotated[int, Field(ge=1, le=24 * 14)] = 48
    REMINDER_1_DAY_OFFSET_DAYS: Annotated[int, Field(ge=-7, le=-1)] = -1
    REMINDER_1_DAY_TIME: str = "09:00"
    REMINDER_1_DAY_MAX_LATENESS_HOURS: Annotated[int, Field(ge=1, le=24 * 7)] = 10
    REMINDER_OVERDUE_OFFSET_DAYS: Annotated[int, Field(ge=1, le=60)] = 1
    REMINDER_OVERDUE_TIME: str = "14:00"
    REMINDER_OVERDUE_MAX_LATENESS_HOURS: Annotated[int, Field(ge=1, le=24 * 14)] = 72

    # How far ahead a due date may be planned (absurd dates are refused).
    MAX_DUE_DATE_YEARS_AHEAD: Annotated[int, Field(ge=1, le=10)] = 3

    # Orange (credentials come from Secrets Manager, never from here).
    ORANGE_API_BASE_URL: str = "https://api.orange.com"
    ORANGE_SENDER_ADDRESS: Annotated[str, Field(pattern=r"^tel:\+\d{4,15}$")] = "tel:+2250000"
    ORANGE_SENDER_NAME: Annotated[str, Field(pattern=SENDER_NAME.pattern)] = ""
    ORANGE_COUNTRY: Annotated[str, Field(pattern=r"^([A-Z]{3})?$")] = "CIV"
    ORANGE_CREDENTIALS_SECRET: str = "rappel/orange-credentials"
    KANNEL_SENDSMS_URL: str = "http://127.0.0.1:13013/cgi-bin/sendsms"
    KANNEL_CREDENTIALS_SECRET: str = "rappel/kannel-credentials"
    # A phone number or an alphanumeric sender (11 characters at most, as SMSCs take them): smsbox refuses every
    # request without one.
    KANNEL_SENDER: Annotated[str, Field(pattern=r"^(\+?\d{3,15}|[A-Za-z0-9][A-Za-z0-9 ]{0,10})$")] = "RAPPEL"
    PROVIDER_CONNECT_TIMEOUT_SECONDS: Annotated[float, Field(gt=0, le=30)] = 3.05
    PROVIDER_READ_TIMEOUT_SECONDS: Annotated[float, Field(gt=0, le=60)] = 10.0

    # Delivery receipts: the token in the registered URL lives in this secret.
    RECEIPT_TOKEN_SECRET: str = "rappel/receipt-token"
    RECEIPT_BASE_URL: str = ""
    # Replies: PatientOptedOut / PatientOptedIn (source `rappel`) go to this EventBridge bus, for the clinic system.
    EVENT_BUS_NAME: Annotated[str, Field(pattern=r"^[A-Za-z0-9._/-]{1,256}$")] = "default"

    # Resources (names from the stack).
    PATIENTS_TABLE: str = "rappel-patients"
    APPOINTMENTS_TABLE: str = "rappel-appointments"
    MESSAGES_TABLE: str = "rappel-messages"
    OPS_TABLE: str = "rappel-ops"
    IDEMPOTENCY_TABLE: str = "rappel-idempotency"
    SEND_QUEUE_URL: str = ""
    DEAD_LETTER_QUEUE_URL: str = ""
    # Where Lambda puts a statistics batch the tally gave up on: read by `rappel retally` (from the stack's outputs),
    # not by the functions, whose environment does not carry it (Lambda's 4 KB).
    TALLY_FAILURE_QUEUE_URL: str = ""
    # Where clinic events planning failed on wait: read by `rappel replay-events`, as TALLY_FAILURE_QUEUE_URL is.
    PLANNING_DEAD_LETTER_QUEUE_URL: str = ""
    AWS_REGION: str = "us-east-1"
    # Set only for the embedded stack / DynamoDB Local; empty means AWS's own endpoints.
    AWS_ENDPOINT_URL: str = ""

    @field_validator("APP_TIMEZONE")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return known_zone(value)

    @field_validator("SMS_DEFAULT_REGION")
    @classmethod
    def _known_region(cls, value: str) -> str:
        return known_region(value)

    @field_validator(
        "SMS_QUIET_HOURS_START",
        "SMS_QUIET_HOURS_END",
        "REMINDER_7_DAY_TIME",
        "REMINDER_1_DAY_TIME",
        "REMINDER_OVERDUE_TIME",
    )
    @classmethod
    def _hhmm(cls, value: str) -> str:
        parse_hhmm(value)
        return value

    @field_validator("SMS_PROVIDERS")
    @classmethod
    def _known_providers(cls, value: str) -> str:
        names = [part.strip() for part in value.split(",") if part.strip()]
        known = {p.value for p in ProviderName}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(
                f"unknown provider(s) {', '.join(unknown)}: expected a comma-separated list of {sorted(known)}"
            )
        if len(set(names)) != len(names):
            raise ValueError("a provider is named twice")
        return ",".join(names)

    @model_validator(mode="after")
    def _providers_configured(self) -> Settings:
        for provider in self.providers:
            endpoint = getattr(self, PROVIDER_ENDPOINTS[provider])
            if not re.match(r"^https?://\S+$", endpoint):
                raise ValueError(
                    f"SMS_PROVIDERS names {provider.value}, whose {PROVIDER_ENDPOINTS[provider]} is not an http(s) URL"
                    f" (got {endpoint!r})"
                )
        return self

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if self.SMS_RATE_LIMIT_PER_SECOND < self.SMS_SENDER_MAX_CONCURRENCY:
            raise ValueError(
                "SMS_RATE_LIMIT_PER_SECOND must be at least SMS_SENDER_MAX_CONCURRENCY (each concurrent sender"
                " needs at least one send per second of the limit)"
            )
        if self.REMINDER_1_DAY_OFFSET_DAYS <= self.REMINDER_7_DAY_OFFSET_DAYS:
            raise ValueError("REMINDER_1_DAY_OFFSET_DAYS must be later than REMINDER_7_DAY_OFFSET_DAYS")
        return self

    @property
    def request_reserve_ms(self) -> float:
        """How much of an invocation a provider request needs, checked right before it is made: the longest it may
        take to connect and to read the answer, and 2 s to record that answer (the token, when one is fetched,
        comes before the check)."""
        return (self.PROVIDER_CONNECT_TIMEOUT_SECONDS + self.PROVIDER_READ_TIMEOUT_SECONDS + 2) * 1000

    @property
    def providers(self) -> tuple[ProviderName, ...]:
        """The providers in failover order: SMS_PROVIDERS, or SMS_PROVIDER alone when it is not set."""
        if not self.SMS_PROVIDERS:
            return (self.SMS_PROVIDER,)
        return tuple(ProviderName(name) for name in self.SMS_PROVIDERS.split(","))

    @property
    def primary_provider(self) -> ProviderName:
        """The provider that takes every send while it works."""
        return self.providers[0]

    @property
    def sender_pace_per_second(self) -> int:
        """Each sender instance's pace, so that all instances together never exceed the limit in any 1-s window.

        An instance spaced 1/n s apart sends at most n times in any one-second window, so n = floor(rate / K)
        keeps K uncoordinated instances at or under the rate wherever their phases fall.
        """
        return int(self.SMS_RATE_LIMIT_PER_SECOND // self.SMS_SENDER_MAX_CONCURRENCY)

    @property
    def senders_rate_per_second(self) -> int:
        """What all senders together send at most in a second: their whole paces added up (4 of a limit of 5 with
        two senders at 2/s each)."""
        return self.sender_pace_per_second * self.SMS_SENDER_MAX_CONCURRENCY

    @property
    def unused_rate_per_second(self) -> float:
        """How much of the limit the senders' whole paces leave unused."""
        return self.SMS_RATE_LIMIT_PER_SECOND - self.senders_rate_per_second

    @property
    def whole_rate_concurrencies(self) -> tuple[int, ...]:
        """The sender concurrencies whose paces add up to the limit's whole part: its divisors, from 2."""
        whole = int(self.SMS_RATE_LIMIT_PER_SECOND)
        return tuple(n for n in range(2, whole + 1) if whole % n == 0)

    @property
    def quiet_hours(self) -> tuple[time, time] | None:
        if not self.SMS_QUIET_HOURS_ENABLED or self.SMS_QUIET_HOURS_START == self.SMS_QUIET_HOURS_END:
            return None
        return parse_hhmm(self.SMS_QUIET_HOURS_START), parse_hhmm(self.SMS_QUIET_HOURS_END)


def sender_concurrency_within(rate: float) -> int:
    """The default sender concurrency, lowered to the rate's whole part for a rate under it (each sender paces at
    least once a second): for tools that take only a rate."""
    default: int = Settings.model_fields["SMS_SENDER_MAX_CONCURRENCY"].default
    return max(2, min(default, int(rate)))


class ConfigurationError(Exception):
    """Raised at start-up when an environment variable is invalid; the message names it."""


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        name = ".".join(str(p) for p in error["loc"]) or "configuration"
        parts.append(f"{name}: {error['msg']} (got {error.get('input')!r})")
    return "invalid configuration: " + "; ".join(parts)


def build_settings(**overrides: Any) -> Settings:
    """Settings from the environment with `overrides` on top; raises ConfigurationError naming each bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigurationError(_describe(exc)) from None


@functools.cache
def load_settings() -> Settings:
    """The process-wide settings, read from the environment once."""
    return build_settings()


def reset_settings() -> None:
    """Forget the cached settings (the embedded runtime and tests change the environment)."""
    load_settings.cache_clear()
