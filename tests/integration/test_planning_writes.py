"""Planning writes only what changes (issue 12, "writes that earn their cost"), counted at botocore's one call path.

Each clinic event goes through the plan_reminders handler as Lambda would run it, and every DynamoDB write it makes
is recorded. Planning writes no counter: tally_changes counts what it did from the tables' streams.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import boto3
import botocore.client
import pytest

from core import followup, store
from rappel_local.embedded import invoke
from tests.helpers import dose, envelope, patient

pytestmark = pytest.mark.integration

WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"}


@dataclass
class Writes:
    """The DynamoDB writes made since the recorder was installed, as (operation, table, partition key or None)."""

    made: list[tuple[str, str, str | None]] = field(default_factory=list)

    def to(self, table: str) -> list[str]:
        return [operation for operation, name, _ in self.made if name == table]

    def to_counters(self) -> list[str]:
        """Writes to the statistics counters (the ops table's COUNTERS#<day> items)."""
        return [operation for operation, _, pk in self.made if (pk or "").startswith("COUNTERS#")]

    def planning_records(self, aws: Any) -> list[tuple[str, str, str | None]]:
        """Writes to patients, appointments, messages and the counters."""
        tables = {aws.settings.PATIENTS_TABLE, aws.settings.APPOINTMENTS_TABLE, aws.settings.MESSAGES_TABLE}
        return [w for w in self.made if w[1] in tables or (w[2] or "").startswith("COUNTERS#")]

    def clear(self) -> None:
        self.made.clear()


@pytest.fixture
def writes(aws: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Writes]:
    recorded = Writes()
    original = botocore.client.BaseClient._make_api_call

    def recording(client: Any, operation: str, params: dict[str, Any]) -> Any:
        if client.meta.service_model.service_name == "dynamodb" and operation in WRITES:
            pk = (params.get("Key") or params.get("Item") or {}).get("pk", {}).get("S")
            recorded.made.append((operation, str(params.get("TableName", "")), pk))
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    yield recorded


def _plan(event: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = invoke("plan_reminders", event)
    return response


def test_a_dose_that_plans_three_reminders_writes_no_counter_and_the_tally_counts_them_in_one_write(
    aws: Any, writes: Writes
) -> None:
    _plan(patient())
    aws.tally()
    writes.clear()
    assert _plan(dose())["created"] == 3
    assert writes.to(aws.settings.MESSAGES_TABLE) == ["PutItem"] * 3
    assert writes.to_counters() == []  # was one write per event (and before that, one per reminder type)
    aws.tally()
    assert writes.to_counters() == ["UpdateItem"]
    day = aws.clock.now().strftime("%Y-%m-%d")
    hour = aws.clock.now().strftime("%H")
    counters = store.read_counters(day)
    for reminder_type in ("7_day_reminder", "1_day_reminder", "overdue_reminder"):
        assert counters[f"{hour}#{reminder_type}#planned"] == 1


def test_a_reschedule_cancels_and_plans_with_no_counter_write(aws: Any, writes: Writes) -> None:
    _plan(patient())
    _plan(dose(due_date="2027-03-20"))
    writes.clear()
    response = _plan(dose(due_date="2027-03-27"))
    assert (response["created"], response["cancelled"]) == (3, 3)
    assert writes.to_counters() == []
    aws.tally()
    counters = store.read_counters(aws.clock.now().strftime("%Y-%m-%d"))
    hour = aws.clock.now().strftime("%H")
    assert counters[f"{hour}#1_day_reminder#planned"] == 2
    assert counters[f"{hour}#1_day_reminder#cancelled"] == 1


def test_a_replayed_schedule_writes_nothing(aws: Any, writes: Writes) -> None:
    _plan(patient())
    scheduled = dose()
    _plan(scheduled)
    before = store.get_appointment("a1")
    assert before is not None
    writes.clear()
    response = _plan(scheduled)  # EventBridge delivers at least once
    assert (response["applied"], response["created"], response["cancelled"]) == (1, 0, 0)
    assert writes.planning_records(aws) == []  # was: the appointment written again, unchanged
    after = store.get_appointment("a1")
    assert after is not None and after.serialize() == before.serialize()


def test_a_replayed_dose_given_writes_nothing(aws: Any, writes: Writes) -> None:
    _plan(patient())
    _plan(dose())
    given = envelope("DoseAdministered", appointment_id="a1", administered_on="2027-03-01")
    assert _plan(given)["cancelled"] == 3
    writes.clear()
    response = _plan(given)
    assert (response["applied"], response["cancelled"]) == (1, 0)
    assert writes.planning_records(aws) == []
    stored = store.get_appointment("a1")
    assert stored is not None and stored.status == "administered"


def test_the_same_schedule_sent_again_later_is_written_so_an_older_one_arriving_after_it_loses(
    aws: Any, writes: Writes
) -> None:
    """Only an exact replay is skipped: a newer event with the same content still moves the event time forward,
    which is what keeps a delayed older event from being applied over it."""
    _plan(patient())
    start = aws.clock.now()
    _plan(dose(due_date="2027-03-20", at=start))
    moved = dose(due_date="2027-03-27", at=start + timedelta(minutes=1))
    resent = dose(due_date="2027-03-20", at=start + timedelta(minutes=2))
    writes.clear()
    _plan(resent)
    assert writes.to(aws.settings.APPOINTMENTS_TABLE) == ["UpdateItem"]  # one write
    assert _plan(moved)["ignored"] == 1
    pending = {m.due_date for m in store.messages_of_patient("p1") if m.status == "pending"}
    assert pending == {"2027-03-20"}


def test_counters_written_in_either_layout_read_back_as_their_sum(aws: Any) -> None:
    """Items written before this change (one per hour and type) and after (planning's, one per hour) add up."""
    client = store._connection().client
    table = aws.settings.OPS_TABLE
    client.put_item(
        TableName=table,
        Item={"pk": {"S": "COUNTERS#2027-03-01"}, "sk": {"S": "09#7_day_reminder"}, "planned": {"N": "2"}},
    )
    store.add_to_counters(
        {("2027-03-01", "09#7_day_reminder#planned"): 3, ("2027-03-01", "09#7_day_reminder#sent"): 1}, "batch-1"
    )
    counters = store.read_counters("2027-03-01")
    assert counters["09#7_day_reminder#planned"] == 5
    assert counters["09#7_day_reminder#sent"] == 1


def test_a_patient_change_that_moves_no_reminder_writes_the_patient_alone(aws: Any, writes: Writes) -> None:
    _plan(patient())
    _plan(dose())
    writes.clear()
    response = _plan(patient(display_name="Awa K.", at=aws.clock.now() + timedelta(minutes=1)))
    assert (response["applied"], response["created"], response["cancelled"], response["replanned"]) == (1, 0, 0, 0)
    # One write: an update, since the event leaves out the optional fields, which keep their stored values.
    assert writes.planning_records(aws) == [("UpdateItem", aws.settings.PATIENTS_TABLE, None)]


def test_a_dose_given_cancels_its_reminders_without_asking_for_a_follow_up_it_cannot_need(
    aws: Any, writes: Writes
) -> None:
    """Each cancelled reminder used to try `rearm_follow_up`, a conditional write bound to fail (the dose is given):
    one wasted write unit per reminder. Planning holds the appointment's state and skips it."""
    _plan(patient())
    _plan(dose())
    writes.clear()
    given = envelope("DoseAdministered", appointment_id="a1", administered_on="2027-03-01")
    assert _plan(given)["cancelled"] == 3
    state_writes = [w for w in writes.made if (w[2] or "").startswith("APPOINTMENT#")]
    assert state_writes == [("UpdateItem", aws.settings.OPS_TABLE, "APPOINTMENT#a1")]  # the state's own change


def test_a_schedule_reads_its_appointment_its_state_and_its_patient_in_one_batch_read(
    aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three GetItems a clinic event (the appointment, its outcome state, its patient) were one BatchGetItem's work
    (issue 12: requests per delivered reminder); what was read ahead is what planning acts on."""
    _plan(patient())
    _plan(dose(due_date="2027-03-20"))
    reads: list[tuple[str, str]] = []
    original = botocore.client.BaseClient._make_api_call

    def recording(client: Any, operation: str, params: dict[str, Any]) -> Any:
        if client.meta.service_model.service_name == "dynamodb" and operation in {"GetItem", "BatchGetItem"}:
            key = (params.get("Key") or {}).get("pk", {}).get("S", "")
            reads.append((operation, str(params.get("TableName") or ",".join(sorted(params["RequestItems"]))) + key))
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    response = _plan(dose(due_date="2027-03-27", at=aws.clock.now() + timedelta(minutes=1)))
    monkeypatch.undo()

    assert (response["created"], response["cancelled"]) == (3, 3)  # the reschedule, from the appointment read ahead
    settings = aws.settings
    read_ahead = ",".join(sorted([settings.APPOINTMENTS_TABLE, settings.OPS_TABLE, settings.PATIENTS_TABLE]))
    # Once before the event's moves, once after its cancellations (`reconcile_appointment`: has a newer event been
    # written meanwhile?).
    assert reads.count(("BatchGetItem", read_ahead)) == 2
    one_by_one = [name for operation, name in reads if operation == "GetItem"]
    assert not [n for n in one_by_one if n.startswith((settings.APPOINTMENTS_TABLE, settings.PATIENTS_TABLE))]
    assert f"{settings.OPS_TABLE}APPOINTMENT#a1" not in one_by_one


def test_a_state_changed_after_it_was_read_ahead_is_read_again_for_its_write(aws: Any) -> None:
    """Another instance changes the state between the read-ahead and the write: the conditional write fails, and
    the retry reads the state again instead of the copy read ahead (which would fail forever)."""
    _plan(patient())
    _plan(dose())
    before = store.get_appointment_state("a1")
    assert before is not None and not before.reached
    seven_day = next(m for m in store.messages_of_patient("p1") if m.reminder_type == "7_day_reminder")
    with store.read_ahead(appointment_ids=["a1"]):
        assert store.get_appointment_state("a1") == before
        boto3.client("dynamodb", region_name=aws.settings.AWS_REGION).update_item(  # elsewhere, not through the store
            TableName=aws.settings.OPS_TABLE,
            Key={"pk": {"S": "APPOINTMENT#a1"}, "sk": {"S": "STATE"}},
            UpdateExpression="ADD version :one",
            ExpressionAttributeValues={":one": {"N": "1"}},
        )
        followup.note_delivered(seven_day, aws.settings, aws.clock.now())

    after = store.get_appointment_state("a1")
    assert after is not None and after.reached and after.reached_type == "7_day_reminder"
    assert after.version == before.version + 2


def test_a_batch_read_dynamodb_keeps_throttling_gives_up_and_each_item_is_read_alone(
    aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys left unprocessed are asked again a few times, with backoff, then the read-ahead gives up (instead of
    spinning until the invocation times out) and planning reads each item by key."""
    _plan(patient())
    attempts: list[str] = []
    original = botocore.client.BaseClient._make_api_call

    def throttling(client: Any, operation: str, params: dict[str, Any]) -> Any:
        if operation == "BatchGetItem" and aws.settings.APPOINTMENTS_TABLE in params["RequestItems"]:
            attempts.append(operation)
            return {"Responses": {}, "UnprocessedKeys": params["RequestItems"]}
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", throttling)
    response = _plan(dose())
    monkeypatch.undo()

    assert len(attempts) == store._BATCH_READ_ATTEMPTS
    assert response["created"] == 3
    state = store.get_appointment_state("a1")
    assert state is not None and state.status == "scheduled"


def test_a_throttled_read_of_the_reminders_falls_back_to_reading_them_alone(
    aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch get that reads the reminders with the patient's stop gives up like the read-ahead; the reminders
    are then read with pynamodb's own batch get (which retries until every key is read), the stop by key."""
    _plan(patient())
    assert _plan(dose())["created"] == 3
    throttled: list[str] = []
    original = botocore.client.BaseClient._make_api_call

    def throttling(client: Any, operation: str, params: dict[str, Any]) -> Any:
        tables = params.get("RequestItems", {})
        if operation == "BatchGetItem" and aws.settings.MESSAGES_TABLE in tables and len(tables) > 1:
            throttled.append(operation)
            return {"Responses": {}, "UnprocessedKeys": tables}
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", throttling)
    sent_again = _plan(dose(at=aws.clock.now() + timedelta(seconds=1)))  # its reminders exist: read, none created
    monkeypatch.undo()

    assert len(throttled) == store._BATCH_READ_ATTEMPTS
    assert (sent_again["created"], sent_again["cancelled"]) == (0, 0)
    assert len(store.reminders_of("a1", ["2027-03-20"], ["p1"])) == 3


READS = {"GetItem", "BatchGetItem", "Query", "Scan"}


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The DynamoDB read requests made since the recorder was installed, by operation."""
    recorded: list[str] = []
    original = botocore.client.BaseClient._make_api_call

    def recording(client: Any, operation: str, params: dict[str, Any]) -> Any:
        if client.meta.service_model.service_name == "dynamodb" and operation in READS:
            recorded.append(operation)
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    return recorded


def test_a_scheduled_dose_reads_the_number_s_stop_in_a_batch_get_not_alone(aws: Any, reads: list[str]) -> None:
    """The read-ahead (appointment, its state, its patient), then the stop of the patient's number in the batch get
    that reads an appointment's reminders (a new one has none to read): two BatchGetItems, no GetItem."""
    _plan(patient())
    reads.clear()
    assert _plan(dose())["created"] == 3
    assert reads == ["BatchGetItem", "BatchGetItem"]


def test_a_new_appointment_reads_no_reminder_key_that_cannot_exist(aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its reminders are created after it is stored: the second batch get asks only for the patient again (written
    meanwhile by another handler, maybe) and the number's stop (each key read costs a read unit, found or not). Its
    schedule sent again reads them: they exist now."""
    _plan(patient())
    asked: list[dict[str, int]] = []
    original = botocore.client.BaseClient._make_api_call

    def recording(client: Any, operation: str, params: dict[str, Any]) -> Any:
        if operation == "BatchGetItem":
            asked.append({table: len(request["Keys"]) for table, request in params["RequestItems"].items()})
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    assert _plan(dose())["created"] == 3
    assert asked[1] == {aws.settings.PATIENTS_TABLE: 1, aws.settings.OPS_TABLE: 1}
    asked.clear()
    assert _plan(dose(at=aws.clock.now() + timedelta(seconds=1)))["created"] == 0
    assert asked[1] == {aws.settings.MESSAGES_TABLE: 3, aws.settings.PATIENTS_TABLE: 1, aws.settings.OPS_TABLE: 1}


def test_a_dose_given_reads_the_patient_with_the_reminders(aws: Any, reads: list[str]) -> None:
    """The event names only the appointment: its patient comes with the reminders, not in a read of its own."""
    _plan(patient())
    _plan(dose())
    reads.clear()
    given = envelope("DoseAdministered", appointment_id="a1", administered_on="2027-03-01")
    assert _plan(given)["cancelled"] == 3
    # The appointment's read ahead, its reminders with the patient, then the look after the cancellations at what
    # is stored now (a newer event handled meanwhile would be undone by them).
    assert reads == ["BatchGetItem", "BatchGetItem", "BatchGetItem"]


def test_a_patients_replan_reads_the_patient_once_not_once_per_appointment(
    aws: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older PatientUpserted (a register imported again) writes nothing: each of the patient's appointments is
    reconciled with the patient read ahead once, not read again for each (only a new dose's, written since, is)."""
    _plan(patient(at=aws.clock.now() - timedelta(days=1)))
    for n in range(1, 5):
        _plan(dose(f"a{n}", due_date=f"2027-04-0{n}"))
    patient_keys: list[int] = []
    original = botocore.client.BaseClient._make_api_call

    def recording(client: Any, operation: str, params: dict[str, Any]) -> Any:
        if operation == "BatchGetItem":
            patient_keys.append(len(params["RequestItems"].get(aws.settings.PATIENTS_TABLE, {}).get("Keys", [])))
        elif operation == "GetItem" and params.get("TableName") == aws.settings.PATIENTS_TABLE:
            patient_keys.append(1)
        return original(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", recording)
    assert _plan(patient(at=aws.clock.now() - timedelta(days=2)))["ignored"] == 1

    assert sum(patient_keys) == 1
