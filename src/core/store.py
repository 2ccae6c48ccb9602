"""The data access layer: patients, appointments, messages and operational counters in DynamoDB (pynamodb).

Every status change of a message is one conditional write built from the state machine (`core.lifecycle`). No
write here counts anything: the tally (`core.tally`) reads the changes from the tables' streams and adds them to
the counters (`add_to_counters`, `add_outcome_counts`). Nothing above this module touches DynamoDB.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from enum import Flag, auto
from typing import Any

from pynamodb.attributes import (
    BooleanAttribute,
    ListAttribute,
    NumberAttribute,
    TTLAttribute,
    UnicodeAttribute,
    UnicodeSetAttribute,
)
from pynamodb.connection import Connection, TableConnection
from pynamodb.constants import ALL_NEW, NONE
from pynamodb.exceptions import DeleteError, PutError, QueryError, UpdateError
from pynamodb.expressions.condition import Condition, size
from pynamodb.expressions.update import Action
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex, KeysOnlyProjection
from pynamodb.models import Model

from core import clock
from core.counters import PLANNED
from core.lifecycle import DISPATCHABLE, TERMINAL, Status, check_transition
from core.outcomes import SCHEDULED, AppointmentState, Slot, index_slot, outcome_deltas
from core.settings import Settings
from core.timing import ReminderType

# ---------------------------------------------------------------------------------------------- time format


def iso(instant: datetime) -> str:
    """Fixed-width UTC text with milliseconds, so that string order is time order (GSI sort key)."""
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{instant.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    """The inverse of `iso` (also accepts any ISO-8601 text with an offset or Z)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


# ---------------------------------------------------------------------------------------------- models

# Guards the first build of each connection's botocore client (`_Record`, `_connection`).
_connecting = threading.Lock()


class _Record(Model):
    """A model whose connection and botocore client are built once, by whichever thread asks first. Threads asking
    together (the sender's lanes, the import's workers) each built their own: a botocore session and the DynamoDB
    model read from disk each, more CPU than hundreds of requests, all but one thrown away."""

    @classmethod
    def _get_connection(cls) -> TableConnection:
        with _connecting:
            connection = super()._get_connection()
            connection.connection.client  # noqa: B018 - the property builds the client, here under the lock
            return connection


class PatientsByPhone(GlobalSecondaryIndex["PatientRecord"]):
    """Keys only: a reply or an opt-out finds the patients with its number here, then reads them by key."""

    class Meta:
        index_name = "by_phone"
        projection = KeysOnlyProjection()

    phone = UnicodeAttribute(hash_key=True)


class PatientRecord(_Record):
    """A patient (the child and the caregiver's phone)."""

    class Meta:
        table_name = "rappel-patients"
        region = "us-east-1"

    patient_id = UnicodeAttribute(hash_key=True)
    phone = UnicodeAttribute()
    timezone = UnicodeAttribute()
    language = UnicodeAttribute()
    sms_opt_in = BooleanAttribute()
    display_name = UnicodeAttribute()
    preferred_hour = NumberAttribute(null=True)
    discreet = BooleanAttribute(null=True)
    event_at = UnicodeAttribute()
    event_id = UnicodeAttribute()
    # Which of two events stamped in the same instant wins: the safer (see `_safety`); absent on older items.
    event_rank = NumberAttribute(null=True)
    # The ids of the events applied at the stored `event_at` and `event_rank` (see `_write_event`).
    event_ids = UnicodeSetAttribute(null=True)
    by_phone = PatientsByPhone()


class AppointmentsByPatient(GlobalSecondaryIndex["AppointmentRecord"]):
    class Meta:
        index_name = "by_patient"
        projection = KeysOnlyProjection()

    patient_id = UnicodeAttribute(hash_key=True)


class AppointmentRecord(_Record):
    """A dose due for a patient."""

    class Meta:
        table_name = "rappel-appointments"
        region = "us-east-1"

    appointment_id = UnicodeAttribute(hash_key=True)
    patient_id = UnicodeAttribute()
    vaccine = UnicodeAttribute()
    dose = NumberAttribute()
    due_date = UnicodeAttribute()
    clinic = UnicodeAttribute(null=True)
    status = UnicodeAttribute()  # scheduled | administered | cancelled
    administered_on = UnicodeAttribute(null=True)
    event_at = UnicodeAttribute()
    event_id = UnicodeAttribute()
    event_rank = NumberAttribute(null=True)
    event_ids = UnicodeSetAttribute(null=True)
    # The event time of the schedule that filled in a close that came before it (see `fill_in_closed_appointment`).
    filled_at = UnicodeAttribute(null=True)
    by_patient = AppointmentsByPatient()


class DueIndex(GlobalSecondaryIndex["MessageRecord"]):
    """Sparse, sharded: only messages the dispatcher may still have to pick up are in it."""

    class Meta:
        index_name = "due"
        projection = AllProjection()

    due_shard = UnicodeAttribute(hash_key=True)
    due_at = UnicodeAttribute(range_key=True)


class ProviderIdIndex(GlobalSecondaryIndex["MessageRecord"]):
    class Meta:
        index_name = "by_provider_message_id"
        projection = KeysOnlyProjection()

    provider_message_id = UnicodeAttribute(hash_key=True)


_STATUS_VALUES = frozenset(s.value for s in Status)


class MessageRecord(_Record):
    """One reminder of one type for one appointment and due date."""

    class Meta:
        table_name = "rappel-messages"
        region = "us-east-1"

    message_id = UnicodeAttribute(hash_key=True)
    patient_id = UnicodeAttribute()
    appointment_id = UnicodeAttribute()
    reminder_type = UnicodeAttribute()
    due_date = UnicodeAttribute()
    status = UnicodeAttribute()
    scheduled_at = UnicodeAttribute()
    deadline = UnicodeAttribute()
    version = NumberAttribute(default=0)
    attempts = NumberAttribute(default=0)
    retry_floor = NumberAttribute(default=0)
    due_shard = UnicodeAttribute(null=True)
    due_at = UnicodeAttribute(null=True)
    last_error = UnicodeAttribute(null=True)
    provider = UnicodeAttribute(null=True)
    provider_message_id = UnicodeAttribute(null=True)
    receipt_status = UnicodeAttribute(null=True)
    ambiguous = BooleanAttribute(null=True)
    revived = UnicodeAttribute(null=True)  # when and from what cancellation the message came back, if it did
    # Whose phone it goes to (`recipient_key`): the dispatcher groups reminders for one phone into one SMS.
    recipient = UnicodeAttribute(null=True)
    # The grouped SMS this reminder is bound to before its request (`bind_to_sms`): after a crash, the same SMS is
    # replayed for it, never a second one.
    sms_key = UnicodeAttribute(null=True)
    sms_bound_at = UnicodeAttribute(null=True)  # when a sender bound it to that SMS (its request comes after)
    sms_reminders = NumberAttribute(null=True)  # how many reminders the SMS that carried it carried
    text = UnicodeAttribute(null=True)
    segments = NumberAttribute(null=True)
    created_at = UnicodeAttribute()
    queued_at = UnicodeAttribute(null=True)
    sent_at = UnicodeAttribute(null=True)
    delivered_at = UnicodeAttribute(null=True)
    failed_at = UnicodeAttribute(null=True)
    ended_at = UnicodeAttribute(null=True)
    expires_at = TTLAttribute(null=True)
    # Its status changes, oldest first, each `<iso time> <from>><to> <reason>` (`history_entry`), at most
    # HISTORY_LIMIT: written by the status change itself, never by a write of its own.
    history: ListAttribute[str] = ListAttribute(of=UnicodeAttribute, null=True)  # type: ignore[arg-type]
    due_index = DueIndex()
    provider_index = ProviderIdIndex()

    @property
    def state(self) -> Status:
        """The status as the state machine's enum."""
        return Status(self.status)

    @property
    def known_state(self) -> Status | None:
        """The status, or None when this version does not know it (a newer version's, read during a deploy or after
        a rollback): such a message is left to the version that knows it, not failed on."""
        return self.state if self.status in _STATUS_VALUES else None


class OpsRecord(_Record):
    """Counters (pk COUNTERS#<day>), provider circuits (pk CIRCUIT) and last send (pk PROVIDER), stored reports
    (pk REPORT#<kind>), a number's stop (pk STOP), replies and appointment states."""

    class Meta:
        table_name = "rappel-ops"
        region = "us-east-1"

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    value = NumberAttribute(default=0)
    text = UnicodeAttribute(null=True)
    expires_at = TTLAttribute(null=True)
    confirmations = UnicodeSetAttribute(null=True)  # pk CONFIRMED#: the confirmation SMS a number was given that day


_MODELS: tuple[type[Model], ...] = (PatientRecord, AppointmentRecord, MessageRecord, OpsRecord)
_bound: tuple[str, ...] | None = None
_transaction_connection: Connection | None = None


def bind(settings: Settings) -> None:
    """Point the models at the stack's tables (and at a local endpoint for the embedded stack)."""
    global _bound, _transaction_connection
    key = (
        settings.PATIENTS_TABLE,
        settings.APPOINTMENTS_TABLE,
        settings.MESSAGES_TABLE,
        settings.OPS_TABLE,
        settings.AWS_REGION,
        settings.AWS_ENDPOINT_URL,
    )
    if key == _bound:
        return
    names = (settings.PATIENTS_TABLE, settings.APPOINTMENTS_TABLE, settings.MESSAGES_TABLE, settings.OPS_TABLE)
    targets: list[tuple[type[Model], str]] = [*zip(_MODELS, names, strict=True)]
    targets.append((AppointmentStateRecord, settings.OPS_TABLE))
    for model, name in targets:
        model.Meta.table_name = name
        model.Meta.region = settings.AWS_REGION
        model.Meta.host = settings.AWS_ENDPOINT_URL or None
        model._connection = None  # pynamodb caches the connection per model; rebuild it for the new target
    _bound = key
    _transaction_connection = None


