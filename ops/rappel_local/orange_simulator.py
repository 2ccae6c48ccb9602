"""A local Orange SMS API over real HTTP, for the embedded runtime, `rappel simulate` and the integration tests.

It speaks the wire contract of docs/providers.md#orange-sms-api (OAuth v3 token, send, contracts, both error shapes,
delivery receipts) and adds what a test needs: faults from the scenario's `provider` block, a rate limit, latency
and token expiry measured on an injected clock (virtual in simulations), and a log of every send it accepted.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hmac
import json
import logging
import math
import re
import secrets
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import requests

from core.clock import Clock
from core.providers.orange import SENDER_NAME
from rappel_local.provider_simulator import Fault, ProviderSimulator, ReceivedRequest, Reply, SentRecord
from rappel_local.scenario import FaultSpec, ProviderSpec, provider_spec, scenario_error

# The fault and scenario types are imported from here by callers that predate the shared modules.
__all__ = [
    "DELIVERED",
    "IMPOSSIBLE",
    "Fault",
    "FaultSpec",
    "OrangeSimulator",
    "ProviderSpec",
    "ReceivedRequest",
    "SentRecord",
    "scenario_error",
]

logger = logging.getLogger(__name__)

_TEL = re.compile(r"^tel:(\+[1-9]\d{6,14})$")
_SENDER = re.compile(r"^tel:\+\d{4,15}$")
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


def _checked_send(
    path_sender: str, headers: Mapping[str, str], data: Any, provisioned: frozenset[str] | None = None
) -> Reply | tuple[str, str, re.Match[str], str, str | None]:
    """A send request's (sender, address, its tel: match, text, sender name), or the error Orange answers
    (`provisioned`: the account's sender addresses, None for any)."""
    if "application/json" not in _header(headers, "Content-Type"):
        return _json_reply(400, _oneapi_body("SVC0001", "Content-Type must be application/json"))
    request = data.get("outboundSMSMessageRequest") if isinstance(data, dict) else None
    if not isinstance(data, dict):
        return _json_reply(400, _oneapi_body("SVC0001", "the body is not a JSON object"))
    if not isinstance(request, dict):
        return _json_reply(400, _oneapi_body("SVC0002", "outboundSMSMessageRequest"))
    sender = unquote(path_sender)
    if not _SENDER.match(sender) or request.get("senderAddress") != sender or sender not in (provisioned or {sender}):
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


def _json_reply(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status, body, dict(headers or {}))


def _fault_reply(fault: Fault) -> Reply:
    """Orange's answer to a `status` fault: a OneAPI body with `message_id`, else a gateway body."""
    status = fault.status or 500
    if fault.message_id is not None:
        return _json_reply(status, _oneapi_body(fault.message_id, "address"))
    code = fault.code if fault.code is not None else _DEFAULT_GATEWAY_CODE.get(status)
    extra = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
    if status == 429 and not extra:
        extra = {"Retry-After": "1"}
    return _json_reply(status, _gateway_body(code, status), extra)


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


class OrangeSimulator(ProviderSimulator):
    """Orange's SMS API on 127.0.0.1 (random port); use as a context manager or call start()/stop()."""

    name = "orange"

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
        sender_addresses: Iterable[str] | None = None,
    ) -> None:
        """Faults apply to the send endpoint, except an `any_request` timeout (the gateway hung): its token and
        contracts requests get no answer either. `sender_addresses`: those the account may send from (a send from
        another is refused with SVC0004 naming `senderAddress`, as Orange does); None for any.

        The rate limit is a token bucket holding one second's worth of requests (at least one), judged on the clock's
        timestamps rather than on arrival order: a send is refused with 429 when admitting it would put more than
        `burst + rate × span` sends into some span of time. Senders run side by side in virtual time (each from the
        same instant) are therefore judged as if they had really run concurrently.
        """
        if rate_limit_per_second is not None and rate_limit_per_second <= 0:
            raise ValueError("rate_limit_per_second must be > 0")
        if token_lifetime_seconds <= 0 or available_units < 0:
            raise ValueError("units must be >= 0, token lifetime > 0")
        super().__init__(
            clock=clock,
            latency_ms=latency_ms,
            receipt_delay_seconds=receipt_delay_seconds,
            faults=faults,
            undeliverable=undeliverable,
        )
        self._client_id = client_id
        self._client_secret = client_secret
        self._token_lifetime = token_lifetime_seconds
        self._units = available_units
        self._bundle_expires_at = bundle_expires_at or clock.now() + timedelta(days=365)
        self._country = country
        self._senders = frozenset(sender_addresses) if sender_addresses is not None else None
        self._expires_in_as_string = expires_in_as_string
        self._legacy_contracts = contracts_legacy_shape
        self._rate = rate_limit_per_second
        self._burst = max(1.0, rate_limit_per_second or 0.0)
        # Spans longer than this are not examined: a stream conforming over every shorter span stays close enough.
        self._rate_horizon = max(2.0, 2 * self._burst / rate_limit_per_second) if rate_limit_per_second else 0.0

        self._tokens: dict[str, datetime] = {}
        self._admitted_times: list[float] = []
        self._latest_admitted = -math.inf

    @classmethod
    def from_scenario(
        cls,
        provider_cfg: Mapping[str, Any],
        clock: Clock,
        client_id: str,
        client_secret: str,
        rate_limit_per_second: float | None,
        where: str = "provider",
    ) -> OrangeSimulator:
        """Build from a scenario's `provider` object (`ProviderSpec`); raises ValueError naming the bad field.

        `rate_limit_per_second` is used unless the object sets its own.
        """
        spec = provider_spec(provider_cfg, cls.name, where)
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

    # What the simulator saw.

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

    # Receipts and HTTP.

    def _post_receipt(self, payload: Any, url: str | None) -> requests.Response:
        if url is None:
            raise ValueError("Orange receipts need the receipt URL")
        return self._receipt_session.post(url, json=payload, timeout=(3.05, 10))

    def _endpoint(self, path: str) -> str:
        return "send" if _SEND_PATH.match(path) else _ENDPOINTS.get(path, "unknown")

    def _internal_error(self) -> Reply:
        return _json_reply(500, _gateway_body(1, 500))

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
        path = urlsplit(raw_path).path
        if endpoint == "unknown":
            return _json_reply(404, {"message": "Resource not found", "description": f"No resource at {path}"})
        send_match = _SEND_PATH.match(path)
        if (endpoint, method) == ("send", "POST") and send_match:
            return self._send(now, nth, raw_path, send_match.group(1), headers, body)
        if endpoint in {"token", "contracts"} and self._hung(now):
            return None
        if (endpoint, method) == ("token", "POST"):
            return self._token(now, headers, body)
        if (endpoint, method) == ("contracts", "GET"):
            return self._contracts(now, raw_path, headers)
        return _json_reply(405, {"message": "Method not allowed", "description": f"{method} {path}"})

    def _token(self, now: datetime, headers: Mapping[str, str], body: bytes) -> Reply:
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

    def _check_api_headers(self, now: datetime, headers: Mapping[str, str]) -> Reply | None:
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
    ) -> Reply | None:
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

        faulted, reply = self._faulted(
            now, recipient, nth, lambda: self._process_send(now, raw_path, path_sender, headers, data), _fault_reply
        )
        if faulted:
            return reply
        return self._process_send(now, raw_path, path_sender, headers, data)

    def _process_send(
        self, now: datetime, raw_path: str, path_sender: str, headers: Mapping[str, str], data: Any
    ) -> Reply:
        checked = _checked_send(path_sender, headers, data, self._senders)
        if isinstance(checked, Reply):
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
            status = IMPOSSIBLE if recipient in self._undeliverable else DELIVERED
            receipt = {
                "deliveryInfoNotification": {
                    "callbackData": message_id,
                    "deliveryInfo": {"address": address, "deliveryStatus": status},
                }
            }
            self._schedule_receipt(now + self._receipt_delay, receipt)
        echo: dict[str, Any] = {"address": [address], "senderAddress": sender}
        if sender_name is not None:
            echo["senderName"] = sender_name
        echo["outboundSMSTextMessage"] = {"message": text}
        echo["resourceURL"] = f"{self._base_url}/smsmessaging/v1/outbound/{sender}/requests/{message_id}"
        return _json_reply(201, {"outboundSMSMessageRequest": echo})

    def _contracts(self, now: datetime, raw_path: str, headers: Mapping[str, str]) -> Reply:
        refused = self._check_api_headers(now, headers)
        if refused is not None:
            return refused
        country = parse_qs(urlsplit(raw_path).query).get("country", [""])[0]
        if country and country != self._country:
            return _json_reply(200, [] if not self._legacy_contracts else {"partnerContracts": {"contracts": []}})
        with self._lock:
            units = self._units
        if self._provider_wide_fault(now, 403):
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
