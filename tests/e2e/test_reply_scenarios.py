"""Replies end to end through `rappel simulate`: scenario events `InboundSms` are handed to the receipt URL's /inbound
as Kannel's sms-service calls its get-url; docs/lifecycle.md's invariants are checked on every run's output."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.test_scenarios import assert_invariants, by_type, dose_event, patient_event, phone, run, scenario

pytestmark = pytest.mark.e2e

DUE = "2027-03-12"  # 7-day reminder 2027-03-05 09:00, 1-day 2027-03-11 09:00, overdue 2027-03-13 14:00 (Abidjan)
FR_OPTED_OUT = (
    "Vous ne recevrez plus de rappels de vaccination sur ce numéro. Pour les recevoir à nouveau, répondez OUI."
)
FR_OPTED_IN = "Les rappels de vaccination reprennent sur ce numéro. Pour les arreter, répondez STOP."


def inbound(at: str, sender: str, text: str) -> dict[str, Any]:
    return {"at": at, "type": "InboundSms", "detail": {"from": sender, "text": text}}


def siblings_on_one_phone() -> list[dict[str, Any]]:
    """Awa (p1) and Kofi (p2), one caregiver's phone, one dose each due the same day at the same clinic."""
    return [
        patient_event("2027-03-01T08:00:00Z", "p1", phone(1), name="Awa"),
        patient_event("2027-03-01T08:00:00Z", "p2", phone(1), name="Kofi"),
        dose_event("2027-03-01T08:00:00Z", "a1", "p1", DUE),
        dose_event("2027-03-01T08:00:00Z", "a2", "p2", DUE),
    ]


def confirmations(out: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in out["messages"] if m["reminder_type"] == "confirmation"]


def confirmation_sends(out: dict[str, Any]) -> list[dict[str, Any]]:
    ids = {m["message_id"] for m in confirmations(out)}
    return [s for s in out["sends"] if s["message_id"] in ids]


@pytest.mark.parametrize("text", ["STOP", "ARRÊT", "stop.", "Stop please"])
def test_a_stop_reply_on_a_shared_phone_cancels_both_childrens_reminders_with_one_confirmation(text: str) -> None:
    data = scenario(
        "2027-03-01T00:00:00Z",
        "2027-03-14T00:00:00Z",
        [*siblings_on_one_phone(), inbound("2027-03-02T10:00:00Z", phone(1), text)],
    )
    out = run(data)
    assert_invariants(out, data)

    assert out["stats"]["inbound"]["delivered"] == 1
    for appointment in ("a1", "a2"):
        reminders = by_type(out, appointment)
        assert {m["status"] for m in reminders.values()} == {"cancelled"}, reminders
    (sms,) = out["sends"]  # the confirmation, nothing else
    assert sms["to"] == phone(1) and sms["text"] == FR_OPTED_OUT and sms["message_ids"] == []
    assert sms["at"] < "2027-03-02T10:02:00"  # due at once: taken by the next dispatcher run
    (confirmation,) = confirmations(out)
    assert confirmation["status"] == "delivered" and sms["message_id"] == confirmation["message_id"]


def test_stop_then_oui_revives_what_is_before_its_deadline_with_one_confirmation_per_change() -> None:
    data = scenario(
        "2027-03-01T00:00:00Z",
        "2027-03-14T00:00:00Z",
        [
            *siblings_on_one_phone(),
            inbound("2027-03-02T10:00:00Z", phone(1), "STOP"),
            inbound("2027-03-02T11:00:00Z", phone(1), "STOP"),  # again: no second confirmation
            # After the 7-day reminders' deadline (2027-03-07 09:00), before the 1-day ones.
            inbound("2027-03-08T10:00:00Z", phone(1), "oui"),
        ],
    )
    out = run(data)
    assert_invariants(out, data)

    assert [s["text"] for s in confirmation_sends(out)] == [FR_OPTED_OUT, FR_OPTED_IN]
    for appointment in ("a1", "a2"):
        reminders = by_type(out, appointment)
        assert reminders["7_day_reminder"]["status"] == "cancelled"
        assert reminders["1_day_reminder"]["status"] == "delivered" and reminders["1_day_reminder"]["revived"]
        assert reminders["overdue_reminder"]["status"] == "delivered"
    one_day = [s for s in out["sends"] if by_type(out, "a1")["1_day_reminder"]["message_id"] in s["message_ids"]]
    assert len(one_day) == 1 and len(one_day[0]["message_ids"]) == 2  # the siblings' reminders in one SMS
    assert len(out["sends"]) == 4  # two confirmations, the 1-day SMS and the overdue SMS


