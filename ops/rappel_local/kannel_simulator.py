"""A local Kannel smsbox over real HTTP, for `rappel simulate` and the integration tests.

It answers `GET /cgi-bin/sendsms` as Kannel 1.4.5's smsbox does (docs/providers.md#kannel: the same status lines and
error texts, `username`/`password` of one `sendsms-user`, `charset` and `coding`, texts truncated past the user's
`max-messages`), calls each accepted message's `dlr-url` back with a GET once its delivery reports are due, with
Kannel's `%` escapes filled in (an SMSC ack, type 8, at once; delivered, type 1, or not, type 2, after the receipt
delay), and plays the phone's side of an `sms-service`: `deliver_mo` calls a `get-url` for a mobile-originated SMS.
The fault model is the Orange simulator's (provider_simulator.py); Kannel has no bundle, no token and no rate limit.
While its SMSC link is down (`disconnect_smsc`), sendsms answers `3: Queued for later delivery` and holds the
messages; when it is back (`connect_smsc`), one past its `validity` gets a type-16 DLR and never reaches the phone,
the others go out then (bearerbox's `smsc2_rout`, observed on Debian's Kannel 1.4.5).
"""

from __future__ import annotations

import hmac
import logging
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, quote_plus, urlsplit

import requests

from core.clock import Clock
from core.texts import count_segments, sms_encoding
from rappel_local.provider_simulator import Fault, ProviderSimulator, Reply, SentRecord
from rappel_local.scenario import provider_spec

logger = logging.getLogger(__name__)

SENDSMS_PATH = "/cgi-bin/sendsms"
# Kannel's own User-Agent on every callback it makes.
USER_AGENT = "Kannel/1.4.5"
# dlr-mask bits and the DLR types Kannel reports (gw/dlr.h).
DLR_DELIVERED, DLR_UNDELIVERED, DLR_SMSC_ACK, DLR_SMSC_REJECT = 1, 2, 8, 16

ACCEPTED = "0: Accepted for delivery"
QUEUED = "3: Queued for later delivery"
AUTH_FAILED = "Authorization failed for sendsms"
NOT_ROUTABLE = "Not routable. Do not try again."
DENIED = "Number(s) has/have been denied by white- and/or black-lists."
# The answers smsbox gives for a fault's status (gw/smsbox.c); any other status gets its reason phrase.
_FAULT_TEXTS = {
    400: DENIED,
    403: NOT_ROUTABLE,
    500: "Sending failed.",
    503: "Temporal failure, try again later.",
}
_NUMBER = re.compile(r"^\+?\d+$")
# What Kannel's URL encoding leaves as it is, besides letters and digits (gwlib/octstr.c); a space becomes '+'.
_URL_SAFE = "-_.!~*'()"
_ESCAPE = re.compile(rb"%(.)", re.DOTALL)


def _url_encode(value: bytes | str) -> str:
    return quote_plus(value.encode("utf-8") if isinstance(value, str) else value, safe=_URL_SAFE)


def expand_escapes(pattern: str, fields: Mapping[str, bytes | str]) -> str:
    """Fill a Kannel URL pattern (dlr-url, get-url) as smsbox does (gw/urltrans.c).

    `fields` maps an escape letter to its value: `p`, `P` (numbers), `i` (SMSC id), `I` (Kannel's id), `F` (the
    SMSC's id), `d` (DLR type), `c` (coding), `C` (charset), `n` (service), `T` (unix time), `t` (time), and `b`, the
    message's bytes, from which `a` (its words joined by '+'), `A` (the same as `b`) and `k` (the first word) are
    derived. Values are URL-encoded except `t`, `T`, `I`, `c` and `C`, as Kannel does; `%%` is '%'; an escape with no
    value is left out, an unknown one is kept as it is.
    """
    body = fields.get("b", b"")
    data = body.encode("utf-8") if isinstance(body, str) else body
    words = data.split()
    derived: dict[str, str] = {
        "a": "+".join(_url_encode(w) for w in words),
        "A": _url_encode(data),
        "b": _url_encode(data),
        "k": _url_encode(words[0]) if words else "",
        "%": "%",
    }
    raw = {"t", "T", "I", "c", "C"}

    def fill(match: re.Match[bytes]) -> bytes:
        letter = match.group(1).decode("latin-1")
        if letter in derived:
            return derived[letter].encode("ascii")
        if letter in fields:
            value = fields[letter]
            return (str(value) if letter in raw else _url_encode(value)).encode("utf-8")
        if letter in "pPiIFdcCnTt":
            return b""
        return match.group(0)

    return _ESCAPE.sub(fill, pattern.encode("utf-8")).decode("utf-8")


