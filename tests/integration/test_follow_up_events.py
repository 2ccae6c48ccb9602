"""Families to call on moto: FollowUpNeeded / FollowUpClosed as a clinic system subscribed to the bus receives them
(a rule on source `rappel` to a queue), published by dispatch_due's pass through core.notify, once, and never lost
when the publish or the write after it fails; the outcome counters read back (issue 14, items 2 and 3)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from core import followup, notify, store
from core.lifecycle import Status
from core.planning import handle_clinic_event
from tests.helpers import dose as dose_event
from tests.helpers import envelope, patient
from tests.integration.pipeline_kit import Pipeline, emf

pytestmark = pytest.mark.integration
JSON = {"Content-Type": "application/json"}
SAMPLE = Path(__file__).parents[2] / "events" / "follow_up_needed.json"
DUE = "2027-03-20"
OVERDUE = datetime(2027, 3, 21, 0, 0, tzinfo=UTC)  # Abidjan is UTC+0: the start of the day after the due date


@pytest.fixture
def pipe(aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    pipeline = Pipeline(aws, monkeypatch)
    pipeline.start_orange(receipt_delay_seconds=20)
    yield pipeline
    pipeline.close()


def opted_out_family(pipe: Pipeline) -> None:
    """p1 opted out at registration: no reminder is ever planned for a1."""
    assert handle_clinic_event(patient("p1", sms_opt_in=False), pipe.settings).applied == 1
    result = handle_clinic_event(dose_event("a1", "p1", due_date=DUE), pipe.settings)
    assert result.applied == 1 and result.created == 0


def test_an_unreachable_family_gets_one_follow_up_and_its_close(pipe: Pipeline, clinic_events) -> None:
    opted_out_family(pipe)
    pipe.clock.advance_to(datetime(2027, 3, 20, 23, 59, tzinfo=UTC))
    pipe.follow_up_pass()
    assert clinic_events() == [], "not overdue yet: nothing to call about"

    pipe.clock.advance_to(OVERDUE)
    assert pipe.follow_up_pass()["looked_at"] == 1
    (needed,) = clinic_events()
    assert (needed["source"], needed["detail-type"]) == ("rappel", "FollowUpNeeded")
    sample = json.loads(SAMPLE.read_text())
    assert set(needed["detail"]) == set(sample["detail"]), "the README's sample is what a clinic system receives"
    assert needed["detail"] | {"reasons": None} == {
        "follow_up_id": "followup-a1",
        "patient_id": "p1",
        "appointment_id": "a1",
        "clinic": "CSU Abobo",
        "due_date": DUE,
        "reasons": None,
        "phone": "+225******04",
        "at": "2027-03-21T00:00:00.000Z",
    }
    assert needed["detail"]["reasons"] == ["no reminder: the family opted out of SMS"]
    assert [s.appointment_id for s in followup.open_follow_ups(pipe.settings)] == ["a1"]

    for _ in range(3):  # once per appointment: later runs find nothing to do
        pipe.clock.sleep(3600)
        assert pipe.follow_up_pass()["looked_at"] == 0
    assert len(clinic_events()) == 1

    handle_clinic_event(envelope("DoseAdministered", appointment_id="a1", administered_on="2027-03-22"), pipe.settings)
    assert followup.open_follow_ups(pipe.settings) == []
    pipe.follow_up_pass()
    closed = clinic_events()[1]
    assert closed["detail-type"] == "FollowUpClosed"
    assert closed["detail"]["follow_up_id"] == "followup-a1" and closed["detail"]["why"] == "dose given"
    assert closed["detail"]["administered_on"] == "2027-03-22"
    pipe.follow_up_pass()
    assert len(clinic_events()) == 2

    # Not reached, given after its due date: the counters say so.
    pipe.aws.tally()
    summary = followup.outcome_report(pipe.settings)
    assert summary["not_reached"] == {"appointments": 1, "given_by_due_date": 0, "given_later": 1, "not_given": 0}
    assert summary["reached"]["appointments"] == 0


def test_a_refused_publish_is_tried_again_by_the_next_run_never_lost(
    pipe: Pipeline, clinic_events, monkeypatch: pytest.MonkeyPatch
) -> None:
    opted_out_family(pipe)
    pipe.clock.advance_to(OVERDUE)
    real = notify.publish

    def refused(*args: Any, **kwargs: Any) -> None:
        raise notify.EventNotPublished("FollowUpNeeded: InternalFailure: try again")

    monkeypatch.setattr(notify, "publish", refused)
    pipe.follow_up_pass()
    assert clinic_events() == []
    state = store.get_appointment_state("a1")
    assert state is not None and state.follow_up == "open" and state.unpublished == ("needed",)

    monkeypatch.setattr(notify, "publish", real)
    pipe.clock.sleep(60)
    pipe.follow_up_pass()
    assert [e["detail-type"] for e in clinic_events()] == ["FollowUpNeeded"]
    assert store.get_appointment_state("a1").unpublished == ()  # type: ignore[union-attr]


def _announced_then_crash_before_the_mark(pipe: Pipeline, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An unreachable family, overdue; the next pass publishes its FollowUpNeeded and dies before marking it
    published (the state's write raises). Returns the real write, to put back."""
    opted_out_family(pipe)
    pipe.clock.advance_to(OVERDUE)
    real = store.put_appointment_state

    def crash_on_marking(old: Any, new: Any, shards: int) -> bool:
        if new.needed_published:
            raise RuntimeError("crash between the publish and the write after it")
        return real(old, new, shards)

    monkeypatch.setattr(store, "put_appointment_state", crash_on_marking)
    return real


