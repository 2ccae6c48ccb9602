"""dispatch_due and send_sms through the real handlers, on moto, against the Orange simulator over real HTTP.

Each test drives the functions the way AWS would (a scheduler event, SQS records received from the queue, the
event source mapping's delete-or-retry) and checks the stored messages, the queues and what the provider saw.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import botocore.client
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from typer.testing import CliRunner

from core import dispatch, health, pacing, planning, provider_state, queue, secrets, sending, store
from core.circuit import HOLD_INTERVAL, CircuitKind
from core.lifecycle import Status
from core.observability import discard_metrics
from core.planning import handle_clinic_event
from core.providers import ProviderError
from core.store import MessageRecord, iso, parse_iso
from rappel_cli import cli
from rappel_local import simulate
from rappel_local.embedded import FakeLambdaContext, sqs_event
from rappel_local.orange_simulator import Fault, OrangeSimulator
from tests.helpers import dose, envelope, patient
from tests.integration.pipeline_kit import (
    CLIENT_ID,
    CLIENT_SECRET,
    PHONE,
    Pipeline,
    bodies,
    crash_once_after_the_provider_accepted,
    emf,
)

pytestmark = pytest.mark.integration

DUE = "2027-03-20"
SEVEN_DAY = datetime(2027, 3, 13, 9, 0, tzinfo=UTC)  # 7 days before DUE, 09:00 in Abidjan (UTC+0)
SEVEN_DAY_DEADLINE = SEVEN_DAY + timedelta(hours=48)
NEW_PHONE = "+2250709999999"


@pytest.fixture
def pipe(aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    pipeline = Pipeline(aws, monkeypatch)
    pipeline.start_orange()
    yield pipeline
    pipeline.close()


def _due_now(pipe: Pipeline, n: int = 1, **patient_fields: Any) -> str:
    """Plan patient n and move the clock to its 7-day reminder's send time; returns that message's id."""
    ids = pipe.plan(n, DUE, **patient_fields)
    pipe.clock.advance_to(SEVEN_DAY)
    return ids["7_day_reminder"]


def _metrics(capsys: pytest.CaptureFixture[str]) -> dict[str, float]:
    return emf(capsys.readouterr().out)


def _quiet(capsys: pytest.CaptureFixture[str]) -> None:
    """Forget metrics recorded outside a handler and output so far, so the next handler's EMF stands alone."""
    discard_metrics()
    capsys.readouterr()


# ============================================================================================== dispatch_due


def test_due_messages_are_claimed_and_enqueued_and_the_rest_is_left_alone(pipe: Pipeline) -> None:
    planned = [pipe.plan(n, DUE) for n in (1, 2)]
    before = {mid: pipe.message(mid) for ids in planned for mid in ids.values()}
    pipe.clock.advance_to(SEVEN_DAY)

    result = pipe.dispatch()

    budget = int(pipe.settings.SMS_RATE_LIMIT_PER_SECOND * pipe.settings.SMS_PROCESSING_INTERVAL_MINUTES * 60)
    assert result["capacity"] == budget  # the queue was empty
    assert (result["claimed"], result["enqueued"], result["expired"], result["lost_races"]) == (2, 2, 0, 0)
    due = {ids["7_day_reminder"] for ids in planned}
    on_queue = bodies(pipe.receive())
    assert sorted(b["message_id"] for b in on_queue) == sorted(due)
    for body in on_queue:
        stored = pipe.message(body["message_id"])
        assert body == {"message_id": stored.message_id, "version": stored.version, "claimed_at": iso(SEVEN_DAY)}
        assert stored.version == before[stored.message_id].version + 1
        assert (stored.status, stored.queued_at) == ("queued", iso(SEVEN_DAY))
        assert (stored.due_at, stored.due_shard) == (None, None)  # out of the `due` index: its record is queued
    for message_id, old in before.items():
        if message_id in due:
            continue
        stored = pipe.message(message_id)
        assert (stored.status, stored.version, stored.due_at) == ("pending", old.version, old.scheduled_at)
    assert pipe.send_requests() == []


def test_a_message_past_its_deadline_expires_at_dispatch(pipe: Pipeline, capsys) -> None:
    ids = pipe.plan(1, DUE)
    pipe.clock.advance_to(SEVEN_DAY_DEADLINE + timedelta(minutes=1))
    _quiet(capsys)

    result = pipe.dispatch()

    assert (result["expired"], result["claimed"], result["enqueued"]) == (1, 0, 0)
    expired = pipe.message(ids["7_day_reminder"])
    assert expired.status == "expired" and expired.due_at is None and expired.ended_at is not None
    assert expired.last_error == "deadline passed before it could be sent"
    assert pipe.message(ids["1_day_reminder"]).status == "pending"  # not due yet
    assert pipe.receive() == []
    assert _metrics(capsys)["RemindersExpired"] == 1


@pytest.mark.parametrize(
    ("field", "value"), [("reminder_type", "2_day_reminder"), ("status", "paused"), ("deadline", "next week")]
)
def test_a_due_message_this_version_cannot_read_is_left_for_the_others_not_stopping_every_run(
    pipe: Pipeline, caplog: pytest.LogCaptureFixture, field: str, value: str
) -> None:
    """A reminder type or status a newer version wrote (read after a rollback), or a field mangled by hand, raised in
    the dispatcher's sort or its checks: every run failed, and no family got a reminder until the item was mended."""
    odd = _due_now(pipe, 1)
    other = _due_now(pipe, 2)
    messages = boto3.resource("dynamodb", region_name=pipe.settings.AWS_REGION).Table(pipe.settings.MESSAGES_TABLE)
    messages.update_item(
        Key={"message_id": odd},
        UpdateExpression="SET #f = :v",
        ExpressionAttributeNames={"#f": field},
        ExpressionAttributeValues={":v": value},
    )

    with pytest.raises(dispatch.UnreadableDueMessages, match=f"1 due message.* left in place: {odd}$"):
        pipe.dispatch()  # once the others are dispatched: the function's error alarm calls someone

    assert [b["message_id"] for b in bodies(pipe.receive())] == [other]
    assert pipe.message(other).status == "queued"
    (logged,) = [r for r in caplog.records if r.getMessage() == "due message unreadable: left where it is"]
    assert (logged.message_id, logged.error) == (odd, "unknown status" if field == "status" else "ValueError")
    assert pipe.message(odd).status == ("paused" if field == "status" else "pending")


def _waiting(n: int, reminder_type: str, due_at: datetime, deadline: datetime) -> MessageRecord:
    """A pending reminder as planning writes it, in the one shard (a backlog's worth is quicker to write so)."""
    message_id = f"msg_{reminder_type[0]}{n:05d}"
    return MessageRecord(
        message_id,
        patient_id=f"p{n}",
        appointment_id=f"a{reminder_type[0]}{n}",
        reminder_type=reminder_type,
        due_date="2027-03-20",
        status=Status.PENDING.value,
        scheduled_at=iso(due_at),
        deadline=iso(deadline),
        due_shard="DUE#0",
        due_at=iso(due_at),
        created_at=iso(due_at),
        recipient=f"r{reminder_type[0]}{n}",
    )


def test_a_backlog_of_7_day_reminders_does_not_hold_back_a_later_1_day_reminder(pipe: Pipeline) -> None:
    """Each shard is read earliest first, a window at a time: a backlog of 7-day reminders (yesterday's, still within
    their 48 h) longer than the window hid today's 1-day reminder, which waited behind them and could expire."""
    settings = pipe.configure(DUE_INDEX_SHARDS=1, SMS_RATE_LIMIT_PER_SECOND=2, SMS_SENDER_MAX_CONCURRENCY=2)
    store.bind(settings)
    now = pipe.clock.now()
    for n in range(200):  # capacity 120 a run, a window of 170
        store.create_message(_waiting(n, "7_day_reminder", now - timedelta(hours=24), now + timedelta(hours=24)), now)
    one_day = _waiting(0, "1_day_reminder", now - timedelta(minutes=1), now + timedelta(hours=10))
    store.create_message(one_day, now)
    late = _waiting(1, "1_day_reminder", now - timedelta(minutes=1), now - timedelta(seconds=1))  # past its deadline
    store.create_message(late, now)

    result = dispatch.dispatch_due(settings)

    assert (result.claimed, result.expired) == (120, 1)
    assert pipe.message(one_day.message_id).status == "queued"
    assert pipe.message(late.message_id).status == "expired"


