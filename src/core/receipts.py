"""Delivery receipts: Orange's deliveryInfoNotification (JSON POST) and Kannel's DLR (GET), mapped monotonically.

A receipt never moves a status backwards: a late DeliveryImpossible does not overwrite `delivered`. Unknown
ids are answered 200 (the provider would only retry) and counted; forged or malformed requests are refused
before anything is read or written.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, StrictStr, StringConstraints, ValidationError, field_validator

from core import clock, followup, store
from core.dispatch import MAX_REMINDERS_PER_RECORD
from core.lifecycle import Status
from core.metric_names import MetricName
from core.observability import count, logger, measure
from core.retry import patiently
from core.secrets import secret_text
from core.settings import ProviderName, Settings
from core.store import Change, Guard, MessageRecord, iso, parse_iso

# Orange (OneAPI) delivery statuses -> our status; None means "still sent, recorded as information".
ORANGE_STATUSES: dict[str, Status | None] = {
    "DeliveredToTerminal": Status.DELIVERED,
    "DeliveryImpossible": Status.FAILED,
    "DeliveredToNetwork": None,
    "MessageWaiting": None,
    "DeliveryUncertain": None,
}
# Kannel dlr-mask bits: 1 delivered to phone, 2 not delivered to phone, 4 queued on SMSC, 8 delivered to SMSC,
# 16 rejected by SMSC (docs/providers.md#delivery-reports-dlr, as RapidPro's courier maps them).
KANNEL_TYPES: dict[int, tuple[str, Status | None]] = {
    1: ("DeliveredToTerminal", Status.DELIVERED),
    2: ("DeliveryImpossible", Status.FAILED),
    4: ("MessageWaiting", None),
    8: ("DeliveredToNetwork", None),
    16: ("RejectedBySmsc", Status.FAILED),
}
# Every status a receipt may carry (Orange's, and the names given Kannel's DLR types) -> our status.
_TARGET_OF: dict[str, Status | None] = {**ORANGE_STATUSES, **dict(KANNEL_TYPES.values())}
# How long a receipt for an SMS not recorded sent yet is kept: as long as the stored answer that records it may be
# replayed (sending.IDEMPOTENCY_TTL_SECONDS, longer than the send DLQ's 14 days).
PARKED_FOR = timedelta(days=15)
# Receipts that say the SMS never left the provider (Kannel's 16: the SMSC refused it, or bearerbox dropped it past
# its validity after a link outage): no proof an ambiguous send was taken.
NEVER_LEFT = frozenset({"RejectedBySmsc"})


def _not_queued(message: MessageRecord | None) -> bool:
    """A queued message a receipt names was taken by the provider, and our sent write is still to land."""
    return message is None or message.state is not Status.QUEUED


class ReceiptRejected(Exception):
    """A request refused without touching data; `status_code` is what the endpoint answers."""

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(reason)
        self.status_code = status_code
        self.reason = reason


def refused(error: ReceiptRejected) -> None:
    """Count and log a refused callback: the gateways never send it again, so the reason is all an operator (the
    `ReceiptsRejected` alarm) will have."""
    count(MetricName.RECEIPTS_REJECTED)
    logger.warning("receipt rejected", extra={"status": error.status_code, "reason": error.reason})


@dataclass(frozen=True)
class ReceiptOutcome:
    """What a receipt did: updated, recorded (information only), unchanged, or unknown id."""

    result: str
    message_id: str | None = None


class Route(StrEnum):
    """A path of the receipt URL registered with someone else, each with its own token."""

    ORANGE = "orange"  # Orange's receipts, registered through Orange's contact form
    INBOUND = "inbound"  # the families' replies, Kannel's sms-service get-url


def route_token(secret: str, route: Route) -> str:
    """The token of one route's registered URL, derived from the receipt secret. Each route has its own: the URL given
    to Orange (a web form, a mail) cannot send a STOP through /inbound, and Kannel's get-url cannot post receipts."""
    return hmac.new(secret.encode(), f"route:{route}".encode(), hashlib.sha256).hexdigest()


