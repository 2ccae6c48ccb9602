"""`rappel simulate`: the whole pipeline on moto, the Orange or Kannel simulator over HTTP, and a virtual clock.

The clock jumps from one thing that can happen to the next (a clinic event, a dispatcher tick with work
due, a receipt, a failed SQS record becoming visible again), so weeks pass in seconds while every step
runs the real handlers with the events Lambda would give them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import requests

from core import clock, replies, sending, store
from core.clock import VirtualClock
from core.events import make_envelope
from core.followup import follow_up_row, open_follow_ups, outcome_report
from core.outcomes import GROUPS
from core.pacing import Pacer
from core.planning import set_consent
from core.receipts import Route, route_url
from core.settings import Settings, build_settings
from core.store import iso
from core.texts import sms_encoding
from core.wanted import CONFIRMATION
from rappel_local.change_streams import HANDLER, ChangeStreams
from rappel_local.embedded import (
    ReceiptEndpoint,
    invoke,
    reset_core_caches,
    schedule_event,
    sqs_event,
)
from rappel_local.invariants import check_invariants
from rappel_local.kannel_simulator import KannelSimulator, deliver_mo
from rappel_local.moto_shortcuts import moto_shortcuts
from rappel_local.orange_simulator import OrangeSimulator
from rappel_local.provider_simulator import ProviderSimulator, SentRecord
from rappel_local.scenario import INBOUND_EVENT, OPERATOR_EVENTS, Scenario, ScenarioEvent, load_scenario
from rappel_local.stack import send_queue_visibility_timeout

SIM_CREDENTIALS = {"client_id": "rappel-simulated-client", "client_secret": "simulated-secret-not-real"}
SIM_KANNEL_CREDENTIALS = {"username": "rappel-simulated", "password": "simulated-password-not-real"}
# Our number, as the phone's operator gives it to Kannel in an MO (the `%P` of the get-url).
SIM_SERVICE_NUMBER = "1234"


@dataclass
class SimulationResult:
    """What `rappel simulate --json` prints."""

    messages: list[dict[str, Any]]
    sends: list[dict[str, Any]]
    stats: dict[str, Any]
    # The follow-ups still open at `until` (families to call), oldest first.
    follow_ups: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The output document."""
        return {"messages": self.messages, "sends": self.sends, "stats": self.stats, "follow_ups": self.follow_ups}


@dataclass
class _Requeue:
    visible_at: datetime
    receipt_handle: str


@dataclass
class _Sender:
    """One concurrent send_sms instance: its own pace, and when its current batch ends."""

    pacer: Pacer
    free_at: datetime


