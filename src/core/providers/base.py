"""The provider interface every SMS adapter implements, and the error classification they share.

The classification follows docs/providers.md#errors-and-their-classification: what a failure means for the
message decides what the sender does next (back off, fail it, hold the whole queue, or record that it may already
have gone out).
"""

from __future__ import annotations

import json
import math
import re
import socket
import ssl
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

import requests
import urllib3.exceptions

from core import clock as core_clock
from core.phone import mask_phone, mask_phones


class FailureKind(StrEnum):
    """What a failed send means for the message and for the queue."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"
    PROVIDER_WIDE = "provider_wide"
    # Refused (HTTP 403): this recipient, or the whole account (no bundle left). The sender asks the balance which.
    REFUSED = "refused"
    # Too many requests (HTTP 429), whatever the body says: back-pressure, not a failure of the message or provider.
    THROTTLED = "throttled"
    AMBIGUOUS = "ambiguous"


@dataclass(frozen=True)
class Accepted:
    """The provider took the message; `provider_message_id` correlates its delivery receipts when it gave one."""

    provider: str
    provider_message_id: str | None


@dataclass(frozen=True)
class Balance:
    """What is left on the provider account (Orange: the active bundle)."""

    available_units: int | None
    expires_at: datetime | None
    status: str | None

    def can_send(self, now: datetime) -> bool:
        """Whether this balance lets the account send at `now` (unknown figures do not count against it)."""
        if self.status is not None and self.status.upper() != "ACTIVE":
            return False
        if self.available_units is not None and self.available_units <= 0:
            return False
        return self.expires_at is None or self.expires_at > now


# The codes `classify_transport` gives a failure with no HTTP reply at all.
_UNANSWERED = frozenset({"connect_timeout", "read_timeout", "connect_error", "connection_dropped", "unexpected_error"})


class ProviderError(Exception):
    """A send or query that did not succeed, classified.

    `code` is short and stable enough for metrics and `last_error`: the OneAPI messageId (`SVC0004`), the gateway
    code with its status (`401/41`), the OAuth error (`invalid_client`), `http_<status>`, or a transport failure
    (`connect_error`, `connect_timeout`, `read_timeout`, `connection_dropped`). `detail` never holds a secret or a
    full phone number.
    """

    def __init__(
        self,
        kind: FailureKind,
        code: str,
        detail: str = "",
        retry_after_seconds: float | None = None,
    ) -> None:
        # All four go to Exception.args so that the error pickles and copies like any exception.
        super().__init__(kind, code, detail, retry_after_seconds)
        self.kind = kind
        self.code = code
        self.detail = detail
        self.retry_after_seconds = retry_after_seconds

    @property
    def unanswered(self) -> bool:
        """No HTTP reply came at all (a transport failure), whatever the provider did with the request."""
        return self.code in _UNANSWERED

    def __str__(self) -> str:
        text = f"{self.kind.value} {self.code}"
        if self.detail:
            text += f": {self.detail}"
        if self.retry_after_seconds is not None:
            text += f" (retry after {self.retry_after_seconds:g}s)"
        return text


@runtime_checkable
class SmsProvider(Protocol):
    """An SMS gateway: one recipient per `send`."""

    name: str

    def send(
        self,
        *,
        to: str,
        text: str,
        message_id: str,
        before_request: Callable[[], None] = lambda: None,
        valid_until: datetime | None = None,
    ) -> Accepted:
        """Submit one SMS to `to` (E.164); `message_id` is ours. Raises ProviderError when not accepted.

        `before_request` runs right before each HTTP request that submits it (a replay after a token refresh too),
        once anything else it needs (a token) is at hand: the sender paces there, so its pace is that of requests.
        `valid_until`: the last moment the SMS is still wanted on the phone; a gateway that can hold a message (a link
        down) and can be told so drops it after then (Kannel's `validity`); one that cannot ignores it.
        """
        ...

    def balance(self) -> Balance | None:
        """The account balance, or None when the provider has no such notion. Raises ProviderError on failure."""
        ...

    def answers(self) -> bool:
        """Whether the provider answers at all (any HTTP reply) a request that sends nothing; True when it has no such
        request. An open circuit's probe asks this first: a real SMS that gets no answer is a reminder lost."""
        ...


_PHONE_LIKE = re.compile(r"\+?\d{6,}")
_MAX_DETAIL = 300


def redact(text: str) -> str:
    """`text` with every phone-like digit run masked and its length bounded, fit for logs and `last_error`: numbers
    however grouped (`mask_phones`), then any other run of six digits or more."""
    masked = _PHONE_LIKE.sub(lambda match: mask_phone(match.group(0)), mask_phones(text))
    return masked if len(masked) <= _MAX_DETAIL else masked[: _MAX_DETAIL - 1] + "…"


@dataclass(frozen=True)
class ErrorBody:
    """The parts of an error body that matter, from whichever of Orange's shapes it came in."""

    gateway_code: int | None = None
    oneapi_message_id: str | None = None
    oauth_error: str | None = None
    text: str = ""
    variables: tuple[str, ...] = ()  # the request's parts a OneAPI error names ("address", "senderAddress", …)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _decode_body(body: Any) -> Any:
    if isinstance(body, bytes | bytearray):
        body = bytes(body).decode("utf-8", errors="replace")
    if isinstance(body, str):
        try:
            return json.loads(body)
        except ValueError:
            return body
    return body


def parse_error_body(body: Any) -> ErrorBody:
    """Read a gateway (`{"code","message","description"}`), OAuth or OneAPI (`requestError`) body; never raises."""
    data = _decode_body(body)
    if isinstance(data, str):
        return ErrorBody(text=redact(" ".join(data.split())))
    if not isinstance(data, dict):
        return ErrorBody()

    request_error = data.get("requestError")
    if isinstance(request_error, dict):
        for key in ("serviceException", "policyException"):
            exception = request_error.get(key)
            if isinstance(exception, dict):
                message_id = _as_text(exception.get("messageId")).strip() or None
                text = _as_text(exception.get("text"))
                variables = exception.get("variables")
                named = tuple(str(v) for v in variables) if isinstance(variables, list) else ()
                if named:
                    text += " (" + ", ".join(named) + ")"
                return ErrorBody(oneapi_message_id=message_id, text=redact(text), variables=named)

    if "error" in data and isinstance(data.get("error"), str):
        return ErrorBody(
            oauth_error=data["error"] or None,
            text=redact(_as_text(data.get("error_description"))),
        )

    parts = [_as_text(data.get("message")), _as_text(data.get("description"))]
    return ErrorBody(gateway_code=_as_int(data.get("code")), text=redact(" - ".join(p for p in parts if p)))


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    wanted = name.lower()
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == wanted:
            return value if isinstance(value, str) else None
    return None


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """`Retry-After` as seconds from `now`: delta-seconds or an HTTP-date; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def _code_for(status: int, parsed: ErrorBody) -> str:
    if parsed.oneapi_message_id:
        return parsed.oneapi_message_id
    if parsed.oauth_error:
        return parsed.oauth_error
    if parsed.gateway_code is not None:
        return f"{status}/{parsed.gateway_code}"
    return f"http_{status}"


# Parts of a send request that are the account's, the same in every request: an error naming one (a sender address
# not provisioned, a sender name not approved) fails every family alike, not one number.
_SHARED_BY_EVERY_REQUEST = frozenset({"senderAddress", "senderName"})


def _kind_of_401(parsed: ErrorBody) -> FailureKind:
    # 40/42 mean "get a new token": the adapter already did, once, so the next attempt may well succeed.
    if parsed.oauth_error != "invalid_client" and parsed.gateway_code in (40, 42):
        return FailureKind.TRANSIENT
    return FailureKind.PROVIDER_WIDE


def _kind_for(status: int, parsed: ErrorBody) -> FailureKind:
    if status == 401:
        return _kind_of_401(parsed)
    if status == 403:
        return FailureKind.REFUSED
    if status in (404, 406):
        return FailureKind.PROVIDER_WIDE
    if status == 429:
        return FailureKind.THROTTLED
    # 408: the server gave up waiting for our request, so nothing was sent.
    if status == 408 or 500 <= status <= 599:
        return FailureKind.TRANSIENT
    if 400 <= status <= 499:
        if _SHARED_BY_EVERY_REQUEST & set(parsed.variables):
            return FailureKind.PROVIDER_WIDE
        return FailureKind.PERMANENT
    if 200 <= status <= 299:
        # A success whose body could not be used: the provider may well have taken the message.
        return FailureKind.AMBIGUOUS
    # 1xx/3xx from an SMS API means a wrong base URL or a proxy in the way: configuration.
    return FailureKind.PROVIDER_WIDE


def classify_http(
    status: int,
    body: Any,
    headers: Mapping[str, str] | None = None,
    *,
    now: datetime | None = None,
) -> ProviderError:
    """Classify a provider's HTTP error reply (docs/providers.md#errors-and-their-classification).

    `body` may be parsed JSON, text, bytes or None.

    `now` (default: the installed clock) turns an HTTP-date `Retry-After` into seconds.
    """
    parsed = parse_error_body(body)
    kind = _kind_for(status, parsed)
    retry_after = None
    if kind in {FailureKind.TRANSIENT, FailureKind.THROTTLED}:
        retry_after = parse_retry_after(_header(headers, "Retry-After"), now or core_clock.now())
    detail = f"HTTP {status}" + (f": {parsed.text}" if parsed.text else "")
    return ProviderError(kind, _code_for(status, parsed), detail, retry_after)


def _causes(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if any(current is s for s in seen) or len(seen) > 20:
            continue
        seen.append(current)
        linked = [*current.args, getattr(current, "reason", None), current.__cause__, current.__context__]
        stack.extend(item for item in linked if isinstance(item, BaseException))
    return seen


_NOT_SENT = (
    urllib3.exceptions.NewConnectionError,
    urllib3.exceptions.ConnectTimeoutError,
    urllib3.exceptions.ProxyError,
    socket.gaierror,
    ConnectionRefusedError,
)


def _failed_handshake(chain: list[BaseException]) -> bool:
    """A TLS error raised while the connection was being set up, before the request was written: an untrusted
    certificate, or an error raised inside the handshake. The same `SSLError` type is raised reading a reply (a
    broken record after the provider read the whole request), so the place it was raised decides."""
    return any(
        isinstance(e, ssl.SSLCertVerificationError)
        or (
            isinstance(e, ssl.SSLError)
            and any(frame.f_code.co_name == "do_handshake" for frame, _ in traceback.walk_tb(e.__traceback__))
        )
        for e in chain
    )


def classify_transport(exc: BaseException) -> ProviderError:
    """Classify a failure with no HTTP reply: before the request left → TRANSIENT, after → AMBIGUOUS.

    The detail names exception types only: their messages carry URLs, and a URL may carry a password or a number.
    """
    chain = _causes(exc)
    names = "/".join(dict.fromkeys(type(e).__name__ for e in chain))
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return ProviderError(FailureKind.TRANSIENT, "connect_timeout", names)
    if isinstance(exc, requests.exceptions.ReadTimeout) or any(
        isinstance(e, urllib3.exceptions.ReadTimeoutError) for e in chain
    ):
        return ProviderError(FailureKind.AMBIGUOUS, "read_timeout", names)
    if (
        isinstance(exc, requests.exceptions.ProxyError)
        or _failed_handshake(chain)
        or any(isinstance(e, _NOT_SENT) for e in chain)
    ):
        return ProviderError(FailureKind.TRANSIENT, "connect_error", names)
    if isinstance(
        exc,
        requests.exceptions.InvalidURL
        | requests.exceptions.MissingSchema
        | requests.exceptions.InvalidSchema
        | requests.exceptions.InvalidHeader
        | requests.exceptions.TooManyRedirects,
    ):
        return ProviderError(FailureKind.PROVIDER_WIDE, "bad_request_setup", names)
    if isinstance(exc, OSError):
        # The request may have been written before the connection broke: it may have been accepted.
        return ProviderError(FailureKind.AMBIGUOUS, "connection_dropped", names)
    return ProviderError(FailureKind.AMBIGUOUS, "unexpected_error", names)
