"""The `rappel simulate` scenario format (docs/simulation.md): validated input, errors naming the field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

# What an operator does with `rappel optout PHONE` / `rappel optin PHONE`, at a point of simulated time.
OPERATOR_EVENTS = frozenset({"OptOutByPhone", "OptInByPhone"})


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
    events: list[ScenarioEvent] = Field(default_factory=list)
    seed: int = 0

    _aware = field_validator("start", "until")(classmethod(lambda cls, value: _utc(value)))


class ScenarioError(ValueError):
    """A scenario that cannot run; the message names the field."""


def load_scenario(data: Any) -> Scenario:
    """Validate a scenario; raises ScenarioError naming the first bad field."""
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ScenarioError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    if scenario.until <= scenario.start:
        raise ScenarioError("until: must be after start")
    for i, event in enumerate(scenario.events):
        if event.type in OPERATOR_EVENTS and (
            set(event.detail) != {"phone"} or not isinstance(event.detail["phone"], str)
        ):
            raise ScenarioError(f'events.{i}.detail: {event.type} takes exactly {{"phone": "+…"}}')
    return scenario