def unbind() -> None:
    """Forget the binding (tests that switch backends call this)."""
    global _bound, _transaction_connection
    _bound = None
    _transaction_connection = None


def _connection() -> Connection:
    # One connection per binding: each new pynamodb Connection builds a botocore session and reloads the
    # service model from disk, which costs more than the write itself.
    global _transaction_connection
    with _connecting:
        if _transaction_connection is None:
            _transaction_connection = Connection(
                region=MessageRecord.Meta.region, host=getattr(MessageRecord.Meta, "host", None)
            )
        _transaction_connection.client  # noqa: B018 - the property builds the client, here under the lock
        return _transaction_connection


# ---------------------------------------------------------------------------------------------- ids and shards


# The patient of an appointment closed (dose given, cancelled) before its schedule told us whose it is. Not a
# valid patient id (those start with a letter or digit), so no patient's appointments ever include it.
UNKNOWN_PATIENT = "-"


def message_id_for(appointment_id: str, reminder_type: str, due_date: str, patient_id: str) -> str:
    """Deterministic: the same appointment, type, due date and patient always give the same id (replays make no
    twins); an appointment moved to another child gets new reminders, not the first family's."""
    key = f"{appointment_id}\x1f{reminder_type}\x1f{due_date}\x1f{patient_id}"
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"msg_{digest[:32]}"


# The `due` index partition of ambiguous dead letters, by deadline: no dispatcher reads it (see `transition`).
UNDECIDED_SHARD = "UNDECIDED"


def shard_of(message_id: str, shards: int) -> str:
    """The `due` index partition of a message; stable for its whole life."""
    return f"DUE#{int(hashlib.sha256(message_id.encode()).hexdigest()[:8], 16) % shards}"


# ---------------------------------------------------------------------------------------------- patients


def get_patient(patient_id: str, *, fresh: bool = False) -> PatientRecord | None:
    """The patient, or None. `fresh`: read the table even when this handler read it ahead (looking again for a
    patient another handler may have written since: the read-ahead would keep answering "absent")."""
    ahead = _NOT_AHEAD if fresh else _take_ahead("patient", patient_id)
    if ahead is not _NOT_AHEAD:
        return ahead  # type: ignore[no-any-return]
    try:
        return PatientRecord.get(patient_id, consistent_read=True)
    except PatientRecord.DoesNotExist:
        return None


# A true tie (two events stamped in the same instant, as EventBridge's one-second `time` often makes them) goes to
# the side that sends fewer SMS: an opt-out over an opt-in, a dose given or an appointment cancelled over a
# schedule. Between equals, the later delivery wins, unless it is a redelivery of an event already applied at that
# stamp (EventBridge delivers at least once): its id is then among `event_ids`. Event ids are random and say nothing
# about order.
_APPOINTMENT_SAFETY = {"scheduled": 0, "cancelled": 1, "administered": 2}


def _safety(record: PatientRecord | AppointmentRecord) -> int:
    if isinstance(record, PatientRecord):
        return 0 if record.sms_opt_in else 1
    return _APPOINTMENT_SAFETY[record.status]


def _write_event(
    record: PatientRecord | AppointmentRecord, actions: list[Action], *, item_back: bool
) -> dict[str, Any] | None:
    """Apply a clinic event to its patient or appointment: `actions` set what the event says; this adds its stamp.

    Events come out of order and more than once, so one applies only if it is not older than the one stored: as the
    newer event (a later stamp, or the same one and safer), its id then the only one applied at its stamp; else as
    an equal (same stamp and rank) not applied yet, or the last one applied again (a replay after a crash, whose
    reconciliation must resume), its id added to them. Two conditional writes at most, the second only for a replay,
    an equal or an older event. The item as stored after (`item_back`; else {}), or None when the event is older or
    is a redelivery of an equal one applied before the last.
    """
    model = type(record)
    rank = _safety(record)
    record.event_rank = rank
    stamp = [model.event_at.set(record.event_at), model.event_id.set(record.event_id), model.event_rank.set(rank)]
    newer: Condition = (
        model.event_at.does_not_exist()  # no item: every patient and appointment has an event time
        | (model.event_at < record.event_at)
        | ((model.event_at == record.event_at) & (model.event_rank.does_not_exist() | (model.event_rank < rank)))
    )
    equal: Condition = (
        (model.event_at == record.event_at)
        & (model.event_rank == rank)
        & ((model.event_id == record.event_id) | ~model.event_ids.contains(record.event_id))
    )
    hash_key, _ = record._get_hash_range_key_serialized_values()
    ids = {record.event_id}
    stored: list[dict[str, Any]] = []
    for condition, applied_at_stamp in ((newer, model.event_ids.set(ids)), (equal, model.event_ids.add(ids))):

        def update(condition: Condition = condition, applied_at_stamp: Action = applied_at_stamp) -> None:
            response = record._get_connection().update_item(
                hash_key,
                actions=[*actions, *stamp, applied_at_stamp],
                condition=condition,
                return_values=ALL_NEW if item_back else NONE,
            )
            stored.append(dict(response.get("Attributes", {})) if item_back else {})

        if _applied(update):
            return stored[0]
    return None


# What `_write_event` writes itself: the event's stamp.
_STAMP = frozenset({"event_at", "event_id", "event_rank", "event_ids"})


def _event_actions(record: PatientRecord | AppointmentRecord, leave: frozenset[str] = frozenset()) -> list[Action]:
    """What the event says of its record, attribute by attribute (None: removed), but its key, its stamp and those
    in `leave`; ValueError naming a required attribute left empty (a put would have refused it too)."""
    actions: list[Action] = []
    for name, attribute in type(record).get_attributes().items():
        if attribute.is_hash_key or name in _STAMP | leave:
            continue
        value = getattr(record, name)
        if value is None and not attribute.null:
            raise ValueError(f"{type(record).__name__}.{name} is required")
        actions.append(attribute.remove() if value is None else attribute.set(value))
    return actions


def save_patient(
    patient: PatientRecord, *, keep: frozenset[str] = frozenset(), default_zone: str = "UTC"
) -> PatientRecord | None:
    """Write the patient if this event is not older than the stored one (`_write_event`): the patient as stored
    then, None when it is older. `keep`: optional attributes the event left out, whose stored values stand (a new
    patient gets `default_zone` for a zone left out, and nothing for the others)."""
    _forget_ahead("patient", patient.patient_id)
    actions = _event_actions(patient, leave=keep)
    if "timezone" in keep:  # every patient has a zone
        actions.append(PatientRecord.timezone.set(PatientRecord.timezone | default_zone))
    stored = _write_event(patient, actions, item_back=True)
    return None if stored is None else PatientRecord.from_raw_data(stored)


def set_opt_in(patient_id: str, opt_in: bool, event_at: str, event_id: str, *, only_after: str | None = None) -> bool:
    """Opt a patient in or out (operator command); False if the patient is unknown, or (`only_after`) if its last
    change is no longer the event of that id."""
    _forget_ahead("patient", patient_id)
    condition = PatientRecord.patient_id.exists()
    if only_after is not None:
        condition &= PatientRecord.event_id == only_after
    return _applied(
        lambda: _update(
            PatientRecord(patient_id),
            actions=[
                PatientRecord.sms_opt_in.set(opt_in),
                PatientRecord.event_at.set(event_at),
                PatientRecord.event_id.set(event_id),
                PatientRecord.event_rank.set(0 if opt_in else 1),
                PatientRecord.event_ids.set({event_id}),
            ],
            condition=condition,
        )
    )


def iterate_patients() -> Iterator[PatientRecord]:
    """All patients. A scan: for operator commands and the simulator, not Lambda."""
    return PatientRecord.scan()


def patients_with_phone(phone: str) -> list[PatientRecord]:
    """Patients whose caregiver has this phone number, by id.

    Their ids come from the `by_phone` index, then each patient is read by key (consistently) and kept only if it
    still has the number: the index lags a change of phone by a moment (a caller that must not miss one looks again:
    `core.retry.patiently`).
    """
    found: Iterable[PatientRecord]
    try:
        ids = sorted({str(item.patient_id) for item in PatientRecord.by_phone.query(phone)})
        found = PatientRecord.batch_get(ids, consistent_read=True) if ids else []
    except QueryError as exc:
        if "backfilling" not in (exc.cause_response_message or ""):
            raise
        # Right after the upgrade that adds the index, DynamoDB builds it from the table and refuses to read it
        # meanwhile (CloudFormation does not wait for that): a family's STOP must not be lost to that.
        from core.observability import logger  # here, not at the top: observability imports this module

        logger.warning("by_phone index still backfilling: patients found by a scan")
        found = PatientRecord.scan(PatientRecord.phone == phone)
    return sorted((p for p in found if p.phone == phone), key=lambda p: str(p.patient_id))


# ---------------------------------------------------------------------------------------------- appointments


def get_appointment(appointment_id: str, *, fresh: bool = False) -> AppointmentRecord | None:
    """The appointment, or None. `fresh`: read the table even when this handler read it ahead."""
    ahead = _NOT_AHEAD if fresh else _take_ahead("appointment", appointment_id)
    if ahead is not _NOT_AHEAD:
        return ahead  # type: ignore[no-any-return]
    try:
        return AppointmentRecord.get(appointment_id, consistent_read=True)
    except AppointmentRecord.DoesNotExist:
        return None


