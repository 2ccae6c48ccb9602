"""End-to-end scenarios through `rappel simulate` with the Kannel simulator: Kannel alone, Kannel as the fallback
gateway, the families' replies (InboundSms) handed to the inbound endpoint as Kannel's sms-service would, and the
errors a scenario's gateway blocks are refused with. Builders and the invariant checks are test_scenarios.py's."""

from __future__ import annotations

import copy
import re
from datetime import timedelta
from typing import Any

import pytest

import rappel_local.simulate as simulate_module
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
    sends_of,
    utc,
    z,
)

pytestmark = pytest.mark.e2e


def test_kannel_gateway_retries_a_503_and_settles_by_its_dlrs(provider_requests: list[ProviderRequest]) -> None:
    """`provider.name: kannel` alone (SMS_PROVIDER=kannel): the Kannel simulator takes the sends, its DLRs come back
    through GET /kannel and settle the messages; p8's number is never reached (DLR type 2)."""
    due = "2027-03-12"
    seven = at_local("2027-03-05", 9, ABIDJAN)
    outage = (seven - timedelta(minutes=1), seven + timedelta(minutes=15))
    faults = [{"from": z(outage[0]), "until": z(outage[1]), "status": 503}]
    events = [*one_patient(due, number=1), *one_patient(due, number=8)]
    data = scenario(
        "2027-03-01T00:00:00Z", "2027-03-15T00:00:00Z", events, faults=faults, undeliverable=[phone(8)], name="kannel"
    )
    out = run(data)
    assert_invariants(out, data)
    assert {s["provider"] for s in out["sends"]} == {"kannel"} and len(out["sends"]) == 6, describe(out)
    assert {r.provider for r in provider_requests} == {"kannel"}

    # Refused with 503 during the outage and retried (an attempt each at most: a circuit may pause without one),
    # sent once after it, then delivered by its type-1 DLR.
    reminders = by_type(out, "a1")
    late = reminders["7_day_reminder"]
    refused = [r for r in provider_requests if r.to == phone(1) and r.status == 503]
    assert refused and all(outage[0] <= r.at < outage[1] for r in refused), provider_requests
    assert late["status"] == "delivered" and 1 <= late["attempts"] <= len(refused) + 1, describe(out)
    assert outage[1] <= utc(late["sent_at"]) < utc(late["deadline"])
    assert len(sends_of(out, late["message_id"])) == 1
    assert {m["status"] for m in reminders.values()} == {"delivered"}
    assert all(
        m["provider_message_id"] == m["message_id"] or m["provider_message_id"].startswith("sms_")
        for m in reminders.values()
    )

    # Accepted, then failed by the DLR that says the phone was never reached: never sent again.
    for m in by_type(out, "a8").values():
        assert m["status"] == "failed" and m["sent_at"] is not None, describe(out)
        assert len(sends_of(out, m["message_id"])) == 1
    assert len([r for r in provider_requests if r.to == phone(8) and r.status == 202]) == 3


def test_a_fallback_gateway_is_started_and_named_in_sms_providers(provider_requests: list[ProviderRequest]) -> None:
    """`fallback_provider` adds a second simulator: SMS_PROVIDERS lists both, each endpoint points at its simulator,
    and while the first gateway works every send goes to it."""
    seen: list[Any] = []
    data = scenario("2027-03-01T00:00:00Z", "2027-03-06T00:00:00Z", one_patient("2027-03-12"))
    data["fallback_provider"] = {"name": "kannel", "receipt_delay_seconds": 5}
    out = simulate_module.Simulation(simulate_module.load_scenario(copy.deepcopy(data)), setup=seen.append).run()
    [settings] = seen
    assert settings.providers == ("orange", "kannel") and settings.SMS_PROVIDER == "orange"
    assert settings.KANNEL_SENDSMS_URL.startswith("http://127.0.0.1:")
    assert settings.KANNEL_SENDSMS_URL.endswith("/cgi-bin/sendsms")
    assert settings.ORANGE_API_BASE_URL.startswith("http://127.0.0.1:")
    result = out.as_json()
    assert_invariants(result, data)
    assert [s["provider"] for s in result["sends"]] == ["orange"]
    assert {r.provider for r in provider_requests} == {"orange"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fallback_provider": {"name": "orange"}}, "fallback_provider.name: must name another gateway"),
        ({"fallback_provider": {"name": "kannel", "latency_ms": -1}}, "fallback_provider.latency_ms"),
        ({"fallback_provider": {"name": "kannel", "available_units": 5}}, "fallback_provider.available_units"),
        ({"provider": {"name": "smpp"}}, "provider.name"),
        ({"events": [{"at": "2027-03-02T08:00:00Z", "type": "InboundSms", "detail": {"from": "+2250701020301"}}]},
         "events.0.detail: InboundSms takes exactly"),
        ({"events": [{"at": "2027-03-02T08:00:00Z", "type": "InboundSms", "detail": {"from": 1, "text": "STOP"}}]},
         "events.0.detail: InboundSms takes exactly"),
        # Refused at load, before the run applies anything (it used to stop the run half-way at that event).
        ({"events": [{"at": "2027-03-02T08:00:00Z", "type": "OptOutByPhone", "detail": {"phone": "12"}}]},
         "events.0.detail.phone:"),
        ({"settings": {"SMS_RATE_LIMT_PER_SECOND": 5}}, "settings.SMS_RATE_LIMT_PER_SECOND: not a setting"),
        ({"settings": {"SMS_PROVIDER": "kannel"}}, "settings.SMS_PROVIDER: set by the simulator"),
        ({"settings": {"MESSAGES_TABLE": "mine"}}, "settings.MESSAGES_TABLE: set by the simulator"),
    ],
)  # fmt: skip
def test_gateway_and_reply_errors_name_the_field(change: dict[str, Any], message: str) -> None:
    data = {**scenario("2027-03-01T00:00:00Z", "2027-03-02T00:00:00Z", []), **change}
    with pytest.raises(ValueError, match=re.escape(message)):
        run(data)
