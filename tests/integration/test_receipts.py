"""delivery_receipt through the real handler: Orange's deliveryInfoNotification and Kannel's DLR, on moto.

Messages are sent first through dispatch_due and send_sms against the Orange simulator, so every receipt
names a provider id the simulator really issued; the receipts are the simulator's own where it makes them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import boto3
import botocore.client
import botocore.exceptions
import pytest
from typer.testing import CliRunner

from core import pacing, provider_state, receipts, replies, sending, store
from core.lifecycle import Status
from core.observability import discard_metrics
from core.providers import factory
from core.settings import ProviderName, build_settings
from core.statistics import statistics
from core.store import iso
from rappel_cli import cli
from rappel_local.embedded import ReceiptEndpoint, function_url_event, invoke, reset_core_caches
from rappel_local.orange_simulator import Fault
from tests.integration.pipeline_kit import PHONE, Pipeline, crash_once_after_the_provider_accepted, emf

pytestmark = pytest.mark.integration

DUE_AT = datetime(2027, 3, 13, 9, 0, tzinfo=UTC)  # p1's 7-day reminder for a dose due on Mar 20
# Its request: the send batch's first, one interval of the default pace (5/s over 5 senders) after the batch began.
SENT_AT = DUE_AT + pacing.interval(build_settings().sender_pace_per_second)
JSON = {"content-type": "application/json", "user-agent": "Orange-DR"}


@pytest.fixture
def pipe(aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    pipeline = Pipeline(aws, monkeypatch)
    pipeline.start_orange(receipt_delay_seconds=20)
    yield pipeline
    pipeline.close()


def _send_one(pipe: Pipeline) -> str:
    message_id = pipe.plan(1, "2027-03-20")["7_day_reminder"]
    pipe.clock.advance_to(DUE_AT)
    pipe.cycle()
    assert pipe.message(message_id).status == "sent"
    return message_id


@pytest.fixture
def sent(pipe: Pipeline) -> str:
    """The id of a message Orange accepted (at SENT_AT, its batch having begun at DUE_AT)."""
    return _send_one(pipe)


def _simulator_receipt(pipe: Pipeline) -> dict[str, Any]:
    """The receipt the simulator queued for the one send, once its delay has passed."""
    assert pipe.orange is not None
    pipe.clock.advance_to(SENT_AT + timedelta(seconds=20))
    (payload,) = pipe.orange.due_receipts(pipe.clock.now())
    return payload


def _orange(pipe: Pipeline, body: str | dict[str, Any]) -> dict[str, Any]:
    """POST a receipt to /orange with the right token, as Orange calls the registered URL."""
    text = body if isinstance(body, str) else json.dumps(body)
    return pipe.receipt("POST", "/orange", {"token": pipe.receipt_token()}, text, JSON)


def _notification(provider_id: str, status: str) -> dict[str, Any]:
    return {
        "deliveryInfoNotification": {
            "callbackData": provider_id,
            "deliveryInfo": {"address": f"tel:{PHONE}", "deliveryStatus": status},
        }
    }


def _provider_id(pipe: Pipeline, message_id: str) -> str:
    provider_id = pipe.message(message_id).provider_message_id
    assert provider_id is not None
    return provider_id


def _snapshot(pipe: Pipeline, message_id: str) -> tuple[Any, ...]:
    m = pipe.message(message_id)
    return (m.status, m.version, m.receipt_status, m.delivered_at, m.failed_at, m.ended_at)


def _answer(response: dict[str, Any]) -> tuple[int, str]:
    return response["statusCode"], response["body"]


# ---------------------------------------------------------------------------------------------- Orange


def test_delivered_to_terminal_marks_the_message_delivered(pipe: Pipeline, sent: str, capsys) -> None:
    payload = _simulator_receipt(pipe)
    assert payload["deliveryInfoNotification"]["deliveryInfo"]["deliveryStatus"] == "DeliveredToTerminal"
    discard_metrics()
    capsys.readouterr()

    assert _answer(_orange(pipe, payload)) == (200, "delivered")

    stored = pipe.message(sent)
    assert (stored.status, stored.receipt_status) == ("delivered", "DeliveredToTerminal")
    assert stored.delivered_at == iso(SENT_AT + timedelta(seconds=20))
    assert stored.expires_at is not None  # terminal: retention starts
    metrics = emf(capsys.readouterr().out)
    assert metrics["SmsDelivered"] == 1 and metrics["DeliveryLatencySeconds"] == 20


def test_the_simulator_posts_its_receipt_over_http_to_the_function_url(pipe: Pipeline, sent: str) -> None:
    assert pipe.orange is not None
    endpoint = ReceiptEndpoint().start()
    try:
        pipe.clock.advance_to(SENT_AT + timedelta(seconds=20))
        url = f"{endpoint.base_url}/orange?token={pipe.receipt_token()}"
        assert pipe.orange.post_due_receipts(pipe.clock.now(), url) == 1
    finally:
        endpoint.stop()
    assert pipe.orange.failed_receipts == []
    assert pipe.message(sent).status == "delivered"


def test_delivery_impossible_marks_the_message_failed(pipe: Pipeline) -> None:
    pipe.start_orange(receipt_delay_seconds=20, undeliverable=[PHONE])
    message_id = _send_one(pipe)
    payload = _simulator_receipt(pipe)
    assert payload["deliveryInfoNotification"]["deliveryInfo"]["deliveryStatus"] == "DeliveryImpossible"

    assert _answer(_orange(pipe, payload)) == (200, "failed")

    stored = pipe.message(message_id)
    assert (stored.status, stored.receipt_status) == ("failed", "DeliveryImpossible")
    assert stored.failed_at == iso(SENT_AT + timedelta(seconds=20)) and stored.delivered_at is None


def test_a_late_delivery_impossible_never_overwrites_delivered(pipe: Pipeline, sent: str) -> None:
    provider_id = _provider_id(pipe, sent)
    assert _answer(_orange(pipe, _notification(provider_id, "DeliveredToTerminal"))) == (200, "delivered")
    before = _snapshot(pipe, sent)
    pipe.clock.advance_to(SENT_AT + timedelta(minutes=5))

    assert _answer(_orange(pipe, _notification(provider_id, "DeliveryImpossible"))) == (200, "unchanged")
    assert _answer(_orange(pipe, _notification(provider_id, "DeliveredToTerminal"))) == (200, "unchanged")  # replay

    assert _snapshot(pipe, sent) == before
    pipe.aws.tally()
    day = statistics("day", pipe.settings, pipe.clock.now()).total
    assert (day.delivered, day.failed) == (1, 0)


def test_delivered_to_terminal_after_delivery_impossible_wins(pipe: Pipeline, sent: str) -> None:
    provider_id = _provider_id(pipe, sent)
    assert _answer(_orange(pipe, _notification(provider_id, "DeliveryImpossible"))) == (200, "failed")
    pipe.clock.advance_to(SENT_AT + timedelta(minutes=5))

    assert _answer(_orange(pipe, _notification(provider_id, "DeliveredToTerminal"))) == (200, "delivered")

    stored = pipe.message(sent)
    assert (stored.status, stored.receipt_status) == ("delivered", "DeliveredToTerminal")
    assert stored.delivered_at == iso(SENT_AT + timedelta(minutes=5))
    pipe.aws.tally()
    day = statistics("day", pipe.settings, pipe.clock.now()).total
    assert (day.delivered, day.failed) == (1, 0)  # the failure was taken back


def test_delivered_to_terminal_read_while_delivery_impossible_was_being_written_still_wins(
    pipe: Pipeline, sent: str
) -> None:
    """Two final receipts at the same moment: both read the message `sent`, DeliveryImpossible writes first, and the
    DeliveredToTerminal's write (guarded on the version it read) is refused: judged again on the message as it now
    is, it still wins, as it does when it comes later."""
    read_before = store.get_message(sent)
    assert _answer(_orange(pipe, _notification(_provider_id(pipe, sent), "DeliveryImpossible"))) == (200, "failed")

    outcome = receipts.apply_receipt(
        sent, "DeliveredToTerminal", Status.DELIVERED, pipe.settings, provider=ProviderName.ORANGE, read=read_before
    )

    assert outcome.result == "delivered"
    assert pipe.message(sent).status == "delivered"


@pytest.mark.parametrize("status", ["DeliveredToNetwork", "MessageWaiting", "DeliveryUncertain"])
def test_an_intermediate_status_is_recorded_and_the_message_stays_sent(pipe: Pipeline, sent: str, status: str) -> None:
    assert _answer(_orange(pipe, _notification(_provider_id(pipe, sent), status))) == (200, "recorded")

    stored = pipe.message(sent)
    assert (stored.status, stored.receipt_status, stored.delivered_at, stored.failed_at) == ("sent", status, None, None)
    assert _answer(_orange(pipe, _notification(_provider_id(pipe, sent), "DeliveredToTerminal"))) == (200, "delivered")


def test_an_unknown_callback_id_is_answered_200_and_counted(pipe: Pipeline, sent: str, capsys) -> None:
    before = _snapshot(pipe, sent)
    discard_metrics()
    capsys.readouterr()

    response = _orange(pipe, _notification("0f1e2d3c-not-one-of-ours", "DeliveredToTerminal"))

    assert _answer(response) == (200, "unknown")
    assert emf(capsys.readouterr().out) == {"ReceiptsUnknown": 1}
    assert _snapshot(pipe, sent) == before


def _ambiguous_sends(pipe: Pipeline, count: int) -> list[str]:
    """`count` 7-day reminders to PHONE (siblings) whose 201 never came back: sent, ambiguous, Orange's id unknown."""
    pipe.configure(SMS_GROUP_BY_PHONE="false")  # one SMS each
    pipe.start_orange(receipt_delay_seconds=20, faults=[Fault(timeout="after_send")])
    ids = [pipe.plan(n, "2027-03-20", phone=PHONE)["7_day_reminder"] for n in range(1, count + 1)]
    pipe.clock.advance_to(DUE_AT)
    pipe.cycle()
    assert {(pipe.message(i).status, pipe.message(i).ambiguous) for i in ids} == {("sent", True)}
    return ids


