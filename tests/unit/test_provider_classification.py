"""Provider error classification (docs/providers.md#errors-and-their-classification): pure, no sockets."""

from __future__ import annotations

import http.client
import json
import pickle
import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
import requests
import urllib3.exceptions
from hypothesis import given
from hypothesis import strategies as st

from core.providers import (
    FailureKind,
    ProviderError,
    classify_http,
    classify_transport,
    parse_error_body,
    parse_retry_after,
)

pytestmark = pytest.mark.unit

NOW = datetime(2027, 3, 1, 8, 0, tzinfo=UTC)


def gateway(code: Any, message: str = "msg", description: str = "desc") -> dict[str, Any]:
    return {"code": code, "message": message, "description": description}


def oneapi(message_id: str, key: str = "serviceException", variables: list[str] | None = None) -> dict[str, Any]:
    return {
        "requestError": {
            key: {
                "messageId": message_id,
                "text": "No valid addresses provided in message part %1",
                "variables": variables,
            }
        }
    }


# Every row of docs/providers.md#errors-and-their-classification plus the brief's rules for the rest.
TABLE = [
    # 401: 40/42 were already refreshed-and-replayed by the adapter, so another attempt later may work.
    (401, gateway(40, "Missing credentials"), FailureKind.TRANSIENT, "401/40"),
    (401, gateway(42, "Expired credentials"), FailureKind.TRANSIENT, "401/42"),
    (401, gateway("42"), FailureKind.TRANSIENT, "401/42"),
    (401, gateway(41, "Invalid credentials"), FailureKind.PROVIDER_WIDE, "401/41"),
    (401, gateway("41"), FailureKind.PROVIDER_WIDE, "401/41"),
    (
        401,
        {"error": "invalid_client", "error_description": "The requested service needs credentials"},
        FailureKind.PROVIDER_WIDE,
        "invalid_client",
    ),
    (401, None, FailureKind.PROVIDER_WIDE, "http_401"),
    # One number's fault, or the account's (every request alike: hold the provider, fail over).
    (400, oneapi("SVC0004", variables=["address"]), FailureKind.PERMANENT, "SVC0004"),
    (400, oneapi("SVC0004", variables=["senderAddress"]), FailureKind.PROVIDER_WIDE, "SVC0004"),
    (400, oneapi("SVC0002", variables=["senderName"]), FailureKind.PROVIDER_WIDE, "SVC0002"),
    (400, oneapi("SVC0001"), FailureKind.PERMANENT, "SVC0001"),
    (400, oneapi("SVC0002"), FailureKind.PERMANENT, "SVC0002"),
    (400, oneapi("POL1102", key="policyException"), FailureKind.PERMANENT, "POL1102"),
    (400, None, FailureKind.PERMANENT, "http_400"),
    # 403: this recipient or the whole account; the sender asks the balance which.
    (403, None, FailureKind.REFUSED, "http_403"),
    (403, gateway(50, "Access denied"), FailureKind.REFUSED, "403/50"),
    (403, oneapi("POL0001", key="policyException"), FailureKind.REFUSED, "POL0001"),
    (404, None, FailureKind.PROVIDER_WIDE, "http_404"),
    (406, gateway(None, "Not acceptable"), FailureKind.PROVIDER_WIDE, "http_406"),
    (429, gateway(53, "Too many requests"), FailureKind.THROTTLED, "429/53"),
    (500, gateway(1, "Internal error"), FailureKind.TRANSIENT, "500/1"),
    (502, None, FailureKind.TRANSIENT, "http_502"),
    (503, gateway(5, "Service unavailable"), FailureKind.TRANSIENT, "503/5"),
    (503, None, FailureKind.TRANSIENT, "http_503"),
    (504, "<html>Gateway Timeout</html>", FailureKind.TRANSIENT, "http_504"),
    (408, None, FailureKind.TRANSIENT, "http_408"),
    (409, None, FailureKind.PERMANENT, "http_409"),
    (413, None, FailureKind.PERMANENT, "http_413"),
    (422, gateway(99), FailureKind.PERMANENT, "422/99"),
    (301, None, FailureKind.PROVIDER_WIDE, "http_301"),
    (200, "not json", FailureKind.AMBIGUOUS, "http_200"),
]


@pytest.mark.parametrize(("status", "body", "kind", "code"), TABLE)
def test_research_table(status: int, body: Any, kind: FailureKind, code: str) -> None:
    error = classify_http(status, body, {}, now=NOW)
    assert isinstance(error, ProviderError)
    assert (error.kind, error.code) == (kind, code)
    assert error.detail.startswith(f"HTTP {status}")


