"""Replies: SMS a family sends back (Kannel's `sms-service` calls the receipt URL's `/inbound`), which may opt their
phone out of the reminders or back in.

The keywords are in the language packs (`core/texts/<language>.json`, `replies.opt_out` / `replies.opt_in`); a
reply is matched against every pack's keywords, whatever the patients' language, without case or accents, and with
punctuation and spaces around the words ignored:

- **opt-out**: the reply's first words are an opt-out keyword ("STOP", "stop.", "Arrêt !", "Stop please"). The safe
  side: a family that begins with STOP gets no more reminders, and the confirmation tells them how to undo it.
- **opt-in**: the whole reply is an opt-in keyword ("OUI", "start!"), nothing else: "Oui, merci" answering a
  reminder must not restart a stopped number.

A change applies to the phone, every patient with that number (`planning.change_consent`, the operator's path
too): pending reminders are cancelled, or revived while still before their deadline. Each change gets one
confirmation SMS, in the language of the phone's first patient (by id), sent through the normal send path as a
message of the kind `confirmation` (`core.wanted`), and one `PatientOptedOut` / `PatientOptedIn` event for the
clinic system (`core.notify`). A reply that changes nothing (the number is stopped already) gets neither. Other
texts, and replies from numbers no patient has, are recorded (bounded, the number masked) and counted, never
answered; a keyword from a number no patient has still writes or lifts the phone's stop, for the patients
registered with it later.
"""

from __future__ import annotations

import codecs
import functools
import json
import re
import secrets
import unicodedata
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, NoReturn
from urllib.parse import parse_qsl

from core import clock, notify, store
from core.lifecycle import Status
from core.metric_names import MetricName
from core.observability import count, logger
from core.phone import InvalidPhoneNumber, mask_phone, normalize_phone
from core.planning import ConsentChange, cancel_message, change_consent, consent_changes
from core.receipts import ReceiptRejected, Route, route_url
from core.retry import patiently
from core.settings import Settings
from core.store import MessageRecord, PatientRecord, iso, parse_iso
from core.texts import available_languages, clean_text, load_language
from core.wanted import CONFIRMATION, OPTED_IN, OPTED_OUT

# What of a reply is kept and matched: one SMS's worth. A longer text (a 2,000-character request) is cut here, after
# decoding; its length is recorded. The keyword is at the start, so nothing that matters is lost.
MAX_TEXT_CHARACTERS = 160
# Replies that changed nothing are recorded for operators up to this many a day (the count goes on beyond it).
MAX_RECORDED_PER_DAY = 1000
# How long a confirmation may wait for its send (quiet hours, a provider outage) before it is pointless.
CONFIRMATION_LIFETIME = timedelta(hours=24)
# Confirmation SMS a number gets in a UTC day: a STOP and an OUI, and one more (a family that changes its mind).
CONFIRMATIONS_PER_DAY = 3
# Kannel's `coding` (%c): 0 GSM 7-bit, 1 8-bit binary, 2 UCS-2, -1 undefined (an HTTP SMSC that gave none; the
# charset then says). Character sets that mean UCS-2's bytes.
_CODINGS = frozenset({"", "-1", "0", "1", "2"})
_UTF16 = frozenset({"UTF-16BE", "UTF16BE", "UCS-2", "UCS2", "UTF-16", "ISO-10646-UCS-2"})
_KANNEL_8BIT = "8-BIT"  # what Kannel's %C says for 8-bit data that came with no character set
_WORD_SEPARATORS = re.compile(r"[\W_]+")
# A sender no family has: a GSM alphanumeric sender id (at most 11 characters, a letter among them) or a short code
# (3 to 8 digits).
_SERVICE_SENDER = re.compile(r"(?=[^A-Za-z]*[A-Za-z])[A-Za-z0-9 ._&'-]{1,11}|[1-9][0-9]{2,7}")


class Intent(StrEnum):
    """What a keyword asks for."""

    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"


