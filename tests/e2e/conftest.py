"""Fixtures for every e2e module."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from rappel_local.orange_simulator import OrangeSimulator


@pytest.fixture(scope="module", autouse=True)
def _one_botocore_session_for_pynamodb() -> Iterator[None]:
    """Speed only: pynamodb builds a fresh botocore session (and re-reads the service models from disk) for every
    model on every run; sharing one cuts about a third of each simulation's CPU time. Nothing else changes: the
    models still get new connections, bound to the run's tables, and moto intercepts the session's clients."""
    import botocore.session
    import pynamodb.connection.base as pynamodb_connection
    from moto import mock_aws  # noqa: F401 - moto's request hook must be registered before the session is made

    shared = botocore.session.get_session()
    patch = pytest.MonkeyPatch()
    patch.setattr(pynamodb_connection, "get_session", lambda: shared)
    yield
    patch.undo()


@dataclass(frozen=True)
class ProviderRequest:
    """One send request as it reached the simulated Orange API (whatever the answer)."""

    at: datetime
    to: str | None
    status: int | None  # None: the connection was dropped without a reply


@pytest.fixture
def provider_requests(monkeypatch: pytest.MonkeyPatch) -> list[ProviderRequest]:
    """Every send request the simulated provider receives during the test (accepted or not)."""
    seen: list[ProviderRequest] = []
    lock = threading.Lock()
    original = OrangeSimulator.handle

    def handle(self: OrangeSimulator, method: str, raw_path: str, headers: Any, body: bytes) -> Any:
        reply = original(self, method, raw_path, headers, body)
        if method == "POST" and "/smsmessaging/v1/outbound/" in raw_path:
            try:
                address = json.loads(body)["outboundSMSMessageRequest"]["address"]
            except (ValueError, KeyError, TypeError):
                address = None
            to = address.removeprefix("tel:") if isinstance(address, str) else None
            with lock:
                seen.append(ProviderRequest(self._clock.now(), to, None if reply is None else reply.status))
        return reply

    monkeypatch.setattr(OrangeSimulator, "handle", handle)
    return seen
