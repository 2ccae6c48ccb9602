"""Every file in events/ drives its handler (as `sam local invoke -e events/<name>.json` would) through a whole life."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from core import store
from core.receipts import Route, kannel_dlr_token, route_token
from rappel_cli.invoke import RECEIPT_TOKEN_PLACEHOLDER, days_to_today, shift_dates, with_receipt_token
from rappel_local.embedded import invoke, reset_core_caches
from rappel_local.orange_simulator import OrangeSimulator

pytestmark = pytest.mark.integration
EVENTS = Path(__file__).parents[2] / "events"


def _event(name: str, **replacements: str) -> dict:
    text = (EVENTS / name).read_text()
    for old, new in replacements.items():
        text = text.replace(old, new)
    return json.loads(text)


def test_every_sample_event_is_used_here() -> None:
    used = {
        "patient_upserted.json",
        "dose_scheduled.json",
        "schedule_dispatch.json",
        "schedule_follow_up_pass.json",
        "sqs_send_batch.json",
        "receipt_orange.json",
        "receipt_kannel.json",
        "schedule_health.json",
        "schedule_daily_statistics.json",
        "dose_administered.json",
        "appointment_cancelled.json",
        "inbound_kannel.json",
        "stream_message_changes.json",
        # Not a function's input: the FollowUpNeeded event as a clinic system receives it (its detail's keys are
        # checked against what core.followup publishes in tests/integration/test_follow_up_events.py).
        "follow_up_needed.json",
    }
    assert {p.name for p in EVENTS.glob("*.json")} == used


def test_sample_events_take_a_reminder_from_planning_to_delivery(aws, monkeypatch) -> None:
    simulator = OrangeSimulator(clock=aws.clock, client_id="rappel-test", client_secret="s3cret-test").start()
    try:
        monkeypatch.setenv("ORANGE_API_BASE_URL", simulator.base_url)
        reset_core_caches()
        assert invoke("plan_reminders", _event("patient_upserted.json"))["applied"] == 1
        assert invoke("plan_reminders", _event("dose_scheduled.json"))["created"] == 3

        aws.clock.advance_to(datetime(2027, 3, 13, 9, 0, tzinfo=UTC))
        dispatched = invoke("dispatch_due", _event("schedule_dispatch.json"))
        assert dispatched["enqueued"] == 1

        response = invoke("send_sms", _event("sqs_send_batch.json"))
        assert response == {"batchItemFailures": []}
        message_id = store.message_id_for("a1", "7_day_reminder", "2027-03-20", "p1")
        sent = store.get_message(message_id)
        assert sent.status == "sent" and len(simulator.accepted) == 1

        secret = receipt_token(aws)
        receipt = _event(
            "receipt_orange.json",
            REPLACE_WITH_RECEIPT_TOKEN=secret,
            REPLACE_WITH_PROVIDER_MESSAGE_ID=sent.provider_message_id,
        )
        assert invoke("delivery_receipt", receipt)["statusCode"] == 200
        assert store.get_message(message_id).status == "delivered"

        kannel = invoke("delivery_receipt", _event("receipt_kannel.json", REPLACE_WITH_RECEIPT_TOKEN=secret))
        # Orange took this one: a Kannel DLR naming it (the failover pair's other gateway) settles nothing.
        assert kannel["statusCode"] == 200 and kannel["body"] == "unknown"
        assert store.get_message(message_id).status == "delivered"

        passed = invoke("follow_up_pass", _event("schedule_follow_up_pass.json"))
        assert passed == {"looked_at": 0, "opened": 0, "published": 0, "errors": 0, "out_of_time": False}, (
            "the family was reached"
        )
        health = invoke("health_check", _event("schedule_health.json"))
        assert health["healthy"] is True and health["pending_count"] == 0  # 1-day, overdue: days away
        aws.tally()  # the stream mappings hand what changed to tally_changes
        aws.clock.advance_to(datetime(2027, 3, 14, 0, 0, tzinfo=UTC))  # the sample's time: the run at midnight
        daily = invoke("daily_statistics", _event("schedule_daily_statistics.json"))
        assert daily["total"]["sent"] == 1 and daily["total"]["delivered"] == 1
        # A batch as the mapping delivers it: one reminder delivered, counted in the hour its history gives.
        tallied = invoke("tally_changes", _event("stream_message_changes.json"))
        assert (tallied["changes"], tallied["counted"], tallied["items_written"]) == (1, 1, 1)
        assert store.read_counters("2027-03-13")["09#7_day_reminder#delivered"] == 2

        assert invoke("plan_reminders", _event("dose_administered.json"))["cancelled"] == 2
        cancelled = invoke("plan_reminders", _event("appointment_cancelled.json"))
        # Stamped before the dose was given: an older event for the appointment, it changes nothing.
        assert cancelled["ignored"] == 1 and cancelled["cancelled"] == 0

        # The family replies STOP (Kannel's sms-service): the phone is stopped and one confirmation is due now.
        inbound = invoke("delivery_receipt", _event("inbound_kannel.json", REPLACE_WITH_RECEIPT_TOKEN=secret))
        assert inbound["statusCode"] == 200 and inbound["headers"]["X-Rappel-Reply"] == "opted_out"
        assert store.number_stopped("+2250701020304")
        assert [m.status for m in store.iterate_messages() if m.reminder_type == "confirmation"] == ["pending"]
    finally:
        simulator.stop()


def receipt_token(aws) -> str:
    """The receipt token the stack generated (what an operator appends to the registered URL)."""
    from core.secrets import secret_text

    return secret_text(aws.settings.RECEIPT_TOKEN_SECRET, aws.settings)


def test_rappel_invoke_today_moves_a_sample_ahead_of_the_clock_to_today_and_fills_in_the_receipt_token(aws) -> None:
    """The samples are stamped 2027; on a stack whose clock is earlier (a real one, today) a clinic event ahead of
    it is refused. `rappel invoke --today` moves its dates so that its `time` is today (the dose keeps its distance
    from it), and a receipt sample gets the stack's token in place of its placeholder."""
    text = (EVENTS / "patient_upserted.json").read_text()
    ahead = shift_dates(text, (aws.clock.now().date() - datetime(2027, 3, 1).date()).days + 30)
    assert invoke("plan_reminders", json.loads(ahead))["rejected"] == 1  # a month ahead of the clock

    now = aws.clock.now()
    moved = shift_dates(ahead, days_to_today(ahead, now))
    stamped = datetime.fromisoformat(json.loads(moved)["time"].replace("Z", "+00:00"))
    assert now - timedelta(days=1) < stamped <= now  # the latest day it is not ahead of the clock
    assert invoke("plan_reminders", json.loads(moved))["applied"] == 1
    # Run at 07:00 UTC, a sample stamped 08:00 goes to yesterday's 08:00, not today's (an hour ahead: refused).
    stamped_eight = json.dumps({"time": "2027-03-01T08:00:00Z"})
    assert days_to_today(stamped_eight, datetime(2027, 3, 10, 7, 0, tzinfo=UTC)) == 8
    assert days_to_today(stamped_eight, datetime(2027, 3, 10, 9, 0, tzinfo=UTC)) == 9

    # Each receipt sample gets the token its gateway carries (the route's own, a DLR's per SMS), not the secret.
    environment = {"RECEIPT_TOKEN_SECRET": aws.settings.RECEIPT_TOKEN_SECRET, "AWS_REGION": aws.settings.AWS_REGION}
    secret = receipt_token(aws)
    for sample, token in (
        ("receipt_orange.json", route_token(secret, Route.ORANGE)),
        ("inbound_kannel.json", route_token(secret, Route.INBOUND)),
        ("receipt_kannel.json", kannel_dlr_token(secret, "msg_373b3a9727cca03b6c580b26efaaf3c2")),
    ):
        filled = with_receipt_token((EVENTS / sample).read_text(), environment)
        assert RECEIPT_TOKEN_PLACEHOLDER not in filled and token in filled and secret not in filled, sample
        response = invoke("delivery_receipt", json.loads(filled))
        assert response["statusCode"] == 200, (sample, response)


@pytest.mark.parametrize(
    "sample", ["patient_upserted.json", "dose_scheduled.json", "dose_administered.json", "appointment_cancelled.json"]
)
def test_every_clinic_sample_moved_to_today_is_accepted(aws, sample: str) -> None:
    """What a newcomer runs (`rappel invoke plan_reminders events/<sample> --today`): the dose-given sample was stamped
    13 days before its administered_on, so moved to today its dose was given in the future, and refused."""
    text = (EVENTS / sample).read_text()
    moved = json.loads(shift_dates(text, days_to_today(text, aws.clock.now())))
    assert invoke("plan_reminders", moved)["rejected"] == 0