def test_unknown_texts_and_senders_change_nothing_and_get_no_answer() -> None:
    data = scenario(
        "2027-03-01T00:00:00Z",
        "2027-03-06T00:00:00Z",
        [
            *siblings_on_one_phone(),
            inbound("2027-03-02T10:00:00Z", phone(1), "Please stop"),
            inbound("2027-03-02T10:05:00Z", phone(1), "Merci, à vendredi"),
            inbound("2027-03-02T10:10:00Z", phone(9), "STOP"),  # nobody has this number
        ],
    )
    out = run(data)
    assert_invariants(out, data)
    assert out["stats"]["inbound"]["delivered"] == 3 and confirmations(out) == []
    (sms,) = out["sends"]  # the siblings' 7-day reminder, as without the replies
    assert len(sms["message_ids"]) == 2 and sms["to"] == phone(1)


def _burst(n: int, extra: list[dict[str, Any]]) -> dict[str, Any]:
    """`n` families with one reminder each due 2027-03-05 09:00, more than the senders get through before the
    next dispatcher run at this rate (3/s claimed a minute, 2/s sent), so some wait queued on the send queue."""
    events: list[dict[str, Any]] = []
    for i in range(n):
        number = f"+225070102{i:04d}"
        events += [
            patient_event("2027-03-05T08:50:00Z", f"b{i}", number),
            dose_event("2027-03-05T08:50:00Z", f"c{i}", f"b{i}", DUE),
        ]
    return scenario(
        "2027-03-05T08:50:00Z",
        "2027-03-05T09:30:00Z",
        [*events, *extra],
        settings={
            "SMS_RATE_LIMIT_PER_SECOND": 3,
            "SMS_SENDER_MAX_CONCURRENCY": 2,
            "SMS_BATCH_SIZE": 10,
            "REMINDER_1_DAY_TIME": "20:30",
        },
        latency_ms=0,
    )


def test_a_reply_arriving_while_its_phones_reminder_is_queued_keeps_it_from_going_out() -> None:
    families = 180
    baseline = run(_burst(families, []))
    sent_at = {s["to"]: s["at"] for s in baseline["sends"]}
    assert len(sent_at) == families
    # A family whose reminder was claimed at 09:00 and went out after 09:01: queued at 09:00:30.
    late = sorted((at, to) for to, at in sent_at.items() if at > "2027-03-05T09:01:00")
    assert late, "every reminder went out in the first minute: nothing was queued at 09:00:30"
    _, number = late[-1]

    data = _burst(families, [inbound("2027-03-05T09:00:30Z", number, "STOP")])
    out = run(data)
    assert_invariants(out, data)

    patient_id = f"b{int(number[-4:])}"
    family = next(
        m for m in out["messages"] if m["patient_id"] == patient_id and m["reminder_type"] == "7_day_reminder"
    )
    assert family["status"] == "cancelled" and family["queued_at"] <= "2027-03-05T09:00:30"
    to_number = [s for s in out["sends"] if s["to"] == number]
    assert [s["text"] for s in to_number] == [FR_OPTED_OUT]  # the confirmation only
    assert len(out["sends"]) == families  # the other families' reminders, and the confirmation