def test_the_receipt_of_an_ambiguous_send_settles_it_by_its_recipient(pipe: Pipeline) -> None:
    (message_id,) = _ambiguous_sends(pipe, 1)
    (accepted,) = pipe.accepted()

    response = _orange(pipe, _notification(accepted.message_id, "DeliveredToTerminal"))

    assert _answer(response) == (200, "delivered")
    stored = pipe.message(message_id)
    assert (stored.status, stored.provider_message_id) == ("delivered", accepted.message_id)


def test_the_receipt_of_an_ambiguous_grouped_sms_settles_every_reminder_it_carried(pipe: Pipeline) -> None:
    """Its reminders share its stand-in id (the recipient): they are one SMS, not two sends that cannot be told
    apart."""
    pipe.start_orange(receipt_delay_seconds=20, faults=[Fault(timeout="after_send")])
    ids = [pipe.plan(n, "2027-03-20", phone=PHONE)["7_day_reminder"] for n in (1, 2)]
    pipe.clock.advance_to(DUE_AT)
    pipe.cycle()
    (accepted,) = pipe.accepted()
    assert {(pipe.message(i).status, pipe.message(i).ambiguous) for i in ids} == {("sent", True)}

    response = _orange(pipe, _notification(accepted.message_id, "DeliveredToTerminal"))

    assert _answer(response) == (200, "delivered")
    assert {(pipe.message(i).status, pipe.message(i).provider_message_id) for i in ids} == {
        ("delivered", accepted.message_id)
    }


def test_two_ambiguous_sends_to_one_number_cannot_be_told_apart_and_neither_is_settled(pipe: Pipeline) -> None:
    ids = _ambiguous_sends(pipe, 2)
    first = pipe.accepted()[0]

    response = _orange(pipe, _notification(first.message_id, "DeliveredToTerminal"))

    assert _answer(response) == (200, "unknown")
    assert {pipe.message(i).status for i in ids} == {"sent"}


def test_an_unknown_id_for_another_number_does_not_settle_an_ambiguous_send(pipe: Pipeline) -> None:
    (message_id,) = _ambiguous_sends(pipe, 1)
    notification = _notification(pipe.accepted()[0].message_id, "DeliveredToTerminal")
    notification["deliveryInfoNotification"]["deliveryInfo"]["address"] = "tel:+2250709999999"

    assert _answer(_orange(pipe, notification)) == (200, "unknown")
    assert pipe.message(message_id).status == "sent"


def test_a_base64_encoded_body_is_decoded(pipe: Pipeline, sent: str) -> None:
    body = json.dumps(_notification(_provider_id(pipe, sent), "DeliveredToTerminal"))
    event_body = base64.b64encode(body.encode()).decode()
    event = function_url_event("POST", "/orange", f"token={pipe.receipt_token()}", event_body, JSON)
    event["isBase64Encoded"] = True

    assert _answer(invoke("delivery_receipt", event)) == (200, "delivered")


