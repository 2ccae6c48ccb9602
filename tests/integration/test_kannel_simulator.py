"""The real Kannel adapter against the Kannel simulator over HTTP on 127.0.0.1, and the simulator's own wire
contract: sendsms answers, DLR callbacks with Kannel's escapes filled, sms-service calls for MO messages."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from core import clock as core_clock
from core.clock import VirtualClock
from core.providers import FailureKind, KannelProvider, ProviderError
from rappel_local.kannel_simulator import KannelSimulator, expand_escapes, sms_service_url
from rappel_local.scenario import FaultSpec

pytestmark = pytest.mark.integration

START = datetime(2027, 3, 1, 8, 0, tzinfo=UTC)
USER, PASSWORD = "rappel", "kannel-pass"
ALICE = "+2250700000001"
BLOCKED = "+2250700000009"
UNREACHABLE = "+2250700000008"


class Sink:
    """A callback server that records every request's path and query (Kannel's DLR and get-url calls)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, list[str]], str]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = parse_qs(parts.query, keep_blank_values=True)
                sink.calls.append((parts.path, parts.query, query, self.headers.get("User-Agent", "")))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(START)


@pytest.fixture
def sink() -> Iterator[Sink]:
    server = Sink()
    yield server
    server.close()


def make_sim(clock: VirtualClock, **kwargs: Any) -> KannelSimulator:
    options: dict[str, Any] = {"receipt_delay_seconds": 20, "undeliverable": [UNREACHABLE], **kwargs}
    return KannelSimulator(clock=clock, username=USER, password=PASSWORD, **options)


@pytest.fixture
def sim(clock: VirtualClock) -> Iterator[KannelSimulator]:
    with make_sim(clock) as running:
        yield running


def adapter(sim: KannelSimulator, sink: Sink, **overrides: Any) -> KannelProvider:
    kwargs: dict[str, Any] = {
        "sendsms_url": sim.sendsms_url,
        "username": USER,
        "password": PASSWORD,
        "sender": "RAPPEL",
        "dlr_url_base": f"{sink.url}/kannel?token=t0k3n",
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
        **overrides,
    }
    return KannelProvider(**kwargs)


def faulted(clock: VirtualClock, *faults: dict[str, Any]) -> KannelSimulator:
    return make_sim(clock, faults=[FaultSpec.model_validate(f).fault() for f in faults])


def dlrs(sink: Sink) -> list[dict[str, str]]:
    return [{k: v[0] for k, v in query.items()} for path, _, query, _ in sink.calls if path == "/kannel"]


def test_accepted_send_gets_an_ack_at_once_and_a_delivered_dlr_after_the_delay(
    sim: KannelSimulator, sink: Sink, clock: VirtualClock
) -> None:
    accepted = adapter(sim, sink).send(to=ALICE, text="Rappel: vaccin Penta demain", message_id="msg_1")
    assert accepted.provider_message_id == "msg_1"
    [record] = sim.accepted
    assert (record.to, record.text, record.sender_address) == (ALICE, "Rappel: vaccin Penta demain", "RAPPEL")
    assert record.dlr_url is not None and "message_id=msg_1" in record.dlr_url

    assert sim.post_due_receipts(clock.now()) == 1  # the SMSC ack only
    assert [(d["message_id"], d["type"], d["smsc_id"], d["token"]) for d in dlrs(sink)] == [("msg_1", "8", "", "t0k3n")]
    assert sim.next_receipt_at() == START + timedelta(seconds=20)

    clock.advance_to(START + timedelta(seconds=20))
    assert sim.post_due_receipts(clock.now()) == 1
    delivered = dlrs(sink)[-1]
    # %F, the SMSC's id of the message, is filled on the final report.
    assert (delivered["message_id"], delivered["type"], delivered["smsc_id"]) == ("msg_1", "1", record.message_id)
    assert {agent for *_, agent in sink.calls} == {"Kannel/1.4.5"}
    assert sim.pending_receipt_count == 0