@dataclass
class Simulation:
    """One run of a scenario. `run()` returns the result; the hooks let tests inject crashes."""

    scenario: Scenario
    progress: Callable[[datetime, datetime, datetime], None] | None = None
    # Called once the stack is up and settings are in place, before time starts (benchmarks seed data here).
    setup: Callable[[Settings], None] | None = None
    # DynamoDB somewhere else than moto (DynamoDB Local's endpoint: bench/ddb_local.py); SQS and the rest stay on moto.
    dynamodb_endpoint: str | None = None
    handler_errors: list[str] = field(default_factory=list)
    # What plan_reminders answered, summed over the run, and each refusal or ignored event with its reason.
    # `after_until`: events stamped after the run's end, which never run.
    events: dict[str, Any] = field(
        default_factory=lambda: {"applied": 0, "ignored": 0, "rejected": 0, "after_until": 0, "errors": []}
    )

    # The scenario events plan_reminders refused or ignored (by identity): the invariant check judges by the others.
    not_applied: set[int] = field(default_factory=set)
    # What the inbound endpoint answered to the scenario's InboundSms events (a refusal: a non-2xx or no answer).
    inbound: dict[str, Any] = field(default_factory=lambda: {"delivered": 0, "refused": 0, "errors": []})
    _inbound_url: str = field(default="", init=False)
    _mo_session: requests.Session = field(default_factory=requests.Session, init=False, repr=False)
    # The send queue's visibility timeout, as the template sets it (read once: each read parses the template).
    _visibility: timedelta = field(default_factory=timedelta, init=False, repr=False)
    # tally_changes' stream mappings, and when they next invoke it (a batching window after work was done).
    _streams: ChangeStreams = field(default_factory=ChangeStreams, init=False, repr=False)
    _tally_at: datetime | None = field(default=None, init=False, repr=False)

    def _record_event(self, at: datetime, event_type: str, response: Any) -> None:
        if not isinstance(response, dict):
            return
        for name in ("applied", "ignored", "rejected"):
            self.events[name] += int(response.get(name, 0))
        self.events["errors"] += [{"at": iso(at), "type": event_type, "error": e} for e in response.get("errors", [])]

    def run(self) -> SimulationResult:
        """Run the scenario from start to until."""
        from moto import mock_aws

        from rappel_local.stack import create_stack

        with mock_aws(), _scoped_environment(), moto_shortcuts():
            if self.dynamodb_endpoint:  # every DynamoDB client made with no endpoint of its own goes there
                os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = self.dynamodb_endpoint
            stack = create_stack(
                prefix="sim",
                endpoint_url=None,
                orange_credentials=SIM_CREDENTIALS,
                kannel_credentials=SIM_KANNEL_CREDENTIALS,
            )
            virtual = VirtualClock(self.scenario.start)
            previous = clock.install(virtual)
            try:
                return self._run(stack, virtual)
            finally:
                clock.install(previous)
                reset_core_caches()

    def _run(self, stack: Any, virtual: VirtualClock) -> SimulationResult:
        from core import retry

        retry.seed(self.scenario.seed)
        overrides = {
            key: str(value).lower() if isinstance(value, bool) else str(value)
            for key, value in self.scenario.settings.items()
        }
        probe = build_settings(**{**stack.environment(), **overrides})
        simulators = self._simulators(virtual, probe.SMS_RATE_LIMIT_PER_SECOND)
        receipts = ReceiptEndpoint().start()
        try:
            environment = {
                **stack.environment(),
                **_provider_environment(simulators),
                "RECEIPT_BASE_URL": receipts.base_url,
                "PROVIDER_READ_TIMEOUT_SECONDS": "5",
                **overrides,
            }
            os.environ.update(environment)
            reset_core_caches()
            settings = build_settings(**environment)
            store.bind(settings)
            if self.setup is not None:
                self.setup(settings)
            self._loop(settings, stack, virtual, simulators, receipts)
            self._tally()  # what the last windows gathered: the outcome figures are read from the counters
            return self._result(settings, simulators)
        finally:
            for simulator in simulators.values():
                simulator.stop()
            receipts.stop()
            self._mo_session.close()

    def _simulators(self, virtual: VirtualClock, rate_limit: float) -> dict[str, ProviderSimulator]:
        """The scenario's gateways by name, in failover order (`provider`, then `fallback_provider`), started."""
        blocks = [("provider", self.scenario.provider)]
        if self.scenario.fallback_provider is not None:
            blocks.append(("fallback_provider", self.scenario.fallback_provider))
        simulators: dict[str, ProviderSimulator] = {}
        try:
            for where, block in blocks:
                simulator = _simulator(block, where, virtual, rate_limit)
                simulators[simulator.name] = simulator.start()
        except BaseException:
            for started in simulators.values():
                started.stop()
            raise
        return simulators

    def _loop(
        self,
        settings: Settings,
        stack: Any,
        virtual: VirtualClock,
        simulators: dict[str, ProviderSimulator],
        receipts: ReceiptEndpoint,
    ) -> None:
        sqs = boto3.client("sqs", region_name=settings.AWS_REGION)
        self._visibility = timedelta(seconds=send_queue_visibility_timeout())
        token = stack.receipt_token
        receipt_url = route_url(receipts.base_url, Route.ORANGE, token)
        self._inbound_url = replies.get_url(receipts.base_url, token)
        interval = timedelta(minutes=settings.SMS_PROCESSING_INTERVAL_MINUTES)
        passes = _Schedule(timedelta(minutes=settings.FOLLOW_UP_PASS_MINUTES), self.scenario.start)
        events = sorted(self.scenario.events, key=lambda e: e.at)
        requeue: list[_Requeue] = []
        senders = [_Sender(Pacer(), self.scenario.start) for _ in range(settings.SMS_SENDER_MAX_CONCURRENCY)]
        start, until = self.scenario.start, self.scenario.until
        self.events["after_until"] = sum(1 for e in events if e.at > until)
        not_before = start  # no dispatcher run before this (one interval after the last)
        tick: datetime | None = None  # the next dispatcher run that can find work, once the index is read
        index = 0
        earliest_due: datetime | None = None
        stale = True  # whether the indexes may have changed since `earliest_due` and `passes.work_at` were read
        planned = False  # whether `tick` and the pass's run were planned from a read of the indexes

        def soonest_tick(at: datetime) -> datetime:  # the first dispatcher run that can fall from `at`
            return max(not_before, _ceil(at, interval, start))

        while True:
            now = virtual.now()
            applied = self._apply_events_due(events, index, now, settings)
            stale, index = stale or applied > index, applied
            # A receipt may end a reminder without reaching its family: the follow-up pass then has work.
            stale = _post_receipts(simulators, now, receipt_url) > 0 or stale
            for item in [r for r in requeue if r.visible_at <= now]:
                sqs.change_message_visibility(
                    QueueUrl=settings.SEND_QUEUE_URL, ReceiptHandle=item.receipt_handle, VisibilityTimeout=0
                )
                requeue.remove(item)
            dispatching = tick is not None and now >= tick
            if dispatching:
                self._call("dispatch_due", schedule_event("dispatch", iso(now)))
            stale = self._follow_up_pass(passes, now) or stale
            # The dispatcher's schedule does not wait for the senders: a drain that reaches the next tick stops
            # there, so that the tick runs (late by at most one round of batches) and the drain goes on after it.
            next_tick = tick + interval if dispatching and tick is not None else tick
            stopped = False
            # The senders' event source polls all the time: records put back or redriven are taken at once. While
            # the runs are not planned (the indexes not read since they changed), the drain stops where the first
            # tick or pass could fall, for the next round to read them.
            stop_at = next_tick if planned else min(soonest_tick(now), passes.earliest(now))
            if dispatching or _send_queue_has_records(settings):
                stopped = self._drain(settings, sqs, virtual, senders, requeue, stack, stop_at=stop_at)
                stale = True
            if dispatching:
                not_before = max(_ceil(virtual.now(), interval, start), now + interval)
            if self.progress:
                self.progress(start, virtual.now(), until)
            others = _soonest(
                [until, *(s.next_receipt_at() for s in simulators.values()), *(r.visible_at for r in requeue)]
                + [e.at for e in events[index : index + 1]]
            )
            scheduled = soonest_tick(virtual.now())
            # The indexes are read only when a tick or a pass could come before anything else wakes the clock: most
            # wakes (a receipt, an event) come sooner, and reading moto's tables at each of them took 8% of a run.
            if stale and max(others, virtual.now()) >= min(scheduled, passes.earliest(now)):
                earliest_due, passes.work_at = self._earliest_work(settings)
                stale = False
            planned = not stale
            useful = _next_useful_tick(earliest_due if planned else None, scheduled, interval, start)
            tick = next_tick if stopped and next_tick is not None else useful
            # The pass is planned from this round's start: a run the drain went past is still due, and runs now.
            wake = max(_soonest([others, tick, passes.plan(now, known=planned)]), virtual.now())
            if wake >= until:
                virtual.advance_to(until)
                _post_receipts(simulators, until, receipt_url)
                break
            virtual.advance_to(wake)

    def _follow_up_pass(self, passes: _Schedule, now: datetime) -> bool:
        """Run the follow-up pass if its scheduled run has come; whether it ran (it writes states)."""
        if not passes.fires(now):
            return False
        self._call("follow_up_pass", schedule_event("follow-up", iso(now)))
        return True

    def _earliest_work(self, settings: Settings) -> tuple[datetime | None, datetime | None]:
        """When the dispatcher next has work (a due message), and when the follow-up pass does (its next state)."""
        if self.dynamodb_endpoint:
            return store.earliest_due(settings.DUE_INDEX_SHARDS), store.earliest_follow_up(settings.DUE_INDEX_SHARDS)
        return _earliest_due(settings), _earliest_follow_up(settings)

    def _apply_events_due(self, events: list[ScenarioEvent], index: int, now: datetime, settings: Settings) -> int:
        """Apply the events from `index` whose time has come, as the clinic system (or an operator) would; returns
        the index of the first event still to come."""
        while index < len(events) and events[index].at <= now:
            event = events[index]
            if event.type in OPERATOR_EVENTS:
                set_consent(str(event.detail.get("phone", "")), event.type == "OptInByPhone", settings)
            elif event.type == INBOUND_EVENT:
                self._deliver_inbound(event)
            else:
                stamp = event.time or event.at
                envelope = make_envelope(event.type, event.detail, event_id=event.id or f"sim-{index}", at=stamp)
                response = self._call("plan_reminders", envelope)
                self._record_event(event.at, event.type, response)
                if not (isinstance(response, dict) and response.get("applied")):
                    self.not_applied.add(id(event))
            index += 1
        return index

    def _deliver_inbound(self, event: ScenarioEvent) -> None:
        """A family's SMS, handed to the inbound endpoint as Kannel's sms-service calls its get-url (with
        `mo-recode = true`: a UCS-2 text arrives as UTF-8). Kannel does not retry a failed call: it is counted."""
        text = str(event.detail["text"])
        try:
            response = deliver_mo(
                self._mo_session,
                self._inbound_url,
                sender=str(event.detail["from"]),
                receiver=SIM_SERVICE_NUMBER,
                text=text,
                at=event.at,
                ucs2=sms_encoding(text) != "GSM-7",
            )
            status: int | None = response.status_code
        except requests.RequestException:
            status = None
        if status is not None and 200 <= status <= 299:
            self.inbound["delivered"] += 1
        else:
            self.inbound["refused"] += 1
            self.inbound["errors"].append({"at": iso(event.at), "status": status})

    def _drain(
        self,
        settings: Settings,
        sqs: Any,
        virtual: VirtualClock,
        senders: list[_Sender],
        requeue: list[_Requeue],
        stack: Any,
        stop_at: datetime | None = None,
    ) -> bool:
        """Run the sender instances in virtual time until the queue is empty, or until `stop_at` (the next dispatcher
        tick, or the first instant a tick or a pass could fall while they are not planned) has come; True when it
        stopped there, with the clock at `stop_at`.

        Each instance takes its next batch when its last one ends, as the event source's pollers do (instances
        free at the same instant share what the queue holds, ten records at a time in turn), and one that finds
        the queue empty waits for the next drain. Batches run whole, one after another in the order of their
        start instants, each from its own instant (the clock goes back for the next one), so a tick that falls
        while one instance is busy runs on time, and the other instances take what it enqueues."""
        start = virtual.now()
        for sender in senders:
            sender.free_at = max(sender.free_at, start)
        waiting = list(senders)
        taken: dict[int, list[dict[str, Any]]] = {}  # batches received by senders polling together, not yet run
        while waiting:
            sender = min(waiting, key=lambda s: s.free_at)
            if stop_at is not None and sender.free_at >= stop_at:
                # Senders polling together all start at once, before any later instant: none holds records here.
                assert not taken, "records received but not run would stay invisible"
                virtual.set(max(stop_at, start))
                return True
            t0 = sender.free_at
            virtual.set(t0)
            if id(sender) not in taken:
                polling = [s for s in waiting if s.free_at <= t0 and id(s) not in taken]
                taken.update(zip(map(id, polling), _receive_together(sqs, settings, len(polling)), strict=True))
            batch = taken.pop(id(sender))
            if not batch:
                waiting.remove(sender)
                continue
            sending.select_pacer(sender.pacer)
            failed = self._send_batch(batch, stack.send_queue_arn)
            sending.select_pacer(None)
            done = [m for m in batch if m["MessageId"] not in failed]
            requeue += [_Requeue(t0 + self._visibility, m["ReceiptHandle"]) for m in batch if m["MessageId"] in failed]
            for first in range(0, len(done), 10):  # as the event source mapping deletes them: in tens
                entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done[first:][:10])]
                deleted = sqs.delete_message_batch(QueueUrl=settings.SEND_QUEUE_URL, Entries=entries)
                if deleted.get("Failed"):  # as delete_message raised: a record left invisible would come back later
                    raise RuntimeError(f"send queue records not deleted: {deleted['Failed']}")
            sender.free_at = virtual.now()
        virtual.set(max([start, *(s.free_at for s in senders)]))
        return False

    def _send_batch(self, batch: list[dict[str, Any]], queue_arn: str) -> set[str]:
        try:
            response = self._call("send_sms", sqs_event(batch, queue_arn), raise_errors=True)
        except Exception:
            return {m["MessageId"] for m in batch}
        return {f["itemIdentifier"] for f in (response or {}).get("batchItemFailures", [])}

    def _call(self, function: str, event: dict[str, Any], raise_errors: bool = False) -> Any:
        now = clock.now()
        if self._tally_at is not None and now >= self._tally_at:
            self._tally()
        if self._tally_at is None and function != HANDLER:
            self._tally_at = now + self._streams.window  # this invocation's changes open a batching window
        try:
            return invoke(function, event)
        except Exception as exc:  # a Lambda invocation that failed: EventBridge/SQS retry, we record it
            self.handler_errors.append(f"{function}: {type(exc).__name__}: {exc}")
            if raise_errors:
                raise
            return None

    def _tally(self) -> None:
        """tally_changes on what the tables' streams gathered, as the event source mappings would invoke it (a batch
        that fails is retried at the next window)."""
        self._tally_at = None
        self._streams.drain(lambda function, event: self._call(function, event, raise_errors=True))

    def _result(self, settings: Settings, simulators: dict[str, ProviderSimulator]) -> SimulationResult:
        patients = {patient.patient_id: patient for patient in store.iterate_patients()}
        messages = sorted(
            (_message_json(m, patients) for m in store.iterate_messages()),
            key=lambda m: (m["scheduled_at"], m["message_id"]),
        )
        # One SMS may carry several reminders: every message recorded with its provider id (or, for an ambiguous
        # send, its phone and text) is one of them.
        by_provider_id: dict[str, list[str]] = {}
        by_text: dict[tuple[str, str], list[str]] = {}
        for m in messages:
            if m["provider_message_id"]:
                by_provider_id.setdefault(m["provider_message_id"], []).append(m["message_id"])
            if m["text"]:
                by_text.setdefault((m["phone"], m["text"]), []).append(m["message_id"])
        confirmations = {m["message_id"] for m in messages if m["reminder_type"] == CONFIRMATION}
        carried = _carried_by_sms(settings)
        sends = []
        for name, record in _accepted(simulators):
            reference = _reference(record)
            sms_id, ours = carried.get(reference) or (None, [])
            ours = ours or by_provider_id.get(reference) or by_text.get((record.to, record.text)) or []
            sends.append(
                {
                    "at": iso(record.at),
                    "to": record.to,
                    "text": record.text,
                    "message_id": sms_id or (ours[0] if ours else None),
                    # The reminders it carried: none for a reply's confirmation (its `message_id` is its own).
                    "message_ids": [i for i in ours if i not in confirmations],
                    "provider": name,
                    "provider_message_id": record.message_id,
                }
            )
        for message in messages:
            message.pop("phone")
        stats = _stats(messages, sends)
        counted = _tallied(self.scenario.start, self.scenario.until)
        refused = sum(len(simulator.failed_receipts) for simulator in simulators.values())
        stats["invariants"] = check_invariants(
            self.scenario, settings, messages, sends, self.not_applied, counted, receipts_refused=refused
        )
        stats["handler_errors"] = len(self.handler_errors)
        stats["receipts_refused"] = refused
        stats["events"] = self.events
        stats["inbound"] = self.inbound
        stats["outcomes"] = {group: outcome_report(settings)[group] for group in GROUPS}
        follow_ups = [
            {key: row[key] for key in ("patient_id", "appointment_id", "clinic", "reasons", "at")}
            for row in map(follow_up_row, open_follow_ups(settings))
        ]
        return SimulationResult(messages, sends, stats, follow_ups)


