"""Correctness cases a program meets in the field, each a scenario through `rappel simulate` (issue 10).

Each test failed on the code before its fix. They reuse the builders and the invariant check of test_scenarios.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.e2e.conftest import ProviderRequest
from tests.e2e.test_scenarios import (
    ABIDJAN,
    assert_invariants,
    at_local,
    by_type,
    describe,
    one_patient,
    phone,
    run,
    scenario,
    utc,
)

pytestmark = pytest.mark.e2e
DUE = "2027-03-12"


def families(count: int, due: str = DUE) -> list[dict[str, Any]]:
    """`count` families, one child each, all due on `due` in Abidjan (numbers 1..count)."""
    return [e for n in range(1, count + 1) for e in one_patient(due, number=n, name=f"Enfant{n}")]


# ---------------------------------------------------------------------------------------------- 1. one number's 403


def test_a_403_for_one_recipient_fails_that_message_and_holds_nothing(provider_requests: list[ProviderRequest]) -> None:
    """Orange refuses two numbers with 403 (the gateway shape and a POL0001); the account itself can send."""
    refused = {phone(9): {"status": 403}, phone(8): {"status": 403, "message_id": "POL0001"}}
    faults = [{"to": number, **fault} for number, fault in refused.items()]
    data = scenario("2027-03-01T00:00:00Z", "2027-03-15T00:00:00Z", families(10), faults=faults)
    out = run(data)
    assert_invariants(out, data)

    seven = at_local("2027-03-05", 9, ABIDJAN)
    for n in range(1, 11):
        reminders = by_type(out, f"a{n}")
        if phone(n) in refused:
            for m in reminders.values():
                assert m["status"] == "failed" and m["attempts"] == 1 and m["sent_at"] is None, describe(out)
                assert "403" in m["last_error"] or "POL0001" in m["last_error"]
        else:
            assert {m["status"] for m in reminders.values()} == {"delivered"}, describe(out)
            # Not held: the 7-day reminders go out in the minutes after 09:00, not 30 minutes later.
            assert utc(reminders["7_day_reminder"]["sent_at"]) < seven + timedelta(minutes=5), describe(out)
    # Each refused reminder was asked once, never again after a hold.
    for number in refused:
        assert len([r for r in provider_requests if r.to == number]) == 3