def test_undeliverable_number_gets_a_type_2_dlr(sim: KannelSimulator, sink: Sink, clock: VirtualClock) -> None:
    adapter(sim, sink).send(to=UNREACHABLE, text="Rappel", message_id="msg_2")
    clock.advance_to(START + timedelta(seconds=20))
    sim.post_due_receipts(clock.now())
    assert [d["type"] for d in dlrs(sink)] == ["8", "2"]


def test_ucs2_text_arrives_intact(sim: KannelSimulator, sink: Sink) -> None:
    text = "Rappel 💉 لقاح"
    adapter(sim, sink).send(to=ALICE, text=text, message_id="msg_3")
    assert sim.accepted[0].text == text


def test_a_7_bit_sms_shows_characters_outside_gsm7_as_question_marks(sim: KannelSimulator) -> None:
    query = {"username": USER, "password": PASSWORD, "from": "RAPPEL", "to": ALICE, "coding": "0", "text": "vœu ê é"}
    response = requests.get(sim.sendsms_url, params=query, timeout=5)
    assert (response.status_code, response.text) == (202, "0: Accepted for delivery")
    assert sim.accepted[0].text == "v?u ? é"


def test_a_text_over_the_users_max_messages_is_cut_and_still_accepted(clock: VirtualClock, sink: Sink) -> None:
    with make_sim(clock, max_messages=2) as sim:
        adapter(sim, sink).send(to=ALICE, text="a" * 400, message_id="msg_4")
        assert sim.accepted[0].text == "a" * 306  # two concatenated parts of 153


@pytest.mark.parametrize(
    ("query", "status", "body"),
    [
        ({"password": "wrong"}, 403, "Authorization failed for sendsms"),
        ({"username": "nobody"}, 403, "Authorization failed for sendsms"),
        ({"to": None}, 400, "Missing receiver number, rejected"),
        ({"to": ""}, 400, "Empty receiver number not allowed, rejected"),
        ({"to": "abc"}, 400, "Number(s) has/have been denied by white- and/or black-lists."),
        ({"from": None}, 400, "Sender missing and no global set, rejected"),
        ({"coding": "3"}, 400, "Coding field misformed, rejected"),
        ({"dlr-mask": "x"}, 400, "DLR-Mask field misformed, rejected"),
        ({"charset": "no-such-charset"}, 400, "Charset or body misformed, rejected"),
        ({"text": None}, 202, "0: Accepted for delivery"),  # an empty SMS, as Kannel sends it
    ],
)
def test_sendsms_answers_as_smsbox_does(sim: KannelSimulator, query: dict[str, Any], status: int, body: str) -> None:
    base = {"username": USER, "password": PASSWORD, "from": "RAPPEL", "to": ALICE, "text": "x"}
    params = {k: v for k, v in {**base, **query}.items() if v is not None}
    response = requests.get(sim.sendsms_url, params=params, timeout=5)
    assert (response.status_code, response.text) == (status, body)
    assert response.headers["Content-Type"] == "text/html"
    assert len(sim.accepted) == (1 if status == 202 else 0)


def test_other_paths_and_a_post_with_query_parameters(sim: KannelSimulator) -> None:
    unknown = requests.get(f"{sim.base_url}/cgi-bin/sendota", timeout=5)
    assert (unknown.status_code, unknown.text) == (404, "Unknown request.")
    post = requests.post(sim.sendsms_url, params={"username": USER, "password": PASSWORD, "to": ALICE}, timeout=5)
    assert (post.status_code, post.text) == (403, "Authorization failed for sendsms")


def test_wrong_password_holds_the_queue(sim: KannelSimulator, sink: Sink) -> None:
    with pytest.raises(ProviderError) as refused:
        adapter(sim, sink, password="old-password").send(to=ALICE, text="x", message_id="msg_5")
    assert refused.value.kind is FailureKind.PROVIDER_WIDE


