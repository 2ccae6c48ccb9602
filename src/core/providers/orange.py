"""Orange "SMS Africa & Middle East" adapter: the wire contract of docs/providers.md#orange-sms-api.

One recipient per request, OAuth v3 client-credentials token cached in-process, the sender `tel:+…`
percent-encoded in the path and repeated un-encoded in the body. Orange has no idempotency key, so a
request that may have left is reported as AMBIGUOUS and never replayed here.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from core.clock import Clock
from core.phone import mask_phone
from core.providers.base import (
    Accepted,
    Balance,
    FailureKind,
    ProviderError,
    classify_http,
    classify_transport,
    parse_error_body,
)

logger = logging.getLogger(__name__)

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_SENDER = re.compile(r"^tel:\+\d{4,15}$")
# The one rule for an Orange sender name (settings, the adapter and the simulator use it): up to 11 letters, digits
# or spaces, as alphanumeric sender ids allow; empty means none (the request then carries no senderName).
SENDER_NAME = re.compile(r"^[A-Za-z0-9 ]{0,11}$")
_COUNTRY = re.compile(r"^([A-Z]{3})?$")
# Orange documents a one-hour token; used when its `expires_in` cannot be read.
_DEFAULT_TOKEN_SECONDS = 3600
_REFRESH_MARGIN = timedelta(minutes=5)


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _parse_expires_in(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and value.strip().isdigit() and int(value) > 0:
        return int(value)
    logger.warning("orange token response has no usable expires_in; assuming %ss", _DEFAULT_TOKEN_SECONDS)
    return _DEFAULT_TOKEN_SECONDS


def _parse_units(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _parse_date(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _contracts(data: Any) -> list[dict[str, Any]]:
    """Both shapes: the current top-level array, and `partnerContracts.contracts[].serviceContracts[]`."""
    if isinstance(data, list):
        return [c for c in data if isinstance(c, dict)]
    if not isinstance(data, dict):
        return []
    partner = data.get("partnerContracts")
    contracts = partner.get("contracts") if isinstance(partner, dict) else None
    if not isinstance(contracts, list):
        return []
    found: list[dict[str, Any]] = []
    for contract in contracts:
        if not isinstance(contract, dict):
            continue
        services = contract.get("serviceContracts")
        if isinstance(services, list):
            found.extend(s for s in services if isinstance(s, dict))
        elif "availableUnits" in contract:
            found.append(contract)
    return found


def _message_id_from(body: Any) -> str | None:
    request = body.get("outboundSMSMessageRequest") if isinstance(body, dict) else None
    resource_url = request.get("resourceURL") if isinstance(request, dict) else None
    if not isinstance(resource_url, str):
        return None
    segment = urlsplit(resource_url.strip()).path.rstrip("/").rsplit("/", 1)[-1]
    return segment or None


def _token_error(error: ProviderError) -> ProviderError:
    """A token request carries no SMS: it can never be ambiguous, and its refusal is never one message's fault."""
    kind = {
        FailureKind.AMBIGUOUS: FailureKind.TRANSIENT,
        FailureKind.PERMANENT: FailureKind.PROVIDER_WIDE,
        FailureKind.REFUSED: FailureKind.PROVIDER_WIDE,
    }.get(error.kind, error.kind)
    return ProviderError(kind, error.code, "token request: " + error.detail, error.retry_after_seconds)


