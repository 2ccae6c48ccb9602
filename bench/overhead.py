"""Figure 3: the engine's own cost per message (dispatch + send on moto in-process) against a floor.

Both sides run on a fresh in-process moto stack built from template.yaml, against the same Orange simulator
(no latency, no rate limit, so only our code and moto's are on the clock), for the same number of messages,
seeded before the clock starts. Time is virtual for the code under test (pacing sleeps cost nothing), and
measured with `time.perf_counter` (wall) and `time.process_time` (CPU of the whole process: our code, moto,
botocore and the simulator's HTTP thread, on both sides alike).

* ours: the real handlers, invoked in-process as Lambda would: one `dispatch_due` run (claims every message and
  enqueues them), then `send_sms` on batches of SMS_BATCH_SIZE received from the queue, each record deleted
  afterwards as the event source mapping does;
* floor: what any sender must do at the least, nothing else: enqueue the ids (SendMessageBatch), ReceiveMessage,
  GetItem the message (its item carries the number and the final text, so one read is enough), POST it to the
  provider, UpdateItem its status, DeleteMessage. No claim, no re-checks, no idempotency record, no counters,
  no logs, no metrics.

Rounds alternate ours / floor in the same process; the best round of each side is kept, and their ratio reported.
Both sides start warm, as a Lambda instance past its first invocation does: the floor makes its clients before
the clock starts, and botocore's service models are parsed once for the process, before the first round
(`shared_service_models`), so that ours does not parse them again for each pynamodb model's new session inside
its clock (a cold start's cost, not a message's).
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import boto3
import requests

from bench.burst import DUE_AT, ZONE, seed_burst
from core import clock, sending, store
from core.clock import VirtualClock
from core.settings import Settings, build_settings
from core.store import iso
from rappel_local.embedded import (
    invoke,
    quiet_logs,
    reset_core_caches,
    schedule_event,
    shared_service_models,
    sqs_event,
)
from rappel_local.orange_simulator import OrangeSimulator
from rappel_local.simulate import SIM_CREDENTIALS

SENDER = "tel:+2250000"


@dataclass(frozen=True)
class Timing:
    """One side's measurement."""

    messages: int
    sent: int
    wall_seconds: float
    cpu_seconds: float

    @property
    def wall_per_message_ms(self) -> float:
        return 1000 * self.wall_seconds / self.messages

    @property
    def cpu_per_message_ms(self) -> float:
        return 1000 * self.cpu_seconds / self.messages


@contextmanager
def fresh_stack(prefix: str) -> Iterator[tuple[Any, Settings, OrangeSimulator]]:
    """moto + the template's resources + the Orange simulator, a virtual clock at 09:00 Abidjan, settings bound."""
    from moto import mock_aws

    from rappel_local.stack import create_stack

    saved = dict(os.environ)
    virtual = VirtualClock(DUE_AT)
    previous = clock.install(virtual)
    try:
        with mock_aws():
            stack = create_stack(prefix=prefix, endpoint_url=None, orange_credentials=SIM_CREDENTIALS)
            simulator = OrangeSimulator(
                clock=virtual,
                client_id=SIM_CREDENTIALS["client_id"],
                client_secret=SIM_CREDENTIALS["client_secret"],
                rate_limit_per_second=None,
                latency_ms=0,
                receipt_delay_seconds=10**6,
            ).start()
            try:
                environment = {
                    **stack.environment(),
                    "ORANGE_API_BASE_URL": simulator.base_url,
                    "RECEIPT_BASE_URL": "http://127.0.0.1:9",
                    "PROVIDER_READ_TIMEOUT_SECONDS": "5",
                    "APP_TIMEZONE": ZONE,
                    # One dispatcher run claims everything; pacing sleeps are virtual anyway.
                    "SMS_RATE_LIMIT_PER_SECOND": "1000",
                }
                os.environ.update(environment)
                reset_core_caches()
                settings = build_settings(**environment)
                store.bind(settings)
                yield stack, settings, simulator
            finally:
                simulator.stop()
    finally:
        clock.install(previous)
        reset_core_caches()
        os.environ.clear()
        os.environ.update(saved)


def _receive(sqs: Any, queue_url: str, up_to: int) -> list[dict[str, Any]]:
    received: list[dict[str, Any]] = []
    while len(received) < up_to:
        chunk = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=min(10, up_to - len(received)), VisibilityTimeout=600
        ).get("Messages", [])
        if not chunk:
            break
        received += chunk
    return received


def measure_ours(n: int, seed: int) -> Timing:
    """The real dispatch_due and send_sms handlers on n seeded messages."""
    with fresh_stack("ours") as (stack, settings, simulator), quiet_logs():
        seed_burst(n, seed, settings)
        sqs = boto3.client("sqs", region_name=settings.AWS_REGION)
        sending.select_pacer(sending.Pacer())
        wall, cpu = time.perf_counter(), time.process_time()
        invoke("dispatch_due", schedule_event("dispatch", iso(clock.now())))
        while batch := _receive(sqs, settings.SEND_QUEUE_URL, settings.SMS_BATCH_SIZE):
            response = invoke("send_sms", sqs_event(batch, stack.send_queue_arn))
            failed = {f["itemIdentifier"] for f in (response or {}).get("batchItemFailures", [])}
            for message in batch:
                if message["MessageId"] not in failed:
                    sqs.delete_message(QueueUrl=settings.SEND_QUEUE_URL, ReceiptHandle=message["ReceiptHandle"])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        sending.select_pacer(None)
        return Timing(n, len(simulator.accepted), wall, cpu)