@pytest.mark.parametrize(("status", "body", "kind", "code"), [row for row in TABLE if isinstance(row[1], dict)])
def test_body_as_json_text_or_bytes_classifies_the_same(status: int, body: Any, kind: FailureKind, code: str) -> None:
    as_text = json.dumps(body)
    assert classify_http(status, as_text, None, now=NOW).code == code
    assert classify_http(status, as_text.encode(), None, now=NOW).code == code
    assert classify_http(status, as_text.encode(), None, now=NOW).kind == kind


def test_both_body_shapes_are_read() -> None:
    gw = parse_error_body(gateway(42, "Expired credentials", "out-of-date"))
    assert gw.gateway_code == 42 and gw.oneapi_message_id is None
    assert "Expired credentials" in gw.text and "out-of-date" in gw.text

    svc = parse_error_body(oneapi("SVC0004", variables=["senderAddress"]))
    assert svc.oneapi_message_id == "SVC0004" and svc.gateway_code is None
    assert "senderAddress" in svc.text

    pol = parse_error_body(oneapi("POL1102", key="policyException"))
    assert pol.oneapi_message_id == "POL1102"

    oauth = parse_error_body({"error": "invalid_client", "error_description": "Unable to decode Basic authorization."})
    assert oauth.oauth_error == "invalid_client" and "decode" in oauth.text


@pytest.mark.parametrize(
    "body",
    [
        None,
        b"",
        b"\xff\xfe\x00garbage",
        "",
        "<html><body>502 Bad Gateway</body></html>",
        "{not json",
        "[1, 2, 3]",
        "42",
        "null",
        [],
        [{"code": 41}],
        17,
        {"requestError": "oops"},
        {"requestError": {"serviceException": "oops"}},
        {"requestError": {"serviceException": {"messageId": 5, "text": None, "variables": "x"}}},
        {"requestError": {"policyException": {}}},
        {"code": None},
        {"code": {"nested": True}},
        {"code": True},
        {"code": "abc"},
        {"error": None},
        {"error": 12},
    ],
)
def test_unparseable_bodies_do_not_crash(body: Any) -> None:
    for status in (400, 401, 403, 429, 503):
        error = classify_http(status, body, None, now=NOW)
        assert error.code == f"http_{status}"
    # With no usable code a 401 holds the queue (we cannot tell it is a mere expiry), a 400 fails the message.
    assert classify_http(401, body, None, now=NOW).kind is FailureKind.PROVIDER_WIDE
    assert classify_http(400, body, None, now=NOW).kind is FailureKind.PERMANENT


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@given(
    status=st.integers(min_value=100, max_value=599),
    body=json_values | st.binary() | st.text(),
    retry_after=st.none() | st.text(),
)
def test_never_crashes_and_kind_follows_status(status: int, body: Any, retry_after: str | None) -> None:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    error = classify_http(status, body, headers, now=NOW)
    assert isinstance(error.kind, FailureKind)
    assert error.code
    if status == 429:
        assert error.kind is FailureKind.THROTTLED  # whatever the body's code (a OneAPI POL0001, say)
    if 500 <= status <= 599:
        assert error.kind is FailureKind.TRANSIENT
    if status == 403:
        assert error.kind is FailureKind.REFUSED
    if status in (404, 406):
        assert error.kind is FailureKind.PROVIDER_WIDE
    if error.retry_after_seconds is not None:
        assert error.retry_after_seconds >= 0


def test_retry_after_seconds_and_http_date() -> None:
    assert classify_http(429, gateway(53), {"Retry-After": "1"}, now=NOW).retry_after_seconds == 1.0
    assert classify_http(503, None, {"retry-after": " 120 "}, now=NOW).retry_after_seconds == 120.0
    in_30s = format_datetime(NOW + timedelta(seconds=30), usegmt=True)
    assert classify_http(503, None, {"Retry-After": in_30s}, now=NOW).retry_after_seconds == 30.0
    assert classify_http(429, None, {}, now=NOW).retry_after_seconds is None


