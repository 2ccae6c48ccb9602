"""Reminders through Debian's real Kannel: the Kannel adapter (src/core/providers/kannel.py) in the real pipeline on
moto sends to a real smsbox, bearerbox routes to the fake SMSC, and Kannel's DLR callbacks reach the real receipt
handler over HTTP (the embedded stack's receipt Function URL, rappel_local.embedded.ReceiptEndpoint); a reply typed
on the fake SMSC reaches GET /inbound through smsbox's sms-service and opts the family out.

Kannel is installed by `make test` (scripts/install_kannel.sh); a machine without it fails here rather than skip.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from core import replies, store
from core.secrets import secret_text
from core.wanted import CONFIRMATION
from rappel_local.embedded import ReceiptEndpoint
from tests.e2e.kannel_boxes import KannelBoxes
from tests.integration.pipeline_kit import PHONE, Pipeline

pytestmark = pytest.mark.e2e

DUE = "2027-03-20"
SEVEN_DAY = datetime(2027, 3, 13, 9, 0, tzinfo=UTC)  # 7 days before DUE, 09:00 in Abidjan
SETTLE_SECONDS = 15.0


@pytest.fixture
def receipts() -> Iterator[ReceiptEndpoint]:
    endpoint = ReceiptEndpoint().start()
    yield endpoint
    endpoint.stop()


@pytest.fixture
def kannel(aws: Any, receipts: ReceiptEndpoint, tmp_path: Path) -> Iterator[KannelBoxes]:
    """A real Kannel whose sendsms-user is the stack's Kannel credentials and whose sms-service calls our /inbound."""
    token = secret_text(aws.settings.RECEIPT_TOKEN_SECRET, aws.settings)
    credentials = {"username": "kannel", "password": "kannel-pass"}  # what tests/conftest.py's `aws` stored
    with KannelBoxes(tmp_path, get_url=replies.get_url(receipts.base_url, token), **credentials) as boxes:
        yield boxes


@pytest.fixture
def pipe(
    aws: Any, monkeypatch: pytest.MonkeyPatch, kannel: KannelBoxes, receipts: ReceiptEndpoint
) -> Iterator[Pipeline]:
    pipeline = Pipeline(aws, monkeypatch)
    pipeline.configure(SMS_PROVIDER="kannel", KANNEL_SENDSMS_URL=kannel.sendsms_url, RECEIPT_BASE_URL=receipts.base_url)
    yield pipeline
    pipeline.close()


def eventually(receipts: ReceiptEndpoint, check: Callable[[], bool], what: str) -> None:
    """Wait (boundedly) until `check` holds; Kannel's callbacks run the receipt handler on the endpoint's threads, so
    the store is read under the endpoint's lock."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        with receipts.lock:
            if check():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {SETTLE_SECONDS} s")
        time.sleep(0.05)


def test_reminders_go_through_a_real_kannel_and_its_dlrs_settle_them(
    pipe: Pipeline, kannel: KannelBoxes, receipts: ReceiptEndpoint
) -> None:
    phones = {1: PHONE, 2: "+2250701020302"}
    reminders = {n: pipe.plan(n, DUE)["7_day_reminder"] for n in phones}
    pipe.clock.advance_to(SEVEN_DAY)

    with receipts.lock:  # DLRs start coming back during the batch: they wait for it to end
        dispatched, sent = pipe.cycle()
    assert dispatched["enqueued"] == 2 and sent is not None and sent["batchItemFailures"] == [], sent

    # The SMSC got one SMS per family, from our sender, to each phone.
    lines = kannel.smsc.wait_for_messages(2) if kannel.smsc else []
    assert sorted(line.split(" ")[1] for line in lines) == sorted(phones.values()), lines
    assert all(line.split(" ")[0] == pipe.settings.KANNEL_SENDER for line in lines), lines

    def all_delivered() -> bool:
        return all(pipe.message(mid).status == "delivered" for mid in reminders.values())

    eventually(receipts, all_delivered, "both reminders delivered by Kannel's DLRs")
    for message_id in reminders.values():
        message = pipe.message(message_id)
        assert (message.provider, message.provider_message_id) == ("kannel", message_id)
        assert message.receipt_status == "DeliveredToTerminal" and message.delivered_at is not None
        assert message.attempts == 1
    # Nothing else was sent: the other reminders wait for their day.
    assert {m.status for m in store.messages_of_patient("p1") if m.message_id != reminders[1]} == {"pending"}

    # p1's family answers STOP: the fake SMSC hands it to bearerbox, smsbox's sms-service calls our /inbound.
    assert kannel.smsc is not None
    kannel.smsc.send_mo(PHONE, "1234", "STOP")

    def stopped() -> bool:
        later = [
            m for m in store.messages_of_patient("p1") if m.reminder_type in ("1_day_reminder", "overdue_reminder")
        ]
        return bool(later) and all(m.status == "cancelled" for m in later)

    eventually(receipts, stopped, "p1's later reminders cancelled by the STOP")
    with receipts.lock:
        assert {m.status for m in store.messages_of_patient("p2") if m.message_id != reminders[2]} == {"pending"}
        [confirmation] = [m for m in store.messages_of_patient("p1") if m.reminder_type == CONFIRMATION]
        assert confirmation.status == "pending"

    # The confirmation goes out like any message, through Kannel, and its DLR settles it.
    with receipts.lock:
        dispatched, sent = pipe.cycle()
    assert dispatched["enqueued"] == 1 and sent is not None and sent["batchItemFailures"] == [], sent
    assert kannel.smsc.wait_for_messages(3)[2].split(" ")[1] == PHONE
    eventually(receipts, lambda: pipe.message(confirmation.message_id).status == "delivered", "confirmation delivered")


def test_a_reminder_held_by_kannel_past_its_validity_never_reaches_the_phone(
    pipe: Pipeline, kannel: KannelBoxes, receipts: ReceiptEndpoint
) -> None:
    """The operator's link is down: Kannel answers `3: Queued for later delivery` and holds both SMS. p1's is wanted
    until 20:00 in Abidjan (its quiet hours), 90 s after the request: `validity=1`. p2's, in New York, until 20:00
    there. When the link returns after a real minute, bearerbox drops p1's (a type-16 DLR: its reminder fails, and
    its family goes to the follow-up) and sends p2's."""
    reminder_1 = pipe.plan(1, DUE)["7_day_reminder"]
    reminder_2 = pipe.plan(2, DUE, timezone="America/New_York")["7_day_reminder"]
    kannel.disconnect_smsc()
    pipe.clock.advance_to(SEVEN_DAY.replace(hour=19, minute=58, second=30))

    with receipts.lock:
        dispatched, sent = pipe.cycle()
    requested = time.monotonic()
    assert dispatched["enqueued"] == 2 and sent is not None and sent["batchItemFailures"] == [], sent
    assert {pipe.message(m).status for m in (reminder_1, reminder_2)} == {"sent"}

    time.sleep(max(0.0, requested + 62 - time.monotonic()))  # bearerbox reads its own clock: a validity of 1 minute
    kannel.connect_smsc()

    def settled() -> bool:
        return pipe.message(reminder_1).status == "failed" and pipe.message(reminder_2).status == "delivered"

    eventually(receipts, settled, "p1's reminder failed by Kannel's expiry, p2's delivered")
    # The fake SMSC prints what it got up to a second after bearerbox's DLRs; p1's was dropped before them.
    assert kannel.smsc is not None
    assert [line.split(" ")[1] for line in kannel.smsc.wait_for_messages(1)] == ["+2250701020302"]
    assert pipe.message(reminder_1).receipt_status == "RejectedBySmsc"
