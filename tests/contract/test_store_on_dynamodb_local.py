"""The storage module on AWS's own DynamoDB Local: conditional writes, the sparse sharded index, counters.

The same code paths the integration suite runs on moto, so moto's leniency cannot hide a wrong expression.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import botocore.session
import pytest
from aws_lambda_powertools.utilities.parser.models import DynamoDBStreamModel

from core import clock, store
from core.lifecycle import IllegalTransition, Status
from core.planning import handle_clinic_event
from core.settings import Settings, build_settings
from core.store import Change, Guard, MessageRecord, iso
from core.tally import tally_changes
from rappel_local.change_streams import ChangeStreams
from rappel_local.stack import create_stack
from tests.helpers import dose, envelope, patient

pytestmark = pytest.mark.contract


@pytest.fixture
def settings(dynamodb_local_endpoint: str, virtual_clock) -> Iterator[Settings]:
    stack = create_stack(
        prefix=f"s{uuid.uuid4().hex[:8]}", endpoint_url=dynamodb_local_endpoint, services=("dynamodb",)
    )
    store.unbind()
    configured = build_settings(**stack.environment())
    store.bind(configured)
    yield configured
    store.unbind()


def _tally(settings: Settings) -> int:
    """tally_changes on the tables' streams, as the event source mappings would run it."""
    environment = {"MESSAGES_TABLE": settings.MESSAGES_TABLE, "OPS_TABLE": settings.OPS_TABLE}
    environment["AWS_ENDPOINT_URL"] = str(settings.AWS_ENDPOINT_URL)
    return ChangeStreams(environment=environment).drain(
        lambda _, event: tally_changes(DynamoDBStreamModel(**event), settings)
    )


def _by_type(patient_id: str = "p1") -> dict[str, MessageRecord]:
    return {m.reminder_type: m for m in store.messages_of_patient(patient_id)}


def test_planning_writes_and_replays_are_conditional(settings: Settings) -> None:
    handle_clinic_event(patient(), settings)
    first = dose()
    assert handle_clinic_event(first, settings).created == 3
    assert handle_clinic_event(first, settings).created == 0  # replay: attribute_not_exists refuses twins
    older = dose(due_date="2027-03-27", at=datetime(2020, 1, 1, tzinfo=UTC))
    assert handle_clinic_event(older, settings).ignored == 1  # the event-order condition holds on real DynamoDB
    assert {m.status for m in _by_type().values()} == {"pending"}


def test_a_redelivered_equal_event_is_told_from_the_later_delivery_on_real_dynamodb(settings: Settings) -> None:
    """The two conditional writes of `store._write_event` as DynamoDB evaluates them: `NOT contains` on the ids
    applied at a stamp, ADD to that set, the last event replayed (a patient: no shortcut before the write)."""
    same_second = clock.now().replace(microsecond=0)
    first = patient(phone="+2250701020304", at=same_second, event_id="evt-first")
    second = patient(phone="+2250705060708", at=same_second, event_id="evt-second")
    assert handle_clinic_event(first, settings).applied == 1
    assert handle_clinic_event(second, settings).applied == 1
    assert handle_clinic_event(first, settings).ignored == 1
    assert handle_clinic_event(second, settings).applied == 1  # the last one, replayed
    stored = store.get_patient("p1")
    assert stored is not None and stored.phone == "+2250705060708"
    assert stored.event_ids == {"evt-first", "evt-second"}


def test_an_equal_event_applies_over_an_item_written_before_the_ids_were_kept(settings: Settings) -> None:
    """`NOT contains` on an absent set is true on DynamoDB: the later delivery wins over an older version's item."""
    same_second = iso(clock.now().replace(microsecond=0))
    store.save_appointment(
        store.AppointmentRecord(
            "a1",
            patient_id="p1",
            vaccine="Penta",
            dose=2,
            due_date="2027-03-20",
            status="scheduled",
            event_at=same_second,
            event_id="evt-old",
        )
    )
    store._connection().client.update_item(
        TableName=settings.APPOINTMENTS_TABLE,
        Key={"appointment_id": {"S": "a1"}},
        UpdateExpression="REMOVE event_ids",
    )
    later = dose(due_date="2027-03-27", at=store.parse_iso(same_second), event_id="evt-new")
    handle_clinic_event(patient(), settings)
    assert handle_clinic_event(later, settings).applied == 1
    stored = store.get_appointment("a1")
    assert stored is not None and stored.due_date == "2027-03-27" and stored.event_ids == {"evt-new"}