@dataclass(frozen=True)
class KeywordMatch:
    """A reply's keyword: what it asks for and the keyword as its language pack writes it."""

    intent: Intent
    keyword: str


@dataclass(frozen=True)
class InboundSms:
    """A reply as the endpoint received it: the sender in E.164, the text decoded (at most MAX_TEXT_CHARACTERS)."""

    sender: str
    text: str
    length: int  # characters received, before the cut
    to: str  # the service number it was sent to (Kannel's %P), as given
    # Sent by a service, not a phone: an alphanumeric sender id or a short code (the operator's balance SMS, a
    # promotion), which reaches a catch-all sms-service too; `sender` is then that name, as given.
    from_a_service: bool = False


@dataclass(frozen=True)
class InboundOutcome:
    """What a reply did: opted_out, opted_in, unchanged, unknown_text, unknown_sender or service_sender."""

    result: str
    confirmation_id: str | None = None


# ---------------------------------------------------------------------------------------------- keywords


def words_of(text: str) -> tuple[str, ...]:
    """The words of a text as keywords are compared: accents dropped, case folded, split on anything that is not a
    letter or a digit ("Arrêt !" -> ("arret",), "OPT-OUT" -> ("opt", "out"))."""
    decomposed = unicodedata.normalize("NFKD", text)
    folded = "".join(ch for ch in decomposed if not unicodedata.combining(ch)).casefold()
    return tuple(word for word in _WORD_SEPARATORS.split(folded) if word)


@functools.cache
def keyword_table() -> dict[tuple[str, ...], KeywordMatch]:
    """Every language pack's keywords, by their words; ValueError when one means opt-out in a pack and opt-in in
    another (a reply could not be told apart)."""
    table: dict[tuple[str, ...], KeywordMatch] = {}
    for language in available_languages():
        replies = load_language(language).replies
        for intent, keywords in ((Intent.OPT_OUT, replies.opt_out), (Intent.OPT_IN, replies.opt_in)):
            for keyword in keywords:
                words = words_of(keyword)
                known = table.setdefault(words, KeywordMatch(intent, keyword))
                if known.intent is not intent:
                    raise ValueError(f"keyword {keyword!r} ({language}) is both an opt-out and an opt-in keyword")
    return table


def match_keyword(text: str) -> KeywordMatch | None:
    """The keyword of a reply, or None: an opt-out keyword at its start, or an opt-in keyword as the whole of it."""
    words = words_of(text)
    if not words:
        return None
    # Longest keywords first, so that "stop all" is found as itself before "stop".
    for keyword_words, match in sorted(keyword_table().items(), key=lambda item: -len(item[0])):
        if match.intent is Intent.OPT_OUT and words[: len(keyword_words)] == keyword_words:
            return match
        if match.intent is Intent.OPT_IN and words == keyword_words:
            return match
    return None


# ---------------------------------------------------------------------------------------------- the request


def get_url(base_url: str, secret: str) -> str:
    """The `get-url` of Kannel's `sms-service` for this endpoint, with the /inbound route's token: the sender (%p), the
    service number (%P), the words of the text (%a), and its coding (%c) and character set (%C), which decide how the
    text is decoded."""
    return f"{route_url(base_url, Route.INBOUND, secret)}&from=%p&to=%P&text=%a&coding=%c&charset=%C"