def test_a_backlog_past_its_deadline_is_expired_a_share_a_run_and_the_live_reminders_are_still_claimed(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A campaign held past a cohort's deadline (its bundle used up): once released, every run spent its minute
    expiring, two writes each, up to 28,000, and timed out before it claimed anything, for as long as the backlog
    lasted. Now a run expires at most EXPIRIES_PER_RUN, then claims; the rest wait (none can be sent) for the next."""
    monkeypatch.setattr(dispatch, "EXPIRIES_PER_RUN", 3)
    settings = pipe.configure(DUE_INDEX_SHARDS=1)
    store.bind(settings)
    now = pipe.clock.now()
    for n in range(5):
        store.create_message(_waiting(n, "7_day_reminder", now - timedelta(hours=49), now - timedelta(hours=1)), now)
    live = _waiting(0, "1_day_reminder", now - timedelta(minutes=1), now + timedelta(hours=10))
    store.create_message(live, now)

    first = dispatch.dispatch_due(settings)
    second = dispatch.dispatch_due(settings)

    assert (first.expired, first.claimed, second.expired, second.claimed) == (3, 1, 2, 0)
    assert pipe.message(live.message_id).status == "queued"


def test_capacity_counts_send_records_so_grouped_reminders_do_not_leave_the_senders_idle(pipe: Pipeline) -> None:
    """The capacity is what the senders can send before the next run, in SMS (the queue depth it is cut by counts
    records): four siblings' reminders that go out as one SMS take one unit of it, not four."""
    pipe.configure(SMS_RATE_LIMIT_PER_SECOND=2, SMS_SENDER_MAX_CONCURRENCY=2)  # 2/s × 1 min = 120 per run
    for start in range(0, 117, 10):  # 117 already in flight: room for 3
        pipe.sqs.send_message_batch(
            QueueUrl=pipe.settings.SEND_QUEUE_URL,
            Entries=[
                {"Id": str(i), "MessageBody": '{"message_id":"msg_filler","version":1}'}
                for i in range(min(10, 117 - start))
            ],
        )
    siblings = [pipe.plan(n, DUE, phone=PHONE)["7_day_reminder"] for n in (1, 2, 3, 4)]
    others = [pipe.plan(n, DUE, phone=f"+22507010203{n:02d}")["7_day_reminder"] for n in (5, 6)]
    pipe.clock.advance_to(SEVEN_DAY)

    result = pipe.dispatch()

    assert (result["capacity"], result["claimed"]) == (3, 6)
    records = [b for b in bodies(pipe.receive()) if b.get("message_id") != "msg_filler"]
    assert len(records) == 3
    assert {pipe.message(i).status for i in siblings + others} == {"queued"}


def test_capacity_is_rate_times_interval_minus_queue_depth_and_the_most_urgent_go_first(pipe: Pipeline) -> None:
    pipe.configure(SMS_RATE_LIMIT_PER_SECOND=2, SMS_SENDER_MAX_CONCURRENCY=2)  # 2/s × 1 min = 120 per run
    for start in range(0, 117, 10):  # 117 already in flight: room for 3
        count = min(10, 117 - start)
        pipe.sqs.send_message_batch(
            QueueUrl=pipe.settings.SEND_QUEUE_URL,
            Entries=[{"Id": str(i), "MessageBody": '{"message_id":"msg_filler","version":1}'} for i in range(count)],
        )
    seven_a = pipe.plan(1, "2027-03-20")["7_day_reminder"]  # due Mar 13 09:00
    seven_b = pipe.plan(2, "2027-03-20")["7_day_reminder"]  # due Mar 13 09:00
    three = pipe.plan(3, "2027-03-14")  # 1-day due Mar 13 09:00; its 7-day's deadline was Mar 9
    four = pipe.plan(4, "2027-03-12")  # overdue due Mar 13 14:00; its 7-day and 1-day deadlines have passed
    pipe.clock.advance_to(datetime(2027, 3, 13, 14, 0, tzinfo=UTC))

    result = pipe.dispatch()

    assert result["capacity"] == 3
    assert (result["claimed"], result["enqueued"], result["expired"]) == (3, 3, 3)
    claimed = {b["message_id"] for b in bodies(pipe.receive()) if b["message_id"] != "msg_filler"}
    assert {three["1_day_reminder"], four["overdue_reminder"]} <= claimed
    assert len(claimed & {seven_a, seven_b}) == 1  # one 7-day reminder fits; the other waits for the next run
    (waiting,) = {seven_a, seven_b} - claimed
    assert pipe.message(waiting).status == "pending"
    for message_id in (three["7_day_reminder"], four["7_day_reminder"], four["1_day_reminder"]):
        assert pipe.message(message_id).status == "expired"


def test_raising_the_due_shards_keeps_every_reminder_planned_before_dispatchable(pipe: Pipeline) -> None:
    """A message keeps the shard it was planned in; the dispatcher reads shards 0..n-1, which hold every shard of a
    smaller n: raising DUE_INDEX_SHARDS needs no backfill (lowering it would strand the higher shards)."""
    one_shard = pipe.settings.model_copy(update={"DUE_INDEX_SHARDS": 1})
    handle_clinic_event(patient("p1", phone=PHONE), one_shard)
    handle_clinic_event(dose("a1", "p1", due_date=DUE), one_shard)
    assert {m.due_shard for m in store.messages_of_patient("p1")} == {"DUE#0"}
    pipe.clock.advance_to(SEVEN_DAY)

    result = dispatch.dispatch_due(pipe.settings.model_copy(update={"DUE_INDEX_SHARDS": 8}))

    assert result.claimed == 1
    assert {m.reminder_type: m.status for m in store.messages_of_patient("p1")}["7_day_reminder"] == "queued"


def test_overlapping_dispatchers_and_a_stale_index_read_claim_each_message_once(pipe: Pipeline, monkeypatch) -> None:
    for n in (1, 2, 3):
        pipe.plan(n, DUE)
    pipe.clock.advance_to(SEVEN_DAY)
    shards = [f"DUE#{n}" for n in range(pipe.settings.DUE_INDEX_SHARDS)]
    # Read before any claim.
    stale = {shard: list(store.due_in_shard(shard, SEVEN_DAY, page_size=100)) for shard in shards}
    assert sum(len(v) for v in stale.values()) == 3

    first, second = pipe.dispatch(), pipe.dispatch()
    assert (first["claimed"], second["claimed"], second["lost_races"]) == (3, 0, 0)

    # A dispatcher whose read of the eventually consistent index predates the first run's claims.
    monkeypatch.setattr(store, "due_in_shard", lambda shard, until, page_size: iter(stale[shard]))
    third = pipe.dispatch()
    # Enqueued before its claims, which all lose: a second record for each first run's claim.
    assert (third["claimed"], third["enqueued"], third["lost_races"]) == (0, 3, 3)
    any_stale = next(m for records in stale.values() for m in records)
    assert dispatch._claim(any_stale, pipe.clock.now(), pipe.settings) == "lost"

    on_queue = pipe.receive()
    assert len(on_queue) == 6 and len({b["message_id"] for b in bodies(on_queue)}) == 3
    assert pipe.send(on_queue) == {"batchItemFailures": []}
    assert len(pipe.accepted()) == 3  # one SMS per message: the second record of a claim finds it sent


def _flaky_batches(monkeypatch, pipe: Pipeline, refuse: Callable[[int, dict[str, Any]], bool]) -> list[list[str]]:
    """Make the dispatcher's SendMessageBatch refuse the entries `refuse(call_number, body)` picks.

    SQS can refuse single entries of a batch (throttling, internal errors); moto never does, so this one
    failure is mocked. Returns the message ids each call carried.
    """
    client = queue._client(pipe.settings)  # the cached client the handler will use
    real = client.send_message_batch
    calls: list[list[str]] = []

    def send_message_batch(**kwargs: Any) -> dict[str, Any]:
        entries = kwargs["Entries"]
        calls.append([json.loads(e["MessageBody"])["message_id"] for e in entries])
        refused = [e for e in entries if refuse(len(calls), json.loads(e["MessageBody"]))]
        passed = [e for e in entries if e not in refused]
        response: dict[str, Any] = {"Successful": [], "Failed": []}
        if passed:
            response = real(**{**kwargs, "Entries": passed})
            response.setdefault("Failed", [])
        response["Failed"] += [
            {"Id": e["Id"], "SenderFault": False, "Code": "InternalError", "Message": "injected"} for e in refused
        ]
        return response

    monkeypatch.setattr(client, "send_message_batch", send_message_batch)
    return calls


def test_send_message_batch_partial_failure_retries_the_failed_entries(pipe: Pipeline, monkeypatch) -> None:
    ids = [pipe.plan(n, DUE)["7_day_reminder"] for n in (1, 2, 3)]
    pipe.clock.advance_to(SEVEN_DAY)
    calls = _flaky_batches(monkeypatch, pipe, lambda call, body: call == 1 and body["message_id"] != ids[0])

    result = pipe.dispatch()

    assert (result["claimed"], result["enqueued"], result["not_enqueued"]) == (3, 3, 0)
    assert len(calls) == 2 and len(calls[0]) == 3 and sorted(calls[1]) == sorted(ids[1:])
    assert sorted(b["message_id"] for b in bodies(pipe.receive())) == sorted(ids)


def test_an_entry_that_never_lands_is_not_claimed_and_goes_out_with_the_next_run(pipe: Pipeline, monkeypatch) -> None:
    ids = [pipe.plan(n, DUE)["7_day_reminder"] for n in (1, 2, 3)]
    lost = ids[1]
    pipe.clock.advance_to(SEVEN_DAY)
    calls = _flaky_batches(monkeypatch, pipe, lambda call, body: body["message_id"] == lost)

    result = pipe.dispatch()

    assert (result["claimed"], result["enqueued"], result["not_enqueued"]) == (2, 2, 1)
    assert sum(lost in call for call in calls) == queue.ENTRY_RETRIES
    landed = pipe.receive()
    assert sorted(b["message_id"] for b in bodies(landed)) == sorted(set(ids) - {lost})
    assert pipe.send(landed)["batchItemFailures"] == []
    left = pipe.message(lost)
    assert (left.status, left.due_at) == ("pending", iso(SEVEN_DAY))  # never claimed: still due

    monkeypatch.undo()  # SQS is well again
    again = pipe.dispatch()
    assert (again["claimed"], again["enqueued"]) == (1, 1)
    assert pipe.send(pipe.receive())["batchItemFailures"] == []
    assert {pipe.message(m).status for m in ids} == {"sent"}
    assert len(pipe.accepted()) == 3  # one SMS each (three phones)


def test_a_message_claimed_under_the_old_lease_is_not_enqueued_again_and_expires_at_its_deadline(
    pipe: Pipeline,
) -> None:
    """The version before this one kept a claimed message in the `due` index, its due time the lease's end."""
    message_id = _due_now(pipe)
    MessageRecord(message_id).update(actions=[MessageRecord.status.set("queued"), MessageRecord.version.add(1)])

    result = pipe.dispatch()

    assert (result["enqueued"], result["claimed"], result["lost_races"]) == (0, 0, 0)
    assert pipe.receive() == []  # its own record, on the queue since that claim, is the one that sends it
    pipe.clock.advance_to(SEVEN_DAY_DEADLINE + timedelta(minutes=1))
    assert pipe.dispatch()["expired"] == 1
    assert pipe.message(message_id).status == "expired"


def _crash_after_enqueue(monkeypatch) -> None:
    """The dispatcher dies between SendMessageBatch and its claims (the Lambda is killed, its time runs out)."""

    def killed(*args: Any) -> Any:
        raise RuntimeError("dispatcher killed after enqueueing")

    monkeypatch.setattr(dispatch, "_claim", killed)


def test_a_record_that_reaches_the_sender_before_its_claim_is_claimed_by_the_sender(
    pipe: Pipeline, monkeypatch
) -> None:
    message_id = _due_now(pipe)
    before = pipe.message(message_id)
    _crash_after_enqueue(monkeypatch)
    with pytest.raises(RuntimeError, match="dispatcher killed"):
        pipe.dispatch()
    monkeypatch.undo()
    assert (pipe.message(message_id).status, pipe.message(message_id).version) == ("pending", before.version)
    record = pipe.receive()
    assert bodies(record) == [{"message_id": message_id, "version": before.version + 1, "claimed_at": iso(SEVEN_DAY)}]

    assert pipe.send(record) == {"batchItemFailures": []}

    sent = pipe.message(message_id)
    assert (sent.status, sent.due_at) == ("sent", None)
    assert [h["to"] for h in store.history_of(sent)] == ["pending", "queued", "sent"]
    assert pipe.dispatch()["claimed"] == 0 and len(pipe.accepted()) == 1


def test_a_lone_record_and_a_grouped_record_for_one_claim_version_send_the_reminder_once(
    pipe: Pipeline, monkeypatch
) -> None:
    """Found in review: run 1 enqueues A alone and dies before claiming it; run 2 groups A with C (same phone, due
    since) under the same version of A. Each record must not be able to send A: only the claim's own record may."""
    first = pipe.plan(1, DUE, phone=PHONE)["7_day_reminder"]
    pipe.clock.advance_to(SEVEN_DAY)
    _crash_after_enqueue(monkeypatch)
    with pytest.raises(RuntimeError, match="dispatcher killed"):
        pipe.dispatch()
    monkeypatch.undo()
    second = pipe.plan(2, DUE, phone=PHONE, display_name="Kofi")["7_day_reminder"]
    pipe.clock.advance_to(SEVEN_DAY + timedelta(minutes=1))
    assert pipe.dispatch()["claimed"] == 2  # A (still pending) and C, in one grouped record
    lone, grouped = sorted(pipe.receive(), key=lambda r: "reminders" in json.loads(r["Body"]))
    assert json.loads(grouped["Body"])["reminders"][0]["version"] == json.loads(lone["Body"])["version"]

    assert pipe.send([lone]) == {"batchItemFailures": []}  # stale: the claim is the grouped record's
    assert pipe.send([grouped]) == {"batchItemFailures": []}

    assert {pipe.message(first).status, pipe.message(second).status} == {"sent"}
    (accepted,) = pipe.accepted()  # one SMS for both, and no second one for A
    assert "Kofi" in accepted.text


def test_a_dispatcher_crash_between_enqueue_and_claim_sends_once_when_the_next_run_enqueues_again(
    pipe: Pipeline, monkeypatch
) -> None:
    message_id = _due_now(pipe)
    _crash_after_enqueue(monkeypatch)
    with pytest.raises(RuntimeError, match="dispatcher killed"):
        pipe.dispatch()
    monkeypatch.undo()

    again = pipe.dispatch()  # still pending and due: enqueued again, and claimed this time

    assert (again["enqueued"], again["claimed"]) == (1, 1)
    records = pipe.receive()
    assert len(records) == 2 and {b["message_id"] for b in bodies(records)} == {message_id}
    assert pipe.send(records) == {"batchItemFailures": []}
    assert pipe.message(message_id).status == "sent"
    assert len(pipe.accepted()) == 1 and len(pipe.send_requests()) == 1


# ============================================================================================== send_sms


def test_happy_path_sends_once_and_records_what_was_sent(pipe: Pipeline, capsys) -> None:
    message_id = _due_now(pipe)
    _quiet(capsys)

    dispatched, response = pipe.cycle()

    assert dispatched["enqueued"] == 1 and response == {"batchItemFailures": []}
    assert len(pipe.send_requests()) == 1
    (accepted,) = pipe.accepted()
    stored = pipe.message(message_id)
    assert (stored.status, stored.attempts, stored.provider) == ("sent", 1, "orange")
    assert stored.provider_message_id == accepted.message_id
    assert stored.text == accepted.text and "Awa" in stored.text and accepted.to == PHONE
    assert stored.segments is not None and stored.segments >= 1
    first_request = pipe.first_request(SEVEN_DAY)
    assert stored.sent_at == iso(first_request) and stored.due_at is None
    assert store.message_ids_by_provider_id(accepted.message_id) == [message_id]
    pipe.aws.tally()  # the tally keeps the health check's last send, from the sent write in the stream
    assert provider_state.last_send() == first_request
    metrics = _metrics(capsys)
    assert metrics["SmsSent"] == 1 and metrics["MessagesDispatched"] == 1


def test_the_same_sqs_record_delivered_twice_makes_one_provider_request(pipe: Pipeline) -> None:
    message_id = _due_now(pipe)
    pipe.dispatch()
    received = pipe.receive()

    first = pipe.send(received, ack=False)
    again = pipe.send(received)  # SQS at-least-once: the same record (same messageId and body) once more
    producer_copy = [{**received[0], "MessageId": "another-sqs-message-id"}]
    third = pipe.send(producer_copy, ack=False)

    assert first == again == third == {"batchItemFailures": []}
    assert len(pipe.send_requests()) == 1
    assert pipe.message(message_id).status == "sent"


def _send_and_crash(pipe: Pipeline, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Dispatch, send, die after the provider took the SMS; returns the record the queue will deliver again."""
    crashes = crash_once_after_the_provider_accepted(monkeypatch)
    pipe.dispatch()
    received = pipe.receive()
    crashed = pipe.send(received)
    assert crashed["batchItemFailures"] == [{"itemIdentifier": received[0]["MessageId"]}]
    assert len(crashes) == 1 and len(pipe.accepted()) == 1
    return received


def test_a_crash_between_provider_accept_and_the_sent_write_replays_the_stored_result(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_id = _due_now(pipe)
    received = _send_and_crash(pipe, monkeypatch)
    assert pipe.message(message_id).status == "queued"

    redelivered = pipe.receive()
    assert [m["MessageId"] for m in redelivered] == [received[0]["MessageId"]]
    assert pipe.send(redelivered) == {"batchItemFailures": []}

    stored = pipe.message(message_id)
    assert len(pipe.send_requests()) == 1
    assert (stored.status, stored.attempts) == ("sent", 1)
    assert stored.provider_message_id == pipe.accepted()[0].message_id


def test_an_answer_powertools_could_not_store_is_recorded_from_the_answer_in_hand(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orange answered 201 and Powertools' save of the result failed (a DynamoDB throttle after botocore's retries):
    the idempotency record stayed in progress and the record failed. It came back after the visibility timeout,
    past the in-progress record's expiry, and the SMS was requested a second time. The answer is in hand: it is
    recorded at once, as any answer is."""
    message_id = _due_now(pipe)
    persistence = sending._idempotent_send(pipe.settings).persistence
    real_save = persistence.save_success
    failures: list[str] = []

    def save_fails_once(*args: Any, **kwargs: Any) -> None:
        if not failures:
            failures.append("save_success")
            raise RuntimeError("ProvisionedThroughputExceededException after botocore's retries")
        real_save(*args, **kwargs)

    monkeypatch.setattr(persistence, "save_success", save_fails_once)
    pipe.dispatch()
    received = pipe.receive()

    assert pipe.send(received) == {"batchItemFailures": []}

    stored = pipe.message(message_id)
    assert failures == ["save_success"] and len(pipe.send_requests()) == 1
    assert (stored.status, stored.provider_message_id) == ("sent", pipe.accepted()[0].message_id)
    pipe.send(received)  # the same record again (an SQS duplicate): stale, nothing requested
    assert len(pipe.send_requests()) == 1


@pytest.mark.parametrize("policy", ["assume_sent", "dead_letter"])
def test_a_crash_after_an_ambiguous_send_and_before_its_write_replays_it_not_sends_it_again(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], policy: str
) -> None:
    """The request left and no answer came (a read timeout): its fate is unknown, so the policy decides, never a
    second request. Powertools forgets a call that raised; the ambiguous outcome is stored instead, so that a crash
    before the policy's write (sent, or dead letter) leaves a record whose redelivery replays it."""
    pipe.configure(SMS_ON_AMBIGUOUS_SEND=policy)
    pipe.start_orange(faults=[Fault(nth=1, timeout="after_send")])
    message_id = _due_now(pipe)
    _quiet(capsys)
    real_transition = store.transition
    crashes: list[str] = []

    def crash_once_on_the_policys_write(message: Any, change: Any, **kwargs: Any) -> bool:
        if change.target in {Status.SENT, Status.DEAD_LETTER} and not crashes:
            crashes.append(message.message_id)
            raise RuntimeError("Lambda killed after the ambiguous send")
        return real_transition(message, change, **kwargs)

    monkeypatch.setattr(store, "transition", crash_once_on_the_policys_write)
    pipe.dispatch()
    received = pipe.receive()
    assert pipe.send(received)["batchItemFailures"] == [{"itemIdentifier": received[0]["MessageId"]}]
    assert crashes == [message_id] and pipe.message(message_id).status == "queued"

    assert pipe.send(pipe.receive()) == {"batchItemFailures": []}

    assert len(pipe.send_requests()) == 1
    stored = pipe.message(message_id)
    assert stored.status == ("sent" if policy == "assume_sent" else "dead_letter") and stored.attempts == 1
    assert _metrics(capsys)["AmbiguousSends"] == 1  # one request went unanswered, not one per replay


def test_an_ambiguous_send_replayed_while_its_provider_is_down_stays_that_providers(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orange timed out after the request left, and the sender died before recording it; when the record comes back
    Orange's circuit is open and the route is Kannel. The replay asks nobody: the send is Orange's (whose receipt
    can still settle it), and neither provider's circuit counts a failure for it."""
    pipe.start_orange(faults=[Fault(nth=1, timeout="after_send")])
    pipe.start_kannel()
    message_id = _due_now(pipe)
    real_transition = store.transition

    def crash_once_on_sent(message: Any, change: Any, **kwargs: Any) -> bool:
        if change.target is Status.SENT:
            monkeypatch.setattr(store, "transition", real_transition)
            raise RuntimeError("Lambda killed after the ambiguous send")
        return real_transition(message, change, **kwargs)

    monkeypatch.setattr(store, "transition", crash_once_on_sent)
    pipe.dispatch()
    assert pipe.send(pipe.receive())["batchItemFailures"]
    for _ in range(pipe.settings.SMS_CIRCUIT_FAILURES):
        provider_state.record_transient_failure("orange", pipe.clock.now(), pipe.settings, "http_503: down")
    failures = {name: c.failures for name, c in provider_state.circuits(pipe.clock.now(), fresh=True).items()}

    assert pipe.send(pipe.receive(visibility=0)) == {"batchItemFailures": []}

    stored = pipe.message(message_id)
    assert (stored.status, stored.provider, stored.ambiguous) == ("sent", "orange", True)
    assert len(pipe.send_requests()) == 1 and pipe.kannel is not None and pipe.kannel.accepted == []
    after = {name: c.failures for name, c in provider_state.circuits(pipe.clock.now(), fresh=True).items()}
    assert after == failures


def test_a_reminder_accepted_before_a_crash_and_cancelled_by_planning_before_its_redelivery_is_recorded_sent(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The redelivered record finds its message cancelled (a newer version): the stored acceptance still tells
    that the SMS went out, so the record says sent, with the provider's id for its receipt."""
    message_id = _due_now(pipe)
    _send_and_crash(pipe, monkeypatch)
    assert handle_clinic_event(patient("p1", sms_opt_in=False), pipe.settings).cancelled == 3
    assert pipe.message(message_id).status == "cancelled"

    assert pipe.send(pipe.receive()) == {"batchItemFailures": []}

    stored = pipe.message(message_id)
    assert len(pipe.send_requests()) == 1
    assert (stored.status, stored.attempts) == ("sent", 1)
    assert stored.provider_message_id == pipe.accepted()[0].message_id
    assert stored.history[-1].endswith("cancelled>sent sent via orange, before its cancellation")
    assert stored.expires_at is None and stored.ended_at is None  # waits for its receipt, as any sent message


def _opt_out(pipe: Pipeline) -> None:
    assert store.set_opt_in("p1", False, iso(pipe.clock.now()), "operator-optout")


def _set_appointment(**values: Any) -> Callable[[Pipeline], None]:
    def change(pipe: Pipeline) -> None:
        appointment = store.get_appointment("a1")
        assert appointment is not None
        for name, value in values.items():
            setattr(appointment, name, value)
        appointment.save()

    return change


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_opt_out, "opted out"),
        (_set_appointment(status="administered", administered_on="2027-03-13"), "appointment administered"),
        (_set_appointment(status="cancelled"), "appointment cancelled"),
        (_set_appointment(due_date="2027-03-27"), "rescheduled"),
        (_set_appointment(patient_id="p2"), "appointment moved to another patient"),  # a record merged at the clinic
    ],
    ids=["opted-out", "dose-administered", "appointment-cancelled", "rescheduled", "moved-to-another-patient"],
)
def test_what_changed_after_dispatch_is_rechecked_at_send_time(
    pipe: Pipeline, change: Callable[[Pipeline], None], reason: str
) -> None:
    """The stored patient or appointment changed (its planning run had not reached the message yet)."""
    message_id = _due_now(pipe)
    pipe.dispatch()
    change(pipe)

    assert pipe.send(pipe.receive()) == {"batchItemFailures": []}

    stored = pipe.message(message_id)
    assert (stored.status, stored.last_error) == ("cancelled", f"cancelled at send time: {reason}")
    assert stored.due_at is None and stored.attempts == 0
    assert pipe.send_requests() == []