def route_url(base_url: str, route: Route, secret: str) -> str:
    """The URL to register for `route`, with its token."""
    return f"{base_url.rstrip('/')}/{route}?token={route_token(secret, route)}"


def authenticate(token: str | None, route: Route, settings: Settings) -> None:
    """Check a registered URL's token in constant time: the route's own, or the secret itself (URLs registered before
    each route had its own; rotating the secret retires them). Raises ReceiptRejected(403)."""
    secret = secret_text(settings.RECEIPT_TOKEN_SECRET, settings)
    _check(token, route_token(secret, route), secret)


def kannel_dlr_token(secret: str, message_id: str) -> str:
    """The token of the dlr-url an SMS carries to Kannel: Kannel keeps that URL in its DLR store and may log it, so
    it holds a token good for that SMS's DLRs only, not the endpoint's secret (which would opt any number out)."""
    return hmac.new(secret.encode(), f"kannel-dlr:{message_id}".encode(), hashlib.sha256).hexdigest()


def authenticate_dlr(token: str | None, message_id: str, settings: Settings) -> None:
    """Check a Kannel DLR's token: the SMS's own, or the secret itself (dlr-urls given before the SMS's own)."""
    secret = secret_text(settings.RECEIPT_TOKEN_SECRET, settings)
    _check(token, secret, kannel_dlr_token(secret, message_id))


def _check(token: str | None, *accepted: str) -> None:
    # Every candidate is compared, in constant time, whichever matches.
    matches = [hmac.compare_digest((token or "").encode(), candidate.encode()) for candidate in accepted]
    if not token or not any(matches):
        raise ReceiptRejected(403, "bad or missing token")


class _OrangeDeliveryInfo(BaseModel):
    deliveryStatus: StrictStr
    address: object = None  # the recipient, `tel:+…`: only an ambiguous send's receipt needs it (checked there)

    @field_validator("deliveryStatus")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in ORANGE_STATUSES:
            raise ValueError(f"unknown value (one of {', '.join(ORANGE_STATUSES)})")
        return value


class _OrangeNotification(BaseModel):
    callbackData: Annotated[StrictStr, StringConstraints(min_length=1, max_length=200)]
    deliveryInfo: _OrangeDeliveryInfo


class OrangeReceipt(BaseModel):
    """Orange's deliveryInfoNotification, as much of it as a receipt reads (other fields are ignored)."""

    deliveryInfoNotification: _OrangeNotification


def parse_orange_receipt(body: str) -> OrangeReceipt:
    """The notification in `body`; ReceiptRejected(400) naming the first field that is wrong."""
    try:
        return OrangeReceipt.model_validate_json(body)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"]) or "body"
        raise ReceiptRejected(400, f"{where}: {error['msg']}") from None


def orange_receipt(body: str, settings: Settings) -> ReceiptOutcome:
    """Apply an Orange deliveryInfoNotification."""
    notification = parse_orange_receipt(body).deliveryInfoNotification
    provider_id, delivery_status = notification.callbackData, notification.deliveryInfo.deliveryStatus
    store.bind(settings)
    message_ids, read = _members_of_sms(provider_id)
    learnt: dict[str, str] = {}
    if not message_ids:
        message_ids = _ambiguous_sms_for(notification.deliveryInfo.address)
        learnt = {"provider_message_id": provider_id}
    if not message_ids:
        # Maybe an SMS whose sent write is still to come (its sender died after Orange's 201): kept for it.
        park(ProviderName.ORANGE, provider_id, delivery_status)
        count(MetricName.RECEIPTS_UNKNOWN)
        logger.warning("receipt for an unknown provider message id", extra={"provider": "orange"})
        return ReceiptOutcome("unknown")
    target = ORANGE_STATUSES[delivery_status]
    return _settle_sms(ProviderName.ORANGE, message_ids, delivery_status, target, settings, learnt, read)