def parse_inbound(params: Mapping[str, str], raw_query: str | None, settings: Settings) -> InboundSms:
    """Validate and decode a reply; ReceiptRejected(400) naming the field when it is malformed.

    The text is read from the raw query string when there is one: a UCS-2 text arrives as its UTF-16BE bytes
    (`coding=2`, or `charset=UTF-16BE`), which are not UTF-8 and which only the raw form keeps exact.
    """
    sender, from_a_service = _sender(params.get("from", ""), settings)
    coding = params.get("coding", "").strip()
    if coding not in _CODINGS:
        _reject("coding: must be Kannel's coding (%c): -1, 0, 1 or 2")
    charset = params.get("charset", "").strip()
    if len(charset) > 40:
        _reject("charset: longer than 40 characters")
    to = params.get("to", "")
    if len(to) > 32:
        _reject("to: longer than 32 characters")
    raw = _raw_text(raw_query) if raw_query is not None else params.get("text", "").encode()
    text = clean_text(_decode(raw, coding, charset))
    return InboundSms(
        sender=sender, text=text[:MAX_TEXT_CHARACTERS], length=len(text), to=to, from_a_service=from_a_service
    )


def _reject(reason: str) -> NoReturn:
    raise ReceiptRejected(400, reason)


def _sender(raw: str, settings: Settings) -> tuple[str, bool]:
    """The sender in E.164, or a service's name as given (True: an alphanumeric sender id or a short code, which no
    family has). An SMSC may give a number without its `+` ("2250701020304"): that form is tried too."""
    if not raw.strip():
        _reject("from: missing (Kannel's %p)")
    try:
        return normalize_phone(raw, settings.SMS_DEFAULT_REGION), False
    except InvalidPhoneNumber as exc:
        given = raw.strip()
        if given.isdigit() and not given.startswith("0"):
            try:
                return normalize_phone("+" + given, settings.SMS_DEFAULT_REGION), False
            except InvalidPhoneNumber:
                pass
        if _SERVICE_SENDER.fullmatch(given):
            return given, True
        _reject(f"from: {exc}")


def _raw_text(raw_query: str) -> bytes:
    """The `text` parameter's bytes, as sent (percent-decoding only; `+` is a space, as %a joins words with it)."""
    for name, value in parse_qsl(raw_query, keep_blank_values=True, encoding="latin-1"):
        if name == "text":
            return value.encode("latin-1")
    return b""


def _decode(raw: bytes, coding: str, charset: str) -> str:
    """The text from its bytes: the character set Kannel names (%C) first; UCS-2 (coding 2) as UTF-16BE when it
    names none; else UTF-8, or Latin-1 for bytes that are not UTF-8 (an SMSC in a legacy character set). Kannel's
    `8-BIT` (8-bit data that came with no character set) names none."""
    name = charset.upper().replace("_", "-")
    if name == _KANNEL_8BIT:
        name = ""
    if name in _UTF16 or (not name and coding == "2"):
        return raw.decode("utf-16-be", errors="replace")
    if name:
        try:
            return raw.decode(codecs.lookup(charset).name, errors="replace")
        except (LookupError, UnicodeError):  # unknown, no text encoding (base64, zlib), or one that never decodes
            _reject("charset: not a character set this endpoint knows")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


# ---------------------------------------------------------------------------------------------- what a reply does


def handle_inbound(params: Mapping[str, str], raw_query: str | None, settings: Settings) -> InboundOutcome:
    """Apply one reply (already authenticated): opt its phone out or in, or record it; see the module's text."""
    sms = parse_inbound(params, raw_query, settings)
    return apply_reply(sms, settings)