def test_due_index_is_sparse_sharded_and_ordered(settings: Settings) -> None:
    handle_clinic_event(patient(), settings)
    handle_clinic_event(dose(), settings)
    handle_clinic_event(dose(appointment_id="a2", due_date="2027-03-11"), settings)
    until = datetime(2027, 3, 13, 9, 0, tzinfo=UTC)
    due = [m for n in range(settings.DUE_INDEX_SHARDS) for m in store.due_in_shard(f"DUE#{n}", until, page_size=10)]
    assert sorted(m.scheduled_at for m in due) == [
        "2027-03-04T09:00:00.000Z",
        "2027-03-10T09:00:00.000Z",
        "2027-03-12T14:00:00.000Z",
        "2027-03-13T09:00:00.000Z",
    ]
    assert store.earliest_due(settings.DUE_INDEX_SHARDS) == datetime(2027, 3, 4, 9, 0, tzinfo=UTC)
    message = _by_type()["7_day_reminder"]
    assert store.transition(
        message, Change(Status.CANCELLED, frozenset({Status.PENDING}), {}), at=until, settings=settings
    )
    cancelled = store.get_message(message.message_id)
    assert cancelled.due_shard is None and cancelled.due_at is None  # left the sparse index
    assert cancelled.expires_at == until + timedelta(days=settings.SMS_RETENTION_DAYS)


def test_transitions_are_refused_by_the_state_machine_and_by_the_condition(settings: Settings) -> None:
    handle_clinic_event(patient(), settings)
    handle_clinic_event(dose(), settings)
    message = _by_type()["1_day_reminder"]
    now = datetime(2027, 3, 19, 9, 0, tzinfo=UTC)
    with pytest.raises(IllegalTransition):
        store.transition(message, Change(Status.DELIVERED, frozenset({Status.PENDING}), {}), at=now, settings=settings)
    claim = Change(
        Status.QUEUED,
        frozenset({Status.PENDING}),
        {"queued_at": iso(now)},
        guard=Guard.VERSION,
    )
    assert store.transition(message, claim, at=now, settings=settings)
    assert not store.transition(message, claim, at=now, settings=settings)  # a second claimer loses the race
    sent = Change(Status.SENT, frozenset({Status.QUEUED}), {"sent_at": iso(now), "provider_message_id": "orange-1"})
    assert store.transition(store.get_message(message.message_id), sent, at=now, settings=settings)
    assert store.message_ids_by_provider_id("orange-1") == [message.message_id]
    assert _tally(settings) == 6  # three created, the claim, the send, the outcome state: DynamoDB Local streams
    day = now.strftime("%Y-%m-%d")
    counters = store.read_counters(day)
    assert counters["09#1_day_reminder#sent"] == 1 and counters["09#1_day_reminder#lateness_le_1"] == 1


def test_counters_add_once_per_tally_batch(settings: Settings) -> None:
    key = ("2027-03-01", "10#7_day_reminder#sent")
    assert store.add_to_counters({key: 1}, "batch-1") == (1, 0)
    assert store.add_to_counters({key: 1}, "batch-1") == (0, 1)  # the same batch retried: refused by its condition
    assert store.add_to_counters({key: 2}, "batch-2") == (1, 0)
    assert store.read_counters("2027-03-01")["10#7_day_reminder#sent"] == 3
    assert store.add_outcome_counts({("2027-03#c1", "reached#7_day_reminder#appointments"): 1}, "batch-2") == (1, 0)
    assert store.add_outcome_counts({("2027-03#c1", "reached#7_day_reminder#appointments"): 1}, "batch-2") == (0, 1)
    assert store.read_outcome_counts()["2027-03#c1"]["reached#7_day_reminder#appointments"] == 1


def test_a_read_ahead_across_tables_answers_as_the_reads_one_by_one(settings: Settings) -> None:
    """One BatchGetItem over three tables (appointments, patients, and the outcome states in the ops table), with
    absent keys, read as DynamoDB itself answers it."""
    handle_clinic_event(patient(), settings)
    handle_clinic_event(dose(), settings)
    one_by_one = (store.get_appointment("a1"), store.get_patient("p1"), store.get_appointment_state("a1"))
    assert all(item is not None for item in one_by_one)
    with store.read_ahead(appointment_ids=["a1", "absent"], patient_ids=["p1", "nobody"]):
        ahead = (store.get_appointment("a1"), store.get_patient("p1"), store.get_appointment_state("a1"))
        assert store.get_appointment("absent") is None and store.get_patient("nobody") is None
        assert store.get_appointment_state("absent") is None
    assert [a.serialize() for a in ahead[:2]] == [o.serialize() for o in one_by_one[:2]]
    assert ahead[2] == one_by_one[2]


