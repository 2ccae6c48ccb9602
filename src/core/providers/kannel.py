"""Kannel adapter: `GET cgi-bin/sendsms` with a delivery-report URL carrying our message id.

See docs/providers.md#kannel.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from urllib.parse import quote

import requests

from core import clock
from core.phone import mask_phone
from core.providers.base import (
    Accepted,
    FailureKind,
    ProviderError,
    classify_http,
    classify_transport,
    redact,
)
from core.texts import sms_encoding

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
# Kannel expands `%<letter>` and `%#…#` in a dlr-url; anything else percent-encoded passes through untouched.
_KANNEL_ESCAPE = re.compile(r"%[A-Za-z#]")
# Mask 27 = delivered (1) + not delivered (2) + SMSC ack (8) + SMSC reject (16), as RapidPro/courier ask.
DLR_MASK = 27


class KannelProvider:
    """Sends through a Kannel smsbox; delivery reports come back to `dlr_url_base` tagged with our message id."""

    name = "kannel"

    def __init__(
        self,
        *,
        sendsms_url: str,
        username: str,
        password: str,
        sender: str,
        dlr_url_base: str,
        connect_timeout: float,
        read_timeout: float,
        dlr_token: Callable[[str], str] | None = None,
        session: requests.Session | None = None,
    ) -> None:
        """`dlr_url_base` is the receipt endpoint, e.g. `https://…/kannel`; `dlr_token` gives the token each SMS's
        dlr-url carries, from our id for it."""
        if not sendsms_url.startswith(("http://", "https://")):
            raise ValueError("sendsms_url must be an http(s) URL")
        if not dlr_url_base.startswith(("http://", "https://")):
            raise ValueError("dlr_url_base must be an http(s) URL")
        if _KANNEL_ESCAPE.search(dlr_url_base):
            raise ValueError("dlr_url_base must not contain '%' followed by a letter or '#': Kannel would expand it")
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self._url = sendsms_url
        self._username = username
        self._password = password
        self._sender = sender
        self._dlr_url_base = dlr_url_base
        self._dlr_token = dlr_token
        self._timeout = (connect_timeout, read_timeout)
        self._session = session or requests.Session()

    def __repr__(self) -> str:
        return f"KannelProvider(sendsms_url={self._url!r}, sender={self._sender!r})"

    def close(self) -> None:
        """Release the HTTP connections."""
        self._session.close()

    def dlr_url(self, message_id: str) -> str:
        """The dlr-url Kannel will call: ours plus `message_id`, `type=%d` (the DLR bit) and `smsc_id=%F`."""
        encoded_id = quote(message_id, safe="")
        if _KANNEL_ESCAPE.search(encoded_id):
            # Only non-ASCII ids encode to %A…%F, which Kannel would take for its own escapes.
            raise ProviderError(FailureKind.PERMANENT, "invalid_message_id", "message id must be ASCII for Kannel")
        separator = "&" if "?" in self._dlr_url_base else "?"
        token = f"token={self._dlr_token(message_id)}&" if self._dlr_token is not None else ""
        return f"{self._dlr_url_base}{separator}{token}message_id={encoded_id}&type=%d&smsc_id=%F"

    def send(
        self,
        *,
        to: str,
        text: str,
        message_id: str,
        before_request: Callable[[], None] = lambda: None,
        valid_until: datetime | None = None,
    ) -> Accepted:
        """Submit one SMS; a 2xx reply (`0: Accepted`, `3: Queued`) → Accepted with our id, else ProviderError.

        With `valid_until`, the request carries a `validity` in whole minutes from the request (`validity_minutes`):
        bearerbox drops a message it held that long (its link down, `3: Queued`) with a type-16 DLR."""
        if not _E164.match(to):
            raise ProviderError(FailureKind.PERMANENT, "invalid_recipient", f"not an E.164 number: {mask_phone(to)}")
        if not text:
            raise ProviderError(FailureKind.PERMANENT, "empty_text", "refusing to send an empty SMS")
        if not self._username or not self._password:
            # Checked here rather than at construction so that an empty secret holds the queue instead of crashing.
            raise ProviderError(
                FailureKind.PROVIDER_WIDE, "missing_credentials", "Kannel username or password is empty"
            )
        params = {
            "username": self._username,
            "password": self._password,
            "from": self._sender,
            "to": to,
            "text": text,
            "charset": "UTF-8",
            "coding": "0" if sms_encoding(text) == "GSM-7" else "2",
            "dlr-mask": str(DLR_MASK),
            "dlr-url": self.dlr_url(message_id),
        }
        before_request()
        if valid_until is not None:
            params["validity"] = str(validity_minutes(valid_until, clock.now()))
        try:
            response = self._session.get(self._url, params=params, timeout=self._timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise classify_transport(exc) from None
        if 200 <= response.status_code <= 299:
            return Accepted(provider=self.name, provider_message_id=message_id)
        reply = " ".join(response.text.split())
        if response.status_code == 403:
            # "Authorization failed" is the account. "Not routable. Do not try again." is a black-listed number, but
            # also every number while the SMSC is stopped (maintenance) or has no route: transient, so a run of them
            # opens the circuit and the next provider takes the traffic; a black-listed number uses its retries.
            kind = FailureKind.PROVIDER_WIDE if "authorization failed" in reply.lower() else FailureKind.TRANSIENT
            raise ProviderError(kind, "http_403", f"HTTP 403: {redact(reply)}")
        raise classify_http(response.status_code, reply, response.headers)

    def balance(self) -> None:
        """Kannel keeps no balance."""
        return None

    def answers(self) -> bool:
        """Always True: smsbox has no request that sends nothing and reaches the SMSC, so a probe is a real SMS."""
        return True


def validity_minutes(valid_until: datetime, now: datetime) -> int:
    """Kannel's `validity` for an SMS wanted until `valid_until`, requested at `now`: the whole minutes left, rounded
    down so that a held message never goes out after then; at least 1, the least it can express (bearerbox takes 0
    as expiring within the second, and an SMPP SMSC would be handed a validity already past)."""
    return max(1, int((valid_until - now).total_seconds() // 60))