def apply_reply(sms: InboundSms, settings: Settings) -> InboundOutcome:
    """Apply one parsed reply; the embedded stack and tests may call this directly."""
    store.bind(settings)
    now = clock.now()
    if sms.from_a_service:
        return _unanswered(sms, "service_sender", now, settings)
    found = match_keyword(sms.text)
    # A keyword from a number the `by_phone` index does not show yet (a phone registered or changed a moment ago)
    # looks again before the reply is taken as a stranger's: a STOP must not be lost to the index's lag.
    patients = patiently(lambda: store.patients_with_phone(sms.sender), lambda known: bool(known) or found is None)
    if not patients:
        stop = None
        if found is not None:
            # The phone is what a reply opts out or in, patients or not: a STOP sent before the register reaches us
            # must hold for the child registered with that phone later. Nobody to confirm to, in no known language.
            opt_in = found.intent is Intent.OPT_IN
            changed = change_consent(sms.sender, opt_in, settings, now, by="reply", patients=[]).stop_changed
            stop = ("lifted" if opt_in else "written") if changed else None
        return _unanswered(sms, "unknown_sender", now, settings, stop=stop)
    finish_pending(sms.sender, patients, settings, asked=None if found is None else found.intent is Intent.OPT_IN)
    if found is None:
        return _unanswered(sms, "unknown_text", now, settings, patients=patients)
    opt_in = found.intent is Intent.OPT_IN
    pending = PendingChange(
        opt_in=opt_in,
        keyword=found.keyword,
        at=iso(now),
        stopped_before=store.stopped_since(sms.sender) if opt_in else None,
        flipped_before=any(consent_changes(p, opt_in) for p in patients),
        token=secrets.token_hex(8),
    )
    if not opt_in:
        # The stop before anything else, stamped with the reply's time as its change will be: cut short after the
        # change is recorded (a 500, which Kannel does not retry), the number is stopped all the same, which the
        # sender honours, while the rest of the change waits for the family's next reply.
        store.stop_number(sms.sender, pending.at, "reply opt-out")
    if not _record_pending(sms.sender, pending):
        raise RuntimeError("another reply from this number is being applied")  # 500: nothing else changed
    change, outcome = _carry_out(sms.sender, pending, patients, settings, now)
    logger.info(
        "reply applied",
        extra={
            "outcome": outcome.result,
            "from": mask_phone(sms.sender),
            "keyword": found.keyword,
            "patients": len(patients),
            "cancelled": change.result.cancelled,
            "revived": change.result.revived,
        },
    )
    return outcome


# ---------------------------------------------------------------------------------------------- the outbox

# A change a reply asks for is recorded before it is made (ops item pk REPLY#PENDING, sk the E.164 number, as the
# number's stop is), and removed once its event is published and its confirmation written. A crash, or an event
# EventBridge refuses (a 500, which Kannel does not retry), leaves it recorded: the next reply from that number,
# whatever it says, first carries it out again (the change is idempotent), publishes its event (same change_id) and
# writes its confirmation. Only the receipt function can (it has the rights), so it waits for that next reply.


@dataclass(frozen=True)
class PendingChange:
    """A reply's change as recorded before it is made: what it asks for, when it came, and what held then (for an
    opt-in, which lifts a stop or a patient's own opt-out: whether there was one to lift)."""

    opt_in: bool
    keyword: str
    at: str
    stopped_before: str | None
    flipped_before: bool
    token: str  # this record's own: removing it never removes a later reply's


def _encoded(pending: PendingChange) -> str:
    return json.dumps(asdict(pending), separators=(",", ":"), sort_keys=True)


def _record_pending(number: str, pending: PendingChange) -> bool:
    return store.record_pending_reply(number, _encoded(pending))


_PENDING_FIELDS = frozenset(f.name for f in fields(PendingChange))


def _pending_of(number: str) -> PendingChange | None:
    """The change left recorded, read without the fields this version does not know (a newer version's, after a
    rollback). One it cannot read at all is dropped, logged: kept, it would fail every later reply from the number,
    its STOP included."""
    text = store.pending_reply(number)
    if not text:
        return None
    try:
        stored = json.loads(text)
        return PendingChange(**{k: v for k, v in stored.items() if k in _PENDING_FIELDS})
    except (ValueError, TypeError, AttributeError) as exc:
        extra = {"from": mask_phone(number), "error": type(exc).__name__}
        logger.error("pending reply change unreadable; dropped", extra=extra)
        store.clear_pending_reply(number, text)
        return None


def _clear_pending(number: str, pending: PendingChange) -> None:
    # By its token, not its whole text: one a newer version wrote holds fields this version leaves out.
    store.clear_pending_reply(number, pending.token)