def save_appointment(appointment: AppointmentRecord, stored: AppointmentRecord | None = None) -> bool:
    """Write the appointment if this event is not older than the stored one (`_write_event`); False when it is older.

    `stored`: the appointment as the caller just read it (consistently). When the write would store exactly that
    (a replay of the last event applied: same fields, event time, id and rank), nothing is written and the result
    is the write's: applied. A newer event with the same fields is still written: its event time is what keeps an
    older event, arriving late, from being applied over it.
    """
    _forget_ahead("appointment", appointment.appointment_id)
    appointment.event_rank = _safety(appointment)
    if stored is not None and _compared(stored) == _compared(appointment):
        return True
    return _write_event(appointment, _event_actions(appointment), item_back=False) is not None


def _compared(appointment: AppointmentRecord) -> dict[str, Any]:
    """What a replay would write again: all but the ids applied at its stamp, which a replay leaves as they are."""
    return {name: value for name, value in appointment.serialize().items() if name != "event_ids"}


def copy_appointment(appointment: AppointmentRecord) -> AppointmentRecord:
    """A copy to change, leaving the one read as it was stored (for `save_appointment`'s `stored`)."""
    return AppointmentRecord.from_raw_data(appointment.serialize())


def fill_in_closed_appointment(schedule: AppointmentRecord) -> bool:
    """Write what an appointment is (patient, vaccine, dose, date, clinic) under a close that arrived before its
    schedule; the close (status, date given, event time) stands. False unless the stored one is such a close, not
    yet filled in or filled in by an older schedule (so the latest schedule wins, whatever the order they came in)."""
    _forget_ahead("appointment", schedule.appointment_id)
    return _applied(
        lambda: _update(
            AppointmentRecord(schedule.appointment_id),
            actions=[
                AppointmentRecord.patient_id.set(schedule.patient_id),
                AppointmentRecord.vaccine.set(schedule.vaccine),
                AppointmentRecord.dose.set(schedule.dose),
                AppointmentRecord.due_date.set(schedule.due_date),
                AppointmentRecord.clinic.set(schedule.clinic) if schedule.clinic else AppointmentRecord.clinic.remove(),
                AppointmentRecord.filled_at.set(schedule.event_at),
            ],
            condition=(AppointmentRecord.patient_id == UNKNOWN_PATIENT)
            | (AppointmentRecord.filled_at < schedule.event_at),
        )
    )


def appointment_ids_of(patient_id: str) -> list[str]:
    """The ids of every appointment of a patient (the index holds keys only: a dose given or cancelled writes the
    table alone)."""
    return [str(item.appointment_id) for item in AppointmentRecord.by_patient.query(patient_id)]


# ---------------------------------------------------------------------------------------------- counters

# The attribute of a counter item that names the last tally batch added to it.
TALLY_MARK = "tallied_batch"


def add_to_counters(counts: Mapping[tuple[str, str], float], batch: str) -> tuple[int, int]:
    """Add one tally batch's counts: one UpdateItem per (day, hour#type) item, one attribute per counter name.
    Returns (items written, items the batch had already reached).

    `batch` names the tally batch: each item keeps the last one added to it, and a write of the same batch again
    (Lambda retrying a batch that failed after reaching some items) adds nothing to them."""
    grouped: dict[tuple[str, str], dict[str, float]] = {}
    for (day, key), amount in counts.items():
        sk, name = _counter_cell(key)
        grouped.setdefault((day, sk), {})[name] = amount
    return _add_once({(f"COUNTERS#{day}", sk): names for (day, sk), names in grouped.items()}, batch)


def _add_once(items: Mapping[tuple[str, str], Mapping[str, float]], batch: str) -> tuple[int, int]:
    """ADD to each ops item's attributes, once per batch (one conditional UpdateItem each, in key order)."""
    client = _connection().client
    written = reached = 0
    for (pk, sk), names in sorted(items.items()):
        placeholders = {f"#c{i}": name for i, name in enumerate(names)}
        values: dict[str, Any] = {f":v{i}": {"N": repr(float(v))} for i, v in enumerate(names.values())}
        try:
            client.update_item(
                TableName=OpsRecord.Meta.table_name,
                Key={"pk": {"S": pk}, "sk": {"S": sk}},
                UpdateExpression="ADD " + ", ".join(f"#c{i} :v{i}" for i in range(len(names))) + " SET #tally = :batch",
                ConditionExpression="attribute_not_exists(#tally) OR #tally <> :batch",
                ExpressionAttributeNames={**placeholders, "#tally": TALLY_MARK},
                ExpressionAttributeValues={**values, ":batch": {"S": batch}},
            )
            written += 1
        except client.exceptions.ConditionalCheckFailedException:
            reached += 1
    return written, reached


# Planning's counters (planned, cancelled) share one item per hour (sk `<hour>`, attribute `<type>#<name>`): a tally
# batch that plans or cancels reminders of three types writes one item, not three. The send path's counters, with
# their histograms, keep one item per hour and type (sk `<hour>#<type>`, attribute `<name>`), which stays under 1 KB.
# Both read back as `<hour>#<type>#<name>`.
_PER_HOUR = frozenset({PLANNED, Status.CANCELLED.value})


def _counter_cell(key: str) -> tuple[str, str]:
    """(sk, attribute) of a counter key `<hour>#<reminder type>#<name>`."""
    hour, reminder_type, name = key.split("#", 2)
    if name in _PER_HOUR:
        return hour, f"{reminder_type}#{name}"
    return f"{hour}#{reminder_type}", name


def read_counters(day: str) -> dict[str, float]:
    """Every counter of one UTC day, keyed `<hour>#<reminder type>#<name>` (summed over the items that hold it: a day
    written before planning's counters moved to the hour item has them in both layouts)."""
    client = _connection().client
    out: dict[str, float] = {}
    kwargs: dict[str, Any] = {
        "TableName": OpsRecord.Meta.table_name,
        "KeyConditionExpression": "pk = :pk",
        "ExpressionAttributeValues": {":pk": {"S": f"COUNTERS#{day}"}},
    }
    while True:
        page = client.query(**kwargs)
        for item in page.get("Items", []):
            prefix = item["sk"]["S"]
            for name, value in item.items():
                if "N" in value and name not in {"pk", "sk"}:
                    counter = f"{prefix}#{name}"
                    out[counter] = out.get(counter, 0.0) + float(value["N"])
        if "LastEvaluatedKey" not in page:
            return out
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


# ---------------------------------------------------------------------------------------------- messages


def get_message(message_id: str, *, read_since: datetime | None = None) -> MessageRecord | None:
    """The message (strongly consistent), or None.

    `read_since`: inside a send batch's `read_ahead`, the batch's read of the message answers if it was made at or
    after this instant and nothing here wrote the message since; it answers once (a second ask reads the table).
    Read too long ago, it is read again together with its patient, appointment and number's stop
    (`_read_again_for_send`)."""
    ahead = _ahead.get()
    if read_since is not None and ahead is not None:
        taken = ahead.pop(("message", message_id), None)
        if isinstance(taken, _MessageRead):
            if taken.at >= read_since:
                return taken.message
            try:
                return _read_again_for_send(ahead, taken.message)
            except RuntimeError:  # a throttled batch read: each item read alone, from the table, below and after
                _forget_for_send(ahead, taken.message)
    try:
        return MessageRecord.get(message_id, consistent_read=True)
    except MessageRecord.DoesNotExist:
        return None


def _read_again_for_send(ahead: dict[tuple[str, str], Any], read: MessageRecord) -> MessageRecord | None:
    """A send batch's message, read again with what its check asks of the store (its patient, its appointment and
    the number's stop) in one BatchGetItem, each kept for the check that follows: a STOP writes the number's stop,
    and a clinic event its patient or appointment, before cancelling the reminders, so those read as long ago as the
    message would miss a change whose cancellations have not landed yet."""
    patient = ahead.get(("patient", str(read.patient_id)))
    stop_key = (_STOP, str(patient.phone)) if isinstance(patient, PatientRecord) else None
    wanted: dict[type[Model], list[Any]] = {
        MessageRecord: [read.message_id],
        PatientRecord: [str(read.patient_id)],
        AppointmentRecord: [str(read.appointment_id)],
    }
    if stop_key is not None:
        wanted[OpsRecord] = [stop_key]
    items = _batch_read(wanted)
    fresh = items.get((PatientRecord, str(read.patient_id)))
    ahead[("patient", str(read.patient_id))] = fresh
    ahead[("appointment", str(read.appointment_id))] = items.get((AppointmentRecord, str(read.appointment_id)))
    if stop_key is not None:
        ahead[("stop", stop_key[1])] = items.get((OpsRecord, stop_key))
    if isinstance(fresh, PatientRecord) and (stop_key is None or str(fresh.phone) != stop_key[1]):
        ahead.pop(("stop", str(fresh.phone)), None)  # its number changed: that number's stop is read from the table
    found = items.get((MessageRecord, read.message_id))
    return found if isinstance(found, MessageRecord) else None


def _forget_for_send(ahead: dict[tuple[str, str], Any], read: MessageRecord) -> None:
    """What the check of this message would read from the batch's start, forgotten: read from the table instead."""
    patient = ahead.pop(("patient", str(read.patient_id)), None)
    ahead.pop(("appointment", str(read.appointment_id)), None)
    if isinstance(patient, PatientRecord):
        ahead.pop(("stop", str(patient.phone)), None)


def create_message(message: MessageRecord, at: datetime, reason: str = "planned") -> bool:
    """Create a pending message; False if it already exists (a replayed event).

    Its creation is the first entry of its history (`reason` says why it exists)."""
    if message.state is not Status.PENDING:
        raise ValueError("messages are created pending")
    message.history = [history_entry(at, None, Status.PENDING, reason)]
    try:
        message.save(condition=MessageRecord.message_id.does_not_exist())
    except PutError as exc:
        if _is_condition_failure(exc):
            return False
        raise
    return True


