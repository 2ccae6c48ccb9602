"""Shared fixtures: a fake AWS account on moto built from template.yaml, and a virtual clock."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "Rappel")
os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "rappel")
os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "1")

from core import clock
from core.settings import Settings, build_settings

START = datetime(2027, 3, 1, 8, 0, tzinfo=UTC)


@dataclass
class FakeAws:
    """The embedded stack inside moto, with settings pointing at it."""

    settings: Settings
    environment: dict[str, str]
    clock: clock.VirtualClock

    def with_settings(self, **overrides: object) -> Settings:
        """The same stack with some settings changed."""
        self.settings = build_settings(**{**self.environment, **overrides})
        return self.settings


@pytest.fixture
def virtual_clock() -> Iterator[clock.VirtualClock]:
    """A virtual clock installed as core's clock for the test."""
    vc = clock.VirtualClock(START)
    previous = clock.install(vc)
    yield vc
    clock.install(previous)


@pytest.fixture
def aws(virtual_clock: clock.VirtualClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAws]:
    """moto with every table, queue and secret of template.yaml, and settings (and env) pointing at them."""
    from moto import mock_aws

    from rappel_local.embedded import reset_core_caches
    from rappel_local.stack import create_stack

    with mock_aws():
        stack = create_stack(
            prefix="test",
            endpoint_url=None,
            orange_credentials={"client_id": "rappel-test", "client_secret": "s3cret-test"},
            kannel_credentials={"username": "kannel", "password": "kannel-pass"},
        )
        environment = {**stack.environment(), "SMS_QUIET_HOURS_ENABLED": "true"}
        for key, value in environment.items():
            monkeypatch.setenv(key, value)
        reset_core_caches()
        yield FakeAws(build_settings(**environment), environment, virtual_clock)
        reset_core_caches()