def finish_pending(
    number: str, patients: list[PatientRecord], settings: Settings, *, asked: bool | None = None
) -> InboundOutcome | None:
    """Carry out a reply's change left recorded by a crash or a refused event: the change made again (it may not
    have been, or only in part), its event published and its confirmation written. Not when a patient with the
    number changed after that reply (the clinic system or an operator decided since): then it is dropped, logged.
    `asked`: what the reply at hand asks for (opt in: True, out: False, nothing: None). One asking for the other
    change goes ahead even if this one's event is still refused: this one is then dropped, logged (the new change
    is what holds, and its event says so). One asking for the same changes nothing of its own, so this one stays."""
    pending = _pending_of(number)
    if pending is None:
        return None
    if any((p.event_at or "") > pending.at for p in patients):
        logger.warning("pending reply change overtaken by a later change of its patients; dropped")
        _clear_pending(number, pending)
        return None
    try:
        _, outcome = _carry_out(number, pending, patients, settings, clock.now())
    except notify.EventNotPublished:
        if asked is None or asked == pending.opt_in:
            raise
        logger.warning("pending reply change's event still refused; overtaken by a new reply, dropped")
        _clear_pending(number, pending)
        return None
    logger.info("pending reply change carried out", extra={"outcome": outcome.result, "from": mask_phone(number)})
    return outcome


def _carry_out(
    number: str, pending: PendingChange, patients: list[PatientRecord], settings: Settings, now: datetime
) -> tuple[ConsentChange, InboundOutcome]:
    # Stamped with the reply's own time: made again by a later reply, it is still that change, not a later one.
    asked_at = parse_iso(pending.at)
    change = change_consent(number, pending.opt_in, settings, now, by="reply", patients=patients, asked_at=asked_at)
    outcome = _confirm(change, pending, now, settings)
    store.count_reply(now, outcome.result)
    _clear_pending(number, pending)
    return change, outcome


def _confirm(change: ConsentChange, pending: PendingChange, now: datetime, settings: Settings) -> InboundOutcome:
    """One event and one confirmation per change: keyed on the stop written (opt-out: the first reply for a stop
    confirms it, so a repeated STOP, or a STOP after a crash that lost its confirmation, confirms at most once) or
    lifted (opt-in: only when the reply found a stop to lift or a patient's consent off, as recorded before)."""
    opt_in = pending.opt_in
    key: str | None = change.stopped_at
    if opt_in:
        key = (pending.stopped_before or pending.at) if pending.stopped_before or pending.flipped_before else None
    if key is None:
        return InboundOutcome("unchanged")
    subject = OPTED_IN if opt_in else OPTED_OUT
    lead = min(change.patients, key=lambda p: p.patient_id)
    # Never from the number: the event carries the masked number and `at`, from which a hash of the number alone is
    # reversed by trying the numbers left. The stop's time and the patient's id say as much about the change.
    message_id = store.message_id_for(subject, CONFIRMATION, key, lead.patient_id)
    if store.get_message(message_id) is not None:
        return InboundOutcome("unchanged", message_id)
    # The event first, the confirmation after: a crash between them leaves the change recorded as pending, and the
    # next reply from the number publishes the event again (same change_id) and writes the confirmation.
    detail_type = notify.DetailType.PATIENT_OPTED_IN if opt_in else notify.DetailType.PATIENT_OPTED_OUT
    notify.publish(detail_type, _event_detail(change, pending, message_id), now, settings)
    # A number that flips STOP and OUI all day (a family, an auto-responder, a spoofed sender) would have a billed SMS
    # for each: past the day's few, the change stands and its confirmation is created cancelled, so that a repeated
    # STOP finds it (no second event, nor an SMS the next day for this stop). A crash between the two writes lets
    # that one confirmation go out.
    allowed = store.take_confirmation(change.number, message_id, now, CONFIRMATIONS_PER_DAY)
    why = f"confirms the reply {pending.keyword!r}: {'opted in' if opt_in else 'opted out'}"
    confirmation = _confirmation(message_id, subject, lead, change.number, now, settings)
    store.create_message(confirmation, now, why)
    if not allowed:
        cancel_message(confirmation, "the number had its confirmations for the day", settings, now, follow_up=False)
    count(MetricName.REPLIES_OPTED_IN if opt_in else MetricName.REPLIES_OPTED_OUT)
    return InboundOutcome("opted_in" if opt_in else "opted_out", message_id if allowed else None)