def reminders_of(
    appointment_id: str,
    due_dates: Iterable[str],
    patient_ids: Iterable[str],
    *,
    checked: PatientRecord | str | None = None,
    patient_written_since: bool = False,
) -> list[MessageRecord]:
    """The reminders of an appointment planned for any of these due dates and patients, oldest scheduled first.

    A reminder's id follows from what it is (`message_id_for`), so they are read by key, with one BatchGetItem
    (strongly consistent): no index has to be written with every new message just to find them again.

    `checked`: the patient (or its id) whose reminders the caller checks next. Inside a `read_ahead` block, the same
    request reads what those checks ask that is not read yet: the patient, or else the stop of its number; then
    `get_patient` and `number_stopped` answer from it."""
    keys = sorted(
        {
            message_id_for(appointment_id, reminder_type.value, due_date, patient_id)
            for reminder_type in ReminderType
            for due_date in due_dates
            for patient_id in patient_ids
            if due_date
        }
    )
    along = _read_along(checked, patient_written_since)
    if not keys and not along:
        return []
    try:
        items = _batch_read({MessageRecord: keys, **along})
    except RuntimeError:  # keys left unprocessed (throttled): pynamodb's batch get retries until all are read
        found = list(MessageRecord.batch_get(keys, consistent_read=True)) if keys else []
    else:
        ahead = _ahead.get()
        if ahead is not None:
            ahead.update({("patient", key): items.get((PatientRecord, key)) for key in along.get(PatientRecord, [])})
            ahead.update({("stop", key[1]): items.get((OpsRecord, key)) for key in along.get(OpsRecord, [])})
        found = [item for item in items.values() if isinstance(item, MessageRecord)]
    return sorted(found, key=lambda m: (m.scheduled_at, m.message_id))


def _read_along(checked: PatientRecord | str | None, written_since: bool) -> dict[type[Model], list[Any]]:
    """What to read with a patient's reminders for its checks (see `reminders_of`): nothing outside a read-ahead.

    A patient given as a record is the caller's own write: only its number's stop is read. One given by id is read
    when this block has not read it, and again when the caller wrote since this block read it (`written_since`: the
    appointment of a new dose): another handler may have changed the patient in between (an opt-in, a new zone),
    having listed the patient's appointments before that write, so this handler is the one that must plan with it.
    Its number's stop is read along, by the number the earlier read found (a number changed meanwhile: alone)."""
    ahead = _ahead.get()
    if ahead is None or checked is None:
        return {}
    patient = checked if isinstance(checked, PatientRecord) else ahead.get(("patient", checked), _NOT_AHEAD)
    along: dict[type[Model], list[Any]] = {}
    if not isinstance(checked, PatientRecord) and (patient is _NOT_AHEAD or written_since):
        along[PatientRecord] = [checked]
    if isinstance(patient, PatientRecord) and ("stop", patient.phone) not in ahead:
        along[OpsRecord] = [(_STOP, patient.phone)]
    return along


def messages_of_patient(patient_id: str) -> list[MessageRecord]:
    """Every message of a patient (reminders of any date, confirmations), oldest scheduled first. A scan: for
    operator commands and tests, not Lambda."""
    found = MessageRecord.scan(MessageRecord.patient_id == patient_id, consistent_read=True)
    return sorted(found, key=lambda m: (m.scheduled_at, m.message_id))


def due_in_shard(shard: str, until: datetime, page_size: int) -> Iterator[MessageRecord]:
    """The messages of one shard whose due time is at or before `until`, earliest first, read `page_size` at a time
    as the caller goes (it stops reading by stopping)."""
    return iter(
        MessageRecord.due_index.query(
            shard, MessageRecord.due_at <= iso(until), scan_index_forward=True, page_size=min(page_size, 500)
        )
    )


def earliest_due(shards: int) -> datetime | None:
    """The earliest due time across all shards, or None when nothing waits (the virtual clock skips to it)."""
    earliest: str | None = None
    for n in range(shards):
        for item in MessageRecord.due_index.query(f"DUE#{n}", scan_index_forward=True, limit=1):
            if item.due_at is not None and (earliest is None or item.due_at < earliest):
                earliest = item.due_at
    return parse_iso(earliest) if earliest else None


def waiting_in_due_index(shards: int) -> Iterator[MessageRecord]:
    """Every message still in the `due` index (its appointment id, type and status only), shard by shard. Reads the
    whole index: for an operator's command, not Lambda."""
    for n in range(shards):
        yield from MessageRecord.due_index.query(
            f"DUE#{n}", attributes_to_get=["message_id", "appointment_id", "reminder_type", "status"], page_size=1000
        )


def pending_until(shards: int, until: datetime) -> list[tuple[str, datetime]]:
    """The pending messages due at or before `until`: each one's reminder type and due time, one query per shard.

    Bounded by `until`, since every reminder planned (up to years ahead) waits in the index; fit for the health
    check and the statistics report, not for a per-message path.
    """
    found: list[tuple[str, datetime]] = []
    for n in range(shards):
        query = MessageRecord.due_index.query(
            f"DUE#{n}",
            MessageRecord.due_at <= iso(until),
            filter_condition=MessageRecord.status == Status.PENDING.value,
            attributes_to_get=["reminder_type", "due_at", "status"],
            page_size=1000,
        )
        found += [(item.reminder_type, parse_iso(item.due_at)) for item in query if item.due_at is not None]
    return found


def count_pending(shards: int, until: datetime) -> dict[str, int]:
    """Pending messages due at or before `until`, by reminder type: a live count (see `pending_until`)."""
    return dict(Counter(reminder_type for reminder_type, _ in pending_until(shards, until)))


def undecided_dead_letters(after: datetime) -> tuple[int, datetime | None]:
    """How many ambiguous dead letters wait for an operator's decision with their deadline after `after`, and the
    first of those deadlines (one partition of the `due` index, which only they are in)."""
    total = 0
    first: str | None = None
    query = MessageRecord.due_index.query(
        UNDECIDED_SHARD, MessageRecord.due_at > iso(after), attributes_to_get=["due_at"], scan_index_forward=True
    )
    for item in query:
        total += 1
        first = first or item.due_at
    return total, parse_iso(first) if first else None


def recipient_key(phone: str) -> str:
    """A phone number as messages carry it: hashed, so the number is not copied into every message and index."""
    return hashlib.sha256(phone.encode()).hexdigest()[:24]


def ambiguous_send_key(phone: str) -> str:
    """What an ambiguous send records in place of the provider's id it never learnt: the recipient, so that its
    receipt, which names the recipient, can still find it."""
    return f"ambiguous:{recipient_key(phone)}"


def unbind_cancelled_from_sms(message_id: str, sms_key: str) -> bool:
    """A cancelled reminder's binding to the SMS `sms_key`, which did not carry it and never will, removed before its
    revival: free, a new SMS may carry it. False when it is not cancelled or not bound to that SMS."""
    return _applied(
        lambda: _update(
            MessageRecord(message_id),
            actions=[MessageRecord.sms_key.remove(), MessageRecord.sms_bound_at.remove()],
            condition=(MessageRecord.status == Status.CANCELLED.value) & (MessageRecord.sms_key == sms_key),
        )
    )


def message_ids_by_provider_id(provider_message_id: str) -> list[str]:
    """Every message one provider SMS carried (a grouped SMS carries several reminders)."""
    return [str(item.message_id) for item in MessageRecord.provider_index.query(provider_message_id)]


def bind_to_sms(message: MessageRecord, sms_key: str, at: datetime) -> bool:
    """Bind a queued reminder (this claim of it) to one grouped SMS before the request, at `at`; False if it is
    bound to another, or no longer this claim. Not a status change: the version stays."""
    return _applied(
        lambda: _update(
            MessageRecord(message.message_id),
            actions=[MessageRecord.sms_key.set(sms_key), MessageRecord.sms_bound_at.set(iso(at))],
            condition=(MessageRecord.status == Status.QUEUED.value)
            & (MessageRecord.version == message.version)
            & (MessageRecord.sms_key.does_not_exist() | (MessageRecord.sms_key == sms_key)),
        )
    )


def ambiguous_sends_to(phone: str, limit: int) -> list[str]:
    """Our ids of up to `limit` reminders sent ambiguously to `phone` and still waiting for their receipt."""
    query = MessageRecord.provider_index.query(ambiguous_send_key(phone), limit=limit)
    return [str(item.message_id) for item in query]


def iterate_messages(status: Status | None = None) -> Iterator[MessageRecord]:
    """All messages (optionally of one status). A scan: for operator commands and the simulator, not Lambda."""
    condition = MessageRecord.status == status.value if status else None
    return MessageRecord.scan(condition)


class Guard(Flag):
    """What else must still hold for a status change, besides the source status (the store makes it a condition)."""

    NONE = 0
    VERSION = auto()  # the message is at the version it was read at: nobody moved it since
    ATTEMPTS = auto()  # no attempt was recorded on it since it was read
    DUE = auto()  # its due time has come (a claim)
    NEVER_SENT = auto()  # no send or ambiguous attempt recorded on it, bound to the SMS it was read bound to, if any


@dataclass(frozen=True)
class Change:
    """One status change: where to, from which statuses, what else to set, and what else must hold."""

    target: Status
    sources: frozenset[Status]
    set: Mapping[str, Any]
    guard: Guard = Guard.NONE
    # What the message's history says of it, for health workers; None: the `last_error` it sets, else the target.
    reason: str | None = None
    # Whether a reminder ending unreached should ask for its family's follow-up (`rearm_follow_up`): False when the
    # caller holds the appointment's state and it rules that out, which spares a conditional write bound to fail.
    follow_up: bool = True