def test_a_reminder_accepted_before_a_crash_then_cancelled_and_revived_is_not_sent_again_with_a_sibling(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opted out and back in before the record came back: the revived reminder is claimed again, this time with a
    sibling on the same phone, so its SMS would be composed anew under a new key (no replay): it is sent once."""
    message_id = _due_now(pipe)
    _send_and_crash(pipe, monkeypatch)
    assert handle_clinic_event(patient("p1", sms_opt_in=False), pipe.settings).cancelled == 3
    opted_in = patient("p1", sms_opt_in=True, at=pipe.clock.now() + timedelta(seconds=1))
    assert handle_clinic_event(opted_in, pipe.settings).revived == 3  # nothing on its record says it went out
    sibling = pipe.plan(2, DUE, phone=PHONE, display_name="Kofi")["7_day_reminder"]

    pipe.cycle()

    first, second = pipe.accepted()  # the one before the crash, then the sibling's
    assert pipe.message(message_id).status == "sent"
    assert pipe.message(message_id).provider_message_id == first.message_id
    assert pipe.message(sibling).provider_message_id == second.message_id
    assert "Kofi" in second.text and "Awa" not in second.text


@pytest.mark.parametrize(
    "change",
    [_opt_out, _set_appointment(status="administered", administered_on="2027-03-13")],
    ids=["opted-out", "dose-administered"],
)
def test_a_reminder_accepted_before_a_crash_is_recorded_sent_though_no_longer_wanted_at_its_redelivery(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch, change: Callable[[Pipeline], None]
) -> None:
    """The checks before the send would cancel it now; but its SMS went out before the crash, and says so."""
    message_id = _due_now(pipe)
    _send_and_crash(pipe, monkeypatch)
    change(pipe)

    assert pipe.send(pipe.receive()) == {"batchItemFailures": []}

    stored = pipe.message(message_id)
    assert len(pipe.send_requests()) == 1
    assert (stored.status, stored.attempts) == ("sent", 1)
    assert stored.provider_message_id == pipe.accepted()[0].message_id


def test_an_opt_out_event_after_dispatch_stops_the_queued_message(pipe: Pipeline) -> None:
    message_id = _due_now(pipe)
    pipe.dispatch()
    assert handle_clinic_event(patient("p1", sms_opt_in=False), pipe.settings).cancelled == 3

    assert pipe.send(pipe.receive()) == {"batchItemFailures": []}

    assert pipe.message(message_id).status == "cancelled"
    assert pipe.send_requests() == []


def test_a_cancellation_that_lands_during_the_provider_call_is_never_revived_into_a_second_send(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The family opts out while the request is on its way (a race no simulator can time), then opts in again."""
    from core.providers.orange import OrangeProvider

    message_id = _due_now(pipe)
    real_send = OrangeProvider.send

    def opt_out_meanwhile(self: OrangeProvider, **kwargs: Any) -> Any:
        assert handle_clinic_event(patient("p1", sms_opt_in=False), pipe.settings).cancelled == 3
        return real_send(self, **kwargs)

    monkeypatch.setattr(OrangeProvider, "send", opt_out_meanwhile)
    pipe.cycle()
    monkeypatch.setattr(OrangeProvider, "send", real_send)
    # It went out: recorded sent (the cancellation came second), with the provider's id for its receipt.
    sent = pipe.message(message_id)
    assert (sent.status, sent.provider_message_id) == ("sent", pipe.accepted()[0].message_id)
    assert sent.expires_at is None and sent.ended_at is None
    assert len(pipe.accepted()) == 1

    opted_in = patient("p1", sms_opt_in=True, at=pipe.clock.now() + timedelta(seconds=1))
    assert handle_clinic_event(opted_in, pipe.settings).revived == 2  # the 1-day and overdue reminders
    pipe.cycle()

    assert pipe.message(message_id).status == "sent" and len(pipe.send_requests()) == 1


def test_a_reminder_revived_and_grouped_while_its_request_is_in_flight_is_not_sent_again(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opted out and back in while its request is on its way, then claimed again with a sibling and handed to a
    second sender before the first request is answered: its idempotency record is still in progress, which says
    neither sent nor not sent, so that record waits for its retry instead of composing a second SMS."""
    from core.providers.orange import OrangeProvider

    message_id = _due_now(pipe)
    real_send = OrangeProvider.send
    second_sender: list[dict[str, Any]] = []
    calls = itertools.count()

    def revived_and_grouped_meanwhile(self: OrangeProvider, **kwargs: Any) -> Any:
        if next(calls) == 0:  # the first request: the second sender's own runs through here too
            assert handle_clinic_event(patient("p1", sms_opt_in=False), pipe.settings).cancelled == 3
            opted_in = patient("p1", sms_opt_in=True, at=pipe.clock.now() + timedelta(seconds=1))
            assert handle_clinic_event(opted_in, pipe.settings).revived == 3
            pipe.plan(2, DUE, phone=PHONE, display_name="Kofi")
            pipe.dispatch()
            second_sender.append(pipe.send(pipe.receive()))
        return real_send(self, **kwargs)

    monkeypatch.setattr(OrangeProvider, "send", revived_and_grouped_meanwhile)
    pipe.cycle()
    monkeypatch.setattr(OrangeProvider, "send", real_send)

    (waiting,) = second_sender
    assert len(waiting["batchItemFailures"]) == 1  # retried once the first request is answered
    assert [a.text.count("Awa") for a in pipe.accepted()] == [1]
    assert pipe.message(message_id).status == "sent"

    pipe.cycle()  # the retry: the revived reminder is sent already, its sibling goes out alone

    texts = [a.text for a in pipe.accepted()]
    assert len(texts) == 2 and "Awa" not in texts[1] and "Kofi" in texts[1]
    assert pipe.message(message_id).provider_message_id == pipe.accepted()[0].message_id


def test_a_reminder_revived_while_its_request_went_unanswered_is_not_composed_into_a_second_sms(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opted out and back in while its request was on its way, and the request then timed out after Orange took it
    (ambiguous): the policy's write found the message revived. It is recorded sent from there (the policy: the SMS
    may have gone out), so the sibling's SMS, claimed next, does not carry it a second time."""
    from core.providers.orange import OrangeProvider

    pipe.start_orange(faults=[Fault(nth=1, timeout="after_send")])
    message_id = _due_now(pipe)
    real_send = OrangeProvider.send
    calls = itertools.count()

    def revived_meanwhile(self: OrangeProvider, **kwargs: Any) -> Any:
        if next(calls) == 0:
            assert handle_clinic_event(patient("p1", sms_opt_in=False), pipe.settings).cancelled == 3
            opted_in = patient("p1", sms_opt_in=True, at=pipe.clock.now() + timedelta(seconds=1))
            assert handle_clinic_event(opted_in, pipe.settings).revived == 3
        return real_send(self, **kwargs)

    monkeypatch.setattr(OrangeProvider, "send", revived_meanwhile)
    pipe.cycle()
    monkeypatch.setattr(OrangeProvider, "send", real_send)
    assert pipe.message(message_id).status == "sent"
    pipe.plan(2, DUE, phone=PHONE, display_name="Kofi")

    pipe.cycle()

    texts = [a.text for a in pipe.accepted()]
    assert sum("Awa" in t for t in texts) == 1 and sum("Kofi" in t for t in texts) == 1
    replayed = pipe.message(message_id)
    assert (replayed.status, replayed.ambiguous, replayed.attempts) == ("sent", True, 1)


def test_a_grouped_sms_whose_request_went_unanswered_records_how_many_reminders_it_carried(pipe: Pipeline) -> None:
    """Its receipt (a Kannel DLR names the SMS's key) waits for every member by that count."""
    pipe.start_orange(faults=[Fault(nth=1, timeout="after_send")])
    first = _due_now(pipe)
    second = pipe.plan(2, DUE, phone=PHONE, display_name="Kofi")["7_day_reminder"]

    pipe.cycle()

    assert {(pipe.message(i).ambiguous, pipe.message(i).sms_reminders) for i in (first, second)} == {(True, 2)}


def test_a_sibling_cancelled_while_its_grouped_sms_is_queued_is_left_out_of_it(pipe: Pipeline) -> None:
    """Two children on one phone: one record for both on the queue; the second's appointment is cancelled."""
    first = pipe.plan(1, DUE, phone=PHONE)["7_day_reminder"]
    second = pipe.plan(2, DUE, phone=PHONE, display_name="Kofi")["7_day_reminder"]
    pipe.clock.advance_to(SEVEN_DAY)
    pipe.dispatch()
    received = pipe.receive()
    assert [sorted(r["message_id"] for r in b["reminders"]) for b in bodies(received)] == [sorted([first, second])]
    assert handle_clinic_event(envelope("AppointmentCancelled", appointment_id="a2"), pipe.settings).cancelled == 3

    assert pipe.send(received) == {"batchItemFailures": []}

    (accepted,) = pipe.accepted()
    assert "Awa" in accepted.text and "Kofi" not in accepted.text
    assert pipe.message(first).status == "sent" and pipe.message(second).status == "cancelled"


def test_a_sibling_whose_phone_changed_while_their_grouped_sms_is_queued_gets_it_on_the_new_phone(
    pipe: Pipeline,
) -> None:
    """Two children on one phone, one record for both on the queue; the second's family then gives the clinic a
    new number: one SMS to each phone, neither naming the other's child."""
    first = pipe.plan(1, DUE, phone=PHONE)["7_day_reminder"]
    second = pipe.plan(2, DUE, phone=PHONE, display_name="Kofi")["7_day_reminder"]
    pipe.clock.advance_to(SEVEN_DAY)
    assert pipe.dispatch()["claimed"] == 2
    handle_clinic_event(patient("p2", phone=NEW_PHONE, display_name="Kofi"), pipe.settings)

    assert pipe.send(pipe.receive()) == {"batchItemFailures": []}

    by_phone = {sms.to: sms.text for sms in pipe.accepted()}
    assert set(by_phone) == {PHONE, NEW_PHONE}
    assert "Awa" in by_phone[PHONE] and "Kofi" not in by_phone[PHONE]
    assert "Kofi" in by_phone[NEW_PHONE] and "Awa" not in by_phone[NEW_PHONE]
    assert {pipe.message(first).status, pipe.message(second).status} == {"sent"}


def test_a_deadline_that_passed_while_queued_expires_at_send_time(pipe: Pipeline) -> None:
    message_id = _due_now(pipe)
    pipe.dispatch()
    received = pipe.receive()
    pipe.clock.advance_to(SEVEN_DAY_DEADLINE)

    assert pipe.send(received) == {"batchItemFailures": []}

    stored = pipe.message(message_id)
    assert (stored.status, stored.last_error) == ("expired", "deadline passed before it could be sent")
    assert pipe.send_requests() == []


def test_quiet_hours_in_the_patient_zone_defer_without_burning_an_attempt(pipe: Pipeline) -> None:
    ids = pipe.plan(1, DUE, timezone="Asia/Tokyo")
    message_id = ids["7_day_reminder"]
    assert pipe.message(message_id).scheduled_at == "2027-03-13T00:00:00.000Z"  # 09:00 in Tokyo
    late = datetime(2027, 3, 13, 12, 0, tzinfo=UTC)  # 21:00 in Tokyo, 12:00 in the stack's own zone
    pipe.clock.advance_to(late)

    pipe.cycle()

    stored = pipe.message(message_id)
    quiet_end = datetime(2027, 3, 13, 23, 0, tzinfo=UTC)  # 08:00 in Tokyo
    assert (stored.status, stored.attempts, stored.last_error) == ("pending", 0, "quiet hours")
    assert stored.due_at == iso(quiet_end)
    assert pipe.send_requests() == []

    pipe.clock.advance_to(quiet_end - timedelta(minutes=1))
    assert pipe.dispatch()["claimed"] == 0
    pipe.clock.advance_to(quiet_end)
    pipe.cycle()
    stored = pipe.message(message_id)
    assert (stored.status, stored.attempts, stored.sent_at) == ("sent", 1, iso(pipe.first_request(quiet_end)))


def test_a_transient_503_backs_off_and_retries(pipe: Pipeline, capsys) -> None:
    pipe.start_orange(faults=[Fault(nth=1, status=503)])
    message_id = _due_now(pipe)
    _quiet(capsys)

    _, response = pipe.cycle()

    assert response == {"batchItemFailures": []}
    stored = pipe.message(message_id)
    assert (stored.status, stored.attempts) == ("pending", 1)
    assert "503" in (stored.last_error or "")
    base = timedelta(minutes=pipe.settings.SMS_RETRY_DELAY_MINUTES)
    retry_at = parse_iso(stored.due_at)
    assert SEVEN_DAY + base / 2 <= retry_at <= pipe.clock.now() + base  # 2^0 × delay, half of it jittered
    assert _metrics(capsys)["SmsRetried"] == 1
    assert pipe.accepted() == []

    pipe.clock.advance_to(retry_at)
    pipe.cycle()
    stored = pipe.message(message_id)
    assert (stored.status, stored.attempts) == ("sent", 2)
    assert len(pipe.send_requests()) == 2 and len(pipe.accepted()) == 1


def test_exhausting_the_retries_dead_letters_with_a_copy_on_the_dlq(pipe: Pipeline, capsys) -> None:
    pipe.configure(SMS_MAX_RETRIES=1)
    pipe.start_orange(faults=[Fault(status=503)])
    message_id = _due_now(pipe)
    pipe.cycle()
    stored = pipe.message(message_id)
    assert (stored.status, stored.attempts) == ("pending", 1)
    pipe.clock.advance_to(parse_iso(stored.due_at))
    _quiet(capsys)

    pipe.cycle()

    stored = pipe.message(message_id)
    assert (stored.status, stored.attempts) == ("dead_letter", 2)
    assert stored.last_error.startswith("retries exhausted") and stored.due_at == stored.deadline
    assert bodies(pipe.receive_dead_letters()) == [{"message_id": message_id, "version": stored.version}]
    assert _metrics(capsys)["SmsDeadLettered"] == 1
    assert len(pipe.send_requests()) == 2 and pipe.accepted() == []


def test_a_400_svc0004_fails_the_message_at_once(pipe: Pipeline) -> None:
    pipe.start_orange(faults=[Fault(to=PHONE, status=400, message_id="SVC0004")])
    message_id = _due_now(pipe)

    pipe.cycle()

    stored = pipe.message(message_id)
    assert (stored.status, stored.attempts) == ("failed", 1)
    assert "SVC0004" in (stored.last_error or "") and stored.failed_at == iso(pipe.first_request(SEVEN_DAY))
    assert stored.due_at is None and stored.ended_at is not None
    assert len(pipe.send_requests()) == 1 and pipe.receive_dead_letters() == []


def test_a_403_holds_the_provider_without_burning_attempts(pipe: Pipeline) -> None:
    pipe.start_orange(faults=[Fault(status=403)])  # code 50: no bundle left
    first = _due_now(pipe, 1)
    pipe.dispatch()
    second = pipe.plan(2, DUE)["7_day_reminder"]  # due already, not yet dispatched

    pipe.send(pipe.receive())

    held_until = pipe.first_request(SEVEN_DAY) + HOLD_INTERVAL
    stored = pipe.message(first)
    assert (stored.status, stored.attempts, stored.due_at) == ("pending", 0, iso(held_until))
    circuit = provider_state.circuits(pipe.clock.now(), fresh=True)["orange"]
    assert (circuit.retry_at, circuit.kind) == (held_until, CircuitKind.HOLD)
    assert "403/50" in circuit.reason
    held = pipe.dispatch()
    assert held["held"] is True and held["claimed"] == 0 and held["enqueued"] == 0
    assert pipe.message(second).status == "pending"
    assert pipe.receive() == []
    assert len(pipe.send_requests()) == 1

    pipe.start_orange()  # a bundle was bought
    pipe.clock.advance_to(held_until)
    probe, _ = pipe.cycle()  # the hold's probe: one reminder, which Orange now takes
    assert probe["enqueued"] == 1
    assert sorted(pipe.message(m).status for m in (first, second)) == ["pending", "sent"]
    assert provider_state.circuits(pipe.clock.now(), fresh=True) == {}  # the answer closed the circuit
    dispatched, _ = pipe.cycle()
    assert dispatched["enqueued"] == 1
    assert [(pipe.message(m).status, pipe.message(m).attempts) for m in (first, second)] == [("sent", 1)] * 2


@pytest.mark.parametrize("policy", ["assume_sent", "retry", "dead_letter"])
def test_an_ambiguous_send_follows_the_configured_policy(pipe: Pipeline, capsys, policy: str) -> None:
    pipe.configure(SMS_ON_AMBIGUOUS_SEND=policy)
    pipe.start_orange(faults=[Fault(nth=1, timeout="after_send")])  # Orange takes it, the reply never comes
    message_id = _due_now(pipe)
    _quiet(capsys)

    _, response = pipe.cycle()

    assert response == {"batchItemFailures": []}
    assert len(pipe.accepted()) == 1 and len(pipe.send_requests()) == 1
    stored = pipe.message(message_id)
    assert stored.attempts == 1
    if policy == "assume_sent":
        assert (stored.status, stored.ambiguous) == ("sent", True)
        assert stored.provider_message_id == store.ambiguous_send_key(PHONE)  # for its receipt to find it
        assert stored.last_error.startswith("ambiguous:")
    elif policy == "retry":
        assert stored.status == "pending" and stored.due_at is not None
        assert parse_iso(stored.due_at) > SEVEN_DAY
    else:
        assert stored.status == "dead_letter"
        assert bodies(pipe.receive_dead_letters()) == [{"message_id": message_id, "version": stored.version}]
    assert _metrics(capsys)["AmbiguousSends"] == 1


def test_a_duplicate_delivery_after_an_ambiguous_dead_letter_does_not_send_again(pipe: Pipeline) -> None:
    """Dead-lettering an ambiguous send leaves the decision to an operator; an SQS duplicate must not take it."""
    pipe.configure(SMS_ON_AMBIGUOUS_SEND="dead_letter")
    pipe.start_orange(faults=[Fault(nth=1, timeout="after_send")])
    message_id = _due_now(pipe)
    pipe.dispatch()
    received = pipe.receive()
    pipe.send(received, ack=False)
    assert pipe.message(message_id).status == "dead_letter"

    pipe.send(received)  # the same record, delivered again

    assert pipe.message(message_id).status == "dead_letter"
    assert len(pipe.send_requests()) == 1


def test_a_redrive_leaves_an_ambiguous_dead_letter_for_an_operator_who_may_resend_it(pipe: Pipeline) -> None:
    """`rappel redrive` is what the DLQ alarm asks for, to bring back reminders whose retries ran out. An ambiguous
    dead letter's SMS may have gone out: the redrive used to put it back to pending, and the next run sent it again.
    It stays for an operator, whose `rappel resend` is the one way to send it again, knowingly."""
    pipe.configure(SMS_ON_AMBIGUOUS_SEND="dead_letter")
    pipe.start_orange(faults=[Fault(nth=1, timeout="after_send")])
    message_id = _due_now(pipe)
    pipe.cycle()
    assert pipe.message(message_id).status == "dead_letter"

    assert queue.redrive(pipe.settings).moved == 1
    pipe.send(pipe.receive())
    pipe.cycle()

    assert pipe.message(message_id).status == "dead_letter" and len(pipe.send_requests()) == 1
    assert sending.resend_dead_letter(message_id, pipe.settings)
    assert not sending.resend_dead_letter(message_id, pipe.settings)  # pending now: nothing to resend
    assert pipe.message(message_id).expires_at is None  # pending: no retention clock
    pipe.cycle()
    resent = pipe.message(message_id)
    assert resent.status == "sent" and len(pipe.send_requests()) == 2
    assert any("sent again by an operator" in entry for entry in resent.history or [])


def test_an_ambiguous_dead_letter_left_by_a_redrive_is_a_health_finding_until_its_deadline_then_ends(
    pipe: Pipeline,
) -> None:
    """The redrive the DLQ alarm asks for takes an ambiguous dead letter's copy off the queue and leaves the reminder
    for an operator: the queue was then empty, its alarm cleared and health was healthy, with nothing left to say a
    decision waited. And past its deadline, when nothing can be decided any more, it was kept for good."""
    pipe.configure(SMS_ON_AMBIGUOUS_SEND="dead_letter")
    pipe.start_orange(faults=[Fault(nth=1, timeout="after_send")])
    message_id = _due_now(pipe)
    pipe.cycle()
    assert queue.redrive(pipe.settings).moved == 1
    pipe.send(pipe.receive())
    pipe.cycle()
    stored = pipe.message(message_id)
    assert stored.status == "dead_letter"

    report = health.check_health(pipe.settings, pipe.clock.now())
    assert (report.figures.dead_letter_depth, report.figures.undecided_count) == (0, 1)
    assert not report.healthy
    deadline = parse_iso(stored.deadline)
    assert report.findings == (
        "1 ambiguous dead letter waits for an operator's decision (its SMS may have gone out): see `rappel messages"
        " --status dead_letter`, then `rappel resend ID` to send it again or `rappel assume-sent ID` to take it as"
        f" sent; the first deadline is {deadline:%Y-%m-%d %H:%M} UTC.",
    )
    pipe.clock.advance_to(deadline + timedelta(minutes=1))
    assert health.check_health(pipe.settings, pipe.clock.now()).figures.undecided_count == 0
    assert store.undecided_dead_letters(deadline - timedelta(seconds=1))[0] == 1
    kept = pipe.message(message_id)
    expected_end = deadline + timedelta(days=pipe.settings.SMS_RETENTION_DAYS)
    assert kept.status == "dead_letter" and kept.expires_at == expected_end
    # The simulator's shortcut to the dispatcher's next work reads no further than the dispatcher does (it woke it
    # every minute past this deadline), and its stand-in for TTL deletes what TTL would.
    assert simulate._earliest_due(pipe.settings) == store.earliest_due(pipe.settings.DUE_INDEX_SHARDS)
    assert store.delete_expired(expected_end - timedelta(seconds=1)) == 0
    assert store.delete_expired(expected_end) == 1 and store.get_message(message_id) is None


def test_an_operator_who_judges_an_ambiguous_dead_letter_went_out_records_it_sent_and_health_clears(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The health finding offers a choice: `rappel resend`, or leave it. Leaving it must be a decision the system
    records, or the stack stays unhealthy (and its alarm hides any other finding) until the deadline."""
    pipe.configure(SMS_ON_AMBIGUOUS_SEND="dead_letter")
    pipe.start_orange(faults=[Fault(nth=1, timeout="after_send")])
    message_id = _due_now(pipe)
    pipe.cycle()
    assert health.check_health(pipe.settings, pipe.clock.now()).figures.undecided_count == 1
    other = pipe.plan(2, "2027-03-27")["7_day_reminder"]  # pending: not a dead letter, never "assumed sent"
    assert not sending.assume_sent(other, pipe.settings)

    monkeypatch.setattr(cli, "resolve", lambda **_: pipe.settings)
    refused = CliRunner().invoke(cli.app, ["assume-sent", other, "--json"])
    assert refused.exit_code == 1 and "not an ambiguous dead letter" in refused.output
    recorded_by_cli = CliRunner().invoke(cli.app, ["assume-sent", message_id, "--json"])
    assert recorded_by_cli.exit_code == 0, recorded_by_cli.output
    assert not sending.assume_sent(message_id, pipe.settings)  # sent now: nothing to decide
    recorded = pipe.message(message_id)
    assert (recorded.status, recorded.due_shard, recorded.expires_at) == ("sent", None, None)
    assert recorded.history is not None and "recorded sent by an operator" in recorded.history[-1]
    assert health.check_health(pipe.settings, pipe.clock.now()).figures.undecided_count == 0
    assert len(pipe.send_requests()) == 1


def test_no_request_starts_without_the_time_to_hear_its_answer(pipe: Pipeline) -> None:
    """The remaining-time guard holds at the request, not only when its record starts: a record begun with 16 s left
    that then waits 12 s for its pace (a provider's Retry-After) would have its call cut off by the timeout, and its
    in-progress idempotency record expire: the next delivery would call the provider again. It waits for that pace
    as pending, without sleeping through what is left of the invocation."""
    message_id = _due_now(pipe)
    pipe.dispatch()
    received = pipe.receive()
    pacer = pacing.Pacer()
    pacer.pause_until(pipe.clock.now() + timedelta(seconds=12))
    ends_at = pipe.clock.now() + timedelta(seconds=16)

    class Context(FakeLambdaContext):
        def get_remaining_time_in_millis(self) -> int:
            return int((ends_at - pipe.clock.now()).total_seconds() * 1000)

    sending.select_pacer(pacer)
    try:
        event = sqs_event(received, pipe.queue_arn(pipe.settings.SEND_QUEUE_URL))
        response = sending.process_send_batch(event, Context(), pipe.settings)
    finally:
        sending.select_pacer(None)

    assert pipe.send_requests() == [] and response == {"batchItemFailures": []}
    deferred = pipe.message(message_id)
    assert (deferred.status, deferred.attempts, deferred.due_at) == (
        "pending",
        0,
        iso(SEVEN_DAY + timedelta(seconds=12)),
    )
    assert pipe.clock.now() < ends_at


def test_the_time_kept_for_a_request_follows_the_configured_timeouts(pipe: Pipeline) -> None:
    """With a 40 s read timeout, 30 s left is not enough for a request and its answer (a fixed 15 s reserve let it
    start, and the Lambda timeout could cut it off mid-call: the next delivery would call the provider again)."""
    settings = pipe.configure(PROVIDER_READ_TIMEOUT_SECONDS="40")
    assert settings.request_reserve_ms == (3.05 + 40 + 2) * 1000
    _due_now(pipe)
    pipe.dispatch()
    received = pipe.receive()
    ends_at = pipe.clock.now() + timedelta(seconds=30)

    class Context(FakeLambdaContext):
        def get_remaining_time_in_millis(self) -> int:
            return int((ends_at - pipe.clock.now()).total_seconds() * 1000)

    event = sqs_event(received, pipe.queue_arn(settings.SEND_QUEUE_URL))
    with pytest.raises(BatchProcessingError, match="too little time left in this invocation"):
        sending.process_send_batch(event, Context(), settings)  # its one record failed: it comes back

    assert pipe.send_requests() == []


class _ExpireTokensBeforeSecondSend(pacing.Pacer):
    def __init__(self, simulator: OrangeSimulator) -> None:
        super().__init__()
        self.simulator = simulator
        self.calls = 0

    def wait(self, per_second: float, latest: datetime | None = None) -> datetime | None:
        self.calls += 1
        if self.calls == 2:
            self.simulator.expire_tokens()
        return super().wait(per_second, latest)


def test_a_token_expiring_mid_batch_is_refreshed_once_and_everything_goes(pipe: Pipeline) -> None:
    ids = [pipe.plan(n, DUE)["7_day_reminder"] for n in (1, 2, 3)]
    pipe.clock.advance_to(SEVEN_DAY)
    assert pipe.orange is not None
    sending.select_pacer(_ExpireTokensBeforeSecondSend(pipe.orange))

    _, response = pipe.cycle()

    assert response == {"batchItemFailures": []}
    assert {pipe.message(m).status for m in ids} == {"sent"}
    received = pipe.orange.received
    assert [r.status for r in received if r.endpoint == "token"] == [200, 200]  # the first token, one refresh
    assert [r.status for r in received if r.endpoint == "send"] == [201, 401, 201, 201]
    assert len(pipe.accepted()) == 3


def test_a_poison_record_fails_alone(pipe: Pipeline) -> None:
    message_id = _due_now(pipe)
    pipe.dispatch()
    for body in ("not json", '{"message_id": 5, "version": 1}'):
        pipe.sqs.send_message(QueueUrl=pipe.settings.SEND_QUEUE_URL, MessageBody=body)
    received = pipe.receive()
    poison = sorted(m["MessageId"] for m in received if not m["Body"].startswith('{"message_id":"msg_'))
    assert len(received) == 3 and len(poison) == 2

    response = pipe.send(received, ack=False)

    assert sorted(item["itemIdentifier"] for item in response["batchItemFailures"]) == poison
    assert pipe.message(message_id).status == "sent"


def _dead_letter_one(pipe: Pipeline) -> str:
    """A 7-day reminder dead-lettered after one 503 (no retries allowed), with its copy on the DLQ."""
    pipe.configure(SMS_MAX_RETRIES=0)
    pipe.start_orange(faults=[Fault(nth=1, status=503)])
    message_id = _due_now(pipe)
    pipe.cycle()
    assert pipe.message(message_id).status == "dead_letter"
    return message_id


def test_a_redriven_dead_letter_goes_back_to_pending_and_is_sent_by_the_next_run(pipe: Pipeline) -> None:
    message_id = _dead_letter_one(pipe)
    pipe.clock.advance_to(SEVEN_DAY + timedelta(hours=2))

    result = queue.redrive(pipe.settings)

    assert (result.method, result.moved) == ("receive-send-delete", 1)  # moto has no StartMessageMoveTask
    assert pipe.receive_dead_letters() == []
    redriven = pipe.receive()
    assert bodies(redriven) == [{"message_id": message_id, "version": pipe.message(message_id).version}]
    assert pipe.send(redriven) == {"batchItemFailures": []}
    taken_back = pipe.message(message_id)
    assert (taken_back.status, taken_back.due_at, taken_back.retry_floor) == ("pending", iso(pipe.clock.now()), 1)
    assert store.history_of(taken_back)[-1]["reason"] == "redriven from the dead letter queue"
    pipe.cycle()
    stored = pipe.message(message_id)
    assert (stored.status, stored.attempts, stored.retry_floor) == ("sent", 2, 1)
    assert len(pipe.accepted()) == 1 and len(pipe.send_requests()) == 2


def test_a_redriven_grouped_dead_letter_starts_afresh_and_may_be_revived_after_a_cancellation(pipe: Pipeline) -> None:
    """Siblings' reminders dead-lettered as one grouped SMS whose request failed: bound to no SMS any more (that one
    never went out), and taken back by a redrive, a cancellation then an opt-in revives them."""
    pipe.configure(SMS_MAX_RETRIES=0)
    pipe.start_orange(faults=[Fault(nth=1, status=503)])
    ids = [pipe.plan(n, DUE, phone=PHONE)["7_day_reminder"] for n in (1, 2)]
    pipe.clock.advance_to(SEVEN_DAY)
    pipe.cycle()
    assert {pipe.message(i).status for i in ids} == {"dead_letter"} and not any(pipe.message(i).sms_key for i in ids)
    queue.redrive(pipe.settings)
    pipe.send(pipe.receive())
    assert {pipe.message(i).status for i in ids} == {"pending"}

    assert store.stop_number(PHONE, iso(pipe.clock.now()), "operator opt-out")
    planning.reconcile_patient("p1", pipe.settings, pipe.clock.now())
    assert pipe.message(ids[0]).status == "cancelled"
    planning.set_consent(PHONE, True, pipe.settings)

    assert pipe.message(ids[0]).status == "pending"


def test_a_redriven_dead_letter_past_its_deadline_expires_instead(pipe: Pipeline) -> None:
    message_id = _dead_letter_one(pipe)
    pipe.clock.advance_to(SEVEN_DAY_DEADLINE + timedelta(minutes=1))

    queue.redrive(pipe.settings)
    pipe.send(pipe.receive())

    stored = pipe.message(message_id)
    assert stored.status == "expired" and stored.expires_at is not None
    assert pipe.accepted() == [] and len(pipe.send_requests()) == 1


def test_a_crash_right_after_a_redriven_dead_letter_is_taken_back_recovers_by_itself(
    pipe: Pipeline, monkeypatch
) -> None:
    message_id = _dead_letter_one(pipe)
    pipe.start_orange()
    queue.redrive(pipe.settings)
    real_transition = store.transition

    def killed_after_the_write(*args: Any, **kwargs: Any) -> bool:
        real_transition(*args, **kwargs)
        raise RuntimeError("Lambda killed after the take-back write")

    monkeypatch.setattr(store, "transition", killed_after_the_write)
    redriven = pipe.receive()
    assert pipe.send(redriven)["batchItemFailures"] == [{"itemIdentifier": redriven[0]["MessageId"]}]
    monkeypatch.undo()
    assert pipe.message(message_id).status == "pending"  # in the `due` index, whatever happens to the record
    pipe.send(pipe.receive())  # SQS redelivers the record: stale now

    pipe.cycle()  # no operator: the scheduler's next run

    assert pipe.message(message_id).status == "sent"
    assert len(pipe.accepted()) == 1


def test_a_send_batch_reads_its_reminders_with_one_batch_read_per_table(pipe: Pipeline, monkeypatch) -> None:
    """Patients and appointments in one BatchGetItem, stops in another, for the whole batch (the messages' own batch
    get names them), not three GetItem calls per reminder (issue 12: requests per delivered reminder)."""
    ids = [pipe.plan(n, DUE)["7_day_reminder"] for n in (1, 2, 3)]
    pipe.clock.advance_to(SEVEN_DAY)
    pipe.dispatch()
    records = pipe.receive()
    store.stop_number("+2250701020303", iso(SEVEN_DAY), "STOP")  # p3's number, stopped after the claim
    reads: list[tuple[str, str]] = []
    original = botocore.client.BaseClient._make_api_call

    def recording(client: Any, operation: str, params: dict[str, Any]) -> Any:
        if client.meta.service_model.service_name == "dynamodb" and operation in {"GetItem", "BatchGetItem"}:
            reads.append((operation, str(params.get("TableName") or ",".join(sorted(params.get("RequestItems", {}))))))
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    assert pipe.send(records) == {"batchItemFailures": []}
    monkeypatch.undo()

    tables = (pipe.settings.MESSAGES_TABLE, pipe.settings.PATIENTS_TABLE, pipe.settings.APPOINTMENTS_TABLE)
    # The batch took no time on this clock: its read of each message is fresh enough for the checks.
    assert [r for r in reads if r[0] == "GetItem" and r[1] in tables] == []
    assert sorted(name for operation, name in reads if operation == "BatchGetItem") == sorted(
        [tables[0], ",".join(sorted(tables[1:])), pipe.settings.OPS_TABLE]
    )
    assert [pipe.message(m).status for m in ids] == ["sent", "sent", "cancelled"]  # the stop, read ahead, holds
    assert len(pipe.accepted()) == 2


def _opt_out_during_the_first_send(pipe: Pipeline, monkeypatch: pytest.MonkeyPatch, paced_for: timedelta) -> str:
    """Send a batch of two families' reminders; while the first SMS is on its way, the other family opts out from
    another process (the batch's read of its reminder no longer holds), and the batch's pace then takes `paced_for`.
    Returns the other family's reminder."""
    from core.providers.orange import OrangeProvider

    monkeypatch.setenv("SMS_SENDER_CALLS_IN_FLIGHT", "1")  # one lane: the second check comes after the first send
    ids = {n: pipe.plan(n, DUE)["7_day_reminder"] for n in (1, 2)}
    pipe.clock.advance_to(SEVEN_DAY)
    pipe.dispatch()
    real_send = OrangeProvider.send
    others: list[int] = []

    def a_family_opts_out_meanwhile(self: OrangeProvider, **kwargs: Any) -> Any:
        if not others:
            others.append(2 if kwargs["to"] == PHONE else 1)
            # A thread starts in a context of its own: its writes are another process's, unknown to the batch.
            opt_out = threading.Thread(
                target=handle_clinic_event, args=(patient(f"p{others[0]}", sms_opt_in=False), pipe.settings)
            )
            opt_out.start()
            opt_out.join()
            pipe.clock.advance_to(pipe.clock.now() + paced_for)
        return real_send(self, **kwargs)

    monkeypatch.setattr(OrangeProvider, "send", a_family_opts_out_meanwhile)
    assert pipe.send(pipe.receive()) == {"batchItemFailures": []}
    monkeypatch.setattr(OrangeProvider, "send", real_send)
    return ids[others[0]]


def test_a_reminder_whose_batch_read_grew_old_is_read_again_before_its_checks(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = _opt_out_during_the_first_send(pipe, monkeypatch, sending.MESSAGE_READ_FRESH + timedelta(milliseconds=1))

    assert pipe.message(other).status == "cancelled"
    assert len(pipe.accepted()) == 1


def test_a_fresh_batch_read_answers_the_checks_which_bounds_how_late_a_cancellation_is_seen(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The price of not reading each message again: a cancellation that lands less than MESSAGE_READ_FRESH before
    the check is not seen by it, as one that lands after the check never was. The SMS goes out, and the message
    records it: what the family received, whatever came first."""
    monkeypatch.setattr(sending, "MESSAGE_READ_FRESH", timedelta(seconds=5))  # whatever the test pace
    other = _opt_out_during_the_first_send(pipe, monkeypatch, timedelta(0))

    moves = [(entry["from"], entry["to"]) for entry in store.history_of(pipe.message(other))]
    assert moves[-2:] == [("queued", "cancelled"), ("cancelled", "sent")]  # the opt-out did land first
    assert len(pipe.accepted()) == 2


def test_a_message_this_batch_wrote_is_read_again_not_answered_from_the_batch_read(pipe: Pipeline) -> None:
    message_id = _due_now(pipe)
    pipe.dispatch()  # claimed: queued, as a send batch finds it
    with store.read_ahead([message_id]):
        message = store.get_message(message_id)  # no `read_since`: the table's
        assert message is not None
        # A write through the store: the batch's read is dropped.
        assert store.bind_to_sms(message, "sms_x", pipe.clock.now())
        again = store.get_message(message_id, read_since=SEVEN_DAY - timedelta(days=1))
    assert again is not None and again.sms_key == "sms_x"


def test_a_read_ahead_that_fails_leaves_each_reminder_to_read_its_own_items(pipe: Pipeline, monkeypatch) -> None:
    ids = [pipe.plan(n, DUE)["7_day_reminder"] for n in (1, 2)]
    pipe.clock.advance_to(SEVEN_DAY)
    pipe.dispatch()

    def throttled(ids: list[str]) -> Any:
        raise RuntimeError("ProvisionedThroughputExceededException")

    monkeypatch.setattr(store, "_read_for_send", throttled)
    assert pipe.send(pipe.receive()) == {"batchItemFailures": []}  # not the whole batch failed for it
    assert [pipe.message(m).status for m in ids] == ["sent", "sent"]


def test_read_aheads_on_two_threads_end_with_their_blocks(pipe: Pipeline) -> None:
    """The embedded stack answers replies on HTTP threads while its loop sends a batch: each thread's block reads
    and forgets its own items. (They shared one process-wide cache: the block that ended last put back the one that
    ended first, and the process then answered from it for good.)"""
    pipe.plan(1, DUE)
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def batch() -> None:
        with store.read_ahead(patient_ids=["p1"]):
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def reply() -> None:
        first_in.wait(10)
        with store.read_ahead(appointment_ids=["a1"]):
            seen["other thread's patient"] = store._take_ahead("patient", "p1")
            second_in.set()
            first_out.wait(10)

    threads = [threading.Thread(target=batch), threading.Thread(target=reply)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert seen["other thread's patient"] is store._NOT_AHEAD
    assert store._take_ahead("patient", "p1") is store._NOT_AHEAD
    assert store._take_ahead("appointment", "a1") is store._NOT_AHEAD


@pytest.mark.parametrize("name", ["\x07", "\u200b"])
def test_a_text_that_cannot_be_rendered_fails_its_message_and_not_the_batch(pipe: Pipeline, name: str) -> None:
    """Stored before intake cleaned names (or written by hand): the message fails with its reason, once."""
    message_id = _due_now(pipe)
    other = pipe.plan(2, DUE)["7_day_reminder"]
    pipe.dispatch()
    stored_patient = store.get_patient("p1")
    assert stored_patient is not None
    stored_patient.display_name = name
    stored_patient.save()

    assert pipe.send(pipe.receive()) == {"batchItemFailures": []}

    failed = pipe.message(message_id)
    assert failed.status == "failed" and "text could not be rendered" in (failed.last_error or "")
    assert pipe.message(other).status == "sent"
    assert len(pipe.send_requests()) == 1


def _siblings_after_a_sender_crash(pipe: Pipeline, monkeypatch: pytest.MonkeyPatch, where: str) -> tuple[str, str]:
    """Two children on PHONE, their 7-day reminders claimed together; the sender dies in `sending.<where>` on the
    record's first delivery, which fails. Their ids."""
    first = pipe.plan(1, DUE, phone=PHONE)["7_day_reminder"]
    second = pipe.plan(2, DUE, phone=PHONE, display_name="Kofi")["7_day_reminder"]
    pipe.clock.advance_to(SEVEN_DAY)
    pipe.dispatch()

    def crash(*_: Any, **__: Any) -> Any:
        raise RuntimeError(f"the sender died in {where}")

    with monkeypatch.context() as patched:
        patched.setattr(sending, where, crash)
        assert pipe.send(pipe.receive())["batchItemFailures"]
    return first, second


def _as_function(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run what follows as the Lambda function `name` runs it: its own process, its own AWS_LAMBDA_FUNCTION_NAME."""
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", name)
    sending._idempotent_send.cache_clear()


def test_a_revival_in_another_function_finds_the_sms_the_sender_recorded(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In Lambda each function has its own AWS_LAMBDA_FUNCTION_NAME, which Powertools put at the start of each
    idempotency record's id. plan_reminders (a clinic's opt-in) and delivery_receipt (a family's OUI) looked for
    send_sms's records under their own names and never found them: a reminder whose grouped SMS went out before a
    crash came back free 15 minutes on, and was sent a second time."""
    _as_function("rappel-prod-SendSmsFunction-AbC123", monkeypatch)
    _, second = _siblings_after_a_sender_crash(pipe, monkeypatch, "_record_accepted")  # after Orange's 201
    assert len(pipe.accepted()) == 1 and "Kofi" in pipe.accepted()[0].text
    handle_clinic_event(patient("p2", phone=PHONE, display_name="Kofi", sms_opt_in=False), pipe.settings)
    assert pipe.message(second).status == "cancelled" and pipe.message(second).sms_key

    pipe.clock.advance_to(pipe.clock.now() + timedelta(minutes=20))
    _as_function("rappel-prod-PlanRemindersFunction-XyZ789", monkeypatch)
    handle_clinic_event(patient("p2", phone=PHONE, display_name="Kofi", sms_opt_in=True), pipe.settings)
    _as_function("rappel-prod-SendSmsFunction-AbC123", monkeypatch)
    for _ in range(4):
        pipe.clock.advance_to(pipe.clock.now() + timedelta(minutes=15))
        pipe.cycle()

    assert len([sms for sms in pipe.accepted() if "Kofi" in sms.text]) == 1


def test_a_grouped_sms_taken_before_a_crash_is_replayed_not_resent_after_an_outage(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orange takes the siblings' SMS and the sender dies before recording it; the record comes back while Orange's
    circuit is open (no provider can be asked). The stored acceptance is read first and the reminders are recorded
    sent from it: the family gets one SMS, not a second one composed anew. (They were deferred, bound, without
    reading it: doses given meanwhile then cancelled reminders whose SMS had gone out.)"""
    first, second = _siblings_after_a_sender_crash(pipe, monkeypatch, "_record_accepted")  # after the 201
    assert len(pipe.accepted()) == 1

    for _ in range(pipe.settings.SMS_CIRCUIT_FAILURES):  # an outage elsewhere opened Orange's circuit meanwhile
        provider_state.record_transient_failure("orange", pipe.clock.now(), pipe.settings, "http_503: down")
    assert pipe.send(pipe.receive(visibility=0)) == {"batchItemFailures": []}
    assert [(pipe.message(m).status, pipe.message(m).attempts) for m in (first, second)] == [("sent", 1)] * 2

    for appointment in ("a1", "a2"):
        given = envelope("DoseAdministered", appointment_id=appointment, administered_on="2027-03-13")
        handle_clinic_event(given, pipe.settings)
    provider_state.release()
    pipe.clock.advance_to(pipe.clock.now() + timedelta(minutes=2))
    pipe.cycle()
    assert {pipe.message(m).status for m in (first, second)} == {"sent"}
    assert len(pipe.accepted()) == 1, "the family got a second SMS"


def test_a_due_probe_of_the_first_provider_does_not_throttle_the_dispatcher_while_the_second_works(
    pipe: Pipeline,
) -> None:
    pipe.start_kannel()
    due = [_due_now(pipe, n) for n in (1, 2, 3)]
    opened_at = pipe.clock.now() - timedelta(minutes=5)
    for _ in range(pipe.settings.SMS_CIRCUIT_FAILURES):
        provider_state.record_transient_failure("orange", opened_at, pipe.settings, "http_503: down")
    assert provider_state.route(pipe.settings, pipe.clock.now()).probe  # Orange's probe is due

    dispatched = pipe.dispatch()

    assert dispatched["claimed"] == len(due)  # not the one reminder of a probe: Kannel takes the traffic


def test_every_provider_waiting_for_its_probe_gets_the_dispatcher_to_claim_one_reminder_each(pipe: Pipeline) -> None:
    """Both circuits open and both probes due: only the probes can go, so one reminder each is claimed, not a whole
    run's budget that the senders would defer straight back."""
    pipe.start_kannel()
    for n in (1, 2, 3, 5, 6, 7):  # six phones (p4 shares p1's)
        _due_now(pipe, n)
    opened_at = pipe.clock.now() - timedelta(minutes=5)
    for provider in ("orange", "kannel"):
        for _ in range(pipe.settings.SMS_CIRCUIT_FAILURES):
            provider_state.record_transient_failure(provider, opened_at, pipe.settings, "http_503: down")
    assert provider_state.route(pipe.settings, pipe.clock.now()).probe

    assert pipe.dispatch()["claimed"] == 2


def test_a_replay_routed_to_the_second_provider_asks_it_nothing_and_leaves_its_circuit_alone(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Orange takes the SMS, the sender dies before recording it, and Orange's circuit opens meanwhile: the record
    comes back routed to Kannel, but the stored result is replayed. Kannel gets no request, and its run of failures
    (one counted earlier) is not ended by an answer it never gave."""
    message_id = _due_now(pipe)
    pipe.dispatch()
    received = pipe.receive()
    with monkeypatch.context() as patched:
        patched.setattr(sending, "_record_accepted", lambda *_, **__: (_ for _ in ()).throw(RuntimeError("died")))
        assert pipe.send(received)["batchItemFailures"]
    kannel = pipe.start_kannel()
    now = pipe.clock.now()
    for _ in range(pipe.settings.SMS_CIRCUIT_FAILURES):
        provider_state.record_transient_failure("orange", now, pipe.settings, "http_503: down")
    provider_state.record_transient_failure("kannel", now, pipe.settings, "http_503: a blip")

    assert pipe.send(pipe.receive(visibility=0)) == {"batchItemFailures": []}

    stored = pipe.message(message_id)
    assert (stored.status, stored.provider) == ("sent", "orange")
    assert [r for r in kannel.received if r.endpoint == "send"] == []
    assert provider_state.circuits(pipe.clock.now(), fresh=True)["kannel"].failures == 1


class _RepliesWhilePacing(pacing.Pacer):
    """The family's replies (opt-out False, opt-in True) land at the first pace wait: after the record's SMS were
    composed and bound to their reminders, before the first request."""

    def __init__(self, settings: Any, *opt_ins: bool) -> None:
        super().__init__()
        self.settings, self.replies = settings, list(opt_ins)

    def wait(self, per_second: float, latest: datetime | None = None) -> datetime | None:
        while self.replies:
            planning.set_consent(PHONE, self.replies.pop(0), self.settings)
        return super().wait(per_second, latest)


@pytest.mark.parametrize("siblings", [1, 2], ids=["alone", "grouped"])
@pytest.mark.parametrize(
    "how", ["stop_during_a_refused_request", "stop_during_a_request_that_opens_the_circuit", "dead_letter_then_stop"]
)
def test_reminders_bound_to_an_sms_that_never_went_out_are_revived_by_an_opt_in(
    pipe: Pipeline, siblings: int, how: str
) -> None:
    """A reminder bound to a grouped SMS keeps its binding while that SMS may have gone out: a revival refused it.
    An SMS Orange refused (503) did not go out, yet its reminders kept the binding when a STOP had cancelled them
    meanwhile (their deferral found them cancelled, whether the refusal opened the circuit or not), or when their
    retries ran out (a dead letter): the family's OUI then left them cancelled for good. A lone reminder, never
    bound, was revived. A revival of a bound reminder asks the SMS's idempotency record whether it went out."""
    pipe.start_orange(faults=[Fault(nth=1, status=503)])
    if how == "dead_letter_then_stop":
        pipe.configure(SMS_MAX_RETRIES="0")
    if how == "stop_during_a_request_that_opens_the_circuit":
        pipe.configure(SMS_CIRCUIT_FAILURES="1")
    ids = [pipe.plan(n, DUE, phone=PHONE, display_name=f"Child{n}")["7_day_reminder"] for n in range(1, siblings + 1)]
    pipe.clock.advance_to(SEVEN_DAY)
    if how.startswith("stop_during"):
        sending.select_pacer(_RepliesWhilePacing(pipe.settings, False))
    try:
        pipe.cycle()
    finally:
        sending.select_pacer(None)
    if how == "dead_letter_then_stop":
        assert {pipe.message(i).status for i in ids} == {"dead_letter"}
        planning.set_consent(PHONE, False, pipe.settings)
    assert {pipe.message(i).status for i in ids} == {"cancelled"} and pipe.accepted() == []

    pipe.clock.advance_to(pipe.clock.now() + timedelta(minutes=31))  # past an open circuit's probe, too
    planning.set_consent(PHONE, True, pipe.settings)  # the family answers OUI

    assert {pipe.message(i).status for i in ids} == {"pending"}
    pipe.clock.advance_to(pipe.clock.now() + timedelta(minutes=1))
    pipe.cycle()
    assert {pipe.message(i).status for i in ids} == {"sent"} and len(pipe.accepted()) == 1


def _siblings_at_two_clinics(pipe: Pipeline) -> tuple[str, str]:
    """Two children on PHONE booked at two clinics (one record, two SMS); their 7-day reminders' ids."""
    first = pipe.plan(1, DUE, phone=PHONE, display_name="Child1")["7_day_reminder"]
    assert handle_clinic_event(patient("p2", phone=PHONE, display_name="Child2"), pipe.settings).applied == 1
    handle_clinic_event(dose("a2", "p2", due_date=DUE, clinic="CSU Yopougon"), pipe.settings)
    second = next(m.message_id for m in store.messages_of_patient("p2") if m.reminder_type == "7_day_reminder")
    return first, second


def test_a_second_sms_deferred_for_want_of_a_provider_is_revived_by_an_opt_in(pipe: Pipeline) -> None:
    """Siblings at two clinics: one record, two SMS, both bound before any request. The first SMS's 503 opens the
    only circuit; the second finds no provider, is deferred with its binding (no request for it was made here, and
    only its idempotency record can tell whether an earlier delivery's did), then a STOP and an OUI: it must come
    back."""
    pipe.configure(SMS_CIRCUIT_FAILURES="1")
    pipe.start_orange(faults=[Fault(nth=1, status=503)])
    first, second = _siblings_at_two_clinics(pipe)
    pipe.clock.advance_to(SEVEN_DAY)
    pipe.cycle()
    assert {pipe.message(i).status for i in (first, second)} == {"pending"} and pipe.accepted() == []
    planning.set_consent(PHONE, False, pipe.settings)  # STOP
    assert {pipe.message(i).status for i in (first, second)} == {"cancelled"}
    pipe.clock.advance_to(pipe.clock.now() + sending.SENDER_OUTLIVED)  # no sender that bound it is left

    planning.set_consent(PHONE, True, pipe.settings)  # OUI

    assert {pipe.message(i).status for i in (first, second)} == {"pending"}


def test_a_stop_then_an_opt_in_within_minutes_of_a_grouped_binding_brings_the_reminders_back_once(
    pipe: Pipeline,
) -> None:
    """As above, the OUI five minutes after the STOP: while the sender that bound the SMS could still be running, a
    revival was refused and the reminders stayed cancelled until the family's next event. They come back bound to
    that SMS, and go out once, under its key."""
    pipe.configure(SMS_CIRCUIT_FAILURES="1")
    pipe.start_orange(faults=[Fault(nth=1, status=503)])
    first, second = _siblings_at_two_clinics(pipe)
    pipe.clock.advance_to(SEVEN_DAY)
    pipe.cycle()
    planning.set_consent(PHONE, False, pipe.settings)  # STOP
    pipe.clock.sleep(300)

    planning.set_consent(PHONE, True, pipe.settings)  # OUI

    assert {pipe.message(i).status for i in (first, second)} == {"pending"}
    assert pipe.message(second).sms_key, "still bound to the SMS its sender may request (the first one's 503 freed it)"
    pipe.clock.advance_to(pipe.clock.now() + timedelta(minutes=31))  # past the open circuit's probe
    for _ in range(3):
        pipe.cycle()
        pipe.clock.sleep(60)
    assert {pipe.message(i).status for i in (first, second)} == {"sent"}
    assert len([a for a in pipe.accepted() if a.text.startswith("Rappel")]) == 2  # one SMS per clinic, each once


def _throttled_batch_read(*_: Any) -> Any:
    raise RuntimeError("batch read throttled: keys left unprocessed")


_WRITTEN_BEFORE_THE_CANCELLATIONS = {
    # A family's STOP: the number's stop (the reply function's first write).
    "stop": lambda now: store.OpsRecord("STOP", PHONE, text=f"{iso(now)}|reply opt-out").save(),
    # The clinic opts the child out: planning writes the patient first.
    "clinic_opt_out": lambda now: store.PatientRecord("p1").update(actions=[store.PatientRecord.sms_opt_in.set(False)]),
    # The dose is given: planning writes the appointment's close first.
    "dose_given": lambda now: store.AppointmentRecord("a1").update(
        actions=[store.AppointmentRecord.status.set("administered")]
    ),
}


@pytest.mark.parametrize("throttled", [False, True], ids=["read_again", "read_again_throttled"])
@pytest.mark.parametrize("change", sorted(_WRITTEN_BEFORE_THE_CANCELLATIONS))
def test_a_change_written_while_a_batch_is_paced_is_seen_when_its_reminder_is_checked(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch, change: str, throttled: bool
) -> None:
    """A STOP writes the number's stop, a clinic event its patient or appointment, before cancelling the reminders.
    A batch read those once, at its start, and read only the message again when that read was over a second old: a
    reminder checked seconds into a paced batch went out although its cancellation was on its way (the reply or
    event still reconciling a sibling, or cut short). They are read again with the message, in one BatchGetItem, or
    each alone when DynamoDB throttles that read."""
    message_id = _due_now(pipe)
    pipe.dispatch()
    received = pipe.receive()
    real = sending._this_claim

    def lands_during_the_batch(*args: Any, **kwargs: Any) -> Any:
        # Written by another function (another process), so not through this batch's reads.
        _WRITTEN_BEFORE_THE_CANCELLATIONS[change](pipe.clock.now())
        pipe.clock.advance_to(pipe.clock.now() + timedelta(seconds=2))  # checked 2 s into the paced batch
        if throttled:
            monkeypatch.setattr(store, "_batch_read", _throttled_batch_read)
        return real(*args, **kwargs)

    monkeypatch.setattr(sending, "_this_claim", lands_during_the_batch)
    pipe.send(received)

    assert pipe.accepted() == [] and pipe.message(message_id).status == "cancelled"


def test_new_credentials_put_in_the_secret_end_a_hold_for_revoked_ones(pipe: Pipeline) -> None:
    """The runbook for a hold on revoked credentials: put new ones in the Orange secret, and sending resumes at the
    next probe (or `rappel release-hold`). The provider was built once per process with the credentials it first
    read, so a warm sender kept probing with the revoked ones and the hold came back each time."""
    secrets_manager = boto3.client("secretsmanager", region_name=pipe.settings.AWS_REGION)
    name = pipe.settings.ORANGE_CREDENTIALS_SECRET
    revoked = {"client_id": CLIENT_ID, "client_secret": "revoked"}
    secrets_manager.put_secret_value(SecretId=name, SecretString=json.dumps(revoked))
    message_id = _due_now(pipe)
    pipe.cycle()
    assert provider_state.circuits(pipe.clock.now(), fresh=True)["orange"].kind is CircuitKind.HOLD

    fresh = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    secrets_manager.put_secret_value(SecretId=name, SecretString=json.dumps(fresh))
    secrets.reset()  # the secrets' five-minute cache, which a probe 30 minutes later is past
    pipe.clock.advance_to(pipe.clock.now() + HOLD_INTERVAL + timedelta(minutes=1))
    pipe.cycle()

    assert pipe.message(message_id).status == "sent"


@pytest.mark.parametrize("body", ["plain", "oneapi_policy_error"])
def test_a_429_is_a_throttle_whatever_its_body_says(pipe: Pipeline, body: str) -> None:
    """A 429 was told from other failures by its error code, which is the body's OneAPI id when it has one
    (POL0001): such a 429 spent one of the reminder's attempts and counted towards the provider's circuit. By its
    HTTP status, it is a throttle: the sender pauses and the reminder waits, with no attempt spent."""
    pipe.start_orange(faults=[Fault(nth=1, status=429, **({"message_id": "POL0001"} if body != "plain" else {}))])
    message_id = _due_now(pipe)
    pipe.cycle()

    stored = pipe.message(message_id)
    assert (stored.status, stored.attempts) == ("pending", 0) and stored.last_error.startswith("throttled")
    assert "orange" not in provider_state.circuits(pipe.clock.now(), fresh=True)


def test_a_pause_longer_than_the_invocation_has_left_defers_the_batch_instead_of_sleeping_past_its_end(
    pipe: Pipeline,
) -> None:
    """A 429 with `Retry-After: 300` on a batch's first request paused the sender, and the batch's next request slept
    the whole pause before the remaining-time guard looked: with 60 s left, Lambda would have killed the invocation,
    and the whole batch come back 12 minutes later. A request whose slot comes after the invocation's last useful
    moment waits for it as pending, without an attempt spent."""
    pipe.start_orange(faults=[Fault(nth=1, status=429, retry_after=300)])
    ids = [pipe.plan(n, DUE)["7_day_reminder"] for n in (1, 2)]
    pipe.clock.advance_to(SEVEN_DAY)
    pipe.dispatch()
    received = pipe.receive()
    ends_at = pipe.clock.now() + timedelta(seconds=60)
    left: list[int] = []

    class Context(FakeLambdaContext):
        def get_remaining_time_in_millis(self) -> int:
            left.append(int((ends_at - pipe.clock.now()).total_seconds() * 1000))
            return left[-1]

    sending.select_pacer(pacing.Pacer())
    try:
        response = sending.process_send_batch(
            sqs_event(received, pipe.queue_arn(pipe.settings.SEND_QUEUE_URL)), Context(), pipe.settings
        )
    finally:
        sending.select_pacer(None)

    assert response == {"batchItemFailures": []} and pipe.clock.now() < ends_at and min(left) > 0
    assert {(pipe.message(i).status, pipe.message(i).attempts) for i in ids} == {("pending", 0)}
    assert all(parse_iso(pipe.message(i).due_at) >= SEVEN_DAY + timedelta(seconds=300) for i in ids)


def test_a_sibling_bound_to_an_sms_that_went_out_without_it_is_revived(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A and B (two children, one phone) are bound to grouped SMS K; the sender dies before the request. The clinic
    opts child 2 out meanwhile (B cancelled, still bound to K). K's replay goes out carrying A alone. The clinic opts
    child 2 back in: B, which no SMS carried, must come back; the revival asked only whether K had gone out."""
    a, b = _siblings_after_a_sender_crash(pipe, monkeypatch, "_send_sms")  # after binding, before the request
    key = pipe.message(a).sms_key
    assert key and pipe.message(b).sms_key == key and pipe.accepted() == []
    handle_clinic_event(patient("p2", phone=PHONE, display_name="Kofi", sms_opt_in=False), pipe.settings)
    assert pipe.message(b).status == "cancelled"
    assert pipe.send(pipe.receive(visibility=0)) == {"batchItemFailures": []}
    assert pipe.message(a).status == "sent" and len(pipe.accepted()) == 1

    pipe.clock.advance_to(pipe.clock.now() + timedelta(minutes=5))
    handle_clinic_event(patient("p2", phone=PHONE, display_name="Kofi", sms_opt_in=True), pipe.settings)

    assert pipe.message(b).status == "pending"


def test_a_reminder_is_not_freed_from_an_sms_its_sender_may_still_request(pipe: Pipeline) -> None:
    """Siblings at two clinics: one record, two SMS, both bound before the first request. A STOP and an opt-in while
    the first is paced: the second SMS had no idempotency record yet, so the revival freed its reminder, the sender
    then sent that SMS with it, and its next claim sent it again alone. No call yet decides nothing while the sender
    that bound it may still be running."""
    first, second = _siblings_at_two_clinics(pipe)
    pipe.clock.advance_to(SEVEN_DAY)
    sending.select_pacer(_RepliesWhilePacing(pipe.settings, False, True))
    try:
        pipe.cycle()
    finally:
        sending.select_pacer(None)
    for _ in range(3):
        pipe.clock.advance_to(pipe.clock.now() + timedelta(minutes=10))
        pipe.cycle()

    assert len([sms for sms in pipe.accepted() if "Child2" in sms.text]) == 1
    assert {pipe.message(i).status for i in (first, second)} == {"sent"}


def test_a_family_gone_east_on_the_eve_of_the_dose_gets_no_1_day_reminder_on_the_due_date(pipe: Pipeline) -> None:
    """Abidjan to Tokyo at 16:00 UTC the day before: the 19:00 reminder has not gone out, and in Tokyo the day
    before is over. It expires; it does not go out at 19:00 UTC, 04:00 on the due date in Tokyo."""
    one_day = pipe.plan(1, DUE, preferred_hour=19)["1_day_reminder"]
    pipe.clock.advance_to(datetime(2027, 3, 19, 16, 0, tzinfo=UTC))
    handle_clinic_event(patient("p1", timezone="Asia/Tokyo", preferred_hour=19), pipe.settings)

    for hour in (16, 19, 23):
        pipe.clock.advance_to(datetime(2027, 3, 19, hour, 0, 30, tzinfo=UTC))
        pipe.cycle()

    assert pipe.message(one_day).status == "expired"
    assert pipe.accepted() == []


def test_an_earlier_preferred_hour_given_too_late_for_today_keeps_the_1_day_reminder_at_its_old_time(
    pipe: Pipeline,
) -> None:
    """19:00 reminders; at 18:30 the day before the dose the family asks for 08:00, already past: the reminder keeps
    its 19:00, still the day before, rather than being lost to a schedule it can no longer keep."""
    one_day = pipe.plan(1, DUE, preferred_hour=19)["1_day_reminder"]
    pipe.clock.advance_to(datetime(2027, 3, 19, 18, 30, tzinfo=UTC))
    handle_clinic_event(patient("p1", preferred_hour=8), pipe.settings)

    for hour, minute in ((18, 31), (19, 0), (19, 30)):
        pipe.clock.advance_to(datetime(2027, 3, 19, hour, minute, 30, tzinfo=UTC))
        pipe.cycle()

    assert pipe.message(one_day).status == "sent"


def test_a_grouped_sms_accepted_before_a_crash_is_recorded_sent_though_its_text_no_longer_fits(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name corrected before the record came back made the grouped text too long: its redelivery rendered the
    text before looking at the stored acceptance, and recorded both reminders `failed` (text too long) though the
    family had the SMS: a follow-up call, wrong statistics, its receipt unknown."""
    reminders = _siblings_after_a_sender_crash(pipe, monkeypatch, "_record_accepted")  # after the 201
    long_name = "عبد الرحمن بن محمد بن عبد العزيز الأحمد"  # UCS-2: with the other child's, past SMS_MAX_SEGMENTS
    renamed = patient("p2", phone=PHONE, display_name=long_name, at=pipe.clock.now())
    assert handle_clinic_event(renamed, pipe.settings.model_copy(update={"SMS_MAX_SEGMENTS": 1})).applied == 1
    pipe.configure(SMS_MAX_SEGMENTS=1)

    assert pipe.send(pipe.receive(visibility=0)) == {"batchItemFailures": []}

    assert len(pipe.accepted()) == 1
    assert {pipe.message(m).status for m in reminders} == {"sent"}
    assert pipe.message(reminders[0]).text == pipe.accepted()[0].text  # the text that went out


def test_a_sender_address_orange_refuses_holds_orange_and_kannel_takes_every_reminder(pipe: Pipeline) -> None:
    """Orange answers 400 SVC0004 naming `senderAddress` to every request from a sender the account does not have
    (a dev number, another country's): each family's reminder was failed on its first attempt and Kannel never
    asked. An error naming the account's part of the request holds Orange; the reminders go through Kannel."""
    pipe.start_orange(sender_addresses=["tel:+2259999"])  # not the stack's ORANGE_SENDER_ADDRESS
    kannel = pipe.start_kannel()
    ids = [pipe.plan(n, DUE)["7_day_reminder"] for n in (1, 2, 3)]
    pipe.clock.advance_to(SEVEN_DAY)

    pipe.cycle()

    assert [pipe.message(m).status for m in ids] == ["sent"] * 3
    assert {pipe.message(m).provider for m in ids} == {"kannel"} and len(kannel.accepted) == 3
    assert provider_state.circuits(pipe.clock.now())["orange"].is_open


def test_a_stopped_smsc_behind_kannel_fails_over_to_orange_instead_of_failing_every_family(pipe: Pipeline) -> None:
    """While the operator's SMSC is stopped (bearerbox's /stop-smsc), smsbox answers every recipient 403 "Not
    routable. Do not try again.": each reminder was failed as if its number were black-listed, the circuit never
    opened, and Orange, second in line, was never asked."""
    kannel = pipe.start_kannel()
    pipe.configure(SMS_PROVIDERS="kannel,orange")
    kannel.stop_smsc()
    ids = [pipe.plan(n, DUE)["7_day_reminder"] for n in range(1, 2 + pipe.settings.SMS_CIRCUIT_FAILURES)]
    pipe.clock.advance_to(SEVEN_DAY)

    for _ in range(15):  # the retries' backoff
        pipe.cycle()
        pipe.clock.sleep(60)

    assert "failed" not in {pipe.message(m).status for m in ids}
    assert provider_state.circuits(pipe.clock.now())["kannel"].is_open
    assert {pipe.message(m).status for m in ids} == {"sent"} and len(pipe.accepted()) == len(ids)


def test_an_ambiguous_send_logs_no_hash_of_the_phone(pipe: Pipeline, real_logs: Any) -> None:
    """An Orange send with no answer is recorded under a stand-in id made from the recipient's hash (its receipt
    names only the recipient), and "sms sent" logged it: an unsalted hash of a phone, reversed in a second from
    the country code and the masked number's last digits. The log line names the message only."""
    pipe.start_orange(faults=[Fault(nth=1, timeout="after_send")])
    message_id = _due_now(pipe)
    pipe.cycle()
    assert pipe.message(message_id).status == "sent" and pipe.message(message_id).provider_message_id
    logged = real_logs.getvalue()
    assert "sms sent" in logged and message_id in logged
    assert store.recipient_key(PHONE) not in logged


def test_a_quota_spent_holds_the_provider_until_its_retry_after_and_the_next_one_sends(pipe: Pipeline) -> None:
    """Orange answers 429 with Retry-After: 86400 (a day's quota spent): each reminder was deferred past its deadline
    and expired, the dispatcher kept claiming for Orange, Kannel was never asked, and the instance's pause held
    back every SMS it sent to any provider. Orange is held until then; Kannel sends them."""
    pipe.start_orange(faults=[Fault(status=429, retry_after=24 * 3600)])
    kannel = pipe.start_kannel()
    first = pipe.plan(1, DUE)["7_day_reminder"]
    pipe.clock.advance_to(SEVEN_DAY)
    pipe.cycle()
    second = pipe.plan(2, DUE)["7_day_reminder"]
    pipe.clock.sleep(60)
    pipe.cycle()

    assert [pipe.message(m).status for m in (first, second)] == ["sent", "sent"]
    assert {pipe.message(m).provider for m in (first, second)} == {"kannel"} and len(kannel.accepted) == 2
    orange = provider_state.circuits(pipe.clock.now())["orange"]
    assert orange.is_open and orange.retry_at is not None and orange.opened_at is not None
    assert orange.retry_at - orange.opened_at == timedelta(hours=24), orange
    assert len(pipe.send_requests()) == 1  # Orange asked once, not once a reminder


def test_a_short_throttle_pauses_and_waits_without_failing_over(pipe: Pipeline) -> None:
    pipe.start_orange(faults=[Fault(nth=1, status=429, retry_after=5)])
    kannel = pipe.start_kannel()
    message_id = pipe.plan(1, DUE)["7_day_reminder"]
    pipe.clock.advance_to(SEVEN_DAY)
    pipe.cycle()
    assert pipe.message(message_id).status == "pending" and not provider_state.circuits(pipe.clock.now())
    pipe.clock.sleep(60)
    pipe.cycle()
    assert pipe.message(message_id).status == "sent" and pipe.message(message_id).provider == "orange"
    assert not kannel.accepted


def test_a_bound_sms_never_requested_that_no_longer_fits_is_composed_again_not_failed(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every provider was down when the siblings' SMS was bound: deferred, still bound (it may have gone out before a
    crash, for all that delivery knew). A name corrected meanwhile made the grouped text too long for it: the next
    claim rendered the bound group as it was and failed both reminders, though each fits alone."""
    first = pipe.plan(1, DUE, phone=PHONE)["7_day_reminder"]
    second = pipe.plan(2, DUE, phone=PHONE, display_name="Kofi")["7_day_reminder"]
    pipe.clock.advance_to(SEVEN_DAY)
    for _ in range(pipe.settings.SMS_CIRCUIT_FAILURES):  # an outage, its probe due: one record is claimed
        provider_state.record_transient_failure("orange", SEVEN_DAY - timedelta(minutes=5), pipe.settings, "down")
    pipe.dispatch()
    with monkeypatch.context() as no_probe:  # another sender took the only probe
        no_probe.setattr(provider_state, "take_route", lambda *_, **__: provider_state.Route(None))
        assert pipe.send(pipe.receive()) == {"batchItemFailures": []}
    assert {pipe.message(m).status for m in (first, second)} == {"pending"}
    assert {pipe.message(m).sms_key for m in (first, second)} != {None}
    long_name = "عبد الرحمن بن محمد بن عبد العزيز الأحمد"  # UCS-2: alone 2 segments, with Awa's 3
    pipe.configure(SMS_MAX_SEGMENTS=2)
    assert handle_clinic_event(patient("p2", phone=PHONE, display_name=long_name, at=pipe.clock.now()), pipe.settings)
    provider_state.release()

    for _ in range(3):
        pipe.clock.sleep(60)
        pipe.cycle()

    assert [pipe.message(m).status for m in (first, second)] == ["sent", "sent"]
    assert len(pipe.accepted()) == 2  # one SMS each: together they no longer fit two segments


def test_kannel_is_told_until_when_the_reminder_is_wanted_so_a_link_down_cannot_deliver_it_late(pipe: Pipeline) -> None:
    """Kannel answers `3: Queued for later delivery` while its SMSC link is down and delivered the SMS whenever the
    link came back: hours after its deadline, or at night. Each request now carries a `validity` to the earlier of
    the reminder's deadline and the start of the family's quiet hours, and a held SMS that outlives it never goes
    out (a type-16 DLR settles it failed, for the follow-up)."""
    kannel = pipe.start_kannel()
    pipe.configure(SMS_PROVIDERS="kannel")
    ids = pipe.plan(1, DUE)
    one_day = datetime(2027, 3, 19, 9, 0, tzinfo=UTC)
    for at, reminder, wanted_until in [
        (SEVEN_DAY, "7_day_reminder", SEVEN_DAY.replace(hour=20)),  # quiet hours begin at 20:00, before its deadline
        (one_day, "1_day_reminder", one_day + timedelta(hours=10)),  # its deadline comes first (10 h late at most)
    ]:
        pipe.clock.advance_to(at)
        pipe.cycle()
        assert pipe.message(ids[reminder]).status == "sent"
        request = kannel.accepted[-1]
        validity = parse_qs(urlsplit(request.path).query)["validity"]
        assert validity == [str(int((wanted_until - request.at).total_seconds() // 60))], (reminder, request.at)


def test_a_record_delivered_twice_racing_a_503_sends_the_reminder_once(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQS hands one record to two senders. The first one's request gets a 503: Powertools forgets the call, and
    the sender writes the retry (pending, attempt 1 spent). The second read the reminder queued before that write
    and makes its request after the forget: Orange accepts it, but its `sent` write is refused, and the retry then
    sent the reminder a second time. The second sender's SMS went out: the record catches up (sent), and the
    retry has nothing left to send."""
    from core.providers.orange import OrangeProvider

    pipe.start_orange(faults=[Fault(nth=1, status=503)])
    message_id = _due_now(pipe)
    pipe.dispatch()
    record = pipe.receive()
    real_after_error, real_send = sending._after_provider_error, OrangeProvider.send
    failed_call: list[tuple[Any, ...]] = []  # the first sender's, once its request got the 503
    retry_written: list[Any] = []

    def after_the_503(*args: Any, **kwargs: Any) -> Any:
        if failed_call:
            return real_after_error(*args, **kwargs)
        failed_call.append(args)
        pipe.send(record, ack=False)  # the duplicate delivery, handled now by the second sender
        return retry_written[0]

    def second_request(self: OrangeProvider, **kwargs: Any) -> Any:
        if failed_call and not retry_written:  # the first sender writes its retry meanwhile
            retry_written.append(real_after_error(*failed_call[0]))
        return real_send(self, **kwargs)

    monkeypatch.setattr(sending, "_after_provider_error", after_the_503)
    monkeypatch.setattr(OrangeProvider, "send", second_request)
    pipe.send(record)
    monkeypatch.setattr(sending, "_after_provider_error", real_after_error)
    monkeypatch.setattr(OrangeProvider, "send", real_send)

    assert pipe.message(message_id).status == "sent" and len(pipe.accepted()) == 1
    pipe.clock.sleep(3600)  # past any retry's backoff
    pipe.cycle()
    assert len(pipe.accepted()) == 1, "the family got the reminder twice"


def _during_a_throttled_pause(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch, meanwhile: Callable[[str], None]
) -> tuple[str, datetime]:
    """Two families in one batch, one call in flight: Orange answers the first request 429 with Retry-After: 30, and
    the other family's reminder, checked a moment later, waits the 30 s out in the pacer. `meanwhile` runs at the
    start of that wait, given the phone the 429 answered. Returns that phone, and when `meanwhile` ran."""
    from core.providers.orange import OrangeProvider

    pipe.configure(SMS_SENDER_CALLS_IN_FLIGHT=1)
    pipe.start_orange(faults=[Fault(nth=1, status=429, retry_after=30)])
    for n in (1, 2):
        pipe.plan(n, DUE)
    pipe.clock.advance_to(SEVEN_DAY)
    pipe.dispatch()
    real_wait, real_send = pacing.Pacer.wait, OrangeProvider.send
    throttled: list[str] = []
    ran: list[datetime] = []

    def send(self: OrangeProvider, **kwargs: Any) -> Any:
        try:
            return real_send(self, **kwargs)
        except ProviderError:
            throttled.append(kwargs["to"])
            raise

    def wait(self: pacing.Pacer, per_second: float, latest: Any = None) -> Any:
        if throttled and not ran:
            meanwhile(throttled[0])
            ran.append(pipe.clock.now())
        return real_wait(self, per_second, latest)

    monkeypatch.setattr(OrangeProvider, "send", send)
    monkeypatch.setattr(pacing.Pacer, "wait", wait)
    assert pipe.send(pipe.receive()) == {"batchItemFailures": []}
    assert ran, "the interleaving did not happen"
    return throttled[0], ran[0]


def test_a_dose_given_while_a_reminder_waits_out_a_throttle_stops_it(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other family's dose was recorded given at the start of the pause, and its reminder was sent all the same,
    30 s later: the check before the send had not been made again after the pace. Now it is, once the wait is longer
    than a pace's few intervals."""

    def dose_given(throttled: str) -> None:
        other = "a2" if throttled == PHONE else "a1"
        event = envelope("DoseAdministered", appointment_id=other, administered_on="2027-03-13")
        assert handle_clinic_event(event, pipe.settings).applied == 1

    throttled, given = _during_a_throttled_pause(pipe, monkeypatch, dose_given)

    assert not [a for a in pipe.accepted() if a.at > given], "a reminder sent for a dose already given"
    other = "p2" if throttled == PHONE else "p1"
    [reminder] = [m for m in store.messages_of_patient(other) if m.reminder_type == "7_day_reminder"]
    assert reminder.status == "cancelled"


def test_a_grouped_record_delivered_twice_sends_a_sibling_once_when_the_other_is_cancelled_between(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Siblings on one phone, one grouped record, delivered to two senders at once. The first composes one SMS for
    both; the second sibling's appointment is cancelled; the second sender then finds the first sibling alone and
    sends it under its own attempt's key, unbound, while the first binds it to the grouped SMS and sends that too:
    two keys, two SMS for one reminder. A reminder left alone from a grouped record is bound like any grouped one,
    so only one of the two senders may send it."""
    from core.providers.orange import OrangeProvider

    pipe.configure(SMS_RATE_LIMIT_PER_SECOND=100)  # each request within a second of its check, as on separate instances
    first = pipe.plan(1, DUE, phone=PHONE)["7_day_reminder"]
    pipe.plan(2, DUE, phone=PHONE, display_name="Kofi")
    pipe.clock.advance_to(SEVEN_DAY)
    pipe.dispatch()
    record = pipe.receive()
    assert [len(b["reminders"]) for b in bodies(record)] == [2]
    real_bind, real_send = store.bind_to_sms, OrangeProvider.send
    second_at_its_request, first_done = threading.Event(), threading.Event()
    second: list[threading.Thread] = []

    def bind(message: Any, key: str, at: Any) -> bool:
        if not second:  # the first sender, about to bind: the sibling is cancelled, and the copy is handled now
            handle_clinic_event(envelope("AppointmentCancelled", appointment_id="a2"), pipe.settings)
            second.append(threading.Thread(target=pipe.send, args=(record,), kwargs={"ack": False}))
            second[0].start()
            second_at_its_request.wait(30)  # not set when the copy makes no request
        return real_bind(message, key, at)

    def send(self: OrangeProvider, **kwargs: Any) -> Any:
        if second and threading.current_thread() is second[0]:
            second_at_its_request.set()
            first_done.wait(30)  # the copy's request is on its way while the first sender goes on
        return real_send(self, **kwargs)

    monkeypatch.setattr(store, "bind_to_sms", bind)
    monkeypatch.setattr(OrangeProvider, "send", send)
    pipe.send(record)
    first_done.set()
    second[0].join(30)
    monkeypatch.setattr(store, "bind_to_sms", real_bind)
    monkeypatch.setattr(OrangeProvider, "send", real_send)

    assert len([a for a in pipe.accepted() if "Awa" in a.text]) == 1, [a.text for a in pipe.accepted()]
    assert pipe.message(first).status == "sent"


def test_a_stop_written_while_a_reminder_waits_out_a_throttle_stops_it(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the dose given above, but the family sends STOP: the reply handler writes the number's stop first (its
    cancellations land after). The check after the pace read the stop as the batch had read it, and missed it."""

    def stop_from_another_lambda(throttled: str) -> None:
        (other,) = {store.get_patient(f"p{n}").phone for n in (1, 2)} - {throttled}
        ahead = store._ahead.get()
        store._ahead.set(None)  # the reply handler's write does not reach this batch's read-ahead
        try:
            store.stop_number(other, iso(pipe.clock.now()), "STOP")
        finally:
            store._ahead.set(ahead)

    _, stopped = _during_a_throttled_pause(pipe, monkeypatch, stop_from_another_lambda)

    assert not [a for a in pipe.accepted() if a.at > stopped], "sent to a number stopped 30 s before"


def test_a_lone_reminder_of_a_grouped_record_cancelled_during_its_request_can_be_revived(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Siblings on one phone, one record; the sibling's appointment cancelled, the first goes alone, bound to its SMS.
    During its request (answered 503) its dose is moved to another date, and back five minutes later: the revival
    was refused for as long as the sender that bound it might still request the SMS (15 minutes), and the reminder
    was lost. It comes back bound to that SMS, so that its next send and any late one share one key."""
    from core.providers.orange import OrangeProvider

    pipe.start_orange(faults=[Fault(nth=1, status=503)])
    first = pipe.plan(1, DUE, phone=PHONE)["7_day_reminder"]
    pipe.plan(2, DUE, phone=PHONE, display_name="Kofi")
    pipe.clock.advance_to(SEVEN_DAY)
    pipe.dispatch()
    record = pipe.receive()
    assert handle_clinic_event(envelope("AppointmentCancelled", appointment_id="a2"), pipe.settings).applied == 1
    real_send = OrangeProvider.send
    moved: list[bool] = []

    def send(self: OrangeProvider, **kwargs: Any) -> Any:
        if not moved:
            moved.append(True)
            assert handle_clinic_event(dose("a1", "p1", due_date="2027-03-27"), pipe.settings).applied == 1
        return real_send(self, **kwargs)

    monkeypatch.setattr(OrangeProvider, "send", send)
    pipe.send(record)
    monkeypatch.setattr(OrangeProvider, "send", real_send)
    assert moved and pipe.message(first).status == "cancelled" and pipe.message(first).sms_key

    pipe.clock.sleep(300)
    assert handle_clinic_event(dose("a1", "p1", due_date=DUE), pipe.settings).applied == 1
    assert pipe.message(first).status == "pending"
    pipe.clock.advance_to(parse_iso(pipe.message(first).due_at))
    pipe.cycle()
    assert pipe.message(first).status == "sent" and len(pipe.accepted()) == 1