def _settle_sms(
    provider: ProviderName,
    message_ids: list[str],
    provider_status: str,
    target: Status | None,
    settings: Settings,
    learnt: dict[str, str],
    read: dict[str, MessageRecord],
    *,
    named: str | None = None,
) -> ReceiptOutcome:
    """A receipt is for one SMS, which may carry several reminders: it settles every one of them that this provider
    sent (a receipt from the other provider of a failover pair, misrouted or forged, settles nothing). `read`: the
    members the search for them has just read (strongly consistent), not read again. An error on one member is raised
    once the others are settled: the gateway may not post the receipt again (Kannel never does)."""
    outcomes: list[ReceiptOutcome] = []
    error: Exception | None = None
    for m in sorted(message_ids):
        try:
            outcomes.append(
                apply_receipt(
                    m,
                    provider_status,
                    target,
                    settings,
                    learnt=learnt,
                    provider=provider,
                    read=read.get(m),
                    named=named,
                )
            )
        except Exception as exc:  # the next members first; then this one's error, for the function's alarm
            error = error or exc
    if error is not None:
        raise error
    return next((o for o in outcomes if o.result != "unchanged"), outcomes[0])


def _members_of_sms(sms_id: str) -> tuple[list[str], dict[str, MessageRecord]]:
    """Our ids of the reminders one SMS carried (`sms_id`: the provider's id, or the `sms_…` key of a grouped SMS),
    found through the `by_provider_message_id` index; and the one member read to learn how many there are.

    The sender writes each member `sent` in turn and the index is eventually consistent, so a receipt may see only
    some of them at first: it looks again (LOOK_AGAIN_WAITS) until it sees as many as the SMS carried, which every
    member records (`sms_reminders`; none for a lone reminder). After the wait it settles the ones it found, with a
    warning: the others stay `sent`. The member read is handed on only if it was read after the last look.
    """
    carried: int | None = None
    read: dict[str, MessageRecord] = {}

    def look() -> list[str]:
        read.clear()
        return store.message_ids_by_provider_id(sms_id)

    def complete(found: list[str]) -> bool:
        nonlocal carried
        if not found:
            return False
        if carried is None:
            member = store.get_message(min(found))
            carried = int(member.sms_reminders or 1) if member is not None else 1
            if member is not None:
                read[member.message_id] = member
        return len(found) >= carried

    found = patiently(look, complete)
    if found and not complete(found):
        logger.warning(
            "receipt for a grouped sms: not every member found, settling those found",
            extra={"message_ids": sorted(found), "sms_reminders": carried},
        )
    return found, read


_SOURCES = {Status.DELIVERED: frozenset({Status.SENT, Status.FAILED}), Status.FAILED: frozenset({Status.SENT})}


class _Move(StrEnum):
    """What a receipt did to the message as read (the last two are also a receipt's answer)."""

    MOVED = "moved"  # to its target status
    STALE = "stale"  # changed since it was read: refused by the write's version guard
    RECORDED = "recorded"  # an intermediate status, noted on a sent message
    UNCHANGED = "unchanged"


def _move(
    message: MessageRecord,
    provider_status: str,
    target: Status | None,
    learnt: dict[str, str] | None,
    settings: Settings,
    now: datetime,
) -> _Move:
    """A receipt's change to the message as read (`_Move`): moved to `target`, recorded or unchanged when it had
    nothing to move, stale when the message changed since it was read."""
    if target is None or message.state not in _SOURCES[target]:
        if message.state is Status.SENT and store.record_receipt_status(message.message_id, provider_status):
            return _Move.RECORDED
        return _Move.UNCHANGED
    stamp = {"delivered_at": iso(now)} if target is Status.DELIVERED else {"failed_at": iso(now)}
    change = Change(
        target=target,
        sources=_SOURCES[target] & frozenset({message.state}),
        set={"receipt_status": provider_status, **stamp, **(learnt or {})},
        guard=Guard.VERSION,
        reason=f"{'delivered' if target is Status.DELIVERED else 'undeliverable'} (receipt {provider_status})",
    )
    return _Move.MOVED if store.transition(message, change, at=now, settings=settings) else _Move.STALE


def _maybe_taken(message: MessageRecord) -> bool:
    """An ambiguous send not recorded sent: dead-lettered for an operator (its text is recorded), or back to pending
    for a retry (the `retry` policy, its last attempt ambiguous). Its receipt proves the provider took it."""
    if message.state is Status.DEAD_LETTER:
        return message.text is not None
    return message.state is Status.PENDING and (message.last_error or "").startswith("ambiguous")