def transition(message: MessageRecord, change: Change, *, at: datetime, settings: Settings) -> bool:
    """Apply `change` to `message` with one conditional write; False if the condition no longer holds.

    The state machine is checked first (an illegal move raises IllegalTransition without touching data);
    then DynamoDB checks that the stored status is still one of the sources. The `due` index keys are kept
    only while the message is dispatchable, and terminal statuses get the retention TTL.
    """
    sources = check_transition(change.sources, change.target)
    attributes = MessageRecord.get_attributes()
    actions: list[Action] = [MessageRecord.status.set(change.target.value), MessageRecord.version.add(1)]
    for name, value in change.set.items():
        attribute = attributes[name]
        actions.append(attribute.remove() if value is None else attribute.set(value))
    actions += _index_and_retention(message, change, sources, at, settings)
    # From: the one source the condition allows, else the status as read (exact under a version guard; a
    # cancellation, which has neither, may have raced a claim: the entry before it then tells).
    source = next(iter(sources)) if len(sources) == 1 else message.state
    actions += _history_actions(message, history_entry(at, source, change.target, _reason(change)))
    condition = MessageRecord.status.is_in(*(s.value for s in sorted(sources)))
    for part in _guard_conditions(change.guard, message, at):
        condition = condition & part
    try:
        _update(MessageRecord(message.message_id), actions=actions, condition=condition)
    except UpdateError as exc:
        if _is_condition_failure(exc):
            return False
        raise
    if change.follow_up:
        _note_for_follow_up(message, change.target, at, settings)
    return True


def _index_and_retention(
    message: MessageRecord, change: Change, sources: frozenset[Status], at: datetime, settings: Settings
) -> list[Action]:
    """The `due` index keys and the retention TTL a change leaves the message with (see `transition`)."""
    actions: list[Action] = []
    undecided = change.target is Status.DEAD_LETTER and "text" in change.set
    if change.target is Status.DEAD_LETTER:
        # It stays in the `due` index until its deadline, for the dispatcher to expire it if no redrive came. Not an
        # ambiguous one (its text is recorded): the SMS may have gone out, so an operator decides, not a clock; it
        # waits in a partition of its own, which no dispatcher reads and health counts until its deadline.
        shard = UNDECIDED_SHARD if undecided else shard_of(message.message_id, settings.DUE_INDEX_SHARDS)
        actions += [MessageRecord.due_at.set(message.deadline), MessageRecord.due_shard.set(shard)]
    elif change.target not in DISPATCHABLE:
        actions += [MessageRecord.due_shard.remove(), MessageRecord.due_at.remove()]
    retention = timedelta(days=settings.SMS_RETENTION_DAYS)
    if change.target in TERMINAL:
        actions += [MessageRecord.ended_at.set(iso(at)), MessageRecord.expires_at.set(at + retention)]
    elif undecided:
        # Past its deadline nothing can be decided: kept as long as an ended reminder, from then.
        actions.append(MessageRecord.expires_at.set(parse_iso(message.deadline) + retention))
    elif sources & (TERMINAL | {Status.DEAD_LETTER}):
        # Out of an ending (a revival, a late sent write) or an ambiguous dead letter: no retention clock any more. A
        # claim or a sent write, the send path's, has none to remove.
        actions.append(MessageRecord.expires_at.remove())
    return actions


# ---------------------------------------------------------------------------------------------- history

HISTORY_LIMIT = 20  # entries kept per message: a delivered reminder has 4, one retried to its limit (3 retries) 9
REASON_MAX_CHARS = 120
_PAST_THE_END = 9999  # a list index past any history's end: SET there appends (and overlaps no REMOVE of the oldest)


def history_entry(at: datetime, source: Status | None, target: Status, reason: str) -> str:
    """One line of a message's history: `<iso time> <from>><to> <reason>` (from empty for its creation).

    A string rather than a map, for size: each entry is rewritten with the item on every later write."""
    text = " ".join(reason.split())
    if len(text) > REASON_MAX_CHARS:
        text = text[: REASON_MAX_CHARS - 1] + "…"
    return f"{iso(at)} {source.value if source else ''}>{target.value} {text}"


def history_of(message: MessageRecord) -> list[dict[str, str | None]]:
    """The message's history, oldest first: `{"at", "from", "to", "reason"}` (`from` None for its creation)."""
    out: list[dict[str, str | None]] = []
    for entry in message.history or []:
        at, move, *rest = entry.split(" ", 2)
        source, _, target = move.partition(">")
        out.append({"at": at, "from": source or None, "to": target, "reason": rest[0] if rest else ""})
    return out


def last_change_at(image: Mapping[str, Any]) -> datetime | None:
    """When a message item (as a stream image: plain values) last changed status: its newest history entry, which
    the status change itself wrote (None without a history)."""
    history = image.get("history") or []
    return parse_iso(str(history[-1]).split(" ", 1)[0]) if history else None


def _reason(change: Change) -> str:
    if change.reason:
        return change.reason
    error = change.set.get("last_error")
    return str(error) if error else change.target.value


def _history_actions(message: MessageRecord, entry: str) -> list[Action]:
    """Append `entry` in the status change's own write, dropping the oldest beyond HISTORY_LIMIT.

    No condition of its own: a write that would apply without the history applies with it. Below the limit, a
    `list_append` (whatever another writer appended meanwhile stays). At the limit, the entry is SET past the end
    and the oldest, counted from the history as read, are removed in the same expression (distinct paths, which
    DynamoDB allows); a writer that raced in an entry meanwhile leaves one more, dropped by the next change."""
    read = message.history
    if read is None or len(read) < HISTORY_LIMIT:
        return [MessageRecord.history.set((MessageRecord.history | []).append([entry]))]
    oldest = [MessageRecord.history[i].remove() for i in range(len(read) - HISTORY_LIMIT + 1)]
    return [MessageRecord.history[_PAST_THE_END].set(entry), *oldest]


def _guard_conditions(guard: Guard, message: MessageRecord, at: datetime) -> list[Condition]:
    parts: list[Condition] = []
    if Guard.VERSION in guard:
        parts.append(MessageRecord.version == message.version)
    if Guard.ATTEMPTS in guard:
        parts.append(MessageRecord.attempts == message.attempts)
    if Guard.DUE in guard:
        parts.append(MessageRecord.due_at <= iso(at))
    if Guard.NEVER_SENT in guard:
        parts += [
            MessageRecord.sent_at.does_not_exist(),
            MessageRecord.text.does_not_exist(),
            MessageRecord.sms_key.does_not_exist()
            if message.sms_key is None
            else MessageRecord.sms_key == str(message.sms_key),
        ]
    return parts


def update_pending(message: MessageRecord, values: Mapping[str, Any], shards: int) -> bool:
    """Change a still-pending message's schedule (replan after a zone or preferred-hour change)."""
    attributes = MessageRecord.get_attributes()
    actions: list[Action] = [attributes[name].set(value) for name, value in values.items()]
    if "scheduled_at" in values:
        actions += [
            MessageRecord.due_at.set(values["scheduled_at"]),
            MessageRecord.due_shard.set(shard_of(message.message_id, shards)),
        ]
    actions.append(MessageRecord.version.add(1))
    return _applied(
        lambda: _update(
            MessageRecord(message.message_id), actions=actions, condition=MessageRecord.status == Status.PENDING.value
        )
    )


def delete_expired(before: datetime) -> int:
    """Delete the messages whose retention has run out, as TTL does on AWS (moto never applies TTL): ended ones, and
    ambiguous dead letters past their deadline (`transition` gives no other message an `expires_at`)."""
    deleted = 0
    for item in MessageRecord.scan(MessageRecord.expires_at.exists()):
        if item.expires_at is not None and item.expires_at <= before:
            try:
                item.delete(condition=MessageRecord.expires_at <= before)
                deleted += 1
            except Exception as exc:
                if not _is_condition_failure(exc):
                    raise
    return deleted


# ---------------------------------------------------------------------------------------------- pending replies

_PENDING_REPLY = "REPLY#PENDING"  # pk of a reply's change recorded before it is made; sk the E.164 number


def record_pending_reply(number: str, change: str) -> bool:
    """Record a reply's change before it is made; False when one from this number is recorded already."""
    return _applied(
        lambda: OpsRecord(_PENDING_REPLY, number, text=change).save(condition=OpsRecord.pk.does_not_exist())
    )


def pending_reply(number: str) -> str | None:
    """The change a reply from this number left recorded (a crash, a refused event), if any."""
    record = get_ops_value(_PENDING_REPLY, number)
    return record.text if record is not None else None


def clear_pending_reply(number: str, mark: str) -> bool:
    """Remove that record once carried out, found by a `mark` only it holds (its token); never a later reply's
    (False when it is not this one)."""
    return _applied(lambda: OpsRecord(_PENDING_REPLY, number).delete(condition=OpsRecord.text.contains(mark)))


# ---------------------------------------------------------------------------------------------- provider circuits

_CIRCUIT = "CIRCUIT"  # pk of the providers' circuits; sk the provider; value the run of failures; text its state


def read_circuits() -> list[OpsRecord]:
    """Every provider's stored circuit (one Query; a provider with none is closed)."""
    return list(OpsRecord.query(_CIRCUIT, consistent_read=True))