def test_a_given_up_batch_is_read_again_from_dynamodb_locals_stream(settings: Settings) -> None:
    """`rappel retally` reads a batch by its failure record's sequence numbers (AT_SEQUENCE_NUMBER), as DynamoDB's
    own streams answer it; a range that starts before what the shard holds is reported gone."""
    import boto3

    from rappel_local.change_streams import BatchGone, read_range, streams_client

    handle_clinic_event(patient(), settings)
    handle_clinic_event(dose(), settings)
    client = boto3.client("dynamodb", endpoint_url=settings.AWS_ENDPOINT_URL, region_name=settings.AWS_REGION)
    stream_arn = client.describe_table(TableName=settings.MESSAGES_TABLE)["Table"]["LatestStreamArn"]
    streams = streams_client(settings.AWS_ENDPOINT_URL, settings.AWS_REGION)
    (shard,) = streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"]
    iterator = streams.get_shard_iterator(
        StreamArn=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    every = streams.get_records(ShardIterator=iterator)["Records"]
    assert len(every) == 3  # the dose's three reminders
    numbers = [r["dynamodb"]["SequenceNumber"] for r in every]

    again = read_range(streams, stream_arn, shard["ShardId"], numbers[1], numbers[2])

    assert [r["eventID"] for r in again] == [r["eventID"] for r in every[1:3]]
    before_the_shard = str(int(shard["SequenceNumberRange"]["StartingSequenceNumber"]) - 1)
    with pytest.raises(BatchGone, match="first change"):
        read_range(streams, stream_arn, shard["ShardId"], before_the_shard, numbers[0])
    with pytest.raises(BatchGone, match="no shard"):
        read_range(streams, stream_arn, "shardId-00000000000000000000-00000000", numbers[0], numbers[1])


def test_a_phones_patients_come_from_the_by_phone_index(settings: Settings) -> None:
    """Siblings on one phone are found by the index, not a scan; a patient who moved to another phone is not."""
    shared, other = "+2250701020304", "+2250701020399"
    for patient_id in ("p2", "p1", "p3"):
        handle_clinic_event(patient(patient_id, phone=shared), settings)
    moved = handle_clinic_event(patient("p3", phone=other, at=clock.now() + timedelta(seconds=1)), settings)
    assert moved.applied == 1

    assert [p.patient_id for p in store.patients_with_phone(shared)] == ["p1", "p2"]
    assert [p.patient_id for p in store.patients_with_phone(other)] == ["p3"]
    assert store.patients_with_phone("+2250701020300") == []


def test_the_latest_late_schedule_fills_in_a_close_on_dynamodb_local(settings: Settings) -> None:
    """The fill-in's condition (a close not yet filled in, or filled in by an older schedule), on real DynamoDB."""
    start = clock.now() - timedelta(hours=4)
    handle_clinic_event(patient(), settings)
    given = envelope(
        "DoseAdministered", start + timedelta(hours=3), None, appointment_id="a1", administered_on="2027-03-01"
    )
    handle_clinic_event(given, settings)
    for hours, due_date in ((1, "2027-03-20"), (2, "2027-03-27"), (1, "2027-03-13")):
        handle_clinic_event(dose(due_date=due_date, at=start + timedelta(hours=hours)), settings)
    stored = store.get_appointment("a1")
    assert stored is not None and (stored.status, stored.due_date) == ("administered", "2027-03-27")


def test_threads_asking_together_build_each_tables_client_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender's lanes and the import's workers make their first requests together: each built its own botocore
    client for each table (half a second of CPU apiece here), all but one thrown away."""
    store.unbind()
    store.bind(settings)
    built: list[str] = []
    real = botocore.session.Session.create_client

    def counted(self: botocore.session.Session, *args: Any, **kwargs: Any) -> Any:
        built.append(threading.current_thread().name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(botocore.session.Session, "create_client", counted)
    together = threading.Barrier(8)

    def first_requests() -> None:
        together.wait()
        store.get_patient("p1")
        store.get_message("msg_none")

    with ThreadPoolExecutor(max_workers=8) as pool:
        for done in [pool.submit(first_requests) for _ in range(8)]:
            done.result()

    assert len(built) == 2, "one client for the patients table, one for the messages table"
