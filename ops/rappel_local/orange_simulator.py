"""A local Orange SMS API over real HTTP, for the embedded runtime, `rappel simulate` and the integration tests.

It speaks the wire contract of docs/providers.md#orange-sms-api (OAuth v3 token, send, contracts, both error shapes,
delivery receipts) and adds what a test needs: faults from the scenario's `provider` block, a rate limit, latency
and token expiry measured on an injected clock (virtual in simulations), and a log of every send it accepted.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import heapq
import hmac
import json
import logging
import math
import re
import secrets
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import requests
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from core.clock import Clock
from core.providers.orange import SENDER_NAME

logger = logging.getLogger(__name__)

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_TEL = re.compile(r"^tel:(\+[1-9]\d{6,14})$")
_SENDER = re.compile(r"^tel:\+\d{4,15}$")
_ONEAPI_ID = re.compile(r"^(SVC|POL)\d{4}$")
_ENDPOINTS = {"/oauth/v3/token": "token", "/sms/admin/v1/contracts": "contracts"}
_SEND_PATH = re.compile(r"^/smsmessaging/v1/outbound/([^/]+)/requests$")
_MAX_TEXT = 1600

_GATEWAY_ERRORS: dict[int, tuple[str, str]] = {
    1: ("Internal error", "An internal error occurred."),
    5: ("Service unavailable", "The service is temporarily unavailable."),
    40: ("Missing credentials", "The requested service needs credentials, but none were provided."),
    41: ("Invalid credentials", "The requested service needs credentials, but the ones provided were invalid."),
    42: ("Expired credentials", "The requested service needs credentials, and the ones provided were out-of-date."),
    50: ("Access denied", "The application has no active SMS bundle for this country."),
    53: ("Too many requests", "The application has made too many calls and has exceeded the rate limit."),
}
_DEFAULT_GATEWAY_CODE = {401: 41, 403: 50, 429: 53, 500: 1, 502: 5, 503: 5, 504: 5}
_ONEAPI_TEXTS = {
    "SVC0001": "A service error occurred. Error code is %1",
    "SVC0002": "Invalid input value for message part %1",
    "SVC0004": "No valid addresses provided in message part %1",
}

DELIVERED = "DeliveredToTerminal"
IMPOSSIBLE = "DeliveryImpossible"


@dataclass(frozen=True)
class SentRecord:
    """One send the simulator accepted (whether or not the client got the reply)."""

    at: datetime
    to: str
    text: str
    message_id: str
    sender_name: str | None
    sender_address: str
    path: str


@dataclass(frozen=True)
class ReceivedRequest:
    """One HTTP request as it arrived; `status` is None when the connection was dropped without a reply."""

    at: datetime
    method: str
    path: str
    endpoint: str
    status: int | None


@dataclass(frozen=True)
class Fault:
    """An injected failure: applies to a send request matching every selector that is set."""

    start: datetime | None = None
    until: datetime | None = None
    to: str | None = None
    nth: int | None = None
    status: int | None = None
    message_id: str | None = None
    code: int | None = None
    timeout: str | None = None
    retry_after: float | None = None

    def matches(self, *, now: datetime, to: str | None, nth: int) -> bool:
        """True when this fault applies to the `nth` send request, at `now`, for recipient `to`."""
        if self.start is not None and now < self.start:
            return False
        if self.until is not None and now >= self.until:
            return False
        if self.to is not None and to != self.to:
            return False
        return self.nth is None or self.nth == nth


@dataclass(frozen=True)
class _Reply:
    status: int
    body: Any
    headers: Mapping[str, str]


Phone = Annotated[str, StringConstraints(pattern=_E164.pattern)]
Count = Annotated[int, Field(strict=True)]
Amount = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class FaultSpec(BaseModel):
    """One injected failure of a scenario's `provider.faults` (docs/simulation.md#faults)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    start: AwareDatetime | None = Field(None, alias="from")
    until: AwareDatetime | None = None
    to: Phone | None = None
    nth: Annotated[Count, Field(ge=1)] | None = None
    status: Annotated[Count, Field(ge=400, le=599)] | None = None
    message_id: Annotated[str, StringConstraints(pattern=_ONEAPI_ID.pattern)] | None = None
    code: Annotated[Count, Field(ge=0)] | None = None
    timeout: Literal["after_send", "before_send"] | None = None
    retry_after: Annotated[Amount, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> FaultSpec:
        # Each message starts with the field it is about: `scenario_error` puts it in the path.
        if self.start is not None and self.until is not None and self.until <= self.start:
            raise ValueError("until: must be after from")
        if (self.status is None) == (self.timeout is None):
            raise ValueError("status: give exactly one of status or timeout")
        if self.timeout is not None:
            extra = [name for name in ("message_id", "code", "retry_after") if getattr(self, name) is not None]
            if extra:
                raise ValueError(f"{extra[0]}: only allowed with status")
        if self.message_id is not None and not 400 <= (self.status or 0) <= 499:
            raise ValueError("message_id: OneAPI errors need a 4xx status")
        if self.message_id is not None and self.code is not None:
            raise ValueError("code: give either code (gateway shape) or message_id (OneAPI shape)")
        return self

    def fault(self) -> Fault:
        """The simulator's fault."""
        return Fault(**self.model_dump(exclude_none=False))


class ProviderSpec(BaseModel):
    """A scenario's `provider` object for the Orange simulator (docs/simulation.md#provider)."""

    model_config = ConfigDict(extra="forbid")

    name: Literal["orange"] = "orange"
    latency_ms: Annotated[Amount, Field(ge=0)] = 0
    receipt_delay_seconds: Annotated[Amount, Field(ge=0)] = 0
    faults: list[FaultSpec] = Field(default_factory=list)
    undeliverable: list[Phone] = Field(default_factory=list)
    token_lifetime_seconds: Annotated[Count, Field(ge=1)] = 3600
    available_units: Annotated[Count, Field(ge=0)] = 1_000_000
    bundle_expires_at: AwareDatetime | None = None
    rate_limit_per_second: Annotated[Amount, Field(gt=0)] | None = None


def scenario_error(exc: ValidationError) -> ValueError:
    """A scenario's provider error, naming its field as `provider.latency_ms` or `faults[1].status`."""
    first = exc.errors()[0]
    loc = list(first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    if loc[:1] == ["faults"] and len(loc) >= 2:
        head = f"faults[{loc[1]}]"
        rest = [str(part) for part in loc[2:]]
        if not rest and ": " in message:  # a rule between fields: the message names the field
            field, message = message.split(": ", 1)
            rest = [field]
        return ValueError(".".join([head, *rest]) + f": {message}")
    path = "provider" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    return ValueError(f"{path}: {message}")


def _checked_send(
    path_sender: str, headers: Mapping[str, str], data: Any
) -> _Reply | tuple[str, str, re.Match[str], str, str | None]:
    """A send request's (sender, address, its tel: match, text, sender name), or the error Orange answers."""
    if "application/json" not in _header(headers, "Content-Type"):
        return _json_reply(400, _oneapi_body("SVC0001", "Content-Type must be application/json"))
    request = data.get("outboundSMSMessageRequest") if isinstance(data, dict) else None
    if not isinstance(data, dict):
        return _json_reply(400, _oneapi_body("SVC0001", "the body is not a JSON object"))
    if not isinstance(request, dict):
        return _json_reply(400, _oneapi_body("SVC0002", "outboundSMSMessageRequest"))
    sender = unquote(path_sender)
    if not _SENDER.match(sender) or request.get("senderAddress") != sender:
        return _json_reply(400, _oneapi_body("SVC0004", "senderAddress"))
    address = request.get("address")
    if isinstance(address, list):
        return _json_reply(400, _oneapi_body("SVC0002", "address"))
    tel = _TEL.match(address) if isinstance(address, str) else None
    if tel is None or not isinstance(address, str):
        return _json_reply(400, _oneapi_body("SVC0004", "address"))
    message_part = request.get("outboundSMSTextMessage")
    text = message_part.get("message") if isinstance(message_part, dict) else None
    if not isinstance(text, str) or not text or len(text) > _MAX_TEXT:
        return _json_reply(400, _oneapi_body("SVC0002", "message"))
    sender_name = request.get("senderName")
    # Present means named: the adapter leaves senderName out rather than send an empty one.
    if sender_name is not None and (
        not isinstance(sender_name, str) or not SENDER_NAME.match(sender_name.strip() or "!")
    ):
        return _json_reply(400, _oneapi_body("SVC0002", "senderName"))
    return sender, address, tel, text, sender_name


def _gateway_body(code: int | None, status: int) -> dict[str, Any]:
    message, description = _GATEWAY_ERRORS.get(code if code is not None else -1, ("Error", f"HTTP {status}"))
    body: dict[str, Any] = {"message": message, "description": description}
    if code is not None:
        body = {"code": code, **body}
    return body


def _oneapi_body(message_id: str, variable: str) -> dict[str, Any]:
    key = "policyException" if message_id.startswith("POL") else "serviceException"
    text = _ONEAPI_TEXTS.get(message_id, "A policy error occurred. Error code is %1")
    return {"requestError": {key: {"messageId": message_id, "text": text, "variables": [variable]}}}


def _json_reply(status: int, body: Any, headers: Mapping[str, str] | None = None) -> _Reply:
    return _Reply(status, body, dict(headers or {}))


def _header(headers: Mapping[str, str], name: str) -> str:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return ""


def _accepts_json(accept: str) -> bool:
    """Whether an Accept header admits application/json: no header, `*/*` and `application/*` do (RFC 9110 §12.5.1).

    The most specific range that matches decides, and a range with `q=0` refuses the type.
    """
    if not accept.strip():
        return True
    best: tuple[int, float] = (-1, 0.0)  # (specificity, q) of the most specific matching range
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        specificity = {"application/json": 2, "application/*": 1, "*/*": 0}.get(media.lower(), -1)
        if specificity <= best[0]:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        best = (specificity, q)
    return best[1] > 0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Keep-alive connections would otherwise make stop() wait for the client to hang up.
    block_on_close = False
    simulator: OrangeSimulator


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    # Idle keep-alive connections are closed after this many real seconds.
    timeout = 30
    # Headers and body go out in separate writes; with Nagle each reply would wait for a delayed ACK.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        headers = dict(self.headers.items())
        reply = self.server.simulator.handle(method, self.path, headers, body)
        if reply is None:
            self.close_connection = True
            return
        payload = json.dumps(reply.body).encode("utf-8")
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("orange simulator: " + format, *args)


class OrangeSimulator:
    """Orange's SMS API on 127.0.0.1 (random port); use as a context manager or call start()/stop()."""

    def __init__(
        self,
        *,
        clock: Clock,
        client_id: str,
        client_secret: str,
        rate_limit_per_second: float | None = None,
        latency_ms: float = 0,
        receipt_delay_seconds: float = 5,
        faults: Iterable[Fault] = (),
        undeliverable: Iterable[str] = (),
        token_lifetime_seconds: int = 3600,
        available_units: int = 1_000_000,
        bundle_expires_at: datetime | None = None,
        country: str = "CIV",
        expires_in_as_string: bool = False,
        contracts_legacy_shape: bool = False,
    ) -> None:
        """Faults apply to the send endpoint only.

        The rate limit is a token bucket holding one second's worth of requests (at least one), judged on the clock's
        timestamps rather than on arrival order: a send is refused with 429 when admitting it would put more than
        `burst + rate × span` sends into some span of time. Senders run side by side in virtual time (each from the
        same instant) are therefore judged as if they had really run concurrently.
        """
        if rate_limit_per_second is not None and rate_limit_per_second <= 0:
            raise ValueError("rate_limit_per_second must be > 0")
        if latency_ms < 0 or receipt_delay_seconds < 0 or token_lifetime_seconds <= 0 or available_units < 0:
            raise ValueError("latency, receipt delay and units must be >= 0, token lifetime > 0")
        self._clock = clock
        self._client_id = client_id
        self._client_secret = client_secret
        self._latency = latency_ms / 1000
        self._receipt_delay = timedelta(seconds=receipt_delay_seconds)
        self._faults = tuple(faults)
        self._undeliverable = frozenset(undeliverable)
        self._token_lifetime = token_lifetime_seconds
        self._units = available_units
        self._bundle_expires_at = bundle_expires_at or clock.now() + timedelta(days=365)
        self._created_at = clock.now()
        self._country = country
        self._expires_in_as_string = expires_in_as_string
        self._legacy_contracts = contracts_legacy_shape
        self._rate = rate_limit_per_second
        self._burst = max(1.0, rate_limit_per_second or 0.0)
        # Spans longer than this are not examined: a stream conforming over every shorter span stays close enough.
        self._rate_horizon = max(2.0, 2 * self._burst / rate_limit_per_second) if rate_limit_per_second else 0.0

        self._lock = threading.Lock()
        self._tokens: dict[str, datetime] = {}
        self._admitted_times: list[float] = []
        self._latest_admitted = -math.inf
        self._send_requests = 0
        self._accepted: list[SentRecord] = []
        self._received: list[ReceivedRequest] = []
        # A heap of (due, sequence, payload): the sequence keeps equal due times in send order.
        self._pending: list[tuple[datetime, int, dict[str, Any]]] = []
        self._receipt_seq = 0
        self.failed_receipts: list[dict[str, Any]] = []

        self._server: _Server | None = None
        self._base_url = ""
        self._thread: threading.Thread | None = None
        self._pump: threading.Thread | None = None
        self._pump_stop = threading.Event()
        self._receipt_session = requests.Session()

    @classmethod
    def from_scenario(
        cls,
        provider_cfg: Mapping[str, Any],
        clock: Clock,
        client_id: str,
        client_secret: str,
        rate_limit_per_second: float | None,
    ) -> OrangeSimulator:
        """Build from a scenario's `provider` object (`ProviderSpec`); raises ValueError naming the bad field.

        `rate_limit_per_second` is used unless the object sets its own.
        """
        if not isinstance(provider_cfg, Mapping):
            raise ValueError(f"provider: expected an object, got {provider_cfg!r}")
        try:
            spec = ProviderSpec.model_validate(provider_cfg)
        except ValidationError as exc:
            raise scenario_error(exc) from None
        options = spec.model_dump(exclude={"name", "faults", "bundle_expires_at", "rate_limit_per_second"})
        if spec.bundle_expires_at is not None:
            options["bundle_expires_at"] = spec.bundle_expires_at
        return cls(
            clock=clock,
            client_id=client_id,
            client_secret=client_secret,
            faults=[f.fault() for f in spec.faults],
            rate_limit_per_second=spec.rate_limit_per_second or rate_limit_per_second,
            **options,
        )

    # Lifecycle.

    def start(self) -> OrangeSimulator:
        """Listen on 127.0.0.1 on a free port and serve in a background thread."""
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", 0), _Handler)
        server.simulator = self
        self._server = server
        host, port = server.server_address[:2]
        self._base_url = f"http://{host!s}:{port}"
        self._thread = threading.Thread(
            # A short poll keeps stop() quick; serving itself is not polled.
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="orange-simulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the receipt pump and the server; safe to call twice."""
        self.stop_receipt_pump()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._receipt_session.close()

    def __enter__(self) -> OrangeSimulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>`, the value for ORANGE_API_BASE_URL."""
        if self._server is None:
            raise RuntimeError("the simulator is not started")
        return self._base_url

    # What the simulator saw.

    @property
    def accepted(self) -> list[SentRecord]:
        """Every send accepted so far, in order (a copy)."""
        with self._lock:
            return list(self._accepted)

    @property
    def received(self) -> list[ReceivedRequest]:
        """Every request received so far, in order (a copy)."""
        with self._lock:
            return list(self._received)

    @property
    def available_units(self) -> int:
        """Units left on the simulated bundle."""
        with self._lock:
            return self._units

    @property
    def pending_receipt_count(self) -> int:
        """Receipts generated but not yet handed out."""
        with self._lock:
            return len(self._pending)

    def expire_tokens(self) -> None:
        """Make every issued token expired now (as a server-side revocation would)."""
        with self._lock:
            self._tokens.clear()

    # Receipts.

    def next_receipt_at(self) -> datetime | None:
        """When the earliest pending receipt falls due, or None when none is pending."""
        with self._lock:
            return self._pending[0][0] if self._pending else None

    def due_receipts(self, now: datetime) -> list[dict[str, Any]]:
        """Pop and return the receipts due at `now`, oldest first."""
        due: list[dict[str, Any]] = []
        with self._lock:
            while self._pending and self._pending[0][0] <= now:
                due.append(heapq.heappop(self._pending)[2])
        return due

    def post_due_receipts(self, now: datetime, url: str) -> int:
        """POST each receipt due at `now` to `url` as Orange would; returns how many got a 2xx.

        A receipt whose POST fails is kept in `failed_receipts` (Orange's own retry policy is unknown).
        """
        delivered = 0
        for payload in self.due_receipts(now):
            try:
                response = self._receipt_session.post(url, json=payload, timeout=(3.05, 10))
            except requests.RequestException as exc:
                logger.warning("orange simulator: receipt POST failed (%s)", type(exc).__name__)
                self.failed_receipts.append(payload)
                continue
            if 200 <= response.status_code <= 299:
                delivered += 1
            else:
                logger.warning("orange simulator: receipt POST answered %s", response.status_code)
                self.failed_receipts.append(payload)
        return delivered

    def start_receipt_pump(self, url: str, interval_seconds: float) -> None:
        """Post due receipts to `url` every `interval_seconds` of real time, in a background thread."""
        if interval_seconds <= 0:
            raise ValueError("interval_seconds must be > 0")
        if self._pump is not None:
            raise RuntimeError("the receipt pump is already running")
        self._pump_stop.clear()

        def pump() -> None:
            while not self._pump_stop.wait(interval_seconds):
                try:
                    self.post_due_receipts(self._clock.now(), url)
                except Exception:
                    logger.exception("orange simulator: receipt pump error")

        self._pump = threading.Thread(target=pump, name="orange-simulator-receipts", daemon=True)
        self._pump.start()

    def stop_receipt_pump(self) -> None:
        """Stop the background receipt pump, if any."""
        if self._pump is not None:
            self._pump_stop.set()
            self._pump.join(timeout=5)
            self._pump = None

    # HTTP.

    def handle(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> _Reply | None:
        """Answer one request; None means: drop the connection without replying."""
        path = urlsplit(raw_path).path
        send_match = _SEND_PATH.match(path)
        endpoint = "send" if send_match else _ENDPOINTS.get(path, "unknown")
        nth = 0
        if endpoint == "send":
            with self._lock:
                self._send_requests += 1
                nth = self._send_requests
        if self._latency:
            self._clock.sleep(self._latency)
        now = self._clock.now()
        try:
            reply = self._route(endpoint, method, now, nth, raw_path, send_match, headers, body)
        except Exception:
            logger.exception("orange simulator: error handling %s %s", method, path)
            reply = _json_reply(500, _gateway_body(1, 500))
        with self._lock:
            status = None if reply is None else reply.status
            self._received.append(ReceivedRequest(now, method, raw_path, endpoint, status))
        return reply

    def _route(
        self,
        endpoint: str,
        method: str,
        now: datetime,
        nth: int,
        raw_path: str,
        send_match: re.Match[str] | None,
        headers: Mapping[str, str],
        body: bytes,
    ) -> _Reply | None:
        if endpoint == "unknown":
            path = urlsplit(raw_path).path
            return _json_reply(404, {"message": "Resource not found", "description": f"No resource at {path}"})
        if (endpoint, method) == ("send", "POST") and send_match:
            return self._send(now, nth, raw_path, send_match.group(1), headers, body)
        if (endpoint, method) == ("token", "POST"):
            return self._token(now, headers, body)
        if (endpoint, method) == ("contracts", "GET"):
            return self._contracts(now, raw_path, headers)
        return _json_reply(405, {"message": "Method not allowed", "description": f"{method} {urlsplit(raw_path).path}"})

    def _token(self, now: datetime, headers: Mapping[str, str], body: bytes) -> _Reply:
        auth = _header(headers, "Authorization")
        scheme, _, encoded = auth.partition(" ")
        try:
            if scheme.lower() != "basic":
                raise ValueError
            client_id, sep, client_secret = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
            if not sep:
                raise ValueError
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return _json_reply(
                401,
                {"error": "invalid_client", "error_description": "Unable to decode Basic authorization."},
                {"WWW-Authenticate": 'Basic realm="Authorization Required"'},
            )
        id_ok = hmac.compare_digest(client_id.encode(), self._client_id.encode())
        secret_ok = hmac.compare_digest(client_secret.encode(), self._client_secret.encode())
        if not (id_ok and secret_ok):
            return _json_reply(
                401,
                {
                    "error": "invalid_client",
                    "error_description": "The requested service needs credentials, but the ones provided were invalid.",
                },
                {"WWW-Authenticate": 'Basic realm="Authorization Required"'},
            )
        form = parse_qs(body.decode("utf-8", errors="replace"))
        if form.get("grant_type") != ["client_credentials"]:
            return _json_reply(
                400, {"error": "unsupported_grant_type", "error_description": "grant_type must be client_credentials"}
            )
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
            self._tokens[token] = now + timedelta(seconds=self._token_lifetime)
        expires_in: int | str = str(self._token_lifetime) if self._expires_in_as_string else self._token_lifetime
        return _json_reply(200, {"token_type": "Bearer", "access_token": token, "expires_in": expires_in})

    def _check_api_headers(self, now: datetime, headers: Mapping[str, str]) -> _Reply | None:
        scheme, _, token = _header(headers, "Authorization").partition(" ")
        if scheme != "Bearer" or not token.strip():
            return _json_reply(401, _gateway_body(40, 401))
        with self._lock:
            expiry = self._tokens.get(token.strip())
        if expiry is None or now >= expiry:
            return _json_reply(401, _gateway_body(42, 401))
        if not _accepts_json(_header(headers, "Accept")):
            return _json_reply(406, {"message": "Not acceptable", "description": "Accept: application/json required"})
        return None

    def _admit(self, now: datetime) -> bool:
        if self._rate is None:
            return True
        # Seconds since creation rather than since 1970: small floats keep microsecond steps exact enough.
        rate, t = self._rate, (now - self._created_at).total_seconds()
        with self._lock:
            times = self._admitted_times
            split = bisect.bisect_right(times, t)
            # The worst span ending at t (this request included) plus the worst span starting just after t.
            before = times[bisect.bisect_left(times, t - self._rate_horizon) : split]
            worst_before = max([1.0] + [k + 2 - rate * (t - x) for k, x in enumerate(reversed(before))])
            after = times[split : bisect.bisect_right(times, t + self._rate_horizon)]
            worst_after = max([0.0] + [k + 1 - rate * (x - t) for k, x in enumerate(after)])
            if worst_before + worst_after > self._burst + 1e-6:
                return False
            times.insert(split, t)
            self._latest_admitted = max(self._latest_admitted, t)
            stale = bisect.bisect_left(times, self._latest_admitted - 60 * self._rate_horizon)
            if stale > 1024:
                del times[:stale]
            return True

    def _send(
        self, now: datetime, nth: int, raw_path: str, path_sender: str, headers: Mapping[str, str], body: bytes
    ) -> _Reply | None:
        refused = self._check_api_headers(now, headers)
        if refused is not None:
            return refused
        if not self._admit(now):
            return _json_reply(429, _gateway_body(53, 429), {"Retry-After": "1"})
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            data = None
        request = data.get("outboundSMSMessageRequest") if isinstance(data, dict) else None
        address = request.get("address") if isinstance(request, dict) else None
        tel = _TEL.match(address) if isinstance(address, str) else None
        recipient = tel.group(1) if tel else None

        for fault in self._faults:
            if not fault.matches(now=now, to=recipient, nth=nth):
                continue
            if fault.timeout == "before_send":
                return None
            if fault.timeout == "after_send":
                self._process_send(now, raw_path, path_sender, headers, data)
                return None
            status = fault.status or 500
            if fault.message_id is not None:
                return _json_reply(status, _oneapi_body(fault.message_id, "address"))
            code = fault.code if fault.code is not None else _DEFAULT_GATEWAY_CODE.get(status)
            extra = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            if status == 429 and not extra:
                extra = {"Retry-After": "1"}
            return _json_reply(status, _gateway_body(code, status), extra)
        return self._process_send(now, raw_path, path_sender, headers, data)

    def _process_send(
        self, now: datetime, raw_path: str, path_sender: str, headers: Mapping[str, str], data: Any
    ) -> _Reply:
        checked = _checked_send(path_sender, headers, data)
        if isinstance(checked, _Reply):
            return checked
        sender, address, tel, text, sender_name = checked
        recipient = tel.group(1)
        with self._lock:
            if self._units <= 0 or now >= self._bundle_expires_at:
                return _json_reply(403, _gateway_body(50, 403))
            self._units -= 1
            message_id = str(uuid.uuid4())
            self._accepted.append(
                SentRecord(
                    at=now,
                    to=recipient,
                    text=text,
                    message_id=message_id,
                    sender_name=sender_name,
                    sender_address=sender,
                    path=raw_path,
                )
            )
            self._receipt_seq += 1
            status = IMPOSSIBLE if recipient in self._undeliverable else DELIVERED
            receipt = {
                "deliveryInfoNotification": {
                    "callbackData": message_id,
                    "deliveryInfo": {"address": address, "deliveryStatus": status},
                }
            }
            heapq.heappush(self._pending, (now + self._receipt_delay, self._receipt_seq, receipt))
        echo: dict[str, Any] = {"address": [address], "senderAddress": sender}
        if sender_name is not None:
            echo["senderName"] = sender_name
        echo["outboundSMSTextMessage"] = {"message": text}
        echo["resourceURL"] = f"{self._base_url}/smsmessaging/v1/outbound/{sender}/requests/{message_id}"
        return _json_reply(201, {"outboundSMSMessageRequest": echo})

    def _contracts(self, now: datetime, raw_path: str, headers: Mapping[str, str]) -> _Reply:
        refused = self._check_api_headers(now, headers)
        if refused is not None:
            return refused
        country = parse_qs(urlsplit(raw_path).query).get("country", [""])[0]
        if country and country != self._country:
            return _json_reply(200, [] if not self._legacy_contracts else {"partnerContracts": {"contracts": []}})
        with self._lock:
            units = self._units
        if any(f.status == 403 and f.to is None and f.matches(now=now, to=None, nth=0) for f in self._faults):
            units = 0  # a 403 window for every recipient is the bundle running out: the contracts say so too
        contract = {
            "id": "sim-contract-1",
            "type": "SMS_OCB",
            "developerId": "sim-developer",
            "applicationId": "sim-application",
            "country": self._country,
            "offerName": "SMS_OCB",
            "availableUnits": units,
            "status": "ACTIVE" if now < self._bundle_expires_at else "EXPIRED",
            "expirationDate": self._bundle_expires_at.isoformat().replace("+00:00", "Z"),
            "creationDate": self._created_at.isoformat().replace("+00:00", "Z"),
            "lastUpdateDate": now.isoformat().replace("+00:00", "Z"),
        }
        if self._legacy_contracts:
            return _json_reply(
                200,
                {
                    "partnerContracts": {
                        "partnerId": "sim-developer",
                        "contracts": [
                            {"service": "SMS_OCB", "contractDescription": "", "serviceContracts": [contract]}
                        ],
                    }
                },
            )
        return _json_reply(200, [contract])
