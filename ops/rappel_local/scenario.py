"""The `rappel simulate` scenario format (docs/simulation.md): validated input, errors naming the field."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from core.phone import InvalidPhoneNumber, normalize_phone
from core.settings import Settings
from rappel_local.provider_simulator import Fault

# What an operator does with `rappel optout PHONE` / `rappel optin PHONE`, at a point of simulated time.
OPERATOR_EVENTS = frozenset({"OptOutByPhone", "OptInByPhone"})
# A reply from a phone, delivered to the inbound endpoint as Kannel's sms-service would: {"from": "+…", "text": …}.
INBOUND_EVENT = "InboundSms"

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_ONEAPI_ID = re.compile(r"^(SVC|POL)\d{4}$")

Phone = Annotated[str, StringConstraints(pattern=_E164.pattern)]
Count = Annotated[int, Field(strict=True)]
Amount = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class FaultSpec(BaseModel):
    """One injected failure of a scenario's `provider.faults` (docs/simulation.md#faults)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    start: AwareDatetime | None = Field(None, alias="from")
    until: AwareDatetime | None = None
    to: Phone | None = None
    nth: Annotated[Count, Field(ge=1)] | None = None
    status: Annotated[Count, Field(ge=400, le=599)] | None = None
    message_id: Annotated[str, StringConstraints(pattern=_ONEAPI_ID.pattern)] | None = None
    code: Annotated[Count, Field(ge=0)] | None = None
    timeout: Literal["after_send", "before_send", "any_request"] | None = None
    retry_after: Annotated[Amount, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FaultSpec:
        # Each message starts with the field it is about: `scenario_error` puts it in the path.
        if self.start is not None and self.until is not None and self.until <= self.start:
            raise ValueError("until: must be after from")
        if (self.status is None) == (self.timeout is None):
            raise ValueError("status: give exactly one of status or timeout")
        if self.timeout is not None:
            extra = [name for name in ("message_id", "code", "retry_after") if getattr(self, name) is not None]
            if extra:
                raise ValueError(f"{extra[0]}: only allowed with status")
        if self.timeout == "any_request" and (self.to is not None or self.nth is not None):
            raise ValueError("timeout: any_request hangs the whole gateway: give neither to nor nth")
        if self.message_id is not None and not 400 <= (self.status or 0) <= 499:
            raise ValueError("message_id: OneAPI errors need a 4xx status")
        if self.message_id is not None and self.code is not None:
            raise ValueError("code: give either code (gateway shape) or message_id (OneAPI shape)")
        return self

    def fault(self) -> Fault:
        """The simulator's fault."""
        return Fault(**self.model_dump(exclude_none=False))


# What only Orange has: a token, a bundle of units, a rate limit answered with 429, its two error body shapes.
_ORANGE_ONLY = ("token_lifetime_seconds", "available_units", "bundle_expires_at", "rate_limit_per_second")
_ORANGE_ONLY_FAULT = ("message_id", "code", "retry_after")


class ProviderSpec(BaseModel):
    """A scenario's `provider` (or `fallback_provider`) object: which simulator, and how it misbehaves
    (docs/simulation.md#provider)."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["orange", "kannel"] = "orange"
    latency_ms: Annotated[Amount, Field(ge=0)] = 0
    receipt_delay_seconds: Annotated[Amount, Field(ge=0)] = 0
    faults: list[FaultSpec] = Field(default_factory=list)
    undeliverable: list[Phone] = Field(default_factory=list)
    token_lifetime_seconds: Annotated[Count, Field(ge=1)] = 3600
    available_units: Annotated[Count, Field(ge=0)] = 1_000_000
    bundle_expires_at: AwareDatetime | None = None
    rate_limit_per_second: Annotated[Amount, Field(gt=0)] | None = None

    @model_validator(mode="after")
    def _fits_the_gateway(self) -> ProviderSpec:
        if self.name == "orange":
            return self
        for name in _ORANGE_ONLY:
            if name in self.model_fields_set:
                raise ValueError(f"{name}: only the Orange simulator has it")
        for i, fault in enumerate(self.faults):
            for name in _ORANGE_ONLY_FAULT:
                if getattr(fault, name) is not None:
                    raise ValueError(f"faults.{i}.{name}: only the Orange simulator has it")
        return self


def provider_spec(provider_cfg: Any, gateway: str, where: str = "provider") -> ProviderSpec:
    """Validate a provider block for the simulator of `gateway`; raises ValueError naming the bad field."""
    if not isinstance(provider_cfg, dict):
        raise ValueError(f"{where}: expected an object, got {provider_cfg!r}")
    try:
        spec = ProviderSpec.model_validate(provider_cfg)
    except ValidationError as exc:
        raise scenario_error(exc, where) from None
    if spec.name != gateway:
        raise ValueError(f"{where}.name: {spec.name!r} is not the {gateway} simulator")
    return spec


def scenario_error(exc: ValidationError, where: str = "provider") -> ValueError:
    """A provider block's error, naming its field as `provider.latency_ms` or `provider.faults[1].status`."""
    first = exc.errors()[0]
    loc: list[str | int] = list(first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "value_error" and ": " in message:  # a rule between fields: the message names the field
        field, message = message.split(": ", 1)
        loc += [int(part) if part.isdigit() else part for part in field.split(".")]
    path = where + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    return ValueError(f"{path}: {message}")


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("must carry a UTC offset or Z")
    return value.astimezone(UTC)


class ScenarioEvent(BaseModel):
    """One clinic event at a point of simulated time."""

    model_config = ConfigDict(extra="forbid")

    at: datetime
    type: str
    detail: dict[str, Any]
    id: str | None = None
    # The producer's stamp (the envelope's `time`) when it differs from the delivery time `at`: a clinic PC whose
    # clock is wrong, or a late sync of an old change.
    time: datetime | None = None

    _aware = field_validator("at", "time")(classmethod(lambda cls, value: value if value is None else _utc(value)))


class Scenario(BaseModel):
    """The `rappel simulate` input (docs/simulation.md#scenario-format)."""

    model_config = ConfigDict(extra="forbid")

    start: datetime
    until: datetime
    settings: dict[str, str | int | float | bool] = Field(default_factory=dict)
    provider: dict[str, Any] = Field(default_factory=lambda: {"name": "orange"})
    # A second gateway, used when the first is held or down (SMS_PROVIDERS="<provider>,<fallback_provider>").
    fallback_provider: dict[str, Any] | None = None
    events: list[ScenarioEvent] = Field(default_factory=list)
    seed: int = 0

    _aware = field_validator("start", "until")(classmethod(lambda cls, value: _utc(value)))


class ScenarioError(ValueError):
    """A scenario that cannot run; the message names the field."""


# Settings the simulator itself gives the run (its stack's tables, queues and secrets, the gateways' endpoints, the
# receipt URL); a scenario names its gateways with `provider` and `fallback_provider`.
HARNESS_SETTINGS = frozenset(
    {"SMS_PROVIDER", "SMS_PROVIDERS", "ORANGE_API_BASE_URL", "KANNEL_SENDSMS_URL", "RECEIPT_BASE_URL"}
)


def _check_settings(settings: dict[str, Any]) -> None:
    """A scenario's `settings`: Settings' own names only, and none the simulator sets (a typo would be ignored, and
    an override of the simulator's would run against nothing, silently)."""
    for name in settings:
        if name not in Settings.model_fields:
            raise ScenarioError(f"settings.{name}: not a setting (see core.settings.Settings)")
        if name in HARNESS_SETTINGS or name.endswith(("_TABLE", "_QUEUE_URL", "_SECRET")) or name.startswith("AWS_"):
            raise ScenarioError(f"settings.{name}: set by the simulator (name the gateways with provider)")


def load_scenario(data: Any) -> Scenario:
    """Validate a scenario; raises ScenarioError naming the first bad field."""
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ScenarioError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    if scenario.until <= scenario.start:
        raise ScenarioError("until: must be after start")
    _check_settings(scenario.settings)
    region = str(scenario.settings.get("SMS_DEFAULT_REGION", Settings.model_fields["SMS_DEFAULT_REGION"].default))
    for i, event in enumerate(scenario.events):
        if event.type in OPERATOR_EVENTS and (
            set(event.detail) != {"phone"} or not isinstance(event.detail["phone"], str)
        ):
            raise ScenarioError(f'events.{i}.detail: {event.type} takes exactly {{"phone": "+…"}}')
        if event.type in OPERATOR_EVENTS:
            try:
                normalize_phone(event.detail["phone"], region)
            except InvalidPhoneNumber as exc:  # refused here, before the run, not when the run reaches it
                raise ScenarioError(f"events.{i}.detail.phone: {exc}") from None
        if event.type == INBOUND_EVENT and (
            set(event.detail) != {"from", "text"} or not all(isinstance(v, str) for v in event.detail.values())
        ):
            raise ScenarioError(f'events.{i}.detail: {INBOUND_EVENT} takes exactly {{"from": "+…", "text": "…"}}')
    fallback = scenario.fallback_provider
    if fallback is not None and fallback.get("name", "orange") == scenario.provider.get("name", "orange"):
        raise ScenarioError("fallback_provider.name: must name another gateway than provider.name")
    return scenario