def _tallied(start: datetime, until: datetime) -> dict[str, float]:
    """The statistics counters' totals by name (`sent`, `delivered`, ...) over the days of the run."""
    totals: dict[str, float] = {}
    for offset in range((until.date() - start.date()).days + 1):
        for key, value in store.read_counters((start.date() + timedelta(days=offset)).isoformat()).items():
            name = key.split("#", 2)[2]
            totals[name] = totals.get(name, 0) + value
    return totals


def _simulator(block: Any, where: str, virtual: VirtualClock, rate_limit: float) -> ProviderSimulator:
    """The simulator a provider block names; a block naming neither gateway is refused by the Orange one."""
    if isinstance(block, dict) and block.get("name") == KannelSimulator.name:
        return KannelSimulator.from_scenario(block, virtual, **SIM_KANNEL_CREDENTIALS, where=where)
    return OrangeSimulator.from_scenario(
        block,
        clock=virtual,
        client_id=SIM_CREDENTIALS["client_id"],
        client_secret=SIM_CREDENTIALS["client_secret"],
        rate_limit_per_second=rate_limit,
        where=where,
    )


def _provider_environment(simulators: dict[str, ProviderSimulator]) -> dict[str, str]:
    """SMS_PROVIDER (the first gateway), SMS_PROVIDERS when there is a fallback, and each simulator's endpoint."""
    names = list(simulators)
    environment = {"SMS_PROVIDER": names[0]}
    if len(names) > 1:
        environment["SMS_PROVIDERS"] = ",".join(names)
    for simulator in simulators.values():
        if isinstance(simulator, KannelSimulator):
            environment["KANNEL_SENDSMS_URL"] = simulator.sendsms_url
        else:
            environment["ORANGE_API_BASE_URL"] = simulator.base_url
    return environment