def count_circuit_failure(provider: str) -> OpsRecord:
    """Add one to a provider's run of transient failures (an atomic counter) and return the circuit as it now is."""
    record = OpsRecord(_CIRCUIT, provider)
    record.update(actions=[OpsRecord.value.add(1)])
    return record


def replace_circuit_state(provider: str, expected: str | None, state: str) -> bool:
    """Set a circuit's state if it is still what the caller read (`expected`, None for no state); False if another
    sender changed it first (it opened it, or took the probe)."""
    read = OpsRecord.text.does_not_exist() if expected is None else OpsRecord.text == expected
    return _applied(lambda: _update(OpsRecord(_CIRCUIT, provider), actions=[OpsRecord.text.set(state)], condition=read))


def close_circuit(provider: str, expected_failures: float, expected: str | None) -> bool:
    """Close a circuit (the provider answered) unless it moved since it was read; False if it did."""
    read = OpsRecord.value == expected_failures
    if not expected_failures:  # a hold opened with no failure counted has no run at all
        read = OpsRecord.value.does_not_exist() | read
    read &= OpsRecord.text.does_not_exist() if expected is None else OpsRecord.text == expected
    return _applied(lambda: OpsRecord(_CIRCUIT, provider).delete(condition=read))


# ---------------------------------------------------------------------------------------------- stops by number

_STOP = "STOP"  # pk of a number's stop; sk the E.164 number


def number_stopped(phone: str, *, fresh: bool = False) -> bool:
    """Whether the family of this number asked for no more reminders (it covers every patient with the number).
    `fresh`: read the table even when this handler read it ahead (a check made again after a wait)."""
    ahead = _NOT_AHEAD if fresh else _take_ahead("stop", phone)
    if ahead is not _NOT_AHEAD:
        return ahead is not None
    return get_ops_value(_STOP, phone) is not None


def stop_number(phone: str, at: str, why: str) -> bool:
    """Record a number's stop; False when it was already stopped: the first stop is kept, and counts this STOP too
    (`NumberStop.stops`), so that an opt-in lifting the stop as it read it before this STOP is refused."""
    _forget_ahead("stop", phone)
    for _ in range(3):  # the stop may be lifted between the two writes: then it is written again
        if _applied(
            lambda: OpsRecord(_STOP, phone, text=f"{at}|{why}", value=1).save(condition=OpsRecord.pk.does_not_exist())
        ):
            return True
        if _applied(lambda: _update(OpsRecord(_STOP, phone), [OpsRecord.value.add(1)], OpsRecord.pk.exists())):
            return False
    return False


@dataclass(frozen=True)
class NumberStop:
    """A number's stop as read: when it was written (`iso`; "-" unknown) and how many STOPs it counts."""

    at: str
    stops: int


def number_stop(phone: str) -> NumberStop | None:
    """The stop in force on this number (read strongly consistent), or None when the number is not stopped."""
    record = get_ops_value(_STOP, phone)
    if record is None:
        return None
    return NumberStop((record.text or "").split("|", 1)[0] or "-", int(record.value or 0))


def clear_number_stop(phone: str, stop: NumberStop) -> bool:
    """Lift the number's stop as `number_stop` read it (the one the opt-in lifts); False when the number is no
    longer stopped, or the family sent a STOP since (it stands: one handled while the opt-in was being made)."""
    _forget_ahead("stop", phone)
    written = OpsRecord.text.does_not_exist() if stop.at == "-" else OpsRecord.text.startswith(f"{stop.at}|")
    counted = OpsRecord.value == stop.stops if stop.stops else OpsRecord.value.does_not_exist() | (OpsRecord.value == 0)
    return _applied(lambda: OpsRecord(_STOP, phone).delete(condition=OpsRecord.pk.exists() & written & counted))


def stopped_since(phone: str) -> str | None:
    """When the stop in force on this number was written (`iso`), or None when the number is not stopped."""
    stop = number_stop(phone)
    return stop.at if stop is not None else None


# ---------------------------------------------------------------------------------------------- replies

_INBOUND = "INBOUND#"  # pk INBOUND#<UTC day>: sk COUNT#<outcome> counts the day's replies, sk <iso>#<key> records one


def count_reply(at: datetime, outcome: str) -> int:
    """Add one to the day's count of replies with this outcome; returns the day's count so far."""
    record = OpsRecord(f"{_INBOUND}{at.strftime('%Y-%m-%d')}", f"COUNT#{outcome}")
    record.update(actions=[OpsRecord.value.add(1), OpsRecord.expires_at.set(at + timedelta(days=400))])
    return int(record.value or 0)


def record_reply(at: datetime, key: str, text: str, keep_days: int) -> bool:
    """Keep one reply that changed nothing (an unknown text or sender) for an operator to read, until `keep_days`
    have passed (TTL); False if this very reply is recorded already."""
    record = OpsRecord(f"{_INBOUND}{at.strftime('%Y-%m-%d')}", f"{iso(at)}#{key}", text=text)
    record.expires_at = at + timedelta(days=keep_days)
    return _applied(lambda: record.save(condition=OpsRecord.pk.does_not_exist()))


# pk CONFIRMED#<UTC day>, sk the recipient's key: the confirmations a number was given that day (`take_confirmation`).
_CONFIRMED = "CONFIRMED#"


def take_confirmation(number: str, message_id: str, at: datetime, per_day: int) -> bool:
    """Give the confirmation `message_id` one of `number`'s `per_day` confirmation SMS of `at`'s day (UTC): False, and
    nothing written, when they are all given to others. Taken again by the same confirmation (a retry), it is True."""
    record = OpsRecord(f"{_CONFIRMED}{at.strftime('%Y-%m-%d')}", recipient_key(number))
    given = OpsRecord.confirmations
    return _applied(
        lambda: _update(
            record,
            actions=[given.add({message_id}), OpsRecord.expires_at.set(at + timedelta(days=2))],
            condition=given.does_not_exist() | given.contains(message_id) | (size(given) < per_day),
        )
    )


# A receipt that came before its SMS was recorded sent (a sender that died after the provider took it, and whose
# record comes back after the visibility timeout): pk `RECEIPT#<provider>#<the id the receipt named>`, sk
# `<time>#<status>`, kept until its TTL; the recording of that SMS applies it (`receipts.apply_parked`).
_PARKED_RECEIPT = "RECEIPT#"


def park_receipt(provider: str, sms_id: str, provider_status: str, at: datetime, keep: timedelta) -> bool:
    """Keep one receipt for an SMS not recorded sent yet; False if this very receipt is kept already."""
    record = OpsRecord(f"{_PARKED_RECEIPT}{provider}#{sms_id}", f"{iso(at)}#{provider_status}", text=provider_status)
    record.expires_at = at + keep
    return _applied(lambda: record.save(condition=OpsRecord.pk.does_not_exist()))


def parked_receipts(provider: str, sms_id: str) -> list[str]:
    """The statuses of the receipts kept for that SMS, in the order they came (one Query)."""
    items = OpsRecord.query(f"{_PARKED_RECEIPT}{provider}#{sms_id}", consistent_read=True)
    return [str(item.text) for item in items]


def replies_of_day(day: str) -> list[OpsRecord]:
    """One day's recorded replies and counts (pk `INBOUND#<day>`: what an operator reads, and tests)."""
    return list(OpsRecord.query(f"{_INBOUND}{day}", consistent_read=True))


def get_ops_value(pk: str, sk: str) -> OpsRecord | None:
    """One operational item (a number's stop, the last send, a stored report), or None."""
    try:
        return OpsRecord.get(pk, sk, consistent_read=True)
    except OpsRecord.DoesNotExist:
        return None


def put_ops_value(pk: str, sk: str, *, value: float = 0, text: str | None = None) -> None:
    """Overwrite one operational item."""
    OpsRecord(pk, sk, value=value, text=text).save()


def put_ops_text_if_later(pk: str, sk: str, text: str) -> bool:
    """Write an operational item's text (an ISO time) unless it already holds a later one; False when it does."""
    condition = OpsRecord.text.does_not_exist() | (OpsRecord.text < text)
    return _applied(lambda: OpsRecord(pk, sk, text=text).save(condition=condition))


# ---------------------------------------------------------------------------------------------- read-ahead

_NOT_AHEAD: Any = object()
# Per context, not per process: the embedded stack answers replies on HTTP threads while its loop sends a batch.
# Lanes run in a copy of the batch's context (`core.pacing.ThreadLanes`), so they share its block's items.
_ahead: contextvars.ContextVar[dict[tuple[str, str], Model | _MessageRead | None] | None] = contextvars.ContextVar(
    "rappel_read_ahead", default=None
)


@contextlib.contextmanager
def read_ahead(
    message_ids: Iterable[str] = (), *, appointment_ids: Iterable[str] = (), patient_ids: Iterable[str] = ()
) -> Iterator[None]:
    """Read ahead, in a few BatchGetItems (strongly consistent), the items a piece of work will ask for one by one.

    - `message_ids`: a send batch's reminders. Their patients and appointments are read together, then whether
      their numbers are stopped: two BatchGetItems after the messages' own, instead of three GetItems a reminder.
      Every cancellation (a stop, a dose given, an opt-out) writes the message, so the message is what must be
      fresh when it is checked: `get_message(read_since=…)` answers from the batch's read while it is recent
      enough, and reads the message again once it is not (a batch paced over several seconds).
    - `appointment_ids` and `patient_ids`: a clinic event's appointments, with their outcome states, and patients,
      in one BatchGetItem instead of a GetItem each.

    Inside the block, `get_patient`, `get_appointment`, `get_appointment_state` and `number_stopped` answer from
    what was read; a write to one of them through this module forgets it, and is read back as written (a
    conditional write that failed forgets it too: the retry reads it again). Blocks may nest: an inner block adds
    to what the outer one read. A failed read-ahead leaves every read to the table."""
    outer = _ahead.get()
    ahead: dict[tuple[str, str], Model | _MessageRead | None] = outer if outer is not None else {}
    try:
        ahead.update(_read_for_send(list(dict.fromkeys(message_ids))))
        appointments, patients = list(dict.fromkeys(appointment_ids)), list(dict.fromkeys(patient_ids))
        ahead.update(_read_appointments_and_patients(appointments, patients))
    except Exception as exc:  # a throttle here must not fail the work: each item is read alone
        from core.observability import logger  # here, not at the top: observability imports this module

        logger.warning("read-ahead failed; each item is read alone", extra={"error": type(exc).__name__})
    token = _ahead.set(ahead)
    try:
        yield
    finally:
        _ahead.reset(token)