def _event_detail(change: ConsentChange, pending: PendingChange, change_id: str) -> dict[str, object]:
    return {
        "patient_ids": sorted(p.patient_id for p in change.patients),
        "phone": mask_phone(change.number),
        "keyword": pending.keyword,
        "at": pending.at,
        "change_id": change_id,
        "reminders_cancelled": change.result.cancelled,
        "reminders_revived": change.result.revived,
    }


def _confirmation(
    message_id: str, subject: str, lead: PatientRecord, number: str, now: datetime, settings: Settings
) -> MessageRecord:
    """The confirmation, pending and due now: the dispatcher and the sender take it like any reminder (rate limit,
    quiet hours, exactly-once), and the sender checks it is still true right before it goes (`core.wanted`)."""
    return MessageRecord(
        message_id,
        patient_id=lead.patient_id,
        appointment_id=subject,
        reminder_type=CONFIRMATION,
        due_date=now.date().isoformat(),
        status=Status.PENDING.value,
        scheduled_at=iso(now),
        deadline=iso(now + CONFIRMATION_LIFETIME),
        due_shard=store.shard_of(message_id, settings.DUE_INDEX_SHARDS),
        due_at=iso(now),
        created_at=iso(now),
        recipient=store.recipient_key(number),
    )


def _unanswered(
    sms: InboundSms,
    outcome: str,
    now: datetime,
    settings: Settings,
    *,
    stop: str | None = None,
    patients: list[PatientRecord] | None = None,
) -> InboundOutcome:
    """Record (up to MAX_RECORDED_PER_DAY a day, the number masked, kept SMS_RETENTION_DAYS) and count a reply no
    SMS answers; `stop`: what it did to the number's stop (written, lifted) when no patient has the number;
    `patients`: those with the number, whose ids the record names (`Please stop` is for an operator to act on, with
    `rappel optout --patient`). Nothing recorded derives from the full number (no hash of it, which the masked number
    and the time would let anyone reverse), so the record's key is random."""
    count(MetricName.REPLIES_UNKNOWN)
    if store.count_reply(now, outcome) <= MAX_RECORDED_PER_DAY:
        record = {
            "outcome": outcome,
            "from": _shown(sms),
            "to": sms.to,
            "text": sms.text,
            "length": sms.length,
            **({"stop": stop} if stop else {}),
            **({"patient_ids": [str(p.patient_id) for p in patients]} if patients else {}),
        }
        key = secrets.token_hex(8)
        store.record_reply(now, key, json.dumps(record, ensure_ascii=False), settings.SMS_RETENTION_DAYS)
    logger.info("reply recorded, not answered", extra={"outcome": outcome, "from": _shown(sms), "stop": stop})
    return InboundOutcome(outcome)


def recorded_replies(day: str) -> list[dict[str, Any]]:
    """The replies recorded on `day` (YYYY-MM-DD, UTC), oldest first: each one's time and what `_unanswered` kept."""
    replies: list[dict[str, Any]] = []
    for item in store.replies_of_day(day):
        if item.sk.startswith("COUNT#"):
            continue
        try:
            record = json.loads(item.text or "")
        except json.JSONDecodeError:
            record = {"text": item.text}
        replies.append({"at": item.sk.split("#", 1)[0], **record})
    return replies


def _shown(sms: InboundSms) -> str:
    """The sender as records and logs show it: a family's number masked, a service's name as it is."""
    return sms.sender if sms.from_a_service else mask_phone(sms.sender)