def _post_receipts(simulators: dict[str, ProviderSimulator], now: datetime, orange_url: str) -> int:
    """Each gateway's receipts due now: Orange POSTs them to its receipt URL, Kannel GETs each message's dlr-url;
    how many were taken."""
    return sum(simulator.post_due_receipts(now, orange_url) for simulator in simulators.values())


def _accepted(simulators: dict[str, ProviderSimulator]) -> list[tuple[str, SentRecord]]:
    """Every accepted send of every gateway, with the gateway's name, in time order."""
    records = [(name, record) for name, simulator in simulators.items() for record in simulator.accepted]
    return sorted(records, key=lambda item: item[1].at)


def _carried_by_sms(settings: Settings) -> dict[str, tuple[str | None, list[str]]]:
    """The SMS's own id and the reminders each SMS the provider accepted carried, by the provider's id, as the sender
    stored them with the call (its Powertools idempotency record): what the SMS carried, whatever the messages
    recorded since (a reminder whose "sent" write was refused, because another SMS had carried it, would not name
    this one). An ambiguous send stored no provider id: it is found from the messages as before."""
    client = boto3.client("dynamodb", region_name=settings.AWS_REGION, endpoint_url=settings.AWS_ENDPOINT_URL or None)
    carried: dict[str, tuple[str | None, list[str]]] = {}
    for page in client.get_paginator("scan").paginate(TableName=settings.IDEMPOTENCY_TABLE):
        for item in page["Items"]:
            if item.get("status", {}).get("S") != "COMPLETED" or "data" not in item:
                continue
            result = json.loads(item["data"]["S"])
            if isinstance(result, dict) and result.get("provider_message_id") and result.get("message_ids"):
                sms_id = str(result["sms_id"]) if result.get("sms_id") else None
                carried[str(result["provider_message_id"])] = (sms_id, [str(i) for i in result["message_ids"]])
    return carried