@dataclass(frozen=True)
class _MessageRead:
    """A send batch's read of one message, and when it was made (the request's start, to err on the old side)."""

    at: datetime
    message: MessageRecord


def _read_for_send(ids: list[str]) -> dict[tuple[str, str], Model | _MessageRead | None]:
    if not ids:
        return {}
    read_at = clock.now()
    messages = list(MessageRecord.batch_get(ids, consistent_read=True))
    appointment_ids = sorted({str(m.appointment_id) for m in messages})
    patient_ids = sorted({str(m.patient_id) for m in messages})
    found: dict[tuple[str, str], Model | _MessageRead | None] = {
        **_read_appointments_and_patients(appointment_ids, patient_ids, states=False)
    }
    phones = sorted({str(p.phone) for p in found.values() if isinstance(p, PatientRecord)})
    stops = _batch_read({OpsRecord: [(_STOP, phone) for phone in phones]})
    found.update({("stop", phone): stops.get((OpsRecord, (_STOP, phone))) for phone in phones})
    found.update({("message", str(m.message_id)): _MessageRead(read_at, m) for m in messages})
    return found


def _read_appointments_and_patients(
    appointment_ids: list[str], patient_ids: list[str], *, states: bool = True
) -> dict[tuple[str, str], Model | None]:
    wanted: dict[type[Model], list[Any]] = {AppointmentRecord: appointment_ids, PatientRecord: patient_ids}
    if states:
        wanted[AppointmentStateRecord] = [(f"{_STATE_PK}{a}", _STATE_SK) for a in appointment_ids]
    items = _batch_read(wanted)
    found: dict[tuple[str, str], Model | None] = {
        **{("appointment", a): items.get((AppointmentRecord, a)) for a in appointment_ids},
        **{("patient", p): items.get((PatientRecord, p)) for p in patient_ids},
    }
    if states:
        state = AppointmentStateRecord
        found.update({("state", a): items.get((state, (f"{_STATE_PK}{a}", _STATE_SK))) for a in appointment_ids})
    return found


_BATCH_READ_ATTEMPTS = 4


def _batch_read(wanted: Mapping[type[Model], Iterable[Any]]) -> dict[tuple[type[Model], Any], Model]:
    """Items of several tables by key (a hash key, or a (hash, range) pair) in as few BatchGetItems as DynamoDB
    allows (100 keys each), strongly consistent; absent items are left out."""
    keys = [(model, key) for model, model_keys in wanted.items() for key in dict.fromkeys(model_keys)]
    found: dict[tuple[type[Model], Any], Model] = {}
    client = _connection().client
    for first in range(0, len(keys), 100):
        chunk = keys[first : first + 100]
        by_table: dict[str, type[Model]] = {}
        for model, _ in chunk:
            if by_table.setdefault(model.Meta.table_name, model) is not model:
                raise ValueError(f"one read asks {model.Meta.table_name} for two kinds of item")
        request: dict[str, Any] = {}
        for model, key in chunk:
            table = request.setdefault(model.Meta.table_name, {"Keys": [], "ConsistentRead": True})
            table["Keys"].append(_serialized_key(model, key))
        for attempt in range(_BATCH_READ_ATTEMPTS):
            if attempt:
                clock.sleep(0.05 * 2**attempt)  # DynamoDB returned keys unprocessed: it is throttling
            response = client.batch_get_item(RequestItems=request)
            for table_name, items in response.get("Responses", {}).items():
                model = by_table[table_name]
                for raw in items:
                    item = model.from_raw_data(raw)
                    found[(model, _key_of(model, item))] = item
            request = response.get("UnprocessedKeys") or {}
            if not request:
                break
        else:
            raise RuntimeError("batch read throttled: keys left unprocessed")  # the caller reads them another way
    return found


def _serialized_key(model: type[Model], key: Any) -> dict[str, Any]:
    hash_attribute, range_attribute = model._hash_key_attribute(), model._range_key_attribute()
    hash_key, range_key = (key, None) if range_attribute is None else key
    out = {hash_attribute.attr_name: {hash_attribute.attr_type: hash_attribute.serialize(hash_key)}}
    if range_attribute is not None:
        out[range_attribute.attr_name] = {range_attribute.attr_type: range_attribute.serialize(range_key)}
    return out


def _key_of(model: type[Model], item: Model) -> Any:
    hash_key = getattr(item, model._hash_keyname or "")
    return hash_key if model._range_keyname is None else (hash_key, getattr(item, model._range_keyname))


def _forget_ahead(kind: str, key: str) -> None:
    ahead = _ahead.get()
    if ahead is not None:
        ahead.pop((kind, key), None)


def _take_ahead(kind: str, key: str) -> Any:
    """The item read ahead (None: read ahead and absent); `_NOT_AHEAD` when there is none."""
    ahead = _ahead.get()
    return _NOT_AHEAD if ahead is None else ahead.get((kind, key), _NOT_AHEAD)


# ---------------------------------------------------------------------------------------------- errors


def _update(record: Model, actions: Sequence[Action], condition: Condition | None = None) -> None:
    """UpdateItem on `record`'s key, without the item back: pynamodb's `Model.update` asks for ALL_NEW, which no
    caller here reads, and that costs a read-back and its decoding on every write. A message written here is no
    longer answered from its batch's read (`get_message`)."""
    if isinstance(record, MessageRecord):
        _forget_ahead("message", str(record.message_id))
    hash_key, range_key = record._get_hash_range_key_serialized_values()
    record._get_connection().update_item(
        hash_key, range_key=range_key, actions=list(actions), condition=condition, return_values=NONE
    )


def _applied(write: Callable[[], object]) -> bool:
    """Run one conditional write: True when it applied, False when its condition no longer held."""
    try:
        write()
    except (PutError, UpdateError, DeleteError) as exc:
        if _is_condition_failure(exc):
            return False
        raise
    return True


def _is_condition_failure(exc: Exception) -> bool:
    return getattr(exc, "cause_response_code", None) == "ConditionalCheckFailedException"


def record_receipt_status(message_id: str, provider_status: str) -> bool:
    """Note an intermediate receipt status on a sent message (no status change)."""
    return _applied(
        lambda: _update(
            MessageRecord(message_id),
            actions=[MessageRecord.receipt_status.set(provider_status)],
            condition=MessageRecord.status == Status.SENT.value,
        )
    )


# ---------------------------------------------------------------------------------------------- outcomes and follow-ups

# One item per appointment in the ops table (pk `APPOINTMENT#<id>`, sk `STATE`): its `core.outcomes` state as JSON,
# written with a condition on its version. Its place in the sparse `follow_up` index: `FOLLOWUP#<n>` (the
# follow-up pass looks at it once `follow_up_at` has come) or `FOLLOWUP#OPEN` (an announced, open follow-up).
# The outcome counters are ops items pk `OUTCOMES`, sk `<due month>#<clinic>`, one attribute per cell.
_STATE_PK = "APPOINTMENT#"
_STATE_SK = "STATE"
_OUTCOMES = "OUTCOMES"
_STATE_FIELDS = frozenset(f.name for f in fields(AppointmentState)) - {"version"}
FOLLOW_UP_OPEN = "FOLLOWUP#OPEN"


class FollowUpIndex(GlobalSecondaryIndex["AppointmentStateRecord"]):
    """Sparse: only states with an event to publish, a family to look at again, or an open follow-up."""

    class Meta:
        index_name = "follow_up"
        projection = AllProjection()

    follow_up_key = UnicodeAttribute(hash_key=True)
    follow_up_at = UnicodeAttribute(range_key=True)


class AppointmentStateRecord(_Record):
    """The outcome and follow-up state of one appointment (in the ops table)."""

    class Meta:
        table_name = "rappel-ops"
        region = "us-east-1"

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    data = UnicodeAttribute()
    version = NumberAttribute()
    clinic = UnicodeAttribute(null=True)
    follow_up = UnicodeAttribute(null=True)  # open | closed (a filter for listings)
    # Whether a failed reminder should make the pass look again at once (`rearm_follow_up`): a scheduled dose whose
    # family is not reached and has no follow-up yet; `overdue_at` from when.
    watchable = BooleanAttribute(null=True)
    overdue_at = UnicodeAttribute(null=True)
    follow_up_key = UnicodeAttribute(null=True)
    follow_up_at = UnicodeAttribute(null=True)
    follow_up_index = FollowUpIndex()


def follow_up_shard(appointment_id: str, shards: int) -> str:
    """The `follow_up` index partition of an appointment's pending work."""
    return f"FOLLOWUP#{int(hashlib.sha256(appointment_id.encode()).hexdigest()[:8], 16) % shards}"