def _taken_after_all(
    message: MessageRecord, provider: ProviderName, provider_status: str, settings: Settings, now: datetime
) -> MessageRecord | None:
    """An ambiguous send not recorded sent (`_maybe_taken`) whose receipt came: the provider took the SMS after all.
    Recorded sent (a dead letter from when it was tried), before an operator or the retry sends it again; the receipt
    then settles it as it would any sent message. The message as it now is (an operator's resend may have come
    first); None when the receipt says the SMS never left the provider: it stays as it is."""
    if provider_status in NEVER_LEFT:
        logger.info("ambiguous send never left the provider", extra={"message_id": message.message_id})
        return None
    change = Change(
        target=Status.SENT,
        sources=frozenset({message.state}),
        set={"sent_at": message.failed_at or iso(now), "provider": provider.value},
        guard=Guard.VERSION,
        reason=f"ambiguous send taken by {provider.value} after all: its receipt came",
    )
    if store.transition(message, change, at=now, settings=settings):
        logger.info("ambiguous send taken after all", extra={"message_id": message.message_id})
    return store.get_message(message.message_id)


def _ambiguous_sms_for(address: object) -> list[str]:
    """The reminders of the one ambiguous SMS to this receipt's recipient, if there is exactly one (else none).

    An ambiguous send never learnt Orange's id; its receipt carries that id and the recipient (`tel:+…`). The
    receipt of any SMS whose id we know finds it by that id first, so an unknown id to a number with one ambiguous
    SMS waiting is that SMS's. The reminders of a grouped SMS share its key; two SMS waiting to one number cannot be
    told apart: neither is settled.
    """
    if not isinstance(address, str) or not address.startswith("tel:+") or len(address) > 24:
        return []
    candidates = store.ambiguous_sends_to(address.removeprefix("tel:"), MAX_REMINDERS_PER_RECORD + 1)
    if len(candidates) > 1:
        sms = {(m.sms_key or m.message_id) if m is not None else "" for m in map(store.get_message, candidates)}
        if len(sms) != 1 or "" in sms:
            return []
    return candidates


def kannel_receipt(params: dict[str, str], settings: Settings) -> ReceiptOutcome:
    """Apply a Kannel DLR (our message id and the DLR type travel in the dlr-url)."""
    message_id = params.get("message_id", "")
    try:
        dlr_type = int(params.get("type", ""))
    except ValueError:
        raise ReceiptRejected(400, "type: must be a Kannel DLR type (1, 2, 4, 8 or 16)") from None
    if dlr_type not in KANNEL_TYPES:
        raise ReceiptRejected(400, f"type: {dlr_type} is not a Kannel DLR type (1, 2, 4, 8 or 16)")
    if not message_id.startswith(("msg_", "sms_")) or len(message_id) > 64:
        raise ReceiptRejected(400, "message_id: not one of our message ids (msg_… or sms_…, at most 64 characters)")
    store.bind(settings)
    name, target = KANNEL_TYPES[dlr_type]
    # A grouped SMS travels under its SMS key, which its reminders carry as the provider's id. A message id we do
    # not have is found unknown where it is read to be settled (one read, not a second to see that it exists).
    if message_id.startswith("sms_"):
        message_ids, read = _members_of_sms(message_id)
    else:
        message_ids, read = [message_id], {}
    if not message_ids:
        park(ProviderName.KANNEL, message_id, name)  # a grouped SMS whose sent writes are still to come
        count(MetricName.RECEIPTS_UNKNOWN)
        return ReceiptOutcome("unknown")
    return _settle_sms(ProviderName.KANNEL, message_ids, name, target, settings, {}, read, named=message_id)


