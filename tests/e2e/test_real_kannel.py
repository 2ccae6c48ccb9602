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
