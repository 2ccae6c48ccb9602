"""Fixtures for every e2e module."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from rappel_local.kannel_simulator import KannelSimulator
from rappel_local.provider_simulator import ProviderSimulator


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
    """One send request as it reached a simulated gateway (whatever the answer)."""

    at: datetime
    to: str | None
    status: int | None  # None: the connection was dropped without a reply
    provider: str = "orange"


def _recipient(simulator: ProviderSimulator, raw_path: str, body: bytes) -> str | None:
    """The recipient of a send request: Orange's `address` in the JSON body, Kannel's `to` in the query."""
    if isinstance(simulator, KannelSimulator):
        return parse_qs(urlsplit(raw_path).query).get("to", [None])[0]
    try:
        address = json.loads(body)["outboundSMSMessageRequest"]["address"]
    except (ValueError, KeyError, TypeError):
        address = None
    return address.removeprefix("tel:") if isinstance(address, str) else None


@pytest.fixture
def provider_requests(monkeypatch: pytest.MonkeyPatch) -> list[ProviderRequest]:
    """Every send request the simulated gateways (Orange, Kannel) receive during the test (accepted or not)."""
    seen: list[ProviderRequest] = []
    lock = threading.Lock()
    original = ProviderSimulator.handle

    def handle(self: ProviderSimulator, method: str, raw_path: str, headers: Any, body: bytes) -> Any:
        reply = original(self, method, raw_path, headers, body)
        if self._endpoint(urlsplit(raw_path).path) == "send":
            status = None if reply is None else reply.status
            with lock:
                seen.append(ProviderRequest(self._clock.now(), _recipient(self, raw_path, body), status, self.name))
        return reply

    monkeypatch.setattr(ProviderSimulator, "handle", handle)
    return seen
