"""Records another version wrote: during a deploy old and new code run side by side, and a rollback leaves the older
code reading what the newer one stored or queued. A field, status or kind it does not know must not stop the pipeline
for every family, lose a reminder or a STOP, or send one twice. (The follow-up pass's and the dispatcher's own cases
are in test_follow_up_events.py and test_pipeline.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import boto3
import pytest

from core import provider_state, store
from core.planning import handle_clinic_event
from core.replies import InboundSms, apply_reply
from core.store import OpsRecord, iso
from tests.helpers import envelope
from tests.integration.pipeline_kit import PHONE, Pipeline

pytestmark = pytest.mark.integration

DUE = "2027-03-20"
SEVEN_DAY = datetime(2027, 3, 13, 9, 0, tzinfo=UTC)  # 7 days before DUE, 09:00 in Abidjan (UTC+0)


@pytest.fixture
def pipe(aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    pipeline = Pipeline(aws, monkeypatch)
    pipeline.start_orange()
    yield pipeline
    pipeline.close()


def _set_status(pipe: Pipeline, message_id: str, status: str) -> None:
    table = boto3.resource("dynamodb", region_name=pipe.settings.AWS_REGION).Table(pipe.settings.MESSAGES_TABLE)
    table.update_item(
        Key={"message_id": message_id},
        UpdateExpression="SET #s = :v",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":v": status},
    )


def test_a_circuit_of_a_kind_this_version_does_not_know_holds_its_provider_and_stops_nobody_else(
    pipe: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    """A circuit opened with a kind only a newer version has failed every read of the circuits: no dispatch, no send,
    no health check, for every family, and the item never closed since closing it reads it too."""
    message_id = pipe.plan(1, DUE)["7_day_reminder"]
    pipe.clock.advance_to(SEVEN_DAY)
    store.bind(pipe.settings)
    newer = {"kind": "quota", "opened_at": iso(SEVEN_DAY), "reason": "quota", "retry_at": "soon"}
    OpsRecord("CIRCUIT", "kannel", text=json.dumps(newer), value=3).save()  # a provider this stack does not use

    pipe.dispatch()

    assert pipe.message(message_id).status == "queued"
    logged = [r for r in caplog.records if r.getMessage() == "circuit unreadable: taken as an outage"]
    assert logged and logged[0].provider == "kannel"
    (unreadable,) = provider_state.circuits(pipe.clock.now(), fresh=True).values()
    assert (unreadable.kind, unreadable.opened_at, unreadable.reason) == ("outage", None, "circuit unreadable")


def test_a_send_record_with_a_field_this_version_does_not_know_is_sent(pipe: Pipeline) -> None:
    """The sender refused any body field it did not know: after a rollback, every record the newer dispatcher left on
    the queue went to the dead letter queue after five receives, its reminder `queued` and out of the due index."""
    message_id = pipe.plan(1, DUE)["7_day_reminder"]
    pipe.clock.advance_to(SEVEN_DAY)
    pipe.dispatch()
    received = pipe.receive()
    for record in received:
        record["Body"] = json.dumps(json.loads(record["Body"]) | {"priority": 1})

    assert pipe.send(received).get("batchItemFailures") == []
    assert pipe.message(message_id).status == "sent"


def test_a_stop_is_applied_though_a_reply_a_newer_version_left_pending_has_a_field_this_one_does_not_know(
    pipe: Pipeline,
) -> None:
    """The pending change of an earlier reply (left by a crash) is carried out first: one with an unknown field
    raised before the STOP was written, on every reply from the number, and Kannel does not post an MO again."""
    pipe.plan(1)
    store.bind(pipe.settings)
    earlier = {
        "opt_in": True,
        "keyword": "OUI",
        "at": iso(pipe.clock.now() - timedelta(minutes=5)),
        "stopped_before": None,
        "flipped_before": False,
        "token": "abcd",
        "channel": "sms",
    }
    assert store.record_pending_reply(PHONE, json.dumps(earlier, separators=(",", ":"), sort_keys=True))

    apply_reply(InboundSms(PHONE, "STOP", 4, "1234"), pipe.settings)

    assert store.number_stopped(PHONE), "the family's STOP was lost"
    assert store.pending_reply(PHONE) is None, "the earlier reply's change, carried out, is cleared"


def test_a_stop_is_applied_though_the_change_an_earlier_reply_left_pending_cannot_be_read(
    pipe: Pipeline, caplog: pytest.LogCaptureFixture
) -> None:
    pipe.plan(1)
    store.bind(pipe.settings)
    assert store.record_pending_reply(PHONE, '{"opt_in": tru')

    apply_reply(InboundSms(PHONE, "STOP", 4, "1234"), pipe.settings)

    assert store.number_stopped(PHONE) and store.pending_reply(PHONE) is None
    assert [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()] == [
        "pending reply change unreadable; dropped"
    ]


def test_a_dose_given_cancels_the_other_reminders_though_one_has_a_status_this_version_does_not_know(
    pipe: Pipeline,
) -> None:
    """One reminder in a newer version's status made every clinic event of its appointment (and its patient's) fail:
    a dose given was never applied and the dose's other reminders still went out."""
    ids = pipe.plan(1, DUE)
    _set_status(pipe, ids["overdue_reminder"], "held")

    handle_clinic_event(envelope("DoseAdministered", appointment_id="a1", administered_on="2027-03-01"), pipe.settings)

    assert pipe.message(ids["7_day_reminder"]).status == "cancelled"
    assert pipe.message(ids["1_day_reminder"]).status == "cancelled"
    assert pipe.message(ids["overdue_reminder"]).status == "held", "left to the version that knows it"


def test_a_grouped_record_sends_the_siblings_of_a_reminder_whose_status_this_version_does_not_know(
    pipe: Pipeline,
) -> None:
    """One reminder of a grouped record in a newer version's status failed the whole record: its siblings (the other
    children on the phone) went to the dead letter queue with it."""
    first = pipe.plan(1, DUE)["7_day_reminder"]
    second = pipe.plan(2, DUE, phone=PHONE)["7_day_reminder"]
    pipe.clock.advance_to(SEVEN_DAY)
    pipe.dispatch()
    received = pipe.receive()
    assert len(received) == 1 and "reminders" in json.loads(received[0]["Body"])
    _set_status(pipe, second, "sending")

    assert pipe.send(received).get("batchItemFailures") == []
    assert pipe.message(first).status == "sent"
    assert pipe.message(second).status == "sending"
