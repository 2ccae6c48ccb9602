"""The Kannel adapter against a tiny fake smsbox on 127.0.0.1 that records exactly what it was sent."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from core import clock
from core.clock import VirtualClock
from core.providers import FailureKind, KannelProvider, ProviderError, SmsProvider

pytestmark = pytest.mark.integration

DLR_BASE = "https://receipts.example.org/kannel?token=abc123"
TO = "+2250700000001"


@dataclass
class FakeKannel:
    """Answers every sendsms with `status`/`body` (or drops the connection) and keeps each raw request line."""

    status: int = 202
    body: str = "0: Accepted for delivery"
    drop: bool = False
    requests: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""

    @property
    def last_query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.requests[-1][1]).query, keep_blank_values=True)

    @property
    def last_raw_query(self) -> str:
        return urlsplit(self.requests[-1][1]).query


@pytest.fixture
def kannel() -> Iterator[FakeKannel]:
    fake = FakeKannel()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            fake.requests.append(("GET", self.path))
            if fake.drop:
                self.close_connection = True
                return
            payload = fake.body.encode()
            self.send_response(fake.status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        block_on_close = False

    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/cgi-bin/sendsms"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


def make_provider(url: str, **overrides: Any) -> KannelProvider:
    kwargs: dict[str, Any] = {
        "sendsms_url": url,
        "username": "rappel",
        "password": "pa ss&word",
        "sender": "RAPPEL",
        "dlr_url_base": DLR_BASE,
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
    }
    kwargs.update(overrides)
    return KannelProvider(**kwargs)


@pytest.fixture
def provider(kannel: FakeKannel) -> Iterator[KannelProvider]:
    adapter = make_provider(kannel.url)
    yield adapter
    adapter.close()


def test_is_an_sms_provider_without_balance(provider: KannelProvider) -> None:
    assert isinstance(provider, SmsProvider)
    assert provider.name == "kannel"
    assert provider.balance() is None


def test_exact_query_for_gsm7_text(kannel: FakeKannel, provider: KannelProvider) -> None:
    text = "Rappel: vaccin d'Awa à 9h + 1€ {ok}"
    accepted = provider.send(to=TO, text=text, message_id="msg-42")
    assert kannel.requests[-1][0] == "GET"
    assert urlsplit(kannel.requests[-1][1]).path == "/cgi-bin/sendsms"
    assert kannel.last_query == {
        "username": ["rappel"],
        "password": ["pa ss&word"],
        "from": ["RAPPEL"],
        "to": [TO],
        "text": [text],
        "charset": ["UTF-8"],
        "coding": ["0"],
        "dlr-mask": ["27"],
        "dlr-url": [f"{DLR_BASE}&message_id=msg-42&type=%d&smsc_id=%F"],
    }
    assert (accepted.provider, accepted.provider_message_id) == ("kannel", "msg-42")


def test_non_gsm_text_is_sent_as_ucs2(kannel: FakeKannel, provider: KannelProvider) -> None:
    provider.send(to=TO, text="Rappel: la fête, ç'est demain", message_id="m")
    assert kannel.last_query["coding"] == ["2"]
    assert kannel.last_query["text"] == ["Rappel: la fête, ç'est demain"]


def test_dlr_url_is_encoded_so_kannel_sees_its_escapes_literally(kannel: FakeKannel, provider: KannelProvider) -> None:
    provider.send(to=TO, text="x", message_id="a1#7_day/2027-03-20")
    raw = dict(part.split("=", 1) for part in kannel.last_raw_query.split("&"))
    # On the wire: every reserved character of the dlr-url is escaped, and `%d`/`%F` arrive as `%25d`/`%25F`.
    assert raw["dlr-url"] == (
        "https%3A%2F%2Freceipts.example.org%2Fkannel%3Ftoken%3Dabc123"
        "%26message_id%3Da1%25237_day%252F2027-03-20%26type%3D%25d%26smsc_id%3D%25F"
    )
    # Once Kannel has decoded it: its own escapes are intact, and our id is still URL-encoded inside it.
    decoded = kannel.last_query["dlr-url"][0]
    assert decoded.endswith("&message_id=a1%237_day%2F2027-03-20&type=%d&smsc_id=%F")
    dlr_query = parse_qs(urlsplit(decoded.replace("%d", "8").replace("%F", "abc")).query)
    assert dlr_query == {"token": ["abc123"], "message_id": ["a1#7_day/2027-03-20"], "type": ["8"], "smsc_id": ["abc"]}
    assert unquote(raw["to"]) == TO


def test_dlr_base_without_query_gets_one(kannel: FakeKannel) -> None:
    adapter = make_provider(kannel.url, dlr_url_base="https://receipts.example.org/kannel")
    adapter.send(to=TO, text="x", message_id="m1")
    assert kannel.last_query["dlr-url"] == ["https://receipts.example.org/kannel?message_id=m1&type=%d&smsc_id=%F"]


@pytest.mark.parametrize(
    ("left", "validity"),
    [(timedelta(hours=2, seconds=59), "120"), (timedelta(minutes=1), "1"), (timedelta(seconds=59), "1")],
)
def test_validity_is_the_whole_minutes_left_at_the_request(
    kannel: FakeKannel, provider: KannelProvider, left: timedelta, validity: str
) -> None:
    """bearerbox drops a message it has held past its validity (a link down) with a type-16 DLR: counted from the
    request, rounded down so that it never goes out later than `valid_until`, and at least the 1 minute Kannel can
    express (0 would make a live SMSC refuse it as already expired)."""
    now = datetime(2027, 3, 13, 20, 0, tzinfo=UTC)
    previous = clock.install(VirtualClock(now - timedelta(minutes=5)))
    try:
        # The pace before the request takes 5 minutes: the validity counts from the request, not from the call.
        provider.send(to=TO, text="x", message_id="m", valid_until=now + left, before_request=lambda: clock.sleep(300))
    finally:
        clock.install(previous)
    assert kannel.last_query["validity"] == [validity]


def test_no_validity_without_a_limit(kannel: FakeKannel, provider: KannelProvider) -> None:
    provider.send(to=TO, text="x", message_id="m")
    assert "validity" not in kannel.last_query


@pytest.mark.parametrize("body", ["0: Accepted for delivery", "3: Queued for later delivery", "Sent."])
def test_accepted_replies(kannel: FakeKannel, provider: KannelProvider, body: str) -> None:
    kannel.status, kannel.body = 202, body
    assert provider.send(to=TO, text="x", message_id="our-id").provider_message_id == "our-id"


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (403, "Authorization failed for sendsms", FailureKind.PROVIDER_WIDE),
        # A black-listed number, or every number while the SMSC is stopped: retried, and counted by the circuit.
        (403, "Not routable. Do not try again.", FailureKind.TRANSIENT),
        (400, "Missing receiver number, rejected", FailureKind.PERMANENT),
        (400, "Empty receiver number not allowed, rejected", FailureKind.PERMANENT),
        (503, "Temporal failure, try again later.", FailureKind.TRANSIENT),
        (500, "Sending failed.", FailureKind.TRANSIENT),
        (404, "Not found", FailureKind.PROVIDER_WIDE),
    ],
)
def test_error_replies(kannel: FakeKannel, provider: KannelProvider, status: int, body: str, kind: FailureKind) -> None:
    kannel.status, kannel.body = status, body
    with pytest.raises(ProviderError) as caught:
        provider.send(to=TO, text="x", message_id="m")
    assert caught.value.kind is kind
    assert caught.value.code == f"http_{status}"
    assert "pa ss" not in str(caught.value)


def test_dropped_connection_is_ambiguous(kannel: FakeKannel, provider: KannelProvider) -> None:
    kannel.drop = True
    with pytest.raises(ProviderError) as caught:
        provider.send(to=TO, text="x", message_id="m")
    assert caught.value.kind is FailureKind.AMBIGUOUS
    assert len(kannel.requests) == 1


def test_connection_refused_is_transient_and_hides_the_password() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    adapter = make_provider(f"http://127.0.0.1:{port}/cgi-bin/sendsms")
    with pytest.raises(ProviderError) as caught:
        adapter.send(to=TO, text="x", message_id="m")
    assert (caught.value.kind, caught.value.code) == (FailureKind.TRANSIENT, "connect_error")
    assert "word" not in str(caught.value) and "0700000001" not in str(caught.value)


def test_refused_before_any_request(kannel: FakeKannel, provider: KannelProvider) -> None:
    for kwargs, code in [
        ({"to": "0700000001", "text": "x", "message_id": "m"}, "invalid_recipient"),
        ({"to": TO, "text": "", "message_id": "m"}, "empty_text"),
        ({"to": TO, "text": "x", "message_id": "rappel-é"}, "invalid_message_id"),
    ]:
        with pytest.raises(ProviderError) as caught:
            provider.send(**kwargs)
        assert (caught.value.kind, caught.value.code) == (FailureKind.PERMANENT, code)
    assert kannel.requests == []


def test_dlr_base_with_a_kannel_escape_is_refused() -> None:
    with pytest.raises(ValueError, match="dlr_url_base"):
        make_provider("http://127.0.0.1:1/cgi-bin/sendsms", dlr_url_base="https://x.example/k?token=%Abc")


def test_empty_credentials_hold_the_queue_without_a_request(kannel: FakeKannel) -> None:
    adapter = make_provider(kannel.url, password="")
    with pytest.raises(ProviderError) as caught:
        adapter.send(to=TO, text="x", message_id="m")
    assert (caught.value.kind, caught.value.code) == (FailureKind.PROVIDER_WIDE, "missing_credentials")
    assert kannel.requests == []