def _times(at: datetime) -> dict[str, str]:
    return {"T": str(int(at.timestamp())), "t": at.strftime("%Y-%m-%d+%H:%M:%S")}


def sms_service_url(
    get_url: str,
    *,
    sender: str,
    receiver: str,
    text: str,
    at: datetime,
    smsc_id: str = "sim",
    ucs2: bool = False,
    recode: bool = True,
    service: str = "default",
) -> str:
    """The request Kannel's `sms-service` makes to its `get-url` for one mobile-originated SMS.

    `sender` is the phone (`%p` in MO context), `receiver` our number (`%P`). A text that needs UCS-2 (`ucs2`)
    arrives as UTF-8 with coding 0 when smsbox has `mo-recode = true` (`recode`, what docs/providers.md asks a
    deployment to set), else as raw UTF-16BE bytes with coding 2 and charset UTF-16BE.
    """
    if ucs2 and not recode:
        body, coding, charset = text.encode("utf-16-be"), "2", "UTF-16BE"
    else:
        body, coding, charset = text.encode("utf-8"), "0", "UTF-8"
    fields: dict[str, bytes | str] = {
        "p": sender,
        "P": receiver,
        "b": body,
        "c": coding,
        "C": charset,
        "i": smsc_id,
        "I": str(uuid.uuid4()),
        "n": service,
        **_times(at),
    }
    return expand_escapes(get_url, fields)


def deliver_mo(
    session: requests.Session,
    get_url: str,
    *,
    sender: str,
    receiver: str,
    text: str,
    at: datetime,
    **options: Any,
) -> requests.Response:
    """Call an sms-service `get-url` for one MO as Kannel would (GET, no body, Kannel's User-Agent).

    `options` go to `sms_service_url` (`ucs2`, `recode`, `smsc_id`, `service`). Kannel drops an MO whose call fails
    (no retry by default), so the caller decides what a failure means.
    """
    url = sms_service_url(get_url, sender=sender, receiver=receiver, text=text, at=at, **options)
    return session.get(url, headers={"User-Agent": USER_AGENT}, timeout=(3.05, 10), allow_redirects=False)


def _text_reply(status: int, text: str) -> Reply:
    return Reply(status, text, content_type="text/html")


def _query(raw_path: str) -> dict[str, bytes]:
    """The query's parameters as raw bytes (the first of each name), as smsbox reads CGI variables."""
    pairs = parse_qsl(urlsplit(raw_path).query, keep_blank_values=True, encoding="latin-1")
    params: dict[str, bytes] = {}
    for name, value in pairs:
        params.setdefault(name, value.encode("latin-1"))
    return params