def test_faults_by_window_recipient_and_timeout(clock: VirtualClock, sink: Sink) -> None:
    window = {"from": START.isoformat(), "until": (START + timedelta(minutes=5)).isoformat(), "status": 503}
    with faulted(clock, {"to": BLOCKED, "status": 403}, window) as sim:
        provider = adapter(sim, sink)
        with pytest.raises(ProviderError) as unavailable:
            provider.send(to=ALICE, text="x", message_id="msg_6")
        assert unavailable.value.kind is FailureKind.TRANSIENT
        with pytest.raises(ProviderError) as blocked:
            provider.send(to=BLOCKED, text="x", message_id="msg_7")
        assert blocked.value.kind is FailureKind.TRANSIENT and "Not routable" in str(blocked.value)
        clock.advance_to(START + timedelta(minutes=5))
        provider.send(to=ALICE, text="x", message_id="msg_6")
        sim.post_due_receipts(clock.now())
        # The black-listed number is also reported as an SMSC reject, as Kannel does; the retry is accepted.
        assert [(d["message_id"], d["type"]) for d in dlrs(sink)] == [("msg_7", "16"), ("msg_6", "8")]
        assert [r.status for r in sim.received] == [503, 403, 202]


def test_a_403_for_every_recipient_is_the_account(clock: VirtualClock, sink: Sink) -> None:
    with faulted(clock, {"status": 403}) as sim, pytest.raises(ProviderError) as refused:
        adapter(sim, sink).send(to=ALICE, text="x", message_id="msg_8")
    assert refused.value.kind is FailureKind.PROVIDER_WIDE


@pytest.mark.parametrize(("timeout", "accepted"), [("after_send", 1), ("before_send", 0)])
def test_timeouts_are_ambiguous(clock: VirtualClock, sink: Sink, timeout: str, accepted: int) -> None:
    with faulted(clock, {"timeout": timeout}) as sim:
        with pytest.raises(ProviderError) as dropped:
            adapter(sim, sink).send(to=ALICE, text="x", message_id="msg_9")
        assert dropped.value.kind is FailureKind.AMBIGUOUS
        assert len(sim.accepted) == accepted
        assert sim.pending_receipt_count == 2 * accepted


def test_latency_is_spent_on_the_clock(clock: VirtualClock, sink: Sink) -> None:
    with make_sim(clock, latency_ms=400) as sim:
        adapter(sim, sink).send(to=ALICE, text="x", message_id="msg_10")
        assert sim.accepted[0].at == START + timedelta(milliseconds=400)


def test_dlr_escapes_are_filled_as_kannel_does() -> None:
    # The observed callback of Kannel 1.4.5 for an SMSC ack (docs/providers.md#delivery-reports-dlr).
    pattern = "http://h/dlr?type=%d&reply=%A&from=%p&to=%P&smsc=%i&fid=%F&t=%t&ts=%T&pct=%%&x=%Z&ref=abc"
    fields = {"d": "8", "b": b"ACK/", "p": ALICE, "P": "1234", "i": "fake1", "F": "", "T": "1796228087"}
    fields["t"] = "2026-12-02+16:14:47"
    assert expand_escapes(pattern, fields) == (
        "http://h/dlr?type=8&reply=ACK%2F&from=%2B2250700000001&to=1234&smsc=fake1&fid="
        "&t=2026-12-02+16:14:47&ts=1796228087&pct=%&x=%Z&ref=abc"
    )


@pytest.mark.parametrize(
    ("text", "options", "expected"),
    [
        ("STOP", {}, {"text": "STOP", "keyword": "STOP", "coding": "0", "charset": "UTF-8"}),
        ("stop  please", {}, {"text": "stop+please", "keyword": "stop"}),
        ("Café €", {}, {"text": "Caf%C3%A9+%E2%82%AC"}),
        ("ARRÊT", {"ucs2": True}, {"text": "ARR%C3%8AT", "coding": "0"}),  # mo-recode = true
        ("STOP", {"ucs2": True, "recode": False}, {"text": "%00S%00T%00O%00P", "coding": "2", "charset": "UTF-16BE"}),
    ],
)
def test_sms_service_get_url_is_filled_as_kannel_does(
    text: str, options: dict[str, Any], expected: dict[str, str]
) -> None:
    url = sms_service_url(
        "http://h/inbound?token=t&from=%p&to=%P&text=%a&keyword=%k&coding=%c&charset=%C",
        sender=ALICE,
        receiver="1234",
        text=text,
        at=START,
        **options,
    )
    raw = dict(part.split("=", 1) for part in urlsplit(url).query.split("&"))
    assert raw["from"] == "%2B2250700000001" and raw["to"] == "1234" and raw["token"] == "t"
    assert {k: raw[k] for k in expected} == expected