def _reference(record: SentRecord) -> str:
    """The id a send is known by in our messages: Orange's id, or for Kannel (which has none) the `message_id` our
    adapter put in the dlr-url."""
    if record.dlr_url:
        ours = parse_qs(urlsplit(record.dlr_url).query).get("message_id")
        if ours:
            return ours[0]
    return record.message_id


def _message_json(message: store.MessageRecord, patients: dict[str, store.PatientRecord]) -> dict[str, Any]:
    patient = patients.get(message.patient_id)
    return {
        "message_id": message.message_id,
        "patient_id": message.patient_id,
        "appointment_id": message.appointment_id,
        "reminder_type": message.reminder_type,
        "due_date": message.due_date,
        "status": message.status,
        "scheduled_at": message.scheduled_at,
        "deadline": message.deadline,
        "queued_at": message.queued_at,
        "sent_at": message.sent_at,
        "delivered_at": message.delivered_at,
        "attempts": int(message.attempts),
        "text": message.text,
        "segments": int(message.segments) if message.segments is not None else None,
        "last_error": message.last_error,
        "history": store.history_of(message),
        "ambiguous": bool(message.ambiguous),
        "revived": message.revived,
        "provider_message_id": message.provider_message_id,
        "timezone": patient.timezone if patient else None,
        "phone": patient.phone if patient else None,
    }


