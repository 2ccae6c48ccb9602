"""The audit trail's writes on AWS's own DynamoDB Local (issue 14, item 1): the bounded append in the status change's
own UpdateItem (list_append below the bound; SET past the end with REMOVE of the oldest at it) is accepted and does
there what it does on moto. The checks are tests/integration/test_history.py's."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from core import store
from core.settings import Settings, build_settings
from rappel_local.stack import create_stack
from tests.integration.test_history import CHECKS

pytestmark = pytest.mark.contract


@pytest.fixture
def settings(dynamodb_local_endpoint: str, virtual_clock: Any) -> Iterator[Settings]:
    stack = create_stack(
        prefix=f"h{uuid.uuid4().hex[:8]}", endpoint_url=dynamodb_local_endpoint, services=("dynamodb",)
    )
    store.unbind()
    configured = build_settings(**stack.environment())
    store.bind(configured)
    yield configured
    store.unbind()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
def test_history_on_dynamodb_local(settings: Settings, check: Any) -> None:
    check(settings)
