"""Replies on the receipt Function URL (GET /inbound, Kannel's sms-service get-url): opt-out and opt-in by keyword for
every patient with the phone, one confirmation SMS through the normal send path, one event for the clinic system,
unknown texts recorded and counted; the real handlers on moto with the Orange simulator over HTTP."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

import botocore.client
import botocore.exceptions
import pytest
from typer.testing import CliRunner

from core import notify, planning, replies, store
from core.lifecycle import Status
from core.planning import handle_clinic_event
from core.replies import InboundSms, apply_reply
from core.store import MessageRecord, iso, parse_iso
from core.wanted import CONFIRMATION
from rappel_cli import cli
from rappel_local.embedded import function_url_event, invoke
from tests.helpers import dose, patient
from tests.integration.pipeline_kit import PHONE, Pipeline, emf

pytestmark = pytest.mark.integration

SIBLING = "p2"
FR_OPTED_OUT = (
    "Vous ne recevrez plus de rappels de vaccination sur ce numéro. Pour les recevoir à nouveau, répondez OUI."
)
FR_OPTED_IN = "Les rappels de vaccination reprennent sur ce numéro. Pour les arreter, répondez STOP."


@pytest.fixture
def pipe(aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    pipeline = Pipeline(aws, monkeypatch)
    pipeline.start_orange()
    yield pipeline
    pipeline.close()


def reply(pipe: Pipeline, text: str, sender: str = PHONE, **params: str) -> dict[str, Any]:
    """An MO as Kannel's sms-service calls the get-url (`text=%a`: the words joined by `+`)."""
    query = {"token": pipe.receipt_token(), "from": sender, "to": "1234", "text": text, "coding": "0", **params}
    return pipe.receipt("GET", "/inbound", query, headers={"User-Agent": "Kannel/1.4.5"})


def raw_reply(pipe: Pipeline, query: str) -> dict[str, Any]:
    """An MO whose query string is given as sent (UCS-2 bytes percent-encoded)."""
    event = function_url_event("GET", "/inbound", f"token={pipe.receipt_token()}&{query}", "", {})
    result: dict[str, Any] = invoke("delivery_receipt", event)
    return result


def outcome(response: dict[str, Any]) -> str:
    assert response["statusCode"] == 200, response
    assert response["body"] == "", "a non-empty answer would be sent back to the family as an SMS"
    return str(response["headers"]["X-Rappel-Reply"])


def siblings(pipe: Pipeline) -> list[str]:
    """Two children on one phone, three reminders each; their ids."""
    first = pipe.plan(1)
    second = pipe.plan(2, phone=PHONE, display_name="Kofi")
    return sorted([*first.values(), *second.values()])


def confirmations() -> list[MessageRecord]:
    return [m for m in store.iterate_messages() if m.reminder_type == CONFIRMATION]


def statuses(ids: list[str]) -> set[str]:
    return {store.get_message(i).status for i in ids}  # type: ignore[union-attr]


@pytest.mark.parametrize("text", ["STOP", "ARRÊT", "stop.", "Stop please", "  arret !! "])
def test_a_stop_reply_stops_the_phone_for_both_children_with_one_confirmation_and_one_event(
    pipe: Pipeline, clinic_events: Callable[[], list[dict[str, Any]]], text: str
) -> None:
    reminders = siblings(pipe)
    assert statuses(reminders) == {"pending"}

    assert outcome(reply(pipe, text)) == "opted_out"

    assert statuses(reminders) == {"cancelled"}
    assert store.number_stopped(PHONE)
    assert not any(store.get_patient(p).sms_opt_in for p in ("p1", SIBLING))  # type: ignore[union-attr]
    (confirmation,) = confirmations()
    assert confirmation.status == "pending" and confirmation.patient_id == "p1"
    (event,) = clinic_events()
    assert event["source"] == "rappel" and event["detail-type"] == "PatientOptedOut"
    assert event["detail"]["patient_ids"] == ["p1", SIBLING]
    assert event["detail"]["phone"] == "+225******04" and PHONE not in json.dumps(event)
    assert event["detail"]["reminders_cancelled"] == 6 and event["detail"]["change_id"] == confirmation.message_id

    # The same reply again (or another keyword) changes nothing: no second confirmation, no second event.
    assert outcome(reply(pipe, "STOP")) == "unchanged"
    assert len(confirmations()) == 1 and len(clinic_events()) == 1

    # The confirmation goes through dispatch and send like a reminder, to the stopped number, once.
    pipe.cycle()
    pipe.cycle()
    (sms,) = pipe.accepted()
    assert sms.to == PHONE and sms.text == FR_OPTED_OUT
    assert store.get_message(confirmation.message_id).status == "sent"  # type: ignore[union-attr]