def _stats(messages: list[dict[str, Any]], sends: list[dict[str, Any]]) -> dict[str, Any]:
    by_status: dict[str, int] = {}
    by_type: dict[str, dict[str, int]] = {}
    for m in messages:
        by_status[m["status"]] = by_status.get(m["status"], 0) + 1
        per_type = by_type.setdefault(m["reminder_type"], {})
        per_type[m["status"]] = per_type.get(m["status"], 0) + 1
    return {"messages": len(messages), "sends": len(sends), "by_status": by_status, "by_type": by_type}


@dataclass
class _Schedule:
    """The follow-up pass's schedule: a run every `interval` from `origin`, skipped (the clock jumps over it) while
    the pass has no state whose time has come (`work_at`, read from the index)."""

    interval: timedelta
    origin: datetime
    work_at: datetime | None = None
    due: datetime | None = None  # the next run that can find work, as last planned
    not_before: datetime | None = None  # the run after the last one that fired

    def earliest(self, now: datetime) -> datetime:
        """The soonest a run can fall from `now`, whatever the index holds."""
        return max(self.not_before or self.origin, _ceil(now, self.interval, self.origin))

    def plan(self, now: datetime, *, known: bool = True) -> datetime | None:
        """The next run that can find work, from `now` (the run may then be past already, and fires late); none while
        `work_at` is not `known` (the index changed since it was read, and nothing can fire before the clock's next
        wake)."""
        self.due = _next_useful_tick(self.work_at, self.earliest(now), self.interval, self.origin) if known else None
        return self.due

    def fires(self, now: datetime) -> bool:
        """Whether the planned run has come (late if the loop was busy, as a tick the dispatcher's drain reached)."""
        if self.due is None or now < self.due:
            return False
        self.not_before, self.due = self.due + self.interval, None
        return True