def measure_floor(n: int, seed: int) -> Timing:
    """The minimal sender's AWS calls and provider request, for n messages on a fresh stack."""
    with fresh_stack("floor") as (_stack, settings, simulator):
        ids = _seed_floor(n, seed, settings)
        ddb = boto3.client("dynamodb", region_name=settings.AWS_REGION)
        sqs = boto3.client("sqs", region_name=settings.AWS_REGION)
        http = requests.Session()
        basic = base64.b64encode(f"{SIM_CREDENTIALS['client_id']}:{SIM_CREDENTIALS['client_secret']}".encode())
        send_url = f"{simulator.base_url}/smsmessaging/v1/outbound/{quote(SENDER, safe='')}/requests"
        queue_url, table = settings.SEND_QUEUE_URL, settings.MESSAGES_TABLE
        wall, cpu = time.perf_counter(), time.process_time()
        token = http.post(
            f"{simulator.base_url}/oauth/v3/token",
            headers={
                "Authorization": f"Basic {basic.decode()}",
                "Accept": "application/json",
                "Content-Type": "application/x-www-form-urlencoded",
            },
            data="grant_type=client_credentials",
            timeout=5,
        ).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json", "Content-Type": "application/json"}
        for start in range(0, len(ids), 10):
            entries = [{"Id": str(i), "MessageBody": mid} for i, mid in enumerate(ids[start : start + 10])]
            sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        while batch := _receive(sqs, queue_url, 10):
            for message in batch:
                key = {"message_id": {"S": message["Body"]}}
                item = ddb.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]
                request = {
                    "address": f"tel:{item['phone']['S']}",
                    "senderAddress": SENDER,
                    "outboundSMSTextMessage": {"message": item["text"]["S"]},
                }
                body = {"outboundSMSMessageRequest": request}
                reply = http.post(send_url, json=body, headers=headers, timeout=5)
                reply.raise_for_status()
                resource = reply.json()["outboundSMSMessageRequest"]["resourceURL"]
                ddb.update_item(
                    TableName=table,
                    Key=key,
                    UpdateExpression="SET #s = :sent, sent_at = :at, provider_message_id = :pid",
                    ConditionExpression="#s = :pending",
                    ExpressionAttributeNames={"#s": "status"},
                    ExpressionAttributeValues={
                        ":sent": {"S": "sent"},
                        ":pending": {"S": "pending"},
                        ":at": {"S": iso(clock.now())},
                        ":pid": {"S": resource.rsplit("/", 1)[-1]},
                    },
                )
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return Timing(n, len(simulator.accepted), wall, cpu)


def _seed_floor(n: int, seed: int, settings: Settings) -> list[str]:
    """The same messages as the burst's, each item carrying its number and final text."""
    from core.sending import render_message

    ids = seed_burst(n, seed, settings)
    ddb = boto3.client("dynamodb", region_name=settings.AWS_REGION)
    for message_id in ids:
        message = store.get_message(message_id)
        assert message is not None
        patient, appointment = store.get_patient(message.patient_id), store.get_appointment(message.appointment_id)
        assert patient is not None and appointment is not None
        text = render_message(message, patient, appointment, settings).text
        ddb.put_item(
            TableName=settings.MESSAGES_TABLE,
            Item={
                "message_id": {"S": message_id},
                "status": {"S": "pending"},
                "phone": {"S": patient.phone},
                "text": {"S": text},
            },
        )
    return ids


def measure_overhead(n: int, seed: int, rounds: int = 2) -> dict[str, Any]:
    """Alternate ours / floor `rounds` times; keep each side's best round; their ratio."""
    ours: list[Timing] = []
    floor: list[Timing] = []
    with shared_service_models():
        import botocore.session

        botocore.session.get_session().create_client("dynamodb", region_name="us-east-1")  # parsed here, once
        for _ in range(rounds):
            ours.append(measure_ours(n, seed))
            floor.append(measure_floor(n, seed))
    best_ours = min(ours, key=lambda t: t.wall_seconds)
    best_floor = min(floor, key=lambda t: t.wall_seconds)
    cpu_ours = min(t.cpu_seconds for t in ours)
    cpu_floor = min(t.cpu_seconds for t in floor)

    def side(timings: list[Timing], best: Timing, cpu: float) -> dict[str, Any]:
        return {
            "sent": best.sent,
            "wall_ms_per_message": best.wall_per_message_ms,
            "cpu_ms_per_message": 1000 * cpu / n,
            "rounds_wall_ms_per_message": [t.wall_per_message_ms for t in timings],
            "rounds_cpu_ms_per_message": [t.cpu_per_message_ms for t in timings],
        }

    return {
        "messages": n,
        "rounds": rounds,
        "ours": side(ours, best_ours, cpu_ours),
        "floor": side(floor, best_floor, cpu_floor),
        "wall_ratio_ours_over_floor": best_ours.wall_seconds / best_floor.wall_seconds,
        "cpu_ratio_ours_over_floor": cpu_ours / cpu_floor,
    }