def test_stop_then_oui_revives_what_is_still_before_its_deadline_with_one_confirmation_each(
    pipe: Pipeline, clinic_events: Callable[[], list[dict[str, Any]]]
) -> None:
    by_type = pipe.plan(1)
    assert outcome(reply(pipe, "STOP")) == "opted_out"
    pipe.cycle()
    # Past the 7-day reminder's deadline (2027-03-15 09:00), before the 1-day and overdue ones.
    pipe.clock.advance_to(datetime(2027, 3, 16, 10, 0, tzinfo=UTC))

    assert outcome(reply(pipe, "Oui")) == "opted_in"

    assert not store.number_stopped(PHONE) and store.get_patient("p1").sms_opt_in  # type: ignore[union-attr]
    assert pipe.message(by_type["7_day_reminder"]).status == "cancelled"
    assert pipe.message(by_type["1_day_reminder"]).status == "pending"
    assert pipe.message(by_type["overdue_reminder"]).status == "pending"
    assert pipe.message(by_type["1_day_reminder"]).revived
    assert [e["detail-type"] for e in clinic_events()] == ["PatientOptedOut", "PatientOptedIn"]
    assert outcome(reply(pipe, "OUI")) == "unchanged"  # already opted in: no second confirmation

    pipe.cycle()
    texts = [sms.text for sms in pipe.accepted()]
    assert texts == [FR_OPTED_OUT, FR_OPTED_IN]
    assert sorted(m.appointment_id for m in confirmations()) == ["#opted_in", "#opted_out"]
    assert {m.status for m in confirmations()} == {"sent"}


def test_an_oui_that_lifts_a_patient_s_opt_out_without_a_stop_on_the_number_is_confirmed_once_with_its_event(
    pipe: Pipeline, clinic_events: Callable[[], list[dict[str, Any]]]
) -> None:
    """The patient's consent was off from an operator's opt-out, the number itself not stopped (its stop lifted
    since): the OUI still changes something the family must hear of, and the clinic too."""
    pipe.plan(1)
    assert store.set_opt_in("p1", False, iso(pipe.clock.now()), "operator-optout")
    assert not store.number_stopped(PHONE)

    assert outcome(reply(pipe, "OUI")) == "opted_in"

    assert store.get_patient("p1").sms_opt_in  # type: ignore[union-attr]
    assert [e["detail-type"] for e in clinic_events()] == ["PatientOptedIn"]
    (confirmation,) = confirmations()
    assert confirmation.appointment_id == "#opted_in"
    assert outcome(reply(pipe, "OUI")) == "unchanged"
    pipe.cycle()
    assert [sms.text for sms in pipe.accepted() if sms.text == FR_OPTED_IN] == [FR_OPTED_IN]


def test_an_opt_in_needs_the_keyword_alone_and_a_change(pipe: Pipeline) -> None:
    pipe.plan(1)
    assert outcome(reply(pipe, "OUI")) == "unchanged"  # not stopped: nothing to confirm
    assert outcome(reply(pipe, "STOP")) == "opted_out"
    assert outcome(reply(pipe, "Oui merci")) == "unknown_text"  # an opt-in keyword with more words is not one
    assert store.number_stopped(PHONE)
    assert len(confirmations()) == 1


def test_a_reply_while_a_reminder_for_the_phone_is_queued_keeps_it_from_going_out(pipe: Pipeline) -> None:
    by_type = pipe.plan(1)
    pipe.clock.advance_to(datetime(2027, 3, 13, 9, 0, tzinfo=UTC))
    assert pipe.dispatch()["enqueued"] == 1
    queued = pipe.receive()
    assert pipe.message(by_type["7_day_reminder"]).status == "queued"

    assert outcome(reply(pipe, "STOP")) == "opted_out"
    pipe.send(queued)  # the sender takes the record it had: the reminder is no longer wanted

    assert pipe.message(by_type["7_day_reminder"]).status == "cancelled"
    assert pipe.accepted() == []
    pipe.cycle()
    assert [sms.text for sms in pipe.accepted()] == [FR_OPTED_OUT]


def test_the_sender_rechecks_a_queued_reminder_against_a_stop_made_after_its_claim(pipe: Pipeline) -> None:
    by_type = pipe.plan(1)
    pipe.clock.advance_to(datetime(2027, 3, 13, 9, 0, tzinfo=UTC))
    pipe.dispatch()
    queued = pipe.receive()
    store.stop_number(PHONE, store.iso(pipe.clock.now()), "reply opt-out")  # the stop alone, as a crash could leave it
    pipe.send(queued)
    message = pipe.message(by_type["7_day_reminder"])
    assert message.status == "cancelled" and "stopped" in (message.last_error or "")
    assert pipe.accepted() == []


def test_an_opted_out_confirmation_that_is_no_longer_true_is_not_sent(pipe: Pipeline) -> None:
    pipe.plan(1)
    assert outcome(reply(pipe, "STOP")) == "opted_out"
    assert outcome(reply(pipe, "START")) == "opted_in"  # before the first confirmation went out
    pipe.cycle()
    pipe.cycle()
    assert [sms.text for sms in pipe.accepted()] == [FR_OPTED_IN]
    by_subject = {m.appointment_id: m for m in confirmations()}
    assert by_subject["#opted_out"].status == "cancelled"
    assert "no longer true" in (by_subject["#opted_out"].last_error or "")


