"""The real handlers end to end on moto, with the Orange simulator over HTTP: what the pipeline suites share.

`Pipeline` plays the parts AWS plays around the functions: EventBridge Scheduler (a schedule event for
dispatch_due), the SQS event source mapping (receive, build the Lambda event, delete what succeeded, make the
reported failures visible again) and the Function URL (an HTTP request turned into a payload-2.0 event).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import boto3
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from core import pacing, sending, store
from core.lifecycle import Status
from core.planning import handle_clinic_event
from core.secrets import secret_text
from core.settings import Settings
from core.store import MessageRecord
from rappel_local.embedded import function_url_event, invoke, reset_core_caches, schedule_event, sqs_event
from rappel_local.kannel_simulator import KannelSimulator
from rappel_local.orange_simulator import Fault, OrangeSimulator, SentRecord
from tests.helpers import dose, patient

CLIENT_ID, CLIENT_SECRET = "rappel-test", "s3cret-test"  # what the `aws` fixture stored in Secrets Manager
KANNEL_USER, KANNEL_PASSWORD = "kannel", "kannel-pass"
PHONE = "+2250701020304"


class Pipeline:
    """The stack in `aws`, one simulated Orange, and the AWS plumbing between the handlers."""

    def __init__(self, aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.aws = aws
        self.monkeypatch = monkeypatch
        self.orange: OrangeSimulator | None = None
        self.kannel: KannelSimulator | None = None
        self.sqs = boto3.client("sqs", region_name="us-east-1")
        # A fresh pacer: the module's default one remembers its next slot across tests and virtual clocks.
        sending.select_pacer(pacing.Pacer())

    # ------------------------------------------------------------------------------------------ set-up

    @property
    def settings(self) -> Settings:
        return self.aws.settings

    @property
    def clock(self) -> Any:
        return self.aws.clock

    def first_request(self, at: datetime) -> datetime:
        """When a send batch that begins at `at` makes its first request: one interval of the sender's pace later
        (`Pacer.begin_batch`)."""
        return at + pacing.interval(self.settings.sender_pace_per_second)

    def configure(self, **overrides: object) -> Settings:
        """Change settings for the handlers (environment) and for direct core calls (`settings`)."""
        for key, value in overrides.items():
            self.monkeypatch.setenv(key, str(value))
            self.aws.environment[key] = str(value)
        self.aws.with_settings()
        reset_core_caches()
        return self.settings

    def start_orange(self, *, faults: Iterable[Fault] = (), **kwargs: Any) -> OrangeSimulator:
        """(Re)start the simulated Orange with these faults and options, and point the stack at it."""
        self.stop()
        self.orange = OrangeSimulator(
            clock=self.clock, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, faults=faults, **kwargs
        ).start()
        self.configure(ORANGE_API_BASE_URL=self.orange.base_url)
        return self.orange

    def start_kannel(self, **kwargs: Any) -> KannelSimulator:
        """Start a simulated Kannel smsbox and put it after Orange in the failover order (`SMS_PROVIDERS`)."""
        self.kannel = KannelSimulator(clock=self.clock, username=KANNEL_USER, password=KANNEL_PASSWORD, **kwargs)
        self.kannel.start()
        # The DLR URL Kannel is given; these tests post the DLRs themselves (`receipt`), nothing listens there.
        self.configure(
            SMS_PROVIDERS="orange,kannel",
            KANNEL_SENDSMS_URL=self.kannel.sendsms_url,
            RECEIPT_BASE_URL="http://127.0.0.1:9/receipts",
        )
        return self.kannel

    def stop(self) -> None:
        if self.orange is not None:
            self.orange.stop()
            self.orange = None
        if self.kannel is not None:
            self.kannel.stop()
            self.kannel = None

    def close(self) -> None:
        self.stop()
        sending.select_pacer(None)

    # ------------------------------------------------------------------------------------------ planning

    def plan(self, n: int = 1, due_date: str = "2027-03-20", **patient_fields: Any) -> dict[str, str]:
        """Patient p<n> with appointment a<n> due `due_date`; returns the message ids by reminder type.

        Each patient has a phone of its own (PHONE for p1) unless `phone` is given: siblings sharing one phone get
        one SMS between them, which is not what most of these tests are about."""
        own = f"+22507010203{n % 100:02d}"
        patient_fields.setdefault("phone", PHONE if n == 1 else own if own != PHONE else "+2250701020400")
        assert handle_clinic_event(patient(f"p{n}", **patient_fields), self.settings).applied == 1
        handle_clinic_event(dose(f"a{n}", f"p{n}", due_date=due_date), self.settings)
        return {m.reminder_type: m.message_id for m in store.messages_of_patient(f"p{n}") if m.due_date == due_date}

    def message(self, message_id: str) -> MessageRecord:
        found = store.get_message(message_id)
        assert found is not None
        return found

    # ------------------------------------------------------------------------------------------ handlers

    def dispatch(self) -> dict[str, Any]:
        """One dispatch_due run, fired the way EventBridge Scheduler fires it."""
        rule = "arn:aws:scheduler:us-east-1:000000000000:schedule/default/test-dispatch-due"
        result: dict[str, Any] = invoke("dispatch_due", schedule_event(rule, self.clock.now().isoformat()))
        return result

    def follow_up_pass(self) -> dict[str, Any]:
        """One follow_up_pass run, fired the way EventBridge Scheduler fires it."""
        rule = "arn:aws:scheduler:us-east-1:000000000000:schedule/default/test-follow-up-pass"
        result: dict[str, Any] = invoke("follow_up_pass", schedule_event(rule, self.clock.now().isoformat()))
        return result

    def queue_arn(self, url: str) -> str:
        return str(self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])

    def receive(self, url: str | None = None, visibility: int = 600) -> list[dict[str, Any]]:
        """Everything visible on a queue (the send queue by default), hidden for `visibility` seconds."""
        url = url or self.settings.SEND_QUEUE_URL
        received: dict[str, dict[str, Any]] = {}
        while True:
            batch = self.sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=visibility,
                WaitTimeSeconds=0,
                AttributeNames=["ApproximateReceiveCount"],
            ).get("Messages", [])
            fresh = [m for m in batch if m["MessageId"] not in received]
            if not fresh:  # empty, or (visibility 0) the same messages coming round again
                return list(received.values())
            received.update((m["MessageId"], m) for m in fresh)

    def receive_dead_letters(self) -> list[dict[str, Any]]:
        return self.receive(self.settings.DEAD_LETTER_QUEUE_URL, visibility=0)

    def send(self, messages: list[dict[str, Any]], *, ack: bool = True) -> dict[str, Any]:
        """send_sms on these received messages, then what the event source mapping does with the answer.

        Records not reported as failed are deleted; failed ones are made visible again (visibility 0). When every
        record fails, Powertools raises (a function error, so Lambda backs off): reported as `functionError`, with
        every record failed, as Lambda would then retry the whole batch.
        """
        event = sqs_event(messages, self.queue_arn(self.settings.SEND_QUEUE_URL))
        try:
            response: dict[str, Any] = invoke("send_sms", event)
        except BatchProcessingError:
            response = {
                "batchItemFailures": [{"itemIdentifier": m["MessageId"]} for m in messages],
                "functionError": "BatchProcessingError",
            }
        if ack:
            failed = {item["itemIdentifier"] for item in response.get("batchItemFailures", [])}
            for m in messages:
                if m["MessageId"] in failed:
                    self.sqs.change_message_visibility(
                        QueueUrl=self.settings.SEND_QUEUE_URL, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0
                    )
                else:
                    self.sqs.delete_message(QueueUrl=self.settings.SEND_QUEUE_URL, ReceiptHandle=m["ReceiptHandle"])
        return response

    def cycle(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """A dispatch run, then one send_sms batch with whatever it enqueued."""
        dispatched = self.dispatch()
        received = self.receive()
        return dispatched, (self.send(received) if received else None)

    def receipt_token(self) -> str:
        return secret_text(self.settings.RECEIPT_TOKEN_SECRET, self.settings)

    def receipt(
        self, method: str, path: str, params: dict[str, str], body: str = "", headers: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """delivery_receipt through its Function URL event."""
        event = function_url_event(method, path, urlencode(params), body, headers or {})
        result: dict[str, Any] = invoke("delivery_receipt", event)
        return result

    # ------------------------------------------------------------------------------------------ observations

    def send_requests(self) -> list[Any]:
        """Every send request the simulated Orange received (accepted or not)."""
        assert self.orange is not None
        return [r for r in self.orange.received if r.endpoint == "send"]

    def accepted(self) -> list[SentRecord]:
        assert self.orange is not None
        return self.orange.accepted


def bodies(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [json.loads(m["Body"]) for m in messages]


def emf(stdout: str) -> dict[str, float]:
    """Metric name -> total value over every EMF blob printed (Powertools writes values as lists)."""
    totals: dict[str, float] = {}
    for line in stdout.splitlines():
        if not line.startswith('{"_aws"'):
            continue
        blob = json.loads(line)
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                value = blob[metric["Name"]]
                totals[metric["Name"]] = totals.get(metric["Name"], 0) + sum(
                    value if isinstance(value, list) else [value]
                )
    return totals


def crash_once_after_the_provider_accepted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The next sent write dies (the Lambda killed after the provider accepted and the idempotency record was
    saved: a failure no test can cause otherwise); returns the ids it was for, once it happened."""
    real_transition = store.transition
    crashes: list[str] = []

    def crash_once_on_sent(message: Any, change: Any, **kwargs: Any) -> bool:
        if change.target is Status.SENT and not crashes:
            crashes.append(message.message_id)
            raise RuntimeError("Lambda killed after the provider accepted")
        return real_transition(message, change, **kwargs)

    monkeypatch.setattr(store, "transition", crash_once_on_sent)
    return crashes