def test_deliver_mo_calls_the_get_url(sim: KannelSimulator, sink: Sink) -> None:
    status = sim.deliver_mo(f"{sink.url}/inbound?token=t0k3n&from=%p&to=%P&text=%a", sender=ALICE, text="Stop please")
    assert status == 200
    [(path, _, query, agent)] = sink.calls
    assert path == "/inbound" and agent == "Kannel/1.4.5"
    assert {k: v[0] for k, v in query.items()} == {"token": "t0k3n", "from": ALICE, "to": "1234", "text": "Stop please"}


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({"name": "kannel", "token_lifetime_seconds": 60}, "provider.token_lifetime_seconds"),
        ({"name": "kannel", "rate_limit_per_second": 5}, "provider.rate_limit_per_second"),
        ({"name": "kannel", "faults": [{"status": 400, "message_id": "SVC0004"}]}, "provider.faults[0].message_id"),
        ({"name": "kannel", "faults": [{"status": 503, "nth": 0}]}, "provider.faults[0].nth"),
        ({"name": "orange"}, "provider.name"),
        ({"name": "smpp"}, "provider.name"),
    ],
)
def test_scenario_config_errors_name_the_field(clock: VirtualClock, cfg: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        KannelSimulator.from_scenario(cfg, clock, USER, PASSWORD)


def test_from_scenario_builds_the_fault_model(clock: VirtualClock, sink: Sink) -> None:
    cfg = {"name": "kannel", "latency_ms": 100, "receipt_delay_seconds": 30, "faults": [{"nth": 1, "status": 503}]}
    with KannelSimulator.from_scenario(cfg, clock, USER, PASSWORD) as sim:
        provider = adapter(sim, sink)
        with pytest.raises(ProviderError):
            provider.send(to=ALICE, text="x", message_id="msg_11")
        provider.send(to=ALICE, text="x", message_id="msg_11")
        assert sim.next_receipt_at() == START + timedelta(milliseconds=200)  # the ack, at acceptance
        sim.post_due_receipts(clock.now())
        assert sim.next_receipt_at() == START + timedelta(milliseconds=200, seconds=30)


def test_while_its_smsc_link_is_down_kannel_queues_and_drops_what_outlived_its_validity(
    sim: KannelSimulator, sink: Sink, clock: VirtualClock
) -> None:
    """As Debian's Kannel 1.4.5 does (docs/providers.md#a-link-down-queued-for-later-delivery): sendsms answers
    `3: Queued for later delivery` and nothing reaches the phone; when the link returns, a message past its validity
    is never sent and gets a type-16 DLR, the others go out then."""
    sim.disconnect_smsc()
    provider = adapter(sim, sink)
    previous = core_clock.install(clock)  # the adapter counts the validity from the request, on the same clock
    try:
        provider.send(to=ALICE, text="too late", message_id="m_late", valid_until=START + timedelta(minutes=30))
        provider.send(to=ALICE, text="still in time", message_id="m_ok", valid_until=START + timedelta(hours=3))
    finally:
        core_clock.install(previous)
    credentials = {"username": USER, "password": PASSWORD}
    queued = requests.get(sim.sendsms_url, params={**credentials, "from": "1", "to": ALICE, "text": "no limit"})
    assert (queued.status_code, queued.text) == (202, "3: Queued for later delivery")
    assert sim.accepted == [] and sim.post_due_receipts(clock.now()) == 0  # no SMSC ack while the link is down

    clock.advance_to(START + timedelta(hours=1))
    sim.connect_smsc()

    assert [(r.text, r.at) for r in sim.accepted] == [("still in time", clock.now()), ("no limit", clock.now())]
    sim.post_due_receipts(clock.now())
    assert {d["message_id"]: d["type"] for d in dlrs(sink)} == {"m_late": "16", "m_ok": "8"}