def test_a_reply_finds_its_phones_patients_by_the_phone_index_not_a_scan(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A national register has millions of patients: a reply reads the patients with its number from the
    patients table's `by_phone` index, never the whole table; a third patient on another phone is not touched."""
    reminders = siblings(pipe)
    other = pipe.plan(3)
    calls: list[str] = []
    original = botocore.client.BaseClient._make_api_call

    def recording(client: Any, operation: str, params: dict[str, Any]) -> Any:
        calls.append(f"{operation} {params.get('TableName')} {params.get('IndexName')}")
        return original(client, operation, params)

    with monkeypatch.context() as patched:
        patched.setattr(botocore.client.BaseClient, "_make_api_call", recording)
        assert outcome(reply(pipe, "STOP")) == "opted_out"

    assert not [c for c in calls if c.startswith("Scan")], calls
    assert f"Query {pipe.settings.PATIENTS_TABLE} by_phone" in calls
    assert statuses(reminders) == {"cancelled"} and statuses(list(other.values())) == {"pending"}


def test_a_reply_while_the_by_phone_index_backfills_is_not_lost(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Right after the upgrade that adds the index, DynamoDB refuses to read it until it is built (moto cannot
    backfill, hence the stand-in error, as DynamoDB words it): the reply finds its patients by a scan meanwhile."""
    reminders = siblings(pipe)
    original = botocore.client.BaseClient._make_api_call

    def backfilling(client: Any, operation: str, params: dict[str, Any]) -> Any:
        if operation == "Query" and params.get("IndexName") == "by_phone":
            error = {"Code": "ValidationException", "Message": "Cannot read from backfilling global secondary index"}
            raise botocore.exceptions.ClientError({"Error": error}, operation)
        return original(client, operation, params)

    with monkeypatch.context() as patched:
        patched.setattr(botocore.client.BaseClient, "_make_api_call", backfilling)
        assert outcome(reply(pipe, "STOP")) == "opted_out"
        assert [p.patient_id for p in store.patients_with_phone(PHONE)] == ["p1", SIBLING]

    assert statuses(reminders) == {"cancelled"}


def test_unknown_texts_and_senders_are_recorded_and_counted_never_answered(
    pipe: Pipeline, clinic_events: Callable[[], list[dict[str, Any]]]
) -> None:
    reminders = siblings(pipe)
    assert outcome(reply(pipe, "Please stop")) == "unknown_text"  # the keyword is not the first word
    assert outcome(reply(pipe, "Merci, nous viendrons")) == "unknown_text"
    assert outcome(reply(pipe, "STOP", sender="+2250708091011")) == "unknown_sender"

    assert statuses(reminders) == {"pending"}
    assert not store.number_stopped(PHONE)
    assert confirmations() == [] and clinic_events() == []
    pipe.cycle()
    assert pipe.accepted() == []
    day = pipe.clock.now().strftime("%Y-%m-%d")
    items = store.replies_of_day(day)
    counts = {i.sk: int(i.value) for i in items if i.sk.startswith("COUNT#")}
    assert counts == {"COUNT#unknown_text": 2, "COUNT#unknown_sender": 1}
    recorded = [json.loads(i.text or "{}") for i in items if not i.sk.startswith("COUNT#")]
    assert sorted(r["text"] for r in recorded) == ["Merci, nous viendrons", "Please stop", "STOP"]
    assert {r["from"] for r in recorded} == {"+225******04", "+225******11"}
    assert all(PHONE not in (i.text or "") for i in items)
    assert all(i.expires_at is not None for i in items)


def test_a_refusal_in_words_is_listed_with_its_patients_for_an_operator_to_opt_out(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Please stop` is recorded for an operator, who can run `rappel optout`: the record named no patient and kept
    the number masked, and no command listed the records, so nobody could act and the family kept its reminders."""
    reminders = siblings(pipe)
    assert outcome(reply(pipe, "Please stop")) == "unknown_text"
    monkeypatch.setattr(cli, "_settings", lambda *_: pipe.settings)

    listed = CliRunner().invoke(cli.app, ["replies", "--local", "--json"])
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.output)
    assert (row["text"], row["patient_ids"], row["from"]) == ("Please stop", ["p1", "p2"], "+225******04")
    assert PHONE not in listed.output

    stopped = CliRunner().invoke(cli.app, ["optout", "--patient", row["patient_ids"][0], "--local", "--json"])
    assert stopped.exit_code == 0, stopped.output
    assert store.number_stopped(PHONE) and statuses(reminders) == {"cancelled"}
    assert CliRunner().invoke(cli.app, ["optout", "--patient", "nobody", "--local"]).exit_code == 2
    assert CliRunner().invoke(cli.app, ["optout", PHONE, "--patient", "p1", "--local"]).exit_code == 2
    assert CliRunner().invoke(cli.app, ["optout", "--patient", " ", "--local"]).exit_code == 2
    assert CliRunner().invoke(cli.app, ["replies", "--day", "07/03/2027", "--local"]).exit_code == 2
    # A day without its zeros is that day (it found nothing: the records' key has the zeros).
    unpadded = CliRunner().invoke(cli.app, ["replies", "--day", pipe.clock.now().strftime("%Y-%-m-%-d"), "--local"])
    assert unpadded.exit_code == 0 and "Please stop" in unpadded.output


def test_a_number_that_flips_stop_and_oui_all_day_gets_a_few_confirmations_and_every_change(pipe: Pipeline) -> None:
    """Each change had its confirmation SMS, billed, with no cap per number: a family, an auto-responder answering
    our SMS or a spoofed sender flipping STOP and OUI had us send one for each, all day."""
    reminders = siblings(pipe)
    for n in range(12):
        assert outcome(reply(pipe, "STOP" if n % 2 == 0 else "OUI")) == ("opted_out" if n % 2 == 0 else "opted_in")
        pipe.clock.sleep(120)
        pipe.cycle()
        assert store.number_stopped(PHONE) == (n % 2 == 0)

    assert len([m for m in confirmations() if m.status != "cancelled"]) == replies.CONFIRMATIONS_PER_DAY
    assert statuses(reminders) == {"pending"}  # the last word, OUI, stands
    pipe.clock.advance_to(datetime(2027, 3, 2, 0, 30, tzinfo=UTC))  # a new day (UTC)
    assert outcome(reply(pipe, "STOP")) == "opted_out"
    assert len([m for m in confirmations() if m.status != "cancelled"]) == replies.CONFIRMATIONS_PER_DAY + 1


def test_a_repeated_stop_past_the_days_cap_changes_nothing_that_day_or_the_next(
    pipe: Pipeline, clinic_events: Callable[[], list[dict[str, Any]]]
) -> None:
    """Past the cap, nothing recorded that the stop had been answered: each repeated STOP published the opt-out event
    again, and the next day's repeat confirmed it with an SMS. The unconfirmed stop's confirmation is kept cancelled."""
    siblings(pipe)
    for n in range(5):  # STOP OUI STOP confirmed; OUI STOP past the cap
        reply(pipe, "STOP" if n % 2 == 0 else "OUI")
        pipe.clock.sleep(120)
    assert store.number_stopped(PHONE)
    capped = [m for m in confirmations() if m.status == "cancelled"]
    assert len(capped) == 2 and all("confirmations for the day" in (m.last_error or "") for m in capped)
    events = len(clinic_events())

    assert outcome(reply(pipe, "STOP")) == "unchanged"
    pipe.clock.advance_to(datetime(2027, 3, 2, 9, 0, tzinfo=UTC))
    assert outcome(reply(pipe, "STOP")) == "unchanged"
    pipe.cycle()
    assert len(clinic_events()) == events
    assert len([m for m in confirmations() if m.status != "cancelled"]) == replies.CONFIRMATIONS_PER_DAY


def test_a_confirmation_taken_again_after_a_crash_keeps_its_place_under_the_cap(pipe: Pipeline) -> None:
    at = pipe.clock.now()
    given = [store.take_confirmation(PHONE, f"msg_{n}", at, 3) for n in (1, 2, 1, 3, 2, 4)]
    assert given == [True, True, True, True, True, False]
    assert store.take_confirmation("+2250708091011", "msg_4", at, 3)  # another number's own three


@pytest.mark.parametrize("sender", ["Orange", "444", "MTN-Promo", "Orange CI"])
def test_an_sms_from_a_sender_id_or_a_short_code_is_recorded_not_refused(
    pipe: Pipeline,
    sender: str,
    clinic_events: Callable[[], list[dict[str, Any]]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The operator's own SMS (a balance, a promotion) reach a catch-all sms-service too. They were refused with a
    400 and counted `ReceiptsRejected`, whose alarm says a token is stale or a family's STOP was lost: five of them an
    hour called someone for nothing. No family has such a sender, and a STOP from one stops nothing."""
    reminders = siblings(pipe)
    capsys.readouterr()
    assert outcome(reply(pipe, "Votre solde est de 500 F", sender=sender)) == "service_sender"
    assert outcome(reply(pipe, "STOP", sender=sender)) == "service_sender"

    metrics = emf(capsys.readouterr().out)
    assert metrics["RepliesUnknown"] == 2 and "ReceiptsRejected" not in metrics
    assert statuses(reminders) == {"pending"} and confirmations() == [] and clinic_events() == []
    recorded = [
        json.loads(i.text or "{}")
        for i in store.replies_of_day(pipe.clock.now().strftime("%Y-%m-%d"))
        if not i.sk.startswith("COUNT#")
    ]
    assert {(r["outcome"], r["from"]) for r in recorded} == {("service_sender", sender)}


STRANGER = "+2250708091011"


def test_a_stop_from_a_number_no_patient_has_yet_holds_for_the_patient_registered_with_it_later(
    pipe: Pipeline, clinic_events: Callable[[], list[dict[str, Any]]]
) -> None:
    """A family texts STOP before the clinic's register reaches Rappel (or from the phone it is about to give): the
    phone's stop is written all the same, unanswered (no patient, no language to answer in), and the child registered
    with that phone later gets no reminder until the family texts OUI."""
    assert outcome(reply(pipe, "STOP", sender=STRANGER)) == "unknown_sender"
    assert store.number_stopped(STRANGER)
    assert confirmations() == [] and clinic_events() == []

    assert pipe.plan(1, phone=STRANGER) == {}  # nothing planned for a stopped phone
    pipe.clock.advance_to(datetime(2027, 3, 13, 9, 0, tzinfo=UTC))  # the 7-day reminder's hour
    pipe.cycle()
    assert pipe.accepted() == []

    assert outcome(reply(pipe, "OUI", sender=STRANGER)) == "opted_in"
    assert not store.number_stopped(STRANGER)
    assert len(confirmations()) == 1  # the opt-in's: the stop was never confirmed
    pipe.cycle()
    sent = {m.reminder_type for m in store.messages_of_patient("p1") if m.status == Status.SENT.value}
    assert sent == {CONFIRMATION, "7_day_reminder"}


def test_an_opt_in_from_a_number_no_patient_has_lifts_its_stop(pipe: Pipeline) -> None:
    assert outcome(reply(pipe, "STOP", sender=STRANGER)) == "unknown_sender"
    assert outcome(reply(pipe, "OUI", sender=STRANGER)) == "unknown_sender"
    assert not store.number_stopped(STRANGER)
    recorded = [json.loads(i.text or "{}") for i in store.replies_of_day(pipe.clock.now().strftime("%Y-%m-%d"))]
    assert sorted(r.get("stop", "") for r in recorded if "text" in r) == ["lifted", "written"]


def test_a_2000_character_text_is_cut_to_one_sms_before_anything(pipe: Pipeline) -> None:
    pipe.plan(1)
    long_text = "Bonjour " + "x" * 1992
    assert outcome(reply(pipe, long_text)) == "unknown_text"
    (record,) = [json.loads(i.text or "{}") for i in store.replies_of_day("2027-03-01") if not i.sk.startswith("COUNT")]
    assert record["length"] == 2000 and len(record["text"]) == 160
    assert outcome(reply(pipe, "STOP " + "y" * 1995)) == "opted_out"  # the keyword is at its start


@pytest.mark.parametrize(
    "query",
    [
        "from=%2B2250701020304&to=1234&text=%00S%00T%00O%00P&coding=2",  # UCS-2, no charset: UTF-16BE
        "from=%2B2250701020304&to=1234&text=%00A%00R%00R%00%CA%00T&coding=2&charset=UTF-16BE",  # "ARRÊT"
        "from=2250701020304&to=1234&text=Arr%C3%AAt&coding=0&charset=UTF-8",  # an SMSC that drops the +
        # 8-bit data with no character set: Kannel's %C says "8-BIT" (gw/urltrans.c), which names no codec.
        "from=%2B2250701020304&to=1234&text=STOP&coding=1&charset=8-BIT",
        # An HTTP SMSC that gave no coding: Kannel's %c prints -1 (undefined), %C the character set.
        "from=%2B2250701020304&to=1234&text=Arr%C3%AAt&coding=-1&charset=UTF-8",
    ],
)
def test_ucs2_and_charsets_are_decoded(pipe: Pipeline, query: str) -> None:
    pipe.plan(1)
    assert outcome(raw_reply(pipe, query)) == "opted_out"
    assert store.number_stopped(PHONE)


@pytest.mark.parametrize(
    ("params", "status", "names"),
    [
        ({"from": "tel:not-a-phone"}, 400, "from:"),
        ({"from": "+22501"}, 400, "from:"),
        ({"from": ""}, 400, "from:"),
        ({"coding": "7"}, 400, "coding:"),
        ({"charset": "NO-SUCH-CHARSET"}, 400, "charset:"),
        ({"charset": "base64"}, 400, "charset:"),  # a codec, but no text encoding
        ({"charset": "undefined"}, 400, "charset:"),  # a text encoding that refuses every byte
        ({"token": "wrong"}, 403, "token"),
    ],
)
def test_bad_requests_are_refused_naming_the_field_and_change_nothing(
    pipe: Pipeline, params: dict[str, str], status: int, names: str
) -> None:
    reminders = siblings(pipe)
    response = reply(pipe, "STOP", **params)
    assert response["statusCode"] == status and names in response["body"]
    assert statuses(reminders) == {"pending"} and not store.number_stopped(PHONE)
    assert confirmations() == []


def test_no_token_is_refused(pipe: Pipeline) -> None:
    pipe.plan(1)
    query = urlencode({"from": PHONE, "text": "STOP"}, quote_via=quote)
    response = invoke("delivery_receipt", function_url_event("GET", "/inbound", query, "", {}))
    assert response["statusCode"] == 403 and not store.number_stopped(PHONE)


def test_the_confirmation_waits_for_the_end_of_quiet_hours(pipe: Pipeline) -> None:
    pipe.plan(1)
    pipe.clock.advance_to(datetime(2027, 3, 2, 21, 30, tzinfo=UTC))  # 21:30 in Abidjan
    assert outcome(reply(pipe, "STOP")) == "opted_out"
    pipe.cycle()
    assert pipe.accepted() == []
    (confirmation,) = confirmations()
    assert confirmation.status == Status.PENDING.value and confirmation.due_at == "2027-03-03T08:00:00.000Z"
    pipe.clock.advance_to(datetime(2027, 3, 3, 8, 0, tzinfo=UTC))
    pipe.cycle()
    assert [sms.text for sms in pipe.accepted()] == [FR_OPTED_OUT]


def test_no_id_or_recorded_field_derives_from_the_phone_alone(
    pipe: Pipeline, clinic_events: Callable[[], list[dict[str, Any]]]
) -> None:
    """Review item 6: with the masked phone (country code and last digits) and `at` from the event, an unsalted hash
    of the number is reversed by trying the ~1e8 numbers left. The event's change_id derives from the stop's time and
    the patient's id; a recorded reply carries neither a hash of the number nor a key derived from it."""
    pipe.plan(1)
    assert outcome(reply(pipe, "STOP")) == "opted_out"
    (event,) = clinic_events()
    stopped_at = store.stopped_since(PHONE) or ""
    assert event["detail"]["change_id"] != store.message_id_for("#opted_out", CONFIRMATION, stopped_at, PHONE)
    assert event["detail"]["change_id"] == store.message_id_for("#opted_out", CONFIRMATION, stopped_at, "p1")

    assert outcome(reply(pipe, "Merci")) == "unknown_text"
    (item,) = [i for i in store.replies_of_day("2027-03-01") if not i.sk.startswith("COUNT#")]
    record = json.loads(item.text or "{}")
    assert "recipient" not in record and store.recipient_key(PHONE) not in (item.text or "")
    at = item.sk.split("#", 1)[0]
    old_key = hashlib.sha256(f"{PHONE}\x1fMerci\x1f{at}".encode()).hexdigest()[:16]
    assert item.sk != f"{at}#{old_key}"


def test_an_opt_in_whose_event_was_refused_is_published_by_the_next_reply_from_the_phone(
    pipe: Pipeline, clinic_events: Callable[[], list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review item 5: EventBridge refuses PatientOptedIn after the opt-in was applied (a 500, which Kannel does not
    retry). The change stays recorded with its event pending; the next reply from that phone, whatever it says,
    publishes it (with the same change_id) and writes its confirmation, before it is itself applied."""
    pipe.plan(1)
    assert outcome(reply(pipe, "STOP")) == "opted_out"
    real = notify.publish

    def refused(detail_type: notify.DetailType, *args: Any) -> None:
        raise notify.EventNotPublished(f"{detail_type.value}: InternalFailure: try again")

    monkeypatch.setattr(notify, "publish", refused)
    with pytest.raises(notify.EventNotPublished):
        apply_reply(InboundSms(PHONE, "OUI", 3, "1234"), pipe.settings)
    monkeypatch.setattr(notify, "publish", real)
    assert not store.number_stopped(PHONE), "the opt-in itself stands"
    assert [e["detail-type"] for e in clinic_events()] == ["PatientOptedOut"]

    assert outcome(reply(pipe, "Merci")) == "unknown_text"
    events = clinic_events()
    assert [e["detail-type"] for e in events] == ["PatientOptedOut", "PatientOptedIn"]
    assert sorted(m.appointment_id for m in confirmations()) == ["#opted_in", "#opted_out"]
    (opted_in,) = [m for m in confirmations() if m.appointment_id == "#opted_in"]
    assert events[1]["detail"]["change_id"] == opted_in.message_id and events[1]["detail"]["keyword"] == "OUI"
    assert outcome(reply(pipe, "OUI")) == "unchanged"
    assert len(clinic_events()) == 2 and len(confirmations()) == 2


def test_a_crash_between_the_opt_in_and_its_event_loses_neither(
    pipe: Pipeline, clinic_events: Callable[[], list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review item 5: a crash right after the change (number unstopped, reminders revived) and before the event: a
    repeated OUI used to find nothing changed, and the event and the confirmation were lost for good."""
    by_type = pipe.plan(1)
    assert outcome(reply(pipe, "STOP")) == "opted_out"
    real = replies.change_consent

    def crash_after(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise RuntimeError("crash after the change, before its event")

    monkeypatch.setattr(replies, "change_consent", crash_after)
    with pytest.raises(RuntimeError):
        apply_reply(InboundSms(PHONE, "OUI", 3, "1234"), pipe.settings)
    monkeypatch.setattr(replies, "change_consent", real)
    assert not store.number_stopped(PHONE) and pipe.message(by_type["1_day_reminder"]).status == "pending"

    # The repeated OUI changes nothing itself; the change its first one recorded is carried out before it.
    assert outcome(reply(pipe, "OUI")) == "unchanged"
    events = clinic_events()
    assert [e["detail-type"] for e in events] == ["PatientOptedOut", "PatientOptedIn"]
    assert events[1]["detail"]["at"] == "2027-03-01T08:00:00.000Z", "when the family replied"
    assert sorted(m.appointment_id for m in confirmations()) == ["#opted_in", "#opted_out"]
    assert outcome(reply(pipe, "OUI")) == "unchanged"
    assert len(clinic_events()) == 2


def test_a_stop_cut_short_right_after_it_was_recorded_still_stops_the_sends(
    pipe: Pipeline, clinic_events: Callable[[], list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash (or a DynamoDB error) between recording the STOP's change and making it answers 500, which Kannel
    does not retry: the family must not get the next reminder while the change waits for their next reply."""
    by_type = pipe.plan(1)

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("crash after the change was recorded, before it was made")

    with monkeypatch.context() as patched, pytest.raises(RuntimeError):
        patched.setattr(replies, "change_consent", crash)
        apply_reply(InboundSms(PHONE, "STOP", 3, "1234"), pipe.settings)
    assert store.number_stopped(PHONE)

    pipe.clock.advance_to(parse_iso(pipe.message(by_type["7_day_reminder"]).scheduled_at))
    pipe.cycle()
    assert pipe.send_requests() == [] and pipe.message(by_type["7_day_reminder"]).status == "cancelled"

    assert outcome(reply(pipe, "bonjour")) == "unknown_text"  # the next reply finishes the change
    assert [e["detail-type"] for e in clinic_events()] == ["PatientOptedOut"]


def test_a_reply_change_overtaken_by_a_later_change_of_its_patients_is_dropped(
    pipe: Pipeline, clinic_events: Callable[[], list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A STOP whose run crashed right after its stop (the one write made before its change is recorded), then an
    operator's opt-in of the patient: the next reply does not re-apply the older STOP's change over the operator's
    later decision (no event, no confirmation); the number's stop stays, as after a STOP that ran to its end (a
    patient's opt-in does not lift the family's stop: a renewal, `sms_opt_in_renewed`, does)."""
    pipe.plan(1)
    real = replies.change_consent

    def crash_before(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("crash before the change")

    monkeypatch.setattr(replies, "change_consent", crash_before)
    with pytest.raises(RuntimeError):
        apply_reply(InboundSms(PHONE, "STOP", 4, "1234"), pipe.settings)
    monkeypatch.setattr(replies, "change_consent", real)
    pipe.clock.sleep(60)
    store.set_opt_in("p1", True, store.iso(pipe.clock.now()), "operator-optin")
    assert outcome(reply(pipe, "Merci")) == "unknown_text"
    assert store.number_stopped(PHONE) and clinic_events() == [] and confirmations() == []


class _Unreachable:
    """EventBridge down as boto3 reports it: the call itself fails (a 5xx after botocore's retries)."""

    def put_events(self, **_: Any) -> None:
        raise botocore.exceptions.ClientError(
            {"Error": {"Code": "InternalException", "Message": "service unavailable"}}, "PutEvents"
        )


@pytest.mark.parametrize("outage", ["entry_refused", "call_failed"])
def test_a_stop_after_a_refused_opt_in_event_is_applied_even_while_eventbridge_still_refuses(
    pipe: Pipeline,
    clinic_events: Callable[[], list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    outage: str,
) -> None:
    """An OUI's event refused leaves its change pending; a STOP that comes while EventBridge still refuses used to
    fail on publishing that old event first (a 500, never retried by Kannel): the STOP was lost, the number open.
    The same when the call itself fails (`call_failed`: a ClientError, which only the entry's refusal was caught as)."""
    reminders = list(pipe.plan(1).values())
    assert outcome(reply(pipe, "STOP")) == "opted_out"

    def refused(detail_type: notify.DetailType, *args: Any) -> None:
        raise notify.EventNotPublished(f"{detail_type.value}: InternalFailure: try again")

    with monkeypatch.context() as patched:
        if outage == "entry_refused":
            patched.setattr(notify, "publish", refused)
        else:
            patched.setattr(notify, "_events", lambda *_: _Unreachable())
        pipe.clock.advance_to(pipe.clock.now() + timedelta(minutes=1))
        with pytest.raises(notify.EventNotPublished):
            apply_reply(InboundSms(PHONE, "OUI", 3, "1234"), pipe.settings)
        assert not store.number_stopped(PHONE) and statuses(reminders) == {"pending"}
        pipe.clock.advance_to(pipe.clock.now() + timedelta(minutes=1))
        with pytest.raises(notify.EventNotPublished):  # its own event refused too: recorded, for the next reply
            apply_reply(InboundSms(PHONE, "STOP", 4, "1234"), pipe.settings)

    assert store.number_stopped(PHONE) and statuses(reminders) == {"cancelled"}
    assert outcome(reply(pipe, "Merci")) == "unknown_text"  # the next reply publishes the STOP's event
    assert [e["detail-type"] for e in clinic_events()] == ["PatientOptedOut", "PatientOptedOut"]


def test_a_stop_from_a_number_the_index_shows_a_moment_late_is_applied(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `by_phone` index is eventually consistent: a STOP right after the family's phone was registered or changed
    may find no patient at first. It looks again, as a receipt does, rather than drop the STOP."""
    reminders = list(pipe.plan(1).values())
    real = store.patients_with_phone
    calls: list[str] = []

    def index_behind(phone: str) -> list[Any]:
        calls.append(phone)
        return [] if len(calls) == 1 else real(phone)

    monkeypatch.setattr(store, "patients_with_phone", index_behind)

    assert outcome(reply(pipe, "STOP")) == "opted_out"
    assert store.number_stopped(PHONE) and statuses(reminders) == {"cancelled"}


def test_a_second_oui_while_eventbridge_still_refuses_the_first_keeps_its_change_to_publish(
    pipe: Pipeline, clinic_events: Callable[[], list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a keyword asking for the other change overtakes a pending one: a repeated OUI changes nothing of its own
    (the stop is already lifted), so it must not drop the first OUI's event and confirmation. It fails as the first
    did (a 500), and the change stays for the next reply."""
    pipe.plan(1)
    assert outcome(reply(pipe, "STOP")) == "opted_out"

    def refused(detail_type: notify.DetailType, *args: Any) -> None:
        raise notify.EventNotPublished(f"{detail_type.value}: InternalFailure: try again")

    with monkeypatch.context() as patched:
        patched.setattr(notify, "publish", refused)
        for minutes, text in ((1, "OUI"), (2, "OUI")):
            pipe.clock.advance_to(pipe.clock.now() + timedelta(minutes=minutes))
            with pytest.raises(notify.EventNotPublished):
                apply_reply(InboundSms(PHONE, text, 3, "1234"), pipe.settings)

    assert outcome(reply(pipe, "Merci")) == "unknown_text"
    assert [e["detail-type"] for e in clinic_events()] == ["PatientOptedOut", "PatientOptedIn"]
    assert sorted(m.appointment_id for m in confirmations()) == ["#opted_in", "#opted_out"]


@pytest.mark.parametrize("stopped_first", [False, True], ids=["number_not_stopped", "after_a_stop"])
@pytest.mark.parametrize("by", ["reply", "operator"])
def test_an_opt_in_never_opts_in_a_sibling_its_own_clinic_record_opted_out(
    pipe: Pipeline, by: str, stopped_first: bool
) -> None:
    """p2 shares p1's phone and its clinic recorded it opted out. The family's OUI (or `rappel optin`) opted every
    patient with the number in: p2 got reminders its clinic had refused. An opt-in lifts the number's stop and the
    opt-outs that stop made, as a renewal does, not a clinic's own."""
    p1 = list(pipe.plan(1).values())
    assert handle_clinic_event(patient("p2", phone=PHONE, sms_opt_in=False, display_name="Kofi"), pipe.settings).applied
    handle_clinic_event(dose("a2", "p2", due_date="2027-03-20"), pipe.settings)
    if stopped_first:
        assert outcome(reply(pipe, "STOP")) == "opted_out"
        pipe.clock.advance_to(pipe.clock.now() + timedelta(minutes=1))

    if by == "reply":
        answered = outcome(reply(pipe, "OUI"))
        assert answered == ("opted_in" if stopped_first else "unchanged")
    else:
        planning.set_consent(PHONE, True, pipe.settings)

    assert statuses(p1) == {"pending"} and store.get_patient("p1").sms_opt_in  # type: ignore[union-attr]
    assert not store.get_patient("p2").sms_opt_in  # type: ignore[union-attr]
    assert list(store.messages_of_patient("p2")) == []


def test_a_clinic_opt_out_landing_while_an_opt_in_is_applied_stands(pipe: Pipeline) -> None:
    """An opt-in stamps the patients it read as opted in. The stamp was unconditional: a clinic opt-out of p2 written
    between the reply's read of the patients and that stamp was overwritten, and p2's reminders came back."""
    pipe.plan(1)
    p2 = list(pipe.plan(2, phone=PHONE, display_name="Kofi").values())
    read = store.patients_with_phone(PHONE)  # the reply's read, at its start
    handle_clinic_event(patient("p2", phone=PHONE, sms_opt_in=False, display_name="Kofi"), pipe.settings)

    planning.change_consent(PHONE, True, pipe.settings, pipe.clock.now(), by="reply", patients=read)

    assert not store.get_patient("p2").sms_opt_in  # type: ignore[union-attr]
    assert statuses(p2) == {"cancelled"}


def test_an_oui_that_changes_nothing_leaves_an_earlier_stamped_clinic_update_its_due(pipe: Pipeline) -> None:
    """A family answers a reminder "Oui" (nothing to change: not stopped, opted in). The clinic had recorded a minute
    before that the family refuses SMS, and had a new phone for it; its event arrives after the reply."""
    reminders = list(pipe.plan(1).values())
    clinic_at = pipe.clock.now() + timedelta(minutes=1)
    pipe.clock.advance_to(clinic_at + timedelta(minutes=1))
    assert outcome(reply(pipe, "Oui")) == "unchanged"

    handle_clinic_event(patient("p1", phone="+2250701020399", sms_opt_in=False, at=clinic_at), pipe.settings)

    stored = store.get_patient("p1")
    assert stored is not None and (stored.sms_opt_in, stored.phone) == (False, "+2250701020399")
    assert statuses(reminders) == {"cancelled"}


def _a_stop_while_an_opt_in_lifts_the_stop(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch, opt_in: Callable[[], object]
) -> tuple[list[str], list[str]]:
    """A stopped number; `opt_in` runs, and the family's STOP is handled just before it lifts the stop it read.
    Returns (the reminders, what happened meanwhile: the STOP's outcome)."""
    reminders = list(pipe.plan(1).values())
    assert outcome(reply(pipe, "STOP")) == "opted_out"
    pipe.clock.advance_to(pipe.clock.now() + timedelta(minutes=5))
    real_clear = store.clear_number_stop
    answers: list[str] = []

    def stop_lands_meanwhile(phone: str, stop: store.NumberStop) -> bool:
        if not answers:
            answers.append("the opt-in lifting the stop")  # a STOP may carry out a pending OUI too: once
            answers.append(outcome(reply(pipe, "STOP")))
        return real_clear(phone, stop)

    with monkeypatch.context() as patched:
        patched.setattr(store, "clear_number_stop", stop_lands_meanwhile)
        opt_in()
    return reminders, answers[1:]


def test_a_stop_handled_while_an_oui_is_being_applied_stands(pipe: Pipeline, monkeypatch: pytest.MonkeyPatch) -> None:
    """OUI then STOP, handed over back to back and handled at once: the STOP lands while the OUI is lifting the
    stop it read (and carries out the OUI itself first). The family's last word stands: the number stays stopped."""
    reminders, meanwhile = _a_stop_while_an_opt_in_lifts_the_stop(pipe, monkeypatch, lambda: reply(pipe, "OUI"))

    assert meanwhile == ["opted_out"]
    assert store.number_stopped(PHONE)
    assert statuses(reminders) <= {"cancelled", "expired"}


def test_a_stop_on_a_number_still_stopped_stands_against_an_opt_in_being_made(
    pipe: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator's `rappel optin` reads the number's stop; the family's STOP lands before the opt-in lifts it,
    on a number still stopped (so it writes no stop of its own): the family's last word still stands."""
    _, meanwhile = _a_stop_while_an_opt_in_lifts_the_stop(
        pipe, monkeypatch, lambda: planning.set_consent(PHONE, True, pipe.settings)
    )

    assert meanwhile == ["unchanged"]  # a repeated STOP: no second confirmation
    assert store.number_stopped(PHONE)