@pytest.mark.parametrize(
    "token",
    [None, "", "wrong-token", "token-of-another-stack-0123456789abcdefghij"],
    ids=["missing", "empty", "wrong", "another-stack"],
)
def test_a_request_without_the_right_token_is_refused_and_changes_nothing(
    pipe: Pipeline, sent: str, capsys, caplog: pytest.LogCaptureFixture, token: str | None
) -> None:
    before = _snapshot(pipe, sent)
    discard_metrics()
    capsys.readouterr()
    params = {} if token is None else {"token": token}
    body = json.dumps(_notification(_provider_id(pipe, sent), "DeliveredToTerminal"))

    assert pipe.receipt("POST", "/orange", params, body, JSON)["statusCode"] == 403
    kannel = {**params, "message_id": sent, "type": "1"}
    assert pipe.receipt("GET", "/kannel", kannel)["statusCode"] == 403

    assert _snapshot(pipe, sent) == before
    assert emf(capsys.readouterr().out) == {"ReceiptsRejected": 2}
    logged = [r for r in caplog.records if r.getMessage() == "receipt rejected"]
    assert [(r.levelname, r.status, r.reason) for r in logged] == [("WARNING", 403, "bad or missing token")] * 2
    assert not token or all(token not in r.getMessage() + str(r.__dict__) for r in caplog.records)


@pytest.mark.parametrize("body", [base64.b64encode(b"\xff\xfe{").decode(), "not base64!"], ids=["not-utf8", "not-b64"])
def test_a_body_that_does_not_decode_is_refused_naming_the_body(pipe: Pipeline, sent: str, body: str) -> None:
    event = function_url_event("POST", "/orange", f"token={pipe.receipt_token()}", body, JSON)
    event["isBase64Encoded"] = True
    response = invoke("delivery_receipt", event)
    assert (response["statusCode"], response["body"]) == (400, "body: not base64-encoded UTF-8 text")


def test_a_token_differing_only_in_its_last_character_is_refused(pipe: Pipeline, sent: str) -> None:
    token = pipe.receipt_token()
    assert len(token) >= 20
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    before = _snapshot(pipe, sent)
    body = json.dumps(_notification(_provider_id(pipe, sent), "DeliveredToTerminal"))

    assert pipe.receipt("POST", "/orange", {"token": forged}, body, JSON)["statusCode"] == 403
    assert pipe.receipt("GET", "/kannel", {"token": forged, "message_id": sent, "type": "1"})["statusCode"] == 403
    assert pipe.receipt("POST", "/orange", {"token": token + "x"}, body, JSON)["statusCode"] == 403  # a longer one

    assert _snapshot(pipe, sent) == before
    assert _answer(pipe.receipt("POST", "/orange", {"token": token}, body, JSON)) == (200, "delivered")


NOTE = "deliveryInfoNotification"
INFO = f"{NOTE}.deliveryInfo"
DELIVERED = {"deliveryStatus": "DeliveredToTerminal"}


def _note(**fields: Any) -> str:
    return json.dumps({NOTE: fields})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("not json", "body"),
        ('{"deliveryInfoNotification": {"callbackData": "{pid}"', "body"),
        ("[]", "body"),
        ("{}", NOTE),
        (_note(callbackData="{pid}"), f"{INFO}:"),
        (_note(deliveryInfo=DELIVERED), "callbackData"),
        (_note(callbackData=42, deliveryInfo=DELIVERED), "callbackData"),
        (_note(callbackData="{pid}", deliveryInfo="DeliveredToTerminal"), f"{INFO}:"),
        (_note(callbackData="{pid}", deliveryInfo={}), "deliveryStatus"),
        (_note(callbackData="{pid}", deliveryInfo={"deliveryStatus": "Delivered"}), "deliveryStatus"),
        (_note(callbackData="{pid}", deliveryInfo={"deliveryStatus": None}), "deliveryStatus"),
        (_note(callbackData="{pid}", deliveryInfo={"deliveryStatus": ["DeliveredToTerminal"]}), "deliveryStatus"),
    ],
    ids=[
        "not-json",
        "truncated",
        "array",
        "empty-object",
        "no-delivery-info",
        "no-callback",
        "numeric-callback",
        "delivery-info-not-object",
        "no-status",
        "unknown-status",
        "null-status",
        "status-a-list",
    ],
)
def test_a_malformed_orange_receipt_is_refused_with_400_naming_the_field_and_changes_nothing(
    pipe: Pipeline, sent: str, body: str, field: str
) -> None:
    before = _snapshot(pipe, sent)

    response = _orange(pipe, body.replace("{pid}", _provider_id(pipe, sent)))

    assert response["statusCode"] == 400
    assert field in response["body"]
    assert response["statusCode"] == 400
    assert _snapshot(pipe, sent) == before


# ---------------------------------------------------------------------------------------------- Kannel


def _kannel(pipe: Pipeline, message_id: str, dlr_type: str, **extra: str) -> dict[str, Any]:
    params = {"token": pipe.receipt_token(), "message_id": message_id, "type": dlr_type, **extra}
    return pipe.receipt("GET", "/kannel", params, headers={"user-agent": "Kannel/1.4.5"})


@pytest.fixture
def sent_by_kannel(pipe: Pipeline) -> str:
    """The id of a message the simulated Kannel accepted (at SENT_AT): Kannel alone in SMS_PROVIDERS."""
    pipe.start_kannel()
    pipe.configure(SMS_PROVIDERS="kannel")
    message_id = _send_one(pipe)
    assert pipe.message(message_id).provider == "kannel"
    return message_id


@pytest.mark.parametrize("siblings", [1, 2], ids=["alone", "grouped"])
def test_an_ambiguous_kannel_send_is_settled_by_its_dlr_which_names_the_id_we_sent(
    pipe: Pipeline, siblings: int
) -> None:
    """Kannel's DLR carries the id we gave the SMS (the message's, or a grouped SMS's key), not the recipient: an
    ambiguous send is recorded under that id, so its DLR settles every reminder it carried, and no stand-in for the
    recipient is left behind to confuse the receipt of a later ambiguous Orange send to the same number."""
    pipe.start_kannel(faults=[Fault(timeout="after_send")])
    pipe.configure(SMS_PROVIDERS="kannel", PROVIDER_READ_TIMEOUT_SECONDS="0.5")
    ids = [pipe.plan(n, "2027-03-20", phone=PHONE)["7_day_reminder"] for n in range(1, siblings + 1)]
    pipe.clock.advance_to(DUE_AT)
    pipe.cycle()
    assert {(pipe.message(i).status, pipe.message(i).ambiguous) for i in ids} == {("sent", True)}
    assert store.ambiguous_sends_to(PHONE, 5) == []

    sms_id = pipe.message(ids[0]).sms_key or ids[0]
    assert _answer(_kannel(pipe, sms_id, "1")) == (200, "delivered")
    assert {pipe.message(i).status for i in ids} == {"delivered"}