def test_retry_after_ignored_on_non_transient_errors() -> None:
    assert classify_http(400, oneapi("SVC0004"), {"Retry-After": "5"}, now=NOW).retry_after_seconds is None
    assert classify_http(403, None, {"Retry-After": "5"}, now=NOW).retry_after_seconds is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("1", 1.0),
        ("2.5", 2.5),
        ("-3", None),
        ("soon", None),
        ("", None),
        (None, None),
        ("inf", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
        (format_datetime(NOW + timedelta(minutes=2), usegmt=True), 120.0),
        ("Sun, 32 Foo 2027 99:99:99 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_phone_numbers_never_reach_the_detail() -> None:
    body = oneapi("SVC0004", variables=["tel:+2250700000001"])
    error = classify_http(400, body, None, now=NOW)
    assert "2250700000001" not in error.detail
    assert "+225******01" in error.detail  # masked the one way the project masks (core.phone.mask_phone)


def test_long_bodies_are_truncated() -> None:
    error = classify_http(503, "x" * 10_000, None, now=NOW)
    assert len(error.detail) < 400


def test_provider_error_pickles_and_prints() -> None:
    error = ProviderError(FailureKind.TRANSIENT, "http_503", "HTTP 503", 2.0)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.kind, copy.code, copy.detail, copy.retry_after_seconds) == (
        FailureKind.TRANSIENT,
        "http_503",
        "HTTP 503",
        2.0,
    )
    assert str(error) == "transient http_503: HTTP 503 (retry after 2s)"


# Transport failures, built the way requests/urllib3 wrap them.

SECRET_URL = "/cgi-bin/sendsms?username=u&password=hunter2&to=%2B2250700000001"


def refused() -> requests.exceptions.ConnectionError:
    reason = urllib3.exceptions.NewConnectionError(None, "Failed to establish a new connection: [Errno 111] refused")
    return requests.exceptions.ConnectionError(urllib3.exceptions.MaxRetryError(None, SECRET_URL, reason))


def unresolvable() -> requests.exceptions.ConnectionError:
    reason = urllib3.exceptions.NameResolutionError("api.orange.com", None, socket.gaierror(-2, "Name unknown"))
    return requests.exceptions.ConnectionError(urllib3.exceptions.MaxRetryError(None, SECRET_URL, reason))


def dropped() -> requests.exceptions.ConnectionError:
    cause = http.client.RemoteDisconnected("Remote end closed connection without response")
    return requests.exceptions.ConnectionError(urllib3.exceptions.ProtocolError("Connection aborted.", cause))


def reset_while_reading() -> requests.exceptions.ConnectionError:
    cause = ConnectionResetError(104, "Connection reset by peer")
    return requests.exceptions.ConnectionError(urllib3.exceptions.ProtocolError("Connection aborted.", cause))


def read_timeout_in_body() -> requests.exceptions.ConnectionError:
    return requests.exceptions.ConnectionError(urllib3.exceptions.ReadTimeoutError(None, SECRET_URL, "read timed out"))


@pytest.mark.parametrize(
    ("make", "kind", "code"),
    [
        (lambda: requests.exceptions.ConnectTimeout(SECRET_URL), FailureKind.TRANSIENT, "connect_timeout"),
        (refused, FailureKind.TRANSIENT, "connect_error"),
        (unresolvable, FailureKind.TRANSIENT, "connect_error"),
        (
            lambda: requests.exceptions.ConnectionError(ConnectionRefusedError(111, "refused")),
            FailureKind.TRANSIENT,
            "connect_error",
        ),
        # Handshake or reply: nothing says which (tests/integration/test_provider_tls.py raises each for real).
        (lambda: requests.exceptions.SSLError(SECRET_URL), FailureKind.AMBIGUOUS, "connection_dropped"),
        (lambda: requests.exceptions.ReadTimeout(SECRET_URL), FailureKind.AMBIGUOUS, "read_timeout"),
        (read_timeout_in_body, FailureKind.AMBIGUOUS, "read_timeout"),
        (dropped, FailureKind.AMBIGUOUS, "connection_dropped"),
        (reset_while_reading, FailureKind.AMBIGUOUS, "connection_dropped"),
        (lambda: requests.exceptions.ChunkedEncodingError(SECRET_URL), FailureKind.AMBIGUOUS, "connection_dropped"),
        (lambda: requests.exceptions.ConnectionError(SECRET_URL), FailureKind.AMBIGUOUS, "connection_dropped"),
        (lambda: requests.exceptions.InvalidURL(SECRET_URL), FailureKind.PROVIDER_WIDE, "bad_request_setup"),
        (lambda: requests.exceptions.MissingSchema(SECRET_URL), FailureKind.PROVIDER_WIDE, "bad_request_setup"),
    ],
)
def test_transport_failures(make: Any, kind: FailureKind, code: str) -> None:
    error = classify_transport(make())
    assert (error.kind, error.code) == (kind, code)
    # No reply came (an open circuit's probe then risks no SMS), except for a request that could not be made at all.
    assert error.unanswered is (code != "bad_request_setup")
    assert not classify_http(503, None, {}, now=NOW).unanswered
    assert "hunter2" not in str(error) and "2250700000001" not in str(error)