def apply_receipt(
    message_id: str,
    provider_status: str,
    target: Status | None,
    settings: Settings,
    *,
    provider: ProviderName,
    learnt: dict[str, str] | None = None,
    read: MessageRecord | None = None,
    named: str | None = None,
) -> ReceiptOutcome:
    """Move a sent message to delivered or failed, or record an intermediate status; never backwards.

    `provider`: whose receipt it is; only a message that provider took is settled (one sent before providers were
    recorded, with none, is taken as the receipt's). `learnt`: what the receipt taught us about the message (the
    provider id of an ambiguous send), written with the status change. `read`: the message as the caller has just
    read it (strongly consistent), used instead of a read of its own unless it is still `queued`. `named`: the id the
    receipt named, under which it is parked when the message is still `queued` after the wait (its sender died
    after the provider took it: the replay that records it sent applies the receipt, `apply_parked`).
    """
    if read is not None and _not_queued(read):
        message: MessageRecord | None = read
    else:
        message = patiently(lambda: store.get_message(message_id), _not_queued)
    if message is None or message.provider not in {None, provider.value}:
        count(MetricName.RECEIPTS_UNKNOWN)
        logger.warning("receipt for a message unknown or not this provider's", extra={"provider": provider.value})
        return ReceiptOutcome("unknown")
    if message.state is Status.QUEUED and named is not None:
        park(provider, named, provider_status)
        return ReceiptOutcome("parked", message_id)
    now = clock.now()
    if _maybe_taken(message):
        message = _taken_after_all(message, provider, provider_status, settings, now)
        if message is None:
            return ReceiptOutcome(_Move.UNCHANGED.value, message_id)
    moved = _move(message, provider_status, target, learnt, settings, now)
    if moved is _Move.STALE:
        # Changed since it was read (another receipt for it at the same moment): judged again, once, as it now is.
        again = store.get_message(message_id)
        moved = _move(again, provider_status, target, learnt, settings, now) if again is not None else _Move.UNCHANGED
    if moved is _Move.UNCHANGED and target is Status.DELIVERED and message.state is Status.DELIVERED:
        # Posted again, maybe after a receipt that died between the message's write and this note: noted again
        # (nothing is written when the family is reached already).
        followup.note_delivered(message, settings, now)
    if moved is not _Move.MOVED or target is None:
        return ReceiptOutcome((_Move.UNCHANGED if moved is _Move.STALE else moved).value, message_id)
    _settled(message, provider, provider_status, target, settings, now)
    return ReceiptOutcome(target.value, message_id)


def _settled(
    message: MessageRecord,
    provider: ProviderName,
    provider_status: str,
    target: Status,
    settings: Settings,
    now: datetime,
) -> None:
    """What follows a receipt that moved the message: the family reached, the metrics, the log."""
    if target is Status.DELIVERED:
        followup.note_delivered(message, settings, now)
        count(MetricName.SMS_DELIVERED, reminder_type=message.reminder_type, provider=provider.value)
        if message.sent_at:
            latency = max(0.0, (now - parse_iso(message.sent_at)).total_seconds())
            measure(
                MetricName.DELIVERY_LATENCY_SECONDS,
                latency,
                reminder_type=message.reminder_type,
                provider=provider.value,
            )
    else:
        count(MetricName.SMS_FAILED, reminder_type=message.reminder_type, provider=provider.value)
    logger.info(
        "receipt applied",
        extra={"message_id": message.message_id, "status": target.value, "provider_status": provider_status},
    )


# ---------------------------------------------------------------------------------------------- parked receipts


def park(provider: ProviderName, sms_id: str, provider_status: str) -> None:
    """Keep a receipt for an SMS not recorded sent yet, under the id it named, until the recording applies it."""
    store.park_receipt(provider.value, sms_id, provider_status, clock.now(), PARKED_FOR)
    logger.info("receipt parked until its SMS is recorded sent", extra={"provider": provider.value, "sms": sms_id})


def apply_parked(provider: str, sms_id: str, message_ids: list[str], settings: Settings) -> None:
    """Apply, in the order they came, the receipts parked for an SMS now recorded sent late (a replay after a crash,
    or a sent write that outlasted the receipts' wait) to its reminders. Each is applied as if it came now, so it is
    monotonic and idempotent: applying one twice changes nothing."""
    for provider_status in store.parked_receipts(provider, sms_id):
        target = _TARGET_OF.get(provider_status)
        for message_id in message_ids:
            apply_receipt(message_id, provider_status, target, settings, provider=ProviderName(provider))