def _state_of(item: AppointmentStateRecord) -> AppointmentState:
    state = _state_of_image({"data": item.data, "version": item.version})
    if state is None:
        raise ValueError(f"appointment state {item.pk}: no data")
    watch = item.follow_up_at if item.follow_up_key and item.follow_up_key != FOLLOW_UP_OPEN else None
    # The index slot is the watch time's one record (a failed reminder moves it without reading the state).
    eligible = state.status == SCHEDULED and not state.reached and not state.follow_up
    return replace(state, watch_at=watch if eligible else None)


def get_appointment_state(appointment_id: str) -> AppointmentState | None:
    """The appointment's outcome state (strongly consistent), or None."""
    ahead = _take_ahead("state", appointment_id)
    if ahead is not _NOT_AHEAD:
        return None if ahead is None else _state_of(ahead)
    try:
        return _state_of(AppointmentStateRecord.get(f"{_STATE_PK}{appointment_id}", _STATE_SK, consistent_read=True))
    except AppointmentStateRecord.DoesNotExist:
        return None


def put_appointment_state(old: AppointmentState | None, new: AppointmentState, shards: int) -> bool:
    """Write `new` in place of `old` (conditional on `old`'s version, or on no state for None); False, with nothing
    written, when someone else changed it first. The outcome counters it moves are added by the tally, from the ops
    table's stream (`outcome_change`)."""
    _forget_ahead("state", new.appointment_id)
    data = {k: v for k, v in asdict(new).items() if k not in {"version", "watch_at"}}
    if not new.episode:
        del data["episode"]  # as the states written before episodes were: code rolled back still reads them
    slot = index_slot(new)
    key = None
    if slot is not None:
        key = FOLLOW_UP_OPEN if slot[0] is Slot.OPEN else follow_up_shard(new.appointment_id, shards)
    record = AppointmentStateRecord
    values: list[tuple[Any, Any]] = [
        (record.data, json.dumps(data, separators=(",", ":"), sort_keys=True)),
        (record.version, (old.version if old is not None else 0) + 1),
        (record.clinic, new.clinic),
        (record.follow_up, new.follow_up),
        (record.watchable, True if new.status == SCHEDULED and not new.reached and not new.follow_up else None),
        (record.overdue_at, new.overdue_at or None),
        (record.follow_up_key, key),
        (record.follow_up_at, slot[1] if slot is not None else None),
    ]
    actions = [attribute.remove() if value is None else attribute.set(value) for attribute, value in values]
    condition = record.pk.does_not_exist() if old is None else record.version == old.version
    return _applied(
        lambda: _update(record(f"{_STATE_PK}{new.appointment_id}", _STATE_SK), actions=actions, condition=condition)
    )


def rearm_follow_up(appointment_id: str, at: datetime, shards: int) -> bool:
    """A reminder of the appointment ended without reaching the family: once its dose is overdue, have the pass
    look at it now (one conditional write, no read); False when there is nothing to look at."""
    record = AppointmentStateRecord
    now = iso(at)
    _forget_ahead("state", appointment_id)
    return _applied(
        lambda: _update(
            record(f"{_STATE_PK}{appointment_id}", _STATE_SK),
            actions=[
                record.follow_up_key.set(follow_up_shard(appointment_id, shards)),
                record.follow_up_at.set(now),
                record.version.add(1),
            ],
            condition=(record.watchable == True) & (record.overdue_at <= now),  # noqa: E712 (a condition, not a test)
        )
    )


def defer_follow_up(appointment_id: str, version: int, until: datetime, shards: int) -> bool:
    """Move a state the pass could not handle to `until` in its slot of the pass's shards, the state itself unchanged
    (one conditional write on its `version`: a state changed since is where its change put it); False otherwise."""
    record = AppointmentStateRecord
    _forget_ahead("state", appointment_id)
    return _applied(
        lambda: _update(
            record(f"{_STATE_PK}{appointment_id}", _STATE_SK),
            actions=[record.follow_up_at.set(iso(until))],
            condition=(record.version == version) & (record.follow_up_key == follow_up_shard(appointment_id, shards)),
        )
    )


def _note_for_follow_up(message: MessageRecord, target: Status, at: datetime, settings: Settings) -> None:
    """After a reminder's status change: one that ended without reaching the family may make it one to call."""
    if target in {Status.FAILED, Status.DEAD_LETTER, Status.EXPIRED, Status.CANCELLED} and message.reminder_type in {
        t.value for t in ReminderType
    }:
        rearm_follow_up(message.appointment_id, at, settings.DUE_INDEX_SHARDS)


@dataclass(frozen=True)
class UnreadableState:
    """A state item in the pass's slots whose data this version cannot read (mangled by hand, or cut short)."""

    appointment_id: str
    version: int
    error: str  # the exception's type only: its text could carry the item's data (a phone)


def follow_ups_due(shards: int, until: datetime, limit: int) -> tuple[list[AppointmentState], list[UnreadableState]]:
    """States whose pending work (an event to publish, a family to look at again) is due by `until`, oldest first;
    and the items among them that cannot be read, apart, so that one of them does not stop the pass for all."""
    items: list[AppointmentStateRecord] = []
    for n in range(shards):
        items += AppointmentStateRecord.follow_up_index.query(
            f"FOLLOWUP#{n}", AppointmentStateRecord.follow_up_at <= iso(until), limit=limit, page_size=min(limit, 500)
        )
    found, unreadable = _read_states(items)
    found.sort(key=lambda s: (s.watch_at or s.follow_up_at or s.closed_at or "", s.appointment_id))
    return found[:limit], unreadable


def _read_states(items: Iterable[AppointmentStateRecord]) -> tuple[list[AppointmentState], list[UnreadableState]]:
    found: list[AppointmentState] = []
    unreadable: list[UnreadableState] = []
    for item in items:
        try:
            found.append(_state_of(item))
        except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
            appointment_id = str(item.pk).removeprefix(_STATE_PK)
            unreadable.append(UnreadableState(appointment_id, int(item.version or 0), type(exc).__name__))
    return found, unreadable


def earliest_follow_up(shards: int) -> datetime | None:
    """When the pass next has work (None: none waits); the simulator's clock wakes the pass for it."""
    earliest: str | None = None
    for n in range(shards):
        for item in AppointmentStateRecord.follow_up_index.query(f"FOLLOWUP#{n}", limit=1):
            if item.follow_up_at is not None and (earliest is None or item.follow_up_at < earliest):
                earliest = item.follow_up_at
    return parse_iso(earliest) if earliest else None


def open_follow_ups(
    shards: int, *, clinic: str | None = None, since: datetime | None = None
) -> tuple[list[AppointmentState], list[UnreadableState]]:
    """The open follow-ups (announced, and those whose FollowUpNeeded is still being published), oldest first, and
    the items among them that cannot be read: Queries of the `follow_up` index, never a scan."""
    index = AppointmentStateRecord.follow_up_index
    condition = AppointmentStateRecord.follow_up_at >= iso(since) if since is not None else None
    wanted = AppointmentStateRecord.follow_up == "open"
    if clinic is not None:
        wanted &= AppointmentStateRecord.clinic == clinic
    found = list(index.query(FOLLOW_UP_OPEN, condition, filter_condition=wanted))
    for n in range(shards):
        found += index.query(f"FOLLOWUP#{n}", condition, filter_condition=wanted)
    states, unreadable = _read_states(found)
    return sorted(states, key=lambda s: (s.follow_up_at or "", s.appointment_id)), unreadable


def add_outcome_counts(deltas: Mapping[tuple[str, str], int], batch: str) -> tuple[int, int]:
    """Add one tally batch's outcome counts: one UpdateItem per counter item (due month and clinic), once per batch
    as `add_to_counters` does. Returns (items written, items the batch had already reached)."""
    grouped: dict[tuple[str, str], dict[str, float]] = {}
    for (sk, name), amount in deltas.items():
        grouped.setdefault((_OUTCOMES, sk), {})[name] = amount
    return _add_once(grouped, batch)


def is_appointment_state(keys: Mapping[str, Any]) -> bool:
    """Whether an ops table item (by its keys) is an appointment's outcome state."""
    return str(keys.get("pk", "")).startswith(_STATE_PK) and keys.get("sk") == _STATE_SK


def outcome_change(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> dict[tuple[str, str], int]:
    """The outcome counter increments one change of an appointment's state item causes (the items before and after,
    as plain values; None where there was none). A deletion moves nothing: the counts are the program's history."""
    if new is None:
        return {}
    return outcome_deltas(_state_of_image(old), _state_of_image(new))


def _state_of_image(image: Mapping[str, Any] | None) -> AppointmentState | None:
    if image is None or "data" not in image:
        return None
    stored = json.loads(str(image["data"]))
    if not isinstance(stored, dict):
        raise ValueError("appointment state data: not a JSON object")
    # Fields this version does not know are left out: a state a newer version wrote stays readable after a rollback.
    known = {k: v for k, v in stored.items() if k in _STATE_FIELDS}
    known["reasons"] = tuple(known.get("reasons") or ())
    return AppointmentState(**known, version=int(image.get("version") or 0))


def read_outcome_counts() -> dict[str, dict[str, float]]:
    """Every outcome counter item ({`<due month>#<clinic>`: {`<group>#<type>#<name>`: value}}): one Query."""
    client = _connection().client
    out: dict[str, dict[str, float]] = {}
    kwargs: dict[str, Any] = {
        "TableName": OpsRecord.Meta.table_name,
        "KeyConditionExpression": "pk = :pk",
        "ExpressionAttributeValues": {":pk": {"S": _OUTCOMES}},
        "ConsistentRead": True,
    }
    while True:
        page = client.query(**kwargs)
        for item in page.get("Items", []):
            out[item["sk"]["S"]] = {k: float(v["N"]) for k, v in item.items() if "N" in v}
        if "LastEvaluatedKey" not in page:
            return out
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