def _soonest(instants: list[datetime | None]) -> datetime:
    return min(i for i in instants if i is not None)


def _next_useful_tick(
    earliest_due: datetime | None, not_before: datetime, interval: timedelta, start: datetime
) -> datetime | None:
    """The first scheduled run (the dispatcher's, or the follow-up pass's) that can find work, or None while
    nothing is due.

    The schedule fires every interval; a run before the earliest due message (or state) finds nothing, so the clock
    skips it.
    """
    return max(not_before, _ceil(earliest_due, interval, start)) if earliest_due else None


def _ceil(instant: datetime | None, interval: timedelta, origin: datetime) -> datetime:
    if instant is None:
        return origin
    steps = math.ceil((instant - origin) / interval)
    return origin + max(steps, 0) * interval


def _receive_together(sqs: Any, settings: Settings, pollers: int) -> list[list[dict[str, Any]]]:
    """The batches of `pollers` senders free at the same instant: as the event source's pollers do, each receives
    up to 10 records at a time, in turn, until its batch is full or the queue is empty (so 40 records reach four
    idle senders as four batches of 10, not one sender as one batch of 40)."""
    batches: list[list[dict[str, Any]]] = [[] for _ in range(pollers)]
    open_batches = list(range(pollers))
    while open_batches:
        for index in list(open_batches):
            received = batches[index]
            chunk = sqs.receive_message(
                QueueUrl=settings.SEND_QUEUE_URL,
                MaxNumberOfMessages=min(10, settings.SMS_BATCH_SIZE - len(received)),
                VisibilityTimeout=43200,
                AttributeNames=["All"],
            ).get("Messages", [])
            if not chunk:
                return batches
            received += chunk
            if len(received) >= settings.SMS_BATCH_SIZE:
                open_batches.remove(index)
    return batches