def test_a_crash_after_the_publish_repeats_the_event_with_the_same_id(
    pipe: Pipeline, clinic_events, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = _announced_then_crash_before_the_mark(pipe, monkeypatch)
    assert followup.run_due(pipe.settings, pipe.clock.now()).errors == 1  # that state's error: the pass goes on
    assert [e["detail-type"] for e in clinic_events()] == ["FollowUpNeeded"]
    monkeypatch.setattr(store, "put_appointment_state", real)
    pipe.clock.sleep(60)
    pipe.follow_up_pass()
    events = clinic_events()
    assert [e["detail-type"] for e in events] == ["FollowUpNeeded", "FollowUpNeeded"]
    assert {e["detail"]["follow_up_id"] for e in events} == {"followup-a1"}
    pipe.clock.sleep(60)
    pipe.follow_up_pass()
    assert len(clinic_events()) == 2


def test_a_dose_given_between_the_publish_and_its_mark_still_closes_the_announced_follow_up(
    pipe: Pipeline, clinic_events, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FollowUpNeeded went out, and the dose given lands before the state says so (a crash before the mark, then the
    event; or the event while the publish is on its way): the clinic system holds an open task, so it gets the close."""
    opted_out_family(pipe)
    pipe.clock.advance_to(OVERDUE)
    real = notify.publish
    calls: list[str] = []

    def dose_given_meanwhile(detail_type: Any, *args: Any, **kwargs: Any) -> None:
        real(detail_type, *args, **kwargs)
        if not calls:
            calls.append(str(detail_type))
            given = envelope("DoseAdministered", appointment_id="a1", administered_on="2027-03-21")
            assert handle_clinic_event(given, pipe.settings).applied == 1

    monkeypatch.setattr(notify, "publish", dose_given_meanwhile)
    pipe.follow_up_pass()
    monkeypatch.setattr(notify, "publish", real)
    pipe.clock.sleep(15 * 60)
    pipe.follow_up_pass()

    events = clinic_events()
    assert [e["detail-type"] for e in events] == ["FollowUpNeeded", "FollowUpClosed"]
    assert events[1]["detail"]["why"] == "dose given"
    pipe.clock.sleep(15 * 60)
    pipe.follow_up_pass()
    assert len(clinic_events()) == 2


def test_a_follow_up_closed_after_a_crash_before_its_mark_is_closed_for_the_clinic(
    pipe: Pipeline, clinic_events, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = _announced_then_crash_before_the_mark(pipe, monkeypatch)
    followup.run_due(pipe.settings, pipe.clock.now())
    monkeypatch.setattr(store, "put_appointment_state", real)
    pipe.clock.sleep(60)
    handle_clinic_event(envelope("DoseAdministered", appointment_id="a1", administered_on="2027-03-21"), pipe.settings)
    pipe.clock.sleep(15 * 60)
    pipe.follow_up_pass()

    assert [e["detail-type"] for e in clinic_events()] == ["FollowUpNeeded", "FollowUpClosed"]


def test_a_delivered_reminder_reaches_the_family_and_no_follow_up_opens(pipe: Pipeline, clinic_events) -> None:
    ids = pipe.plan(1, due_date=DUE)
    sent_at = datetime(2027, 3, 13, 9, 0, tzinfo=UTC)
    pipe.clock.advance_to(sent_at)
    pipe.cycle()
    assert pipe.message(ids["7_day_reminder"]).status == "sent" and pipe.orange is not None
    pipe.clock.sleep(20)
    (payload,) = pipe.orange.due_receipts(pipe.clock.now())
    answer = pipe.receipt("POST", "/orange", {"token": pipe.receipt_token()}, json.dumps(payload), JSON)
    assert answer["statusCode"] == 200
    state = store.get_appointment_state("a1")
    assert state is not None and state.reached and state.reached_type == "7_day_reminder"
    assert state.watch_at is None, "a family reached is no longer watched"

    # Past its overdue time, the dose still not given: a family reached is not one to call.
    pipe.clock.advance_to(datetime(2027, 3, 25, tzinfo=UTC))
    pipe.follow_up_pass()
    assert clinic_events() == [] and followup.open_follow_ups(pipe.settings) == []
    pipe.aws.tally()
    assert followup.outcome_report(pipe.settings)["reached"] == {
        "appointments": 1,
        "given_by_due_date": 0,
        "given_later": 0,
        "not_given": 1,
    }


# ---------------------------------------------------------------------------------------------- review of issue 14

SENT_TIMES = (  # each reminder of a dose due DUE, at its time in Abidjan (09:00; 14:00 for the overdue one)
    datetime(2027, 3, 13, 9, 0, tzinfo=UTC),
    datetime(2027, 3, 19, 9, 0, tzinfo=UTC),
    datetime(2027, 3, 21, 14, 0, tzinfo=UTC),
)


def all_sent_no_receipt(pipe: Pipeline) -> dict[str, str]:
    """a1's three reminders all accepted by Orange, none with a receipt yet; their ids by type."""
    ids = pipe.plan(1, due_date=DUE)
    for at in SENT_TIMES:
        pipe.clock.advance_to(at)
        pipe.cycle()
    assert {pipe.message(i).status for i in ids.values()} == {"sent"}
    return ids


def fail(pipe: Pipeline, message_id: str) -> None:
    """A failure receipt for a sent reminder, applied as core.receipts applies it (the re-arm included)."""
    change = store.Change(
        Status.FAILED, frozenset({Status.SENT}), {"receipt_status": "DeliveryImpossible"}, store.Guard.VERSION
    )
    assert store.transition(pipe.message(message_id), change, at=pipe.clock.now(), settings=pipe.settings)


def test_a_failure_receipt_landing_while_the_pass_writes_its_verdict_is_not_overwritten(
    pipe: Pipeline, clinic_events, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review item 1: the pass judged "stop" (a sent reminder with no receipt); the reminder's failure receipt lands
    between that judgement and its write (re-arming the watch, which bumps the version). The retry after the version
    conflict must not write the stale "stop" over the re-arm: the next run opens the follow-up."""
    ids = all_sent_no_receipt(pipe)
    pipe.clock.advance_to(datetime(2027, 3, 21, 15, 0, tzinfo=UTC))
    assert store.rearm_follow_up("a1", pipe.clock.now(), pipe.settings.DUE_INDEX_SHARDS)  # another reminder ended
    real = store.put_appointment_state
    raced: list[str] = []

    def receipt_lands_first(old: Any, new: Any, shards: int) -> bool:
        if not raced:
            raced.append(new.appointment_id)
            for message_id in ids.values():
                fail(pipe, message_id)
        return real(old, new, shards)

    monkeypatch.setattr(store, "put_appointment_state", receipt_lands_first)
    followup.run_due(pipe.settings, pipe.clock.now())
    monkeypatch.setattr(store, "put_appointment_state", real)
    assert raced == ["a1"]
    state = store.get_appointment_state("a1")
    assert state is not None and state.watching, "the re-arm stands: the family is looked at again"

    pipe.clock.sleep(60)
    pipe.follow_up_pass()
    (needed,) = clinic_events()
    assert needed["detail-type"] == "FollowUpNeeded"
    assert needed["detail"]["reasons"][0].startswith("7 days before: undeliverable")


def test_a_lost_re_arm_after_a_stop_verdict_is_caught_by_the_backstop(
    pipe: Pipeline, clinic_events, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review item 2: the pass judged "stop" while the overdue reminder had no receipt yet; its failure receipt then
    came, but the re-arm after the status change was lost (a crash between the two writes; Orange's retry of the
    receipt finds the message failed already). The backstop, 24 h after the last send, looks again."""
    ids = all_sent_no_receipt(pipe)
    pipe.clock.advance_to(datetime(2027, 3, 21, 15, 0, tzinfo=UTC))
    fail(pipe, ids["7_day_reminder"])  # its receipt came late: the watch is re-armed, the pass judges "stop"
    fail(pipe, ids["1_day_reminder"])
    pipe.follow_up_pass()
    state = store.get_appointment_state("a1")
    backstop = store.parse_iso(pipe.message(ids["overdue_reminder"]).sent_at or "") + timedelta(hours=24)
    assert state is not None and state.watch_at == store.iso(backstop), "the backstop: 24 h after the last send"

    pipe.clock.advance_to(datetime(2027, 3, 21, 16, 0, tzinfo=UTC))
    rearm = store.rearm_follow_up
    monkeypatch.setattr(store, "rearm_follow_up", lambda *args: False)  # the crash: the re-arm never written
    fail(pipe, ids["overdue_reminder"])
    monkeypatch.setattr(store, "rearm_follow_up", rearm)
    pipe.clock.advance_to(backstop - timedelta(minutes=1))
    pipe.follow_up_pass()
    assert clinic_events() == []
    pipe.clock.advance_to(backstop)
    pipe.follow_up_pass()
    assert [e["detail-type"] for e in clinic_events()] == ["FollowUpNeeded"]


def test_a_sent_reminder_whose_receipt_never_comes_is_looked_at_once_more_then_left(pipe: Pipeline) -> None:
    """Review item 2: past the backstop with still no receipt (Kannel never retries a DLR), the family may have the
    SMS: the pass stops watching for good instead of looking again at every run."""
    ids = all_sent_no_receipt(pipe)
    pipe.clock.advance_to(datetime(2027, 3, 21, 15, 0, tzinfo=UTC))
    store.rearm_follow_up("a1", pipe.clock.now(), pipe.settings.DUE_INDEX_SHARDS)
    pipe.follow_up_pass()
    backstop = store.parse_iso(pipe.message(ids["overdue_reminder"]).sent_at or "") + timedelta(hours=24)
    assert store.get_appointment_state("a1").watch_at == store.iso(backstop)  # type: ignore[union-attr]
    pipe.clock.advance_to(backstop)
    assert pipe.follow_up_pass()["looked_at"] == 1
    state = store.get_appointment_state("a1")
    assert state is not None and state.watch_at is None and state.follow_up is None
    pipe.clock.sleep(3600)
    assert pipe.follow_up_pass()["looked_at"] == 0


def test_one_state_that_fails_does_not_block_the_others(
    pipe: Pipeline, clinic_events, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review item 4: any error on one state (bad data, a throttle) is that state's: it is logged and counted, and
    the pass goes on to the states behind it (sorted oldest first, the failing one would otherwise block them all at
    every run)."""
    opted_out_family(pipe)
    assert handle_clinic_event(patient("p2", sms_opt_in=False, phone="+2250701020399"), pipe.settings).applied == 1
    handle_clinic_event(dose_event("a2", "p2", due_date=DUE), pipe.settings)
    pipe.clock.advance_to(OVERDUE)
    real = store.get_appointment

    def broken(appointment_id: str) -> Any:
        if appointment_id == "a1":
            raise ValueError("bad data in a1")
        return real(appointment_id)

    monkeypatch.setattr(store, "get_appointment", broken)
    result = followup.run_due(pipe.settings, pipe.clock.now())
    assert (result.looked_at, result.opened, result.published, result.errors) == (2, 1, 1, 1)
    assert [e["detail"]["appointment_id"] for e in clinic_events()] == ["a2"]
    monkeypatch.setattr(store, "get_appointment", real)
    pipe.clock.sleep(60)
    pipe.follow_up_pass()
    assert [e["detail"]["appointment_id"] for e in clinic_events()] == ["a2"]  # a1 set aside for SET_ASIDE_FOR
    pipe.clock.sleep(followup.SET_ASIDE_FOR.total_seconds())
    pipe.follow_up_pass()
    assert sorted(e["detail"]["appointment_id"] for e in clinic_events()) == ["a1", "a2"]


def test_states_the_pass_keeps_failing_on_are_set_aside_and_counted_not_taken_first_at_every_pass(
    pipe: Pipeline, clinic_events, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A state that fails for good (a record an old version wrote) stayed first in its slot, oldest first: once
    PASS_LIMIT of them had built up, no other family was ever looked at, and nothing but a log line said so."""
    for n in (1, 2, 3):
        phone = f"+22507010203{n}9"
        assert handle_clinic_event(patient(f"p{n}", sms_opt_in=False, phone=phone), pipe.settings).applied == 1
        assert handle_clinic_event(dose_event(f"a{n}", f"p{n}", due_date=DUE), pipe.settings).applied == 1
    monkeypatch.setattr(followup, "PASS_LIMIT", 2)
    real = store.get_appointment

    def broken(appointment_id: str) -> Any:
        if appointment_id in {"a1", "a2"}:
            raise ValueError("bad data")
        return real(appointment_id)

    monkeypatch.setattr(store, "get_appointment", broken)
    pipe.clock.advance_to(OVERDUE)
    capsys.readouterr()
    for _ in range(2):
        pipe.follow_up_pass()
        pipe.clock.sleep(60 * pipe.settings.FOLLOW_UP_PASS_MINUTES)
    assert [e["detail"]["appointment_id"] for e in clinic_events()] == ["a3"]
    assert emf(capsys.readouterr().out)["FollowUpErrors"] == 2


def test_a_state_a_newer_version_wrote_is_read_and_one_past_reading_is_set_aside_without_stopping_the_pass(
    pipe: Pipeline, clinic_events, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """After a rollback, states a newer version wrote carry fields this one does not know: each failed to load, and
    one item that failed to load (its data lost or mangled) failed the pass's query as a whole, so that no family was
    followed up until someone mended the item by hand."""
    for n in (1, 2, 3):
        phone = f"+22507010203{n}9"
        assert handle_clinic_event(patient(f"p{n}", sms_opt_in=False, phone=phone), pipe.settings).applied == 1
        assert handle_clinic_event(dose_event(f"a{n}", f"p{n}", due_date=DUE), pipe.settings).applied == 1
    ops = boto3.resource("dynamodb", region_name=pipe.settings.AWS_REGION).Table(pipe.settings.OPS_TABLE)
    key = {"pk": "APPOINTMENT#a1", "sk": "STATE"}
    newer = json.loads(ops.get_item(Key=key)["Item"]["data"]) | {"added_by_a_newer_version": 1}
    ops.update_item(
        Key=key,
        UpdateExpression="SET #d = :d",
        ExpressionAttributeNames={"#d": "data"},
        ExpressionAttributeValues={":d": json.dumps(newer)},
    )
    assert store.get_appointment_state("a1") is not None
    mangled = {"pk": "APPOINTMENT#a2", "sk": "STATE"}
    ops.update_item(
        Key=mangled,
        UpdateExpression="SET #d = :d",
        ExpressionAttributeNames={"#d": "data"},
        ExpressionAttributeValues={":d": "{not json"},
    )
    pipe.clock.advance_to(OVERDUE)
    capsys.readouterr()
    result = pipe.follow_up_pass()
    assert (result["looked_at"], result["published"], result["errors"]) == (2, 2, 1)
    assert sorted(e["detail"]["appointment_id"] for e in clinic_events()) == ["a1", "a3"]
    out = capsys.readouterr().out
    (logged,) = [r for r in caplog.records if r.getMessage() == "follow-up state unreadable"]
    assert (logged.appointment_id, logged.error) == ("a2", "JSONDecodeError")
    assert emf(out)["FollowUpErrors"] == 1
    ops.update_item(
        Key=mangled,
        UpdateExpression="SET follow_up_key = :key, follow_up = :open",
        ExpressionAttributeValues={":key": store.FOLLOW_UP_OPEN, ":open": "open"},
    )
    caplog.clear()
    assert [s.appointment_id for s in followup.open_follow_ups(pipe.settings)] == ["a1", "a3"]
    assert [r.appointment_id for r in caplog.records if r.getMessage() == "follow-up state unreadable"] == ["a2"]
    assert ops.get_item(Key=mangled)["Item"]["follow_up_at"] == store.iso(OVERDUE + followup.SET_ASIDE_FOR)


def test_a_pass_running_out_of_time_stops_cleanly_and_the_next_takes_the_rest(pipe: Pipeline, clinic_events) -> None:
    """The pass stops before the Lambda's timeout (a backlog, a slow EventBridge): the states it did not look at stay
    in the index, and the next pass takes them; nothing is lost or published twice."""
    opted_out_family(pipe)
    assert handle_clinic_event(patient("p2", sms_opt_in=False, phone="+2250701020399"), pipe.settings).applied == 1
    handle_clinic_event(dose_event("a2", "p2", due_date=DUE), pipe.settings)
    pipe.clock.advance_to(OVERDUE)
    left = iter([60_000, followup.PASS_TIME_MARGIN_MS - 1])
    result = followup.run_due(pipe.settings, pipe.clock.now(), lambda: next(left))
    assert (result.looked_at, result.out_of_time) == (1, True)
    assert len(clinic_events()) == 1
    pipe.clock.sleep(15 * 60)
    assert pipe.follow_up_pass()["looked_at"] == 1
    assert sorted(e["detail"]["appointment_id"] for e in clinic_events()) == ["a1", "a2"]


def test_a_reminder_delivered_after_the_follow_up_opened_closes_it(pipe: Pipeline, clinic_events) -> None:
    """Every reminder came back undeliverable, so the family's follow-up opened; then Orange's late
    DeliveredToTerminal for one of them (a DeliveryImpossible may still change, Orange says): the family was
    reached after all. The follow-up stayed open, and a health worker called a family that had its reminder."""
    ids = all_sent_no_receipt(pipe)
    for message_id in ids.values():
        fail(pipe, message_id)
    pipe.clock.advance_to(datetime(2027, 3, 21, 15, 0, tzinfo=UTC))
    pipe.follow_up_pass()
    assert [e["detail-type"] for e in clinic_events()] == ["FollowUpNeeded"]

    late = pipe.message(ids["7_day_reminder"])
    notification = {
        "deliveryInfoNotification": {
            "callbackData": late.provider_message_id,
            "deliveryInfo": {"address": "tel:+2250701020304", "deliveryStatus": "DeliveredToTerminal"},
        }
    }
    answer = pipe.receipt("POST", "/orange", {"token": pipe.receipt_token()}, json.dumps(notification), JSON)
    assert answer["statusCode"] == 200 and pipe.message(late.message_id).status == "delivered"

    assert followup.open_follow_ups(pipe.settings) == []
    pipe.follow_up_pass()
    closed = clinic_events()[1]
    assert closed["detail-type"] == "FollowUpClosed" and closed["detail"]["why"].startswith("reached")


@pytest.mark.parametrize("receipt_posted_again", [True, False], ids=["orange-posts-again", "never-again"])
def test_a_receipt_that_dies_before_noting_the_family_reached_is_made_good(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch, receipt_posted_again: bool
) -> None:
    """The receipt's `delivered` write, then a crash before the appointment's state notes the family reached: the
    receipt posted again found the message delivered and wrote nothing (Kannel never posts again), and once the
    dose was given on time the state left the follow-up index: a reminder that worked counted as not reaching the
    family, for good. A receipt for a delivered message notes it again, and so does the dose's event."""
    from core import receipts
    from tests.integration.pipeline_kit import PHONE

    message_id = pipe.plan(1, "2027-03-20")["7_day_reminder"]
    pipe.clock.advance_to(datetime(2027, 3, 13, 9, 0, tzinfo=UTC))
    pipe.cycle()
    provider_id = pipe.message(message_id).provider_message_id
    body = json.dumps(
        {
            "deliveryInfoNotification": {
                "callbackData": provider_id,
                "deliveryInfo": {"address": f"tel:{PHONE}", "deliveryStatus": "DeliveredToTerminal"},
            }
        }
    )
    with monkeypatch.context() as crash:
        crash.setattr(followup, "note_delivered", lambda *_: (_ for _ in ()).throw(RuntimeError("died here")))
        with pytest.raises(RuntimeError):
            receipts.orange_receipt(body, pipe.settings)
    assert pipe.message(message_id).status == "delivered"
    if receipt_posted_again:
        receipts.orange_receipt(body, pipe.settings)
        state = store.get_appointment_state("a1")
        assert state is not None and state.reached_type == "7_day_reminder", state

    pipe.clock.advance_to(datetime(2027, 3, 20, 10, 0, tzinfo=UTC))
    handle_clinic_event(envelope("DoseAdministered", appointment_id="a1", administered_on="2027-03-20"), pipe.settings)

    state = store.get_appointment_state("a1")
    assert state is not None and state.reached_type == "7_day_reminder" and state.status == "administered", state


# ---------------------------------------------------------------------------------------------- a reschedule

NEW_DUE = "2027-04-20"
NEW_SENT_TIMES = (
    datetime(2027, 4, 13, 9, 0, tzinfo=UTC),
    datetime(2027, 4, 19, 9, 0, tzinfo=UTC),
    datetime(2027, 4, 21, 14, 0, tzinfo=UTC),
)


def deliver_the_seven_day_reminder(pipe: Pipeline) -> dict[str, str]:
    """a1 due DUE, its 7-day reminder sent and its delivery receipt (Orange's) held back: returned as a payload."""
    ids = pipe.plan(1, due_date=DUE)
    pipe.clock.advance_to(SENT_TIMES[0])
    pipe.cycle()
    assert pipe.message(ids["7_day_reminder"]).status == "sent"
    return ids


def post_receipts(pipe: Pipeline) -> None:
    assert pipe.orange is not None
    for payload in pipe.orange.due_receipts(pipe.clock.now()):
        pipe.receipt("POST", "/orange", {"token": pipe.receipt_token()}, json.dumps(payload), JSON)


def every_new_date_reminder_fails(pipe: Pipeline) -> None:
    new = {m.reminder_type: m.message_id for m in store.messages_of_patient("p1") if m.due_date == NEW_DUE}
    for at, reminder in zip(NEW_SENT_TIMES, ("7_day_reminder", "1_day_reminder", "overdue_reminder"), strict=True):
        pipe.clock.advance_to(at)
        pipe.cycle()
        fail(pipe, new[reminder])


def test_a_family_reached_about_the_old_date_is_called_when_nothing_about_the_new_one_reaches_it(
    pipe: Pipeline,
) -> None:
    """Reached about 20 March, the dose moved to 20 April, every reminder about 20 April undeliverable, the dose
    never given: the family stayed "reached" across the reschedule and was never on the call list, though it never
    heard of the new date."""
    deliver_the_seven_day_reminder(pipe)
    pipe.clock.sleep(20)
    post_receipts(pipe)
    assert store.get_appointment_state("a1").reached

    pipe.clock.advance_to(datetime(2027, 3, 15, 10, 0, tzinfo=UTC))
    handle_clinic_event(dose_event("a1", "p1", due_date=NEW_DUE), pipe.settings)
    assert not store.get_appointment_state("a1").reached, "reached about a date no longer in force"
    every_new_date_reminder_fails(pipe)
    pipe.clock.advance_to(datetime(2027, 4, 22, 12, 0, tzinfo=UTC))
    pipe.follow_up_pass()

    assert [s.appointment_id for s in followup.open_follow_ups(pipe.settings)] == ["a1"]


def test_a_late_receipt_for_the_old_date_does_not_make_the_family_reached_about_the_new_one(pipe: Pipeline) -> None:
    """The 7-day reminder about 20 March is delivered, but its receipt comes after the dose moved to 20 April: it
    marked the family reached, so nothing about 20 April reaching it could put it on the call list."""
    ids = deliver_the_seven_day_reminder(pipe)
    pipe.clock.advance_to(datetime(2027, 3, 15, 10, 0, tzinfo=UTC))
    handle_clinic_event(dose_event("a1", "p1", due_date=NEW_DUE), pipe.settings)
    post_receipts(pipe)  # the old date's delivery, reported late

    assert pipe.message(ids["7_day_reminder"]).status == "delivered"
    assert not store.get_appointment_state("a1").reached
    every_new_date_reminder_fails(pipe)
    pipe.clock.advance_to(datetime(2027, 4, 22, 12, 0, tzinfo=UTC))
    pipe.follow_up_pass()
    assert [s.appointment_id for s in followup.open_follow_ups(pipe.settings)] == ["a1"]


def test_a_reminder_whose_text_could_not_be_composed_is_not_called_a_provider_refusal(pipe: Pipeline) -> None:
    """A text longer than SMS_MAX_SEGMENTS (a UCS-2 name, one segment allowed): no request ever reached a provider,
    and the health worker was told "refused by the SMS provider (text too long…)", pointing at the phone or the
    provider instead of the program's settings."""
    pipe.configure(SMS_MAX_SEGMENTS="1")
    assert handle_clinic_event(patient("p1", display_name="عائشة"), pipe.settings).applied == 1
    clinic = "Centre de Santé Urbain Communautaire de Yopougon Attié"
    handle_clinic_event(dose_event("a1", "p1", due_date=DUE, clinic=clinic), pipe.settings)
    for at in SENT_TIMES:
        pipe.clock.advance_to(at)
        pipe.cycle()
    assert {m.status for m in store.messages_of_patient("p1")} == {"failed"} and pipe.send_requests() == []
    pipe.clock.advance_to(SENT_TIMES[-1] + timedelta(hours=1))
    pipe.follow_up_pass()

    (state,) = followup.open_follow_ups(pipe.settings)
    assert state.reasons and all("not sent: the text could not be composed" in r for r in state.reasons), state.reasons


# ---------------------------------------------------------------------------------------------- a corrected record


@pytest.mark.parametrize("corrected", ["after the close was announced", "before the close was announced"])
def test_a_dose_record_corrected_back_to_scheduled_brings_a_new_follow_up(
    pipe: Pipeline, clinic_events, corrected: str
) -> None:
    """Every reminder failed and the follow-up opened; a DoseAdministered entered in error closed it; the clinic then
    corrected the record (the dose scheduled again, still overdue). A closed follow-up never reopened, so the family
    was silently gone from the list. Its dose due again, it is a family to call again: a new follow-up, with an id
    of its own for the clinic system (which has closed the first)."""
    ids = all_sent_no_receipt(pipe)
    for message_id in ids.values():
        fail(pipe, message_id)
    pipe.clock.advance_to(SENT_TIMES[-1] + timedelta(hours=1))
    pipe.follow_up_pass()
    assert [s.appointment_id for s in followup.open_follow_ups(pipe.settings)] == ["a1"]

    pipe.clock.sleep(3600)
    given = envelope("DoseAdministered", appointment_id="a1", administered_on="2027-03-22")
    assert handle_clinic_event(given, pipe.settings).applied == 1
    if corrected == "after the close was announced":
        pipe.follow_up_pass()
    pipe.clock.sleep(3600)
    assert handle_clinic_event(dose_event("a1", "p1", due_date=DUE), pipe.settings).applied == 1
    for _ in range(2):  # the pass announces the close, then looks at the family again
        pipe.clock.sleep(15 * 60)
        pipe.follow_up_pass()

    assert [s.appointment_id for s in followup.open_follow_ups(pipe.settings)] == ["a1"]
    events = [(e["detail-type"], e["detail"]["follow_up_id"]) for e in clinic_events()]
    assert events == [
        ("FollowUpNeeded", "followup-a1"),
        ("FollowUpClosed", "followup-a1"),
        ("FollowUpNeeded", "followup-a1-2"),
    ]


def test_a_dose_moved_back_to_the_date_a_reminder_reached_the_family_about_is_reached_again(pipe: Pipeline) -> None:
    """Reached about 20 March, moved to 20 April (to be reached again), then back to 20 March (an entry corrected):
    the delivered reminder planning hands over was compared with the date before the event, and dropped."""
    deliver_the_seven_day_reminder(pipe)
    pipe.clock.sleep(20)
    post_receipts(pipe)
    pipe.clock.advance_to(datetime(2027, 3, 14, 10, 0, tzinfo=UTC))
    handle_clinic_event(dose_event("a1", "p1", due_date=NEW_DUE), pipe.settings)
    assert not store.get_appointment_state("a1").reached
    pipe.clock.sleep(3600)
    handle_clinic_event(dose_event("a1", "p1", due_date=DUE), pipe.settings)

    assert store.get_appointment_state("a1").reached_type == "7_day_reminder"