def _int(params: Mapping[str, bytes], name: str, default: int) -> int | None:
    """A numeric CGI variable (None when it is not a number), `default` when absent."""
    raw = params.get(name)
    if raw is None:
        return default
    try:
        return int(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None


@dataclass(frozen=True)
class _Held:
    """A message bearerbox holds while its SMSC link is down."""

    at: datetime
    raw_path: str
    params: Mapping[str, bytes]
    text: str


class KannelSimulator(ProviderSimulator):
    """Kannel's smsbox sendsms interface on 127.0.0.1 (random port); use as a context manager or start()/stop()."""

    name = "kannel"

    def __init__(
        self,
        *,
        clock: Clock,
        username: str,
        password: str,
        latency_ms: float = 0,
        receipt_delay_seconds: float = 5,
        faults: Iterable[Fault] = (),
        undeliverable: Iterable[str] = (),
        max_messages: int = 10,
        smsc_id: str = "sim",
    ) -> None:
        """`username`/`password` are the `sendsms-user`'s; `max-messages` its limit of SMS parts per text (longer
        texts are truncated, still with a 202, as Kannel does)."""
        if max_messages < 1:
            raise ValueError("max_messages must be >= 1")
        super().__init__(
            clock=clock,
            latency_ms=latency_ms,
            receipt_delay_seconds=receipt_delay_seconds,
            faults=faults,
            undeliverable=undeliverable,
        )
        self._username = username
        self._password = password
        self._max_messages = max_messages
        self._smsc_id = smsc_id
        self._smsc_stopped = False
        self._held: list[_Held] | None = None  # the messages held while the SMSC link is down; None while it is up

    def stop_smsc(self) -> None:
        """Bearerbox's `/stop-smsc` (maintenance of the operator's link): smsbox then answers every recipient 403
        "Not routable. Do not try again.", as it does a black-listed number, until `start_smsc`."""
        self._smsc_stopped = True

    def start_smsc(self) -> None:
        """Bearerbox's `/start-smsc`: sendsms is routed again."""
        self._smsc_stopped = False

    def disconnect_smsc(self) -> None:
        """The SMSC link drops (the operator's side down, a network cut): smsbox still takes every message, answering
        `3: Queued for later delivery`, and bearerbox holds them, without a DLR, until `connect_smsc`."""
        with self._lock:
            self._held = self._held if self._held is not None else []

    def connect_smsc(self) -> None:
        """The link is back: each held message goes out now, unless its validity (minutes from its request) has
        passed, when it gets a type-16 DLR (`NACK/validity expired`) instead and never reaches the phone."""
        now = self._clock.now()
        with self._lock:
            held, self._held = self._held or [], None
        for message in held:
            validity = _int(message.params, "validity", -1)
            if validity is not None and validity >= 0 and now > message.at + timedelta(minutes=validity):
                self._dlr(now, message.params, DLR_SMSC_REJECT, b"NACK/validity expired", "")
            else:
                self._deliver(now, message.raw_path, message.params, message.text)

    @classmethod
    def from_scenario(
        cls, provider_cfg: Mapping[str, Any], clock: Clock, username: str, password: str, where: str = "provider"
    ) -> KannelSimulator:
        """Build from a scenario's `provider` block naming `kannel`; raises ValueError naming the bad field."""
        spec = provider_spec(provider_cfg, cls.name, where)
        return cls(
            clock=clock,
            username=username,
            password=password,
            latency_ms=spec.latency_ms,
            receipt_delay_seconds=spec.receipt_delay_seconds,
            faults=[f.fault() for f in spec.faults],
            undeliverable=spec.undeliverable,
        )

    @property
    def sendsms_url(self) -> str:
        """The value for KANNEL_SENDSMS_URL."""
        return f"{self.base_url}{SENDSMS_PATH}"

    def deliver_mo(self, get_url: str, *, sender: str, text: str, receiver: str = "1234", **options: Any) -> int:
        """An SMS from `sender` to our number, handed to the sms-service `get-url` now; returns the HTTP status."""
        response = deliver_mo(
            self._receipt_session,
            get_url,
            sender=sender,
            receiver=receiver,
            text=text,
            at=self._clock.now(),
            smsc_id=self._smsc_id,
            **options,
        )
        return response.status_code

    # HTTP.

    def _endpoint(self, path: str) -> str:
        return "send" if path == SENDSMS_PATH else "unknown"

    def _internal_error(self) -> Reply:
        return _text_reply(500, "Sending failed.")

    def _post_receipt(self, payload: Any, url: str | None) -> requests.Response:
        # A DLR goes to the URL the message asked for; smsbox always calls it with a GET.
        return self._receipt_session.get(
            str(payload), headers={"User-Agent": USER_AGENT}, timeout=(3.05, 10), allow_redirects=False
        )

    def _route(
        self,
        endpoint: str,
        method: str,
        now: datetime,
        nth: int,
        raw_path: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> Reply | None:
        if endpoint != "send":
            return _text_reply(404, "Unknown request.")
        if method != "GET":
            # A POST must carry X-Kannel-* headers and the text as its body; with query parameters it is refused.
            return _text_reply(403, AUTH_FAILED)
        params = _query(raw_path)
        user_ok = hmac.compare_digest(params.get("username", b""), self._username.encode())
        password_ok = hmac.compare_digest(params.get("password", b""), self._password.encode())
        if not (user_ok and password_ok):
            return _text_reply(403, AUTH_FAILED)
        to = params.get("to")
        if to is None:
            return _text_reply(400, "Missing receiver number, rejected")
        if not to:
            return _text_reply(400, "Empty receiver number not allowed, rejected")
        if self._smsc_stopped:
            return _text_reply(403, NOT_ROUTABLE)
        recipient = to.decode("latin-1")
        faulted, reply = self._faulted(
            now, recipient, nth, lambda: self._accept(now, raw_path, params), lambda f: self._refuse(now, f, params)
        )
        return reply if faulted else self._accept(now, raw_path, params)

    def _refuse(self, now: datetime, fault: Fault, params: Mapping[str, bytes]) -> Reply:
        status = fault.status or 500
        if status == 403 and fault.provider_wide:
            return _text_reply(403, AUTH_FAILED)  # the account, as when the sendsms-user's password was changed
        if status == 403:
            # Black-listed or unroutable: Kannel also reports it as an SMSC reject, when asked to.
            self._dlr(now, params, DLR_SMSC_REJECT, b"NACK/receiver in black-list", "")
        return _text_reply(status, _FAULT_TEXTS.get(status) or HTTPStatus(status).phrase)

    def _accept(self, now: datetime, raw_path: str, params: Mapping[str, bytes]) -> Reply:
        recipient = params.get("to", b"").decode("latin-1")
        sender = params.get("from", b"").decode("latin-1")
        if not sender:
            return _text_reply(400, "Sender missing and no global set, rejected")
        if not _NUMBER.match(recipient):
            return _text_reply(400, DENIED)
        mask, coding = _int(params, "dlr-mask", 0), _int(params, "coding", 0)
        if mask is None or not 0 <= mask <= 66:
            return _text_reply(400, "DLR-Mask field misformed, rejected")
        if coding is None or not 0 <= coding <= 2:
            return _text_reply(400, "Coding field misformed, rejected")
        if _int(params, "validity", -1) is None:
            return _text_reply(400, "Validity field misformed, rejected")
        text = self._text(params, coding)
        if text is None:
            return _text_reply(400, "Charset or body misformed, rejected")
        with self._lock:
            if self._held is not None:
                self._held.append(_Held(now, raw_path, dict(params), text))
                return _text_reply(202, QUEUED)
        self._deliver(now, raw_path, params, text)
        return _text_reply(202, ACCEPTED)

    def _deliver(self, now: datetime, raw_path: str, params: Mapping[str, bytes], text: str) -> None:
        """The SMSC takes the message now: it reaches the phone, with its ack and, after the delay, its report."""
        recipient = params.get("to", b"").decode("latin-1")
        sender = params.get("from", b"").decode("latin-1")
        smsc_message_id = str(uuid.uuid4())
        dlr_url = params.get("dlr-url", b"").decode("utf-8", "replace") or None
        with self._lock:
            self._accepted.append(
                SentRecord(
                    at=now,
                    to=recipient,
                    text=text,
                    message_id=smsc_message_id,
                    sender_name=None,
                    sender_address=sender,
                    path=raw_path,
                    dlr_url=dlr_url,
                )
            )
        self._dlr(now, params, DLR_SMSC_ACK, b"ACK/", "")
        final = DLR_UNDELIVERED if recipient in self._undeliverable else DLR_DELIVERED
        self._dlr(now + self._receipt_delay, params, final, b"", smsc_message_id)

    def _text(self, params: Mapping[str, bytes], coding: int) -> str | None:
        """The text as the handset will show it: decoded from `charset` (UTF-8 for coding 0, UTF-16BE for 2 when
        absent), characters outside GSM-7 shown as '?' on a 7-bit SMS, cut at the user's `max-messages` parts."""
        raw = params.get("text", b"")
        charset = params.get("charset", b"").decode("latin-1") or ("UTF-16BE" if coding == 2 else "UTF-8")
        try:
            text = raw.decode(charset)
        except (LookupError, UnicodeDecodeError):
            return None
        if coding == 0:
            text = "".join(ch if sms_encoding(ch) == "GSM-7" else "?" for ch in text)
        if count_segments(text) <= self._max_messages:
            return text
        keep, over = 0, len(text)
        while keep + 1 < over:  # the longest prefix that fits
            middle = (keep + over) // 2
            keep, over = (middle, over) if count_segments(text[:middle]) <= self._max_messages else (keep, middle)
        return text[:keep]

    def _dlr(self, due: datetime, params: Mapping[str, bytes], dlr_type: int, reply: bytes, foreign_id: str) -> None:
        """Schedule the DLR of this type for `due`, if the message asked for it (its dlr-mask has the bit)."""
        mask = _int(params, "dlr-mask", 0) or 0
        pattern = params.get("dlr-url", b"").decode("utf-8", "replace")
        if not pattern or not mask & dlr_type:
            return
        fields: dict[str, bytes | str] = {
            "d": str(dlr_type),
            "b": reply,
            "p": params.get("to", b"").decode("latin-1"),  # in a DLR, %p is the handset and %P the original sender
            "P": params.get("from", b"").decode("latin-1"),
            "i": self._smsc_id,
            "I": str(uuid.uuid4()),  # the DLR's own id, not the message's
            "F": foreign_id,
            **_times(due),
        }
        with self._lock:
            self._schedule_receipt(due, expand_escapes(pattern, fields))