def test_a_dlr_for_a_message_the_other_provider_sent_changes_nothing(pipe: Pipeline, sent: str, capsys) -> None:
    """Orange took it; a Kannel DLR naming it (a misrouted or forged callback) is answered 200 and settles nothing."""
    before = _snapshot(pipe, sent)
    discard_metrics()
    capsys.readouterr()
    assert _answer(_kannel(pipe, sent, "2")) == (200, "unknown")
    assert _snapshot(pipe, sent) == before
    assert emf(capsys.readouterr().out) == {"ReceiptsUnknown": 1}


@pytest.mark.parametrize(
    ("dlr_type", "status", "answer", "receipt_status"),
    [
        ("1", "delivered", "delivered", "DeliveredToTerminal"),
        ("2", "failed", "failed", "DeliveryImpossible"),
        ("8", "sent", "recorded", "DeliveredToNetwork"),
        ("4", "sent", "recorded", "MessageWaiting"),
        ("16", "failed", "failed", "RejectedBySmsc"),
    ],
)
def test_a_kannel_dlr_is_mapped(
    pipe: Pipeline, sent_by_kannel: str, dlr_type: str, status: str, answer: str, receipt_status: str
) -> None:
    assert _answer(_kannel(pipe, sent_by_kannel, dlr_type, smsc_id="abc123")) == (200, answer)

    stored = pipe.message(sent_by_kannel)
    assert (stored.status, stored.receipt_status) == (status, receipt_status)


def test_a_kannel_dlr_reads_its_message_once(
    pipe: Pipeline, sent_by_kannel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its dlr-url names our message: one GetItem of it (it was read twice: once to see that it exists, once to
    settle it), then the appointment's outcome state for the family reached."""
    reads: list[str] = []
    original = botocore.client.BaseClient._make_api_call

    def recording(client: Any, operation: str, params: dict[str, Any]) -> Any:
        if operation in {"GetItem", "BatchGetItem", "Query"}:
            reads.append(f"{operation} {params.get('TableName') or sorted(params.get('RequestItems', {}))}")
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    assert _answer(_kannel(pipe, sent_by_kannel, "1")) == (200, "delivered")
    monkeypatch.undo()

    assert reads == [f"GetItem {pipe.settings.MESSAGES_TABLE}", f"GetItem {pipe.settings.OPS_TABLE}"]


def test_kannel_dlrs_are_monotonic_too(pipe: Pipeline, sent_by_kannel: str) -> None:
    sent = sent_by_kannel
    assert _answer(_kannel(pipe, sent, "1")) == (200, "delivered")
    before = _snapshot(pipe, sent)
    assert _answer(_kannel(pipe, sent, "2")) == (200, "unchanged")
    assert _answer(_kannel(pipe, sent, "8")) == (200, "unchanged")
    assert _snapshot(pipe, sent) == before


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"type": "1"}, "message_id"),
        ({"message_id": "msg_x", "type": "one"}, "type"),
        ({"message_id": "msg_x", "type": "3"}, "type"),
        ({"message_id": "not-ours", "type": "1"}, "message_id"),
        ({"message_id": "msg_" + "0" * 80, "type": "1"}, "message_id"),
    ],
    ids=["no-message-id", "type-not-a-number", "type-unknown", "not-our-id-shape", "id-too-long"],
)
def test_a_malformed_kannel_dlr_is_refused_with_400_naming_the_field(
    pipe: Pipeline, sent: str, params: dict[str, str], field: str
) -> None:
    before = _snapshot(pipe, sent)
    if params.get("message_id") == "msg_x":
        params = {**params, "message_id": sent}

    response = pipe.receipt("GET", "/kannel", {"token": pipe.receipt_token(), **params})

    assert response["statusCode"] == 400
    assert response["body"].startswith(f"{field}:")
    assert _snapshot(pipe, sent) == before


def test_a_kannel_dlr_for_an_unknown_message_is_answered_200(pipe: Pipeline, sent: str, capsys) -> None:
    discard_metrics()
    capsys.readouterr()
    assert _answer(_kannel(pipe, "msg_" + "f" * 32, "1")) == (200, "unknown")
    assert emf(capsys.readouterr().out) == {"ReceiptsUnknown": 1}


# ---------------------------------------------------------------------------------------------- overtaking receipts


def _receipt_overtakes_the_sent_write(pipe: Pipeline, monkeypatch: pytest.MonkeyPatch) -> str:
    """Send one reminder, then put its item back as it was before the sent write; the sent write lands again when
    the receipt path first waits (at the first `clock.sleep`): a receipt that came before our write was visible."""
    message_id = pipe.plan(1, "2027-03-20")["7_day_reminder"]
    pipe.clock.advance_to(DUE_AT)
    pipe.dispatch()
    table = boto3.resource("dynamodb", region_name="us-east-1").Table(pipe.settings.MESSAGES_TABLE)
    queued = table.get_item(Key={"message_id": message_id}, ConsistentRead=True)["Item"]
    pipe.send(pipe.receive())
    sent = table.get_item(Key={"message_id": message_id}, ConsistentRead=True)["Item"]
    assert (queued["status"], sent["status"]) == ("queued", "sent")
    table.put_item(Item=queued)
    waits: list[float] = []
    advance = pipe.clock.sleep

    def sent_write_lands(seconds: float) -> None:
        if not waits:
            table.put_item(Item=sent)
        waits.append(seconds)
        advance(seconds)

    monkeypatch.setattr(pipe.clock, "sleep", sent_write_lands)
    return message_id