def _earliest_due(settings: Settings) -> datetime | None:
    """The next instant the dispatcher could find work: the smallest `due_at` in the due index's `DUE#n` shards (not
    the undecided dead letters' partition, which no dispatcher reads).

    The harness reads it from moto's in-memory table (one pass in Python) rather than with a query per shard,
    which moto answers by walking the whole table each time; the result is the same as store.earliest_due.
    """
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends

    table = dynamodb_backends[DEFAULT_ACCOUNT_ID][settings.AWS_REGION].tables[settings.MESSAGES_TABLE]
    earliest = min(
        (
            found.value
            for item in _items(table)
            if (found := item.attrs.get("due_at")) is not None
            and (shard := item.attrs.get("due_shard")) is not None
            and shard.value != store.UNDECIDED_SHARD
        ),
        default=None,
    )
    return store.parse_iso(earliest) if earliest is not None else None


def _earliest_follow_up(settings: Settings) -> datetime | None:
    """When the follow-up pass next has work: the smallest `follow_up_at` in the pass's slots of the `follow_up`
    index (read from moto's table in one pass, as above; the same as store.earliest_follow_up)."""
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends

    table = dynamodb_backends[DEFAULT_ACCOUNT_ID][settings.AWS_REGION].tables[settings.OPS_TABLE]
    values = [
        found.value
        for item in _items(table)
        if (found := item.attrs.get("follow_up_at")) is not None
        and item.attrs["follow_up_key"].value != store.FOLLOW_UP_OPEN
    ]
    return store.parse_iso(min(values)) if values else None


def _items(table: Any) -> list[Any]:
    """Every item of a moto table, in no particular order (a minimum needs none; moto's all_items sorts them)."""
    if table.range_key_attr:
        return [item for items in table.items.values() for item in items.values()]
    return list(table.items.values())


def _send_queue_has_records(settings: Settings) -> bool:
    """Whether a sender polling the send queue now would receive a record (read from moto, as above)."""
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.sqs.models import sqs_backends

    name = settings.SEND_QUEUE_URL.rstrip("/").rsplit("/", 1)[-1]
    return bool(sqs_backends[DEFAULT_ACCOUNT_ID][settings.AWS_REGION].queues[name].messages)


@contextmanager
def _scoped_environment() -> Iterator[None]:
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def simulate(data: Any, progress: Callable[[datetime, datetime, datetime], None] | None = None) -> SimulationResult:
    """Validate and run a scenario."""
    return Simulation(load_scenario(data), progress=progress).run()