class OrangeProvider:
    """Sends through Orange's SMS API; thread-safe, one instance per process is enough."""

    name = "orange"

    def __init__(
        self,
        *,
        base_url: str,
        client_id: str,
        client_secret: str,
        sender_address: str,
        sender_name: str,
        connect_timeout: float,
        read_timeout: float,
        clock: Clock,
        session: requests.Session | None = None,
        country: str = "",
    ) -> None:
        """`country` (ISO-3166 alpha-3, e.g. CIV) narrows `balance()` to that country's bundle."""
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http(s) URL")
        if not _SENDER.match(sender_address):
            raise ValueError("sender_address must look like tel:+2250000")
        if not SENDER_NAME.match(sender_name):
            raise ValueError("sender_name must be at most 11 letters, digits or spaces")
        if not _COUNTRY.match(country):
            raise ValueError("country must be an ISO-3166 alpha-3 code such as CIV, or empty")
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self._base = base_url.rstrip("/")
        self._has_credentials = bool(client_id and client_secret)
        self._basic = base64.b64encode(f"{client_id}:{client_secret}".encode()).decode("ascii")
        self._sender_address = sender_address
        self._sender_name = sender_name.strip()
        self._country = country
        self._timeout = (connect_timeout, read_timeout)
        self._clock = clock
        self._session = session or requests.Session()
        self._send_url = f"{self._base}/smsmessaging/v1/outbound/{quote(sender_address, safe='')}/requests"
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at: datetime | None = None

    def __repr__(self) -> str:
        return f"OrangeProvider(base_url={self._base!r}, sender_address={self._sender_address!r})"

    def close(self) -> None:
        """Release the HTTP connections."""
        self._session.close()

    def send(
        self,
        *,
        to: str,
        text: str,
        message_id: str,
        before_request: Callable[[], None] = lambda: None,
        valid_until: datetime | None = None,
    ) -> Accepted:
        """POST one SMS; 2xx → Accepted with the id at the end of `resourceURL`, anything else → ProviderError.

        `message_id` is only used in logs: Orange's contract has no field for it, nor for `valid_until` (Orange keeps
        retrying an undelivered SMS on its side). `before_request` runs after the token is at hand, right before each
        POST (the replay after a refused token too).
        """
        if not _E164.match(to):
            raise ProviderError(FailureKind.PERMANENT, "invalid_recipient", f"not an E.164 number: {mask_phone(to)}")
        if not text:
            raise ProviderError(FailureKind.PERMANENT, "empty_text", "refusing to send an empty SMS")
        request: dict[str, Any] = {"address": f"tel:{to}", "senderAddress": self._sender_address}
        if self._sender_name:
            request["senderName"] = self._sender_name
        request["outboundSMSTextMessage"] = {"message": text}
        response = self._authorized(
            "POST", self._send_url, json_body={"outboundSMSMessageRequest": request}, before_request=before_request
        )
        if 200 <= response.status_code <= 299:
            provider_message_id = _message_id_from(_json_or_none(response))
            if provider_message_id is None:
                logger.warning(
                    "orange accepted message %s (HTTP %s) without a usable resourceURL; receipts cannot match it",
                    message_id,
                    response.status_code,
                )
            return Accepted(provider=self.name, provider_message_id=provider_message_id)
        raise classify_http(response.status_code, _json_or_none(response), response.headers, now=self._clock.now())

    def balance(self) -> Balance:
        """The ACTIVE bundle's units and expiry (`GET /sms/admin/v1/contracts`); raises ProviderError on failure.

        No ACTIVE contract → the first contract's figures and status (e.g. EXPIRED); no contract at all → 0 units.
        """
        params = {"country": self._country} if self._country else None
        try:
            response = self._authorized("GET", f"{self._base}/sms/admin/v1/contracts", params=params)
        except ProviderError as exc:
            # A read that may have reached Orange changes nothing there: asking again is always safe.
            if exc.kind is FailureKind.AMBIGUOUS:
                raise ProviderError(FailureKind.TRANSIENT, exc.code, exc.detail) from exc
            raise
        if not 200 <= response.status_code <= 299:
            raise classify_http(response.status_code, _json_or_none(response), response.headers, now=self._clock.now())
        data = _json_or_none(response)
        if not isinstance(data, list | dict):
            raise ProviderError(FailureKind.TRANSIENT, "bad_response", "contracts reply is not JSON")
        contracts = _contracts(data)
        if self._country:
            contracts = [c for c in contracts if c.get("country") in (None, self._country)]
        if not contracts:
            return Balance(available_units=0, expires_at=None, status=None)
        active = [c for c in contracts if str(c.get("status", "")).upper() == "ACTIVE"]
        if not active:
            first = contracts[0]
            status = first.get("status")
            return Balance(
                available_units=_parse_units(first.get("availableUnits")),
                expires_at=_parse_date(first.get("expirationDate")),
                status=status if isinstance(status, str) else None,
            )
        units = [u for u in (_parse_units(c.get("availableUnits")) for c in active) if u is not None]
        expiries = [d for d in (_parse_date(c.get("expirationDate")) for c in active) if d is not None]
        return Balance(
            available_units=sum(units) if units else None,
            expires_at=min(expiries) if expiries else None,
            status="ACTIVE",
        )

    def answers(self) -> bool:
        """Whether Orange answers its contracts read (its token request first, when due) with any HTTP reply."""
        try:
            self._authorized("GET", f"{self._base}/sms/admin/v1/contracts")
        except ProviderError as exc:
            return not exc.unanswered
        return True

    def _authorized(
        self,
        method: str,
        url: str,
        *,
        json_body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        before_request: Callable[[], None] = lambda: None,
    ) -> requests.Response:
        token = self._current_token()
        before_request()
        response = self._request(method, url, token, json_body, params)
        if response.status_code == 401:
            parsed = parse_error_body(_json_or_none(response))
            # 41 means the credentials themselves are bad: a new token would be refused too.
            if parsed.gateway_code != 41 and parsed.oauth_error != "invalid_client":
                logger.info(
                    "orange answered 401 (code %s); refreshing the token and replaying once", parsed.gateway_code
                )
                token = self._current_token(stale=token)
                before_request()
                response = self._request(method, url, token, json_body, params)
        return response

    def _request(
        self,
        method: str,
        url: str,
        token: str,
        json_body: dict[str, Any] | None,
        params: dict[str, str] | None,
    ) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        if json_body is not None:
            headers["Content-Type"] = "application/json"
        # ASCII with \u escapes, as the PHP clients that are known to work send it.
        data = json.dumps(json_body).encode("ascii") if json_body is not None else None
        try:
            return self._session.request(
                method, url, headers=headers, data=data, params=params, timeout=self._timeout, allow_redirects=False
            )
        except requests.RequestException as exc:
            raise classify_transport(exc) from None

    def _current_token(self, *, stale: str | None = None) -> str:
        """The cached token, fetched again when near expiry or when `stale` (just refused) is still the cached one."""
        with self._lock:
            now = self._clock.now()
            if (
                self._token is not None
                and self._token != stale
                and self._refresh_at is not None
                and now < self._refresh_at
            ):
                return self._token
            token, lifetime = self._fetch_token()
            margin = min(_REFRESH_MARGIN, timedelta(seconds=lifetime / 2))
            self._token = token
            self._refresh_at = now + timedelta(seconds=lifetime) - margin
            logger.info("orange token obtained, valid %ss", lifetime)
            return token

    def _fetch_token(self) -> tuple[str, int]:
        if not self._has_credentials:
            # Checked here rather than at construction so that an empty secret holds the queue instead of crashing.
            raise ProviderError(FailureKind.PROVIDER_WIDE, "missing_credentials", "Orange client id or secret is empty")
        headers = {
            "Authorization": f"Basic {self._basic}",
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        try:
            response = self._session.post(
                f"{self._base}/oauth/v3/token",
                headers=headers,
                data="grant_type=client_credentials",
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise _token_error(classify_transport(exc)) from None
        body = _json_or_none(response)
        if not 200 <= response.status_code <= 299:
            raise _token_error(classify_http(response.status_code, body, response.headers, now=self._clock.now()))
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise ProviderError(FailureKind.TRANSIENT, "bad_token_response", "token reply has no access_token")
        return token, _parse_expires_in(body.get("expires_in") if isinstance(body, dict) else None)