def test_an_orange_receipt_that_overtakes_the_sent_write_waits_for_it(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Orange's receipt names Orange's id, which our sent write records (and its index shows a moment later): an
    early receipt looks again for up to 3 s instead of being dropped as unknown (the message would stay `sent`)."""
    message_id = _receipt_overtakes_the_sent_write(pipe, monkeypatch)
    provider_id = pipe.accepted()[0].message_id
    discard_metrics()
    capsys.readouterr()

    assert _answer(_orange(pipe, _notification(provider_id, "DeliveryImpossible"))) == (200, "failed")

    assert pipe.message(message_id).status == "failed"
    assert "ReceiptsUnknown" not in emf(capsys.readouterr().out)


def test_a_kannel_dlr_that_overtakes_the_sent_write_waits_for_it(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kannel's DLR names our message, still `queued` until the sent write lands: it waits for it too."""
    pipe.start_kannel()
    pipe.configure(SMS_PROVIDERS="kannel")
    message_id = _receipt_overtakes_the_sent_write(pipe, monkeypatch)

    assert _answer(_kannel(pipe, message_id, "1")) == (200, "delivered")
    assert pipe.message(message_id).status == "delivered"


def test_a_receipt_for_an_id_we_never_sent_is_unknown_after_three_seconds(
    pipe: Pipeline, sent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []
    advance = pipe.clock.sleep
    monkeypatch.setattr(pipe.clock, "sleep", lambda seconds: (waits.append(seconds), advance(seconds)))

    assert _answer(_orange(pipe, _notification("0f1e2d3c-not-one-of-ours", "DeliveredToTerminal"))) == (200, "unknown")
    assert sum(waits) == pytest.approx(3.0)


# ---------------------------------------------------------------------------------------------- grouped SMS


def _grouped_sms(pipe: Pipeline, provider: str) -> tuple[str, str, str, dict[str, Any]]:
    """Siblings p1 and p2 share PHONE: their 7-day reminders go out as one SMS through `provider`. Returns the two
    members (sorted), the id a receipt names (Orange's id, or the `sms_…` key Kannel's dlr-url carries) and the
    second member's item as it was before its sent write (`queued`)."""
    if provider == "kannel":
        pipe.start_kannel()
        pipe.configure(SMS_PROVIDERS="kannel")
    first, second = sorted(pipe.plan(n, "2027-03-20", phone=PHONE)["7_day_reminder"] for n in (1, 2))
    pipe.clock.advance_to(DUE_AT)
    pipe.dispatch()
    table = boto3.resource("dynamodb", region_name="us-east-1").Table(pipe.settings.MESSAGES_TABLE)
    queued_second = table.get_item(Key={"message_id": second}, ConsistentRead=True)["Item"]
    pipe.send(pipe.receive())
    members = [pipe.message(first), pipe.message(second)]
    assert [(m.status, m.sms_reminders, m.provider) for m in members] == [("sent", 2, provider)] * 2
    sms_id = members[0].provider_message_id
    assert sms_id and members[1].provider_message_id == sms_id
    assert provider == "orange" or sms_id.startswith("sms_")
    return first, second, sms_id, queued_second


def _delivered_receipt(pipe: Pipeline, provider: str, sms_id: str) -> dict[str, Any]:
    if provider == "kannel":
        return _kannel(pipe, sms_id, "1")
    return _orange(pipe, _notification(sms_id, "DeliveredToTerminal"))


def _recording_waits(pipe: Pipeline, monkeypatch: pytest.MonkeyPatch, first_wait: Any = None) -> list[float]:
    """The receipt path's waits (`clock.sleep`), recorded; `first_wait()` runs at the first of them."""
    waits: list[float] = []
    advance = pipe.clock.sleep

    def sleep(seconds: float) -> None:
        if not waits and first_wait is not None:
            first_wait()
        waits.append(seconds)
        advance(seconds)

    monkeypatch.setattr(pipe.clock, "sleep", sleep)
    return waits


@pytest.mark.parametrize("provider", ["orange", "kannel"])
def test_a_receipt_for_a_grouped_sms_waits_for_the_sent_write_of_every_member(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch, provider: str
) -> None:
    """The sender writes each member `sent` in turn: a fast receipt that comes between the two writes sees only the
    first member. It looks again until it sees as many as the SMS carried (`sms_reminders`), and settles both (it
    settled the first alone and answered 200: the second stayed `sent` for good, Kannel never retries a DLR)."""
    first, second, sms_id, queued_second = _grouped_sms(pipe, provider)
    table = boto3.resource("dynamodb", region_name="us-east-1").Table(pipe.settings.MESSAGES_TABLE)
    sent_second = table.get_item(Key={"message_id": second}, ConsistentRead=True)["Item"]
    table.put_item(Item=queued_second)  # the second member's sent write has not landed yet...
    waits = _recording_waits(pipe, monkeypatch, lambda: table.put_item(Item=sent_second))  # ...until the first wait

    assert _answer(_delivered_receipt(pipe, provider, sms_id)) == (200, "delivered")

    assert [pipe.message(m).status for m in (first, second)] == ["delivered", "delivered"]
    assert waits == [0.25]


@pytest.mark.parametrize("provider", ["orange", "kannel"])
def test_a_receipt_for_a_grouped_sms_waits_for_the_index_to_show_every_member(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch, provider: str
) -> None:
    """Both members are `sent`, but the eventually consistent `by_provider_message_id` index shows only the first at
    the receipt's first look. moto's index is never behind, so the store's lookup answering that partial result once
    stands in for the lag."""
    first, second, sms_id, _ = _grouped_sms(pipe, provider)
    lookups: list[str] = []
    lookup = store.message_ids_by_provider_id

    def lagging(provider_message_id: str) -> list[str]:
        lookups.append(provider_message_id)
        found = lookup(provider_message_id)
        return [first] if len(lookups) == 1 else found

    monkeypatch.setattr(store, "message_ids_by_provider_id", lagging)
    waits = _recording_waits(pipe, monkeypatch)

    assert _answer(_delivered_receipt(pipe, provider, sms_id)) == (200, "delivered")

    assert [pipe.message(m).status for m in (first, second)] == ["delivered", "delivered"]
    assert (lookups, waits) == ([sms_id, sms_id], [0.25])


def test_a_receipt_for_a_grouped_sms_settles_the_members_it_found_after_three_seconds_and_warns(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A member the index never shows within the wait is left `sent`; the ones found are settled, and a warning
    names the SMS's message ids (never the phone)."""
    first, second, sms_id, _ = _grouped_sms(pipe, "orange")
    monkeypatch.setattr(store, "message_ids_by_provider_id", lambda provider_message_id: [first])
    waits = _recording_waits(pipe, monkeypatch)

    assert _answer(_delivered_receipt(pipe, "orange", sms_id)) == (200, "delivered")

    assert [pipe.message(m).status for m in (first, second)] == ["delivered", "sent"]
    assert sum(waits) == pytest.approx(3.0)
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert (getattr(warning, "message_ids", None), getattr(warning, "sms_reminders", None)) == ([first], 2)
    assert PHONE not in json.dumps(vars(warning), default=str) and PHONE.lstrip("+") not in warning.getMessage()


@pytest.mark.parametrize("provider", ["orange", "kannel"])
def test_a_receipt_that_finds_every_member_at_once_does_not_wait(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch, provider: str
) -> None:
    first, second, sms_id, _ = _grouped_sms(pipe, provider)
    waits = _recording_waits(pipe, monkeypatch)

    assert _answer(_delivered_receipt(pipe, provider, sms_id)) == (200, "delivered")

    assert [pipe.message(m).status for m in (first, second)] == ["delivered", "delivered"]
    assert waits == []


def test_an_orange_receipt_for_a_lone_reminder_does_not_wait_and_reads_its_message_once(
    pipe: Pipeline, sent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone reminder carries no `sms_reminders`: the first find is the whole SMS, read once."""
    provider_id = _provider_id(pipe, sent)
    waits = _recording_waits(pipe, monkeypatch)
    reads: list[str] = []
    original = botocore.client.BaseClient._make_api_call

    def recording(client: Any, operation: str, params: dict[str, Any]) -> Any:
        if (
            operation in {"GetItem", "BatchGetItem", "Query"}
            and params.get("TableName") == pipe.settings.MESSAGES_TABLE
        ):
            reads.append(operation)
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    assert _answer(_orange(pipe, _notification(provider_id, "DeliveredToTerminal"))) == (200, "delivered")
    monkeypatch.undo()

    assert pipe.message(sent).status == "delivered"
    assert (waits, reads) == ([], ["Query", "GetItem"])


@pytest.mark.parametrize(
    ("provider", "siblings"),
    [("orange", 1), ("orange", 2), ("kannel", 1), ("kannel", 2)],
    ids=["orange-alone", "orange-grouped", "kannel-alone", "kannel-grouped"],
)
def test_the_dlr_of_an_ambiguous_kannel_dead_letter_settles_it_so_no_operator_sends_it_again(
    pipe: Pipeline, provider: str, siblings: int
) -> None:
    """With SMS_ON_AMBIGUOUS_SEND=dead_letter an operator decides whether to `rappel resend` a send whose answer never
    came. Its receipt used to change nothing: the operator saw a dead letter and sent the family the SMS a second
    time. Kannel's DLR names the id we gave the SMS: it shows the provider took it, so the dead letter is recorded
    sent (a correction, as the counters say), then settled as the DLR says, and a resend is refused. Orange's
    receipt names only the recipient, which the receipt of another SMS to the number shares: it settles nothing
    (taken for the dead letter's, a receipt of another SMS left a reminder Orange never took unsent for good)."""
    if provider == "kannel":
        pipe.start_kannel(faults=[Fault(timeout="after_send")])
    else:
        pipe.start_orange(receipt_delay_seconds=20, faults=[Fault(timeout="after_send")])
    pipe.configure(SMS_ON_AMBIGUOUS_SEND="dead_letter", SMS_PROVIDERS=provider, PROVIDER_READ_TIMEOUT_SECONDS="0.5")
    ids = [pipe.plan(n, "2027-03-20", phone=PHONE)["7_day_reminder"] for n in range(1, siblings + 1)]
    pipe.clock.advance_to(DUE_AT)
    pipe.cycle()
    assert {pipe.message(i).status for i in ids} == {"dead_letter"}

    if provider == "kannel":
        response = _kannel(pipe, pipe.message(ids[0]).sms_key or ids[0], "1")
    else:
        (accepted,) = pipe.accepted()
        response = _orange(pipe, _notification(accepted.message_id, "DeliveredToTerminal"))

    if provider == "orange":
        assert _answer(response) == (200, "unknown") and {pipe.message(i).status for i in ids} == {"dead_letter"}
        assert all(sending.resend_dead_letter(i, pipe.settings) for i in ids)  # the operator's call
        return
    assert _answer(response) == (200, "delivered")
    assert {pipe.message(i).status for i in ids} == {"delivered"}
    assert all("dead_letter>sent" in " ".join(pipe.message(i).history or []) for i in ids)
    assert not any(sending.resend_dead_letter(i, pipe.settings) for i in ids)
    pipe.aws.tally()
    day = statistics("day", pipe.settings, pipe.clock.now()).total
    assert (day.dead_lettered, day.sent, day.delivered) == (0, siblings, siblings)


def test_a_kannel_reject_leaves_an_ambiguous_dead_letter_to_its_operator(pipe: Pipeline) -> None:
    """A DLR 16 (rejected by the SMSC, or dropped by bearerbox past its validity after a link outage) says the SMS
    never left Kannel: it is no proof the provider took it. The dead letter used to be recorded sent, then failed, and
    counted sent; the operator could no longer send it."""
    kannel = pipe.start_kannel(faults=[Fault(timeout="after_send")])
    pipe.configure(SMS_ON_AMBIGUOUS_SEND="dead_letter", SMS_PROVIDERS="kannel", PROVIDER_READ_TIMEOUT_SECONDS="0.5")
    message_id = pipe.plan(1, "2027-03-20", phone=PHONE)["7_day_reminder"]
    kannel.disconnect_smsc()  # smsbox queues the SMS, bearerbox holds it
    pipe.clock.advance_to(DUE_AT)
    pipe.cycle()
    assert pipe.message(message_id).status == "dead_letter"

    pipe.clock.advance_to(DUE_AT + timedelta(days=1))
    kannel.connect_smsc()  # past its validity: dropped with a DLR 16, never sent
    (dlr_url,) = kannel.due_receipts(pipe.clock.now())
    params = dict(parse_qsl(urlsplit(dlr_url).query))
    assert params["type"] == "16" and kannel.accepted == []

    assert _answer(pipe.receipt("GET", "/kannel", params, headers={"user-agent": "Kannel/1.4.5"}))[0] == 200
    message = pipe.message(message_id)
    assert message.status == "dead_letter" and "dead_letter>sent" not in " ".join(message.history or [])
    pipe.aws.tally()
    assert statistics("day", pipe.settings, pipe.clock.now()).total.sent == 0
    assert sending.resend_dead_letter(message_id, pipe.settings)


@pytest.mark.parametrize("provider", ["kannel", "orange"])
def test_a_receipt_that_overtakes_the_sent_write_of_a_crashed_sender_is_applied_at_its_replay(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch, provider: str
) -> None:
    """The sender dies after the provider took the SMS, before its sent write; SQS brings the record back after the
    visibility timeout (720 s) and the stored answer is replayed. Kannel posts its DLRs milliseconds after its 202 and
    never again; Orange's receipt comes seconds later. Both used to be answered and dropped after 3 s of looking (the
    message still queued, or Orange's id unknown): a "not delivered to the phone" was lost, the reminder stayed sent
    for good, and the family Kannel could not reach was never called. They are parked until the replay's write."""
    if provider == "kannel":
        simulator: Any = pipe.start_kannel(undeliverable=[PHONE], receipt_delay_seconds=0.01)
        pipe.configure(SMS_PROVIDERS="kannel")
    else:
        simulator = pipe.start_orange(undeliverable=[PHONE], receipt_delay_seconds=2)
    message_id = pipe.plan(1, "2027-03-20")["7_day_reminder"]
    pipe.clock.advance_to(DUE_AT)
    crashes = crash_once_after_the_provider_accepted(monkeypatch)
    pipe.dispatch()
    received = pipe.receive()
    assert pipe.send(received)["batchItemFailures"] and crashes == [message_id]
    assert pipe.message(message_id).status == "queued"

    pipe.clock.advance_to(DUE_AT + timedelta(seconds=5))
    answers = []
    for receipt in simulator.due_receipts(pipe.clock.now()):
        if provider == "kannel":
            params = dict(parse_qsl(urlsplit(receipt).query))
            answers.append(_answer(pipe.receipt("GET", "/kannel", params, headers={"user-agent": "Kannel/1.4.5"})))
        else:
            answers.append(_answer(_orange(pipe, receipt)))
    assert answers and set(answers) == {(200, "parked" if provider == "kannel" else "unknown")}
    assert pipe.message(message_id).status == "queued"

    pipe.clock.advance_to(DUE_AT + timedelta(seconds=725))
    assert pipe.send(pipe.receive()) == {"batchItemFailures": []}  # the replay: no second request

    stored = pipe.message(message_id)
    assert len(simulator.accepted) == 1
    assert (stored.status, stored.receipt_status) == ("failed", "DeliveryImpossible")
    assert pipe.send(received) == {"batchItemFailures": []}  # a duplicate of the record afterwards changes nothing
    assert pipe.message(message_id).status == "failed"


def test_a_dlr_that_gives_up_on_a_slow_sent_write_is_applied_by_that_write(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kannel's DLRs come while the sent write is still on its way (a DynamoDB call slowed by retries): after 3 s of
    looking they park themselves, and the write, landing over a second after Kannel's answer, applies them."""
    kannel = pipe.start_kannel(undeliverable=[PHONE], receipt_delay_seconds=0.01)
    pipe.configure(SMS_PROVIDERS="kannel")
    message_id = pipe.plan(1, "2027-03-20")["7_day_reminder"]
    pipe.clock.advance_to(DUE_AT)
    real_transition = store.transition
    answers: list[tuple[int, str]] = []

    def dlrs_before_the_sent_write(message: Any, change: Any, **kwargs: Any) -> bool:
        if change.target is Status.SENT and not answers:
            pipe.clock.sleep(1)
            for url in kannel.due_receipts(pipe.clock.now()):
                params = dict(parse_qsl(urlsplit(url).query))
                answers.append(_answer(pipe.receipt("GET", "/kannel", params, headers={"user-agent": "Kannel/1.4.5"})))
        return real_transition(message, change, **kwargs)

    monkeypatch.setattr(store, "transition", dlrs_before_the_sent_write)
    pipe.cycle()

    assert answers and set(answers) == {(200, "parked")}
    stored = pipe.message(message_id)
    assert (stored.status, stored.receipt_status) == ("failed", "DeliveryImpossible")


def test_under_the_retry_policy_a_kannel_dlr_for_the_ambiguous_send_stops_its_retry(pipe: Pipeline) -> None:
    """SMS_ON_AMBIGUOUS_SEND=retry: the connection dropped after smsbox took the SMS, so the reminder went back to
    pending for a retry minutes later. Kannel's DLRs name our id and came long before that retry, but a receipt for a
    pending message changed nothing, and the retry sent the family the same reminder again."""
    kannel = pipe.start_kannel(faults=[Fault(nth=1, timeout="after_send")], receipt_delay_seconds=2)
    pipe.configure(SMS_ON_AMBIGUOUS_SEND="retry", SMS_PROVIDERS="kannel", PROVIDER_READ_TIMEOUT_SECONDS="0.5")
    message_id = pipe.plan(1, "2027-03-20")["7_day_reminder"]
    pipe.clock.advance_to(DUE_AT)
    pipe.cycle()
    assert pipe.message(message_id).status == "pending" and len(kannel.accepted) == 1

    pipe.clock.advance_to(DUE_AT + timedelta(seconds=10))
    answers = []
    for url in kannel.due_receipts(pipe.clock.now()):  # DLR 8, then 1: delivered to the phone
        params = dict(parse_qsl(urlsplit(url).query))
        answers.append(_answer(pipe.receipt("GET", "/kannel", params, headers={"user-agent": "Kannel/1.4.5"})))
    for minutes in range(5, 120, 5):  # the dispatcher's runs while the retry would come due
        pipe.clock.advance_to(DUE_AT + timedelta(minutes=minutes))
        pipe.cycle()

    assert answers[-1] == (200, "delivered")
    assert len(kannel.accepted) == 1
    stored = pipe.message(message_id)
    assert stored.status == "delivered" and "pending>sent" in " ".join(stored.history or [])


def test_the_url_registered_with_orange_cannot_stop_a_family_nor_kannels_get_url_post_receipts(
    pipe: Pipeline, sent: str
) -> None:
    """The URL registered with Orange (a contact form, a mail) carried the receipt secret itself, which /inbound took
    too: whoever read it at Orange could STOP any number, or lift a family's STOP. Each route has its own token."""
    message_id = sent
    secret = pipe.receipt_token()
    for_orange = dict(
        parse_qsl(urlsplit(receipts.route_url("https://receipts/", receipts.Route.ORANGE, secret)).query)
    )["token"]
    for_kannel = dict(parse_qsl(urlsplit(replies.get_url("https://receipts/", secret)).query))["token"]
    assert secret not in (for_orange, for_kannel) and for_orange != for_kannel

    stop = {"from": PHONE, "to": "1234", "text": "STOP", "coding": "0"}
    assert pipe.receipt("GET", "/inbound", {"token": for_orange, **stop})["statusCode"] == 403
    assert store.number_stop(PHONE) is None
    body = json.dumps(_notification(_provider_id(pipe, message_id), "DeliveredToTerminal"))
    assert pipe.receipt("POST", "/orange", {"token": for_kannel}, body, JSON)["statusCode"] == 403
    assert pipe.message(message_id).status == "sent"

    assert _answer(pipe.receipt("POST", "/orange", {"token": for_orange}, body, JSON)) == (200, "delivered")
    assert pipe.message(message_id).status == "delivered"
    assert pipe.receipt("GET", "/inbound", {"token": for_kannel, **stop})["headers"]["X-Rappel-Reply"] == "opted_out"


def test_rappel_receipt_urls_prints_each_route_with_its_own_token_and_never_the_secret(
    pipe: Pipeline, sent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "_settings", lambda *_: pipe.settings)
    assert CliRunner().invoke(cli.app, ["receipt-urls", "--local"]).exit_code == 2  # no receipt URL named
    pipe.configure(RECEIPT_BASE_URL="https://abc.lambda-url.eu-west-1.on.aws/")
    result = CliRunner().invoke(cli.app, ["receipt-urls", "--local", "--json"])
    assert result.exit_code == 0, result.output
    urls = json.loads(result.output)
    assert pipe.receipt_token() not in result.output
    orange, kannel = urlsplit(urls["orange_receipts"]), urlsplit(urls["kannel_sms_service_get_url"])
    assert (orange.path, kannel.path) == ("/orange", "/inbound")
    assert "from=%p&to=%P&text=%a&coding=%c&charset=%C" in kannel.query

    body = json.dumps(_notification(_provider_id(pipe, sent), "DeliveredToTerminal"))
    assert _answer(pipe.receipt("POST", "/orange", dict(parse_qsl(orange.query)), body, JSON)) == (200, "delivered")
    stop = {"token": dict(parse_qsl(kannel.query))["token"], "from": PHONE, "to": "1234", "text": "STOP", "coding": "0"}
    assert pipe.receipt("GET", "/inbound", stop)["headers"]["X-Rappel-Reply"] == "opted_out"


@pytest.mark.parametrize("token", ["Ab3&x+y#z", "Ab3%Fa9 ok"], ids=["query-syntax", "kannel-escape"])
def test_a_kannel_dlr_authenticates_whatever_characters_the_token_has(pipe: Pipeline, token: str) -> None:
    """The secret is an operator's choice: the dlr-url carries a token derived from it, never the secret itself, where
    an `&` would cut it, a `#` end the URL, and a `%` and a letter be a Kannel escape (every DLR refused, or every
    send)."""
    boto3.client("secretsmanager").put_secret_value(SecretId=pipe.settings.RECEIPT_TOKEN_SECRET, SecretString=token)
    pipe.start_kannel()
    reset_core_caches()
    kannel = factory.provider_for(pipe.settings, ProviderName.KANNEL)
    called = urlsplit(kannel.dlr_url("msg_0123").replace("%d", "1").replace("%F", "smsc"))  # as smsbox calls it
    response = invoke("delivery_receipt", function_url_event("GET", "/kannel", called.query, "", {}))
    assert (response["statusCode"], response["body"]) == (200, "unknown")  # authenticated; no such message here


def test_the_token_in_a_kannel_dlr_url_settles_that_message_only_and_cannot_opt_a_family_out(
    pipe: Pipeline, sent_by_kannel: str
) -> None:
    """Kannel keeps each dlr-url in its DLR store and logs it: the token there is good for that message's DLRs only,
    not for a family's STOP, nor for another message's receipt (the endpoint's secret stays in the clinic's hands)."""
    kannel = factory.provider_for(pipe.settings, ProviderName.KANNEL)
    token = dict(parse_qsl(urlsplit(kannel.dlr_url(sent_by_kannel)).query))["token"]
    assert token != pipe.receipt_token()
    stop = {"token": token, "from": PHONE, "to": "1234", "text": "STOP", "coding": "0"}
    assert pipe.receipt("GET", "/inbound", stop)["statusCode"] == 403
    assert store.number_stop(PHONE) is None
    other = pipe.plan(2, "2027-03-20")["7_day_reminder"]
    assert pipe.receipt("GET", "/kannel", {"token": token, "message_id": other, "type": "2"})["statusCode"] == 403
    assert _answer(pipe.receipt("GET", "/kannel", {"token": token, "message_id": sent_by_kannel, "type": "1"})) == (
        200,
        "delivered",
    )


def test_a_receipt_that_fails_on_one_reminder_of_a_grouped_sms_still_settles_the_others(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receipt settles each reminder its SMS carried in turn: an error on the first (a write refused after its
    retries) left the others `sent` for good, as Kannel does not post a DLR again. The error still answers 5xx (the
    function's errors alarm), after the others are settled."""
    pipe.start_kannel()
    pipe.configure(SMS_PROVIDERS="kannel")
    ids = sorted(pipe.plan(n, "2027-03-20", phone=PHONE)["7_day_reminder"] for n in (1, 2))
    pipe.clock.advance_to(DUE_AT)
    pipe.cycle()
    sms_id = pipe.message(ids[0]).sms_key
    assert sms_id is not None and {pipe.message(i).status for i in ids} == {"sent"}
    apply = receipts.apply_receipt

    def failing_on_the_first(message_id: str, *args: Any, **kwargs: Any) -> Any:
        if message_id == ids[0]:
            raise botocore.exceptions.ClientError({"Error": {"Code": "InternalServerError"}}, "UpdateItem")
        return apply(message_id, *args, **kwargs)

    monkeypatch.setattr(receipts, "apply_receipt", failing_on_the_first)
    with pytest.raises(botocore.exceptions.ClientError):
        _kannel(pipe, sms_id, "1")
    assert [pipe.message(i).status for i in ids] == ["sent", "delivered"]


def test_a_gateway_reached_in_clear_text_across_the_internet_is_held_and_replies_still_apply(pipe: Pipeline) -> None:
    """Each Kannel request carries the sendsms-user's password, the family's number and the child's name in its
    query string: over http:// to a host outside this machine and private networks, the provider is not built and
    is held (the other provider takes the traffic, no attempt is spent). The settings do not refuse it, or every
    function, the receipt endpoint included, would stop, and a family's STOP (never posted again) be lost."""
    pipe.start_kannel()
    pipe.configure(SMS_PROVIDERS="kannel,orange", KANNEL_SENDSMS_URL="http://kannel.example.org:13013/cgi-bin/sendsms")
    first = pipe.plan(1, "2027-03-20")["7_day_reminder"]
    pipe.clock.advance_to(DUE_AT)
    pipe.cycle()
    assert pipe.kannel is not None and pipe.kannel.accepted == []
    assert (pipe.message(first).status, pipe.message(first).provider, pipe.message(first).attempts) == (
        "sent",
        "orange",
        1,
    )
    held = provider_state.circuits(pipe.clock.now(), fresh=True)["kannel"]
    assert held.is_open and held.reason == "kannel: cleartext_endpoint"  # health's finding, the hold alarm's runbook
    stop = {"token": pipe.receipt_token(), "from": PHONE, "to": "1234", "text": "STOP", "coding": "0"}
    assert pipe.receipt("GET", "/inbound", stop)["statusCode"] == 200
    assert store.number_stop(PHONE) is not None


@pytest.mark.parametrize(
    ("host", "private"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("10.0.3.5", True),
        ("::1", True),
        ("41.66.10.7", False),
        ("kannel.internal", False),
        ("", False),
    ],
)
def test_plain_http_is_for_this_machine_and_private_addresses(host: str, private: bool) -> None:
    assert factory._private(host) is private
