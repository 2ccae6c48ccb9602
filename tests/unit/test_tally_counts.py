"""What one item change moves in the counters (pure: the stream's old and new images), and the stream filter."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from core.store import outcome_change
from core.tally import batch_id, message_counts
from rappel_local.change_streams import _passes, stream_sources

LATER = datetime(2027, 3, 9, 23, 59, tzinfo=UTC)  # when the tally runs: never the hour a move counts in


def _message(status: str, *history: str, **fields: Any) -> dict[str, Any]:
    return {
        "message_id": "msg_1",
        "reminder_type": "1_day_reminder",
        "status": status,
        "scheduled_at": "2027-03-01T09:00:00.000Z",
        "attempts": Decimal(0),
        "history": list(history),
        **fields,
    }


def _names(counts: dict[tuple[str, str], float]) -> dict[str, float]:
    return {key: amount for (_, key), amount in counts.items()}


def test_a_created_message_counts_as_planned_in_the_hour_its_history_says() -> None:
    new = _message("pending", "2027-03-01T07:15:00.000Z >pending planned")
    assert message_counts(None, new, LATER) == {("2027-03-01", "07#1_day_reminder#planned"): 1}


def test_a_write_that_changes_no_status_moves_nothing() -> None:
    old = _message("sent", "2027-03-01T09:00:01.000Z queued>sent sent")
    new = {**old, "receipt_status": "MessageWaiting"}
    assert message_counts(old, new, LATER) == {}
    assert message_counts(old, None, LATER) == {}  # a deletion (retention) ends nothing


def test_a_send_counts_its_lateness_its_share_of_the_sms_and_its_provider() -> None:
    old = _message("queued", "2027-03-01T09:00:00.000Z pending>queued claimed")
    new = _message(
        "sent",
        "2027-03-01T09:00:00.000Z pending>queued claimed",
        "2027-03-01T09:00:30.000Z queued>sent sent",
        provider="orange",
        sms_reminders=Decimal(2),
        sent_at="2027-03-01T09:00:30.000Z",
    )
    assert _names(message_counts(old, new, LATER)) == {
        "09#1_day_reminder#sent": 1,
        "09#1_day_reminder#sms": 0.5,
        "09#1_day_reminder#sent_via_orange": 1,
        "09#1_day_reminder#lateness_sum": 30.0,
        "09#1_day_reminder#lateness_le_30": 1,
    }


def test_a_late_delivery_after_a_failure_takes_the_failure_back() -> None:
    old = _message("failed", "2027-03-01T09:01:00.000Z sent>failed undeliverable", sent_at="2027-03-01T09:00:30.000Z")
    new = {**old, "status": "delivered", "history": [*old["history"], "2027-03-01T10:00:30.000Z failed>delivered x"]}
    counts = _names(message_counts(old, new, LATER))
    # Taken back in the hour the failure was counted (09), the delivery counted in its own (10).
    assert (counts["10#1_day_reminder#delivered"], counts["09#1_day_reminder#failed"]) == (1, -1)
    assert counts["09#1_day_reminder#undelivered"] == -1 and "10#1_day_reminder#failed" not in counts
    assert counts["10#1_day_reminder#delivery_sum"] == 3600.0


def test_back_to_pending_is_a_retry_only_when_an_attempt_was_spent() -> None:
    old = _message("queued", "2027-03-01T21:00:00.000Z pending>queued claimed")
    deferred = _message("pending", "2027-03-01T21:00:01.000Z queued>pending quiet hours")
    retried = {**deferred, "attempts": Decimal(1)}
    assert message_counts(old, deferred, LATER) == {}
    assert _names(message_counts(old, retried, LATER)) == {"21#1_day_reminder#retried": 1}


def test_a_message_without_history_counts_at_the_change_time() -> None:
    old, new = _message("queued"), _message("expired")
    assert _names(message_counts(old, new, LATER)) == {"23#1_day_reminder#expired": 1}


def test_a_batch_is_named_by_its_records_in_order() -> None:
    assert batch_id(["a", "b"]) == batch_id(["a", "b"])
    assert len({batch_id(["a", "b"]), batch_id(["b", "a"]), batch_id(["ab"]), batch_id(["a"])}) == 4


def _ops_record(pk: str, sk: str) -> dict[str, Any]:
    return {"dynamodb": {"Keys": {"pk": {"S": pk}, "sk": {"S": sk}}}}


def test_the_ops_stream_filter_lets_only_appointment_states_through() -> None:
    sources = {source.table_variable: source for source in stream_sources()}
    messages, ops = sources["MESSAGES_TABLE"], sources["OPS_TABLE"]
    assert _passes({"dynamodb": {"Keys": {"message_id": {"S": "msg_1"}}}}, messages.patterns)
    assert _passes(_ops_record("APPOINTMENT#a1", "STATE"), ops.patterns)
    assert not _passes(_ops_record("COUNTERS#2027-03-01", "09#1_day_reminder"), ops.patterns)
    assert not _passes(_ops_record("OUTCOMES", "2027-03#clinic"), ops.patterns)
    assert not _passes(_ops_record("APPOINTMENT#a1", "OTHER"), ops.patterns)


def test_an_appointment_state_counts_what_its_change_moves_and_a_deletion_nothing() -> None:
    data = '{"appointment_id":"a1","clinic":"c1","due_date":"2027-03-20","status":"scheduled","overdue_at":""}'
    state = {"pk": "APPOINTMENT#a1", "sk": "STATE", "data": data, "version": Decimal(1)}
    created = outcome_change(None, state)
    assert created and all(amount == 1 for amount in created.values())
    assert outcome_change(state, {**state, "version": Decimal(2)}) == {}  # a watch moved: no outcome changed
    assert outcome_change(state, None) == {}


def test_a_revival_takes_its_cancellation_back_and_a_redrive_plans_nothing_new() -> None:
    """Planned counts creations only, as `RemindersPlanned` does: a revived or redriven reminder is the same one."""
    cancelled = _message("cancelled", "2027-03-01T07:15:00.000Z pending>cancelled opted out")
    revived = _message("pending", "2027-03-01T08:15:00.000Z cancelled>pending revived: opted out no longer holds")
    # Taken back in the hour the cancellation was counted.
    assert message_counts(cancelled, revived, LATER) == {("2027-03-01", "07#1_day_reminder#cancelled"): -1}
    dead = _message("dead_letter", "2027-03-01T07:15:00.000Z >pending planned")
    redriven = _message("pending", "2027-03-01T09:15:00.000Z dead_letter>pending redriven from the dead letter queue")
    assert message_counts(dead, redriven, LATER) == {}


def test_a_status_or_reminder_type_this_version_does_not_know_moves_nothing_instead_of_failing_the_batch() -> None:
    """A newer version's status in a stream image (read during a deploy, or after a rollback) failed the whole batch
    of up to 1,000 changes: 20 retries, then the failure queue, where `rappel retally` failed on it again."""
    assert message_counts(_message("queued"), _message("sending"), LATER) == {}
    assert message_counts(None, _message("pending", reminder_type="2_day_reminder"), LATER) != {}
    assert message_counts(_message("queued"), {"message_id": "msg_1", "status": "sent"}, LATER) == {}
