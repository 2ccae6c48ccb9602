"""The real Orange adapter against the Orange simulator, over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
import requests

from core.clock import VirtualClock
from core.providers import Accepted, FailureKind, OrangeProvider, ProviderError, SmsProvider
from rappel_local.orange_simulator import FaultSpec, OrangeSimulator

pytestmark = pytest.mark.integration

START = datetime(2027, 3, 1, 8, 0, tzinfo=UTC)
CLIENT_ID = "rappel-client"
CLIENT_SECRET = "s3cret-value"
SENDER = "tel:+2250000"
ALICE = "+2250700000001"
BOB = "+2250700000002"
BLOCKED = "+2250700000009"
UNREACHABLE = "+2250700000008"


def at(seconds: float) -> str:
    return (START + timedelta(seconds=seconds)).isoformat()


@pytest.fixture
def sim_clock() -> VirtualClock:
    return VirtualClock(START)


@pytest.fixture
def adapter_clock() -> VirtualClock:
    # The adapter keeps its own clock so a test can age the simulator's tokens behind its back.
    return VirtualClock(START)


def make_sim(clock: VirtualClock, **kwargs: Any) -> OrangeSimulator:
    return OrangeSimulator(clock=clock, client_id=CLIENT_ID, client_secret=CLIENT_SECRET, **kwargs)


@pytest.fixture
def sim(sim_clock: VirtualClock) -> Iterator[OrangeSimulator]:
    with make_sim(sim_clock, undeliverable=[UNREACHABLE], receipt_delay_seconds=20, available_units=100) as running:
        yield running


def make_provider(base_url: str, clock: VirtualClock, **overrides: Any) -> OrangeProvider:
    kwargs: dict[str, Any] = {
        "base_url": base_url,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "sender_address": SENDER,
        "sender_name": "RAPPEL",
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
        "clock": clock,
        "country": "CIV",
    }
    kwargs.update(overrides)
    return OrangeProvider(**kwargs)


@pytest.fixture
def provider(sim: OrangeSimulator, adapter_clock: VirtualClock) -> Iterator[OrangeProvider]:
    adapter = make_provider(sim.base_url, adapter_clock)
    yield adapter
    adapter.close()


def endpoint_statuses(sim: OrangeSimulator, endpoint: str) -> list[int | None]:
    return [r.status for r in sim.received if r.endpoint == endpoint]


def send(
    provider: OrangeProvider, to: str = ALICE, text: str = "Rappel: vaccin Penta 2 demain", mid: str = "m"
) -> Accepted:
    return provider.send(to=to, text=text, message_id=mid)


def test_is_an_sms_provider(provider: OrangeProvider) -> None:
    assert isinstance(provider, SmsProvider)
    assert provider.name == "orange"


def test_send_returns_the_resource_url_id_and_the_simulator_got_the_exact_body(
    sim: OrangeSimulator, provider: OrangeProvider
) -> None:
    accepted = send(provider, text="Rappel: vaccin d'Awa à 9h, fête", mid="msg-1")
    assert accepted.provider == "orange"
    [record] = sim.accepted
    assert accepted.provider_message_id == record.message_id
    assert (record.to, record.text, record.sender_name, record.sender_address) == (
        ALICE,
        "Rappel: vaccin d'Awa à 9h, fête",
        "RAPPEL",
        SENDER,
    )


def test_sender_path_is_percent_encoded(sim: OrangeSimulator, provider: OrangeProvider) -> None:
    send(provider)
    [record] = sim.accepted
    assert record.path == "/smsmessaging/v1/outbound/tel%3A%2B2250000/requests"


def test_empty_sender_name_is_left_out(sim: OrangeSimulator, adapter_clock: VirtualClock) -> None:
    adapter = make_provider(sim.base_url, adapter_clock, sender_name="")
    send(adapter)
    assert sim.accepted[0].sender_name is None


def test_one_sender_name_rule_for_settings_adapter_and_simulator(
    sim: OrangeSimulator, adapter_clock: VirtualClock
) -> None:
    """A name with a space is what alphanumeric sender ids allow: the settings take it, the simulator accepts it."""
    from core.settings import ConfigurationError, build_settings

    assert build_settings(ORANGE_SENDER_NAME="Rappel CI").ORANGE_SENDER_NAME == "Rappel CI"
    with pytest.raises(ConfigurationError, match="ORANGE_SENDER_NAME"):
        build_settings(ORANGE_SENDER_NAME="Rappel-CI!")
    send(make_provider(sim.base_url, adapter_clock, sender_name="Rappel CI"))
    assert sim.accepted[0].sender_name == "Rappel CI"


def test_token_is_fetched_once_and_cached(sim: OrangeSimulator, provider: OrangeProvider) -> None:
    for i in range(5):
        send(provider, mid=f"m{i}")
    provider.balance()
    assert endpoint_statuses(sim, "token") == [200]
    assert endpoint_statuses(sim, "send") == [201] * 5


def test_string_expires_in_is_understood(sim_clock: VirtualClock, adapter_clock: VirtualClock) -> None:
    with make_sim(sim_clock, expires_in_as_string=True, token_lifetime_seconds=3600) as sim:
        adapter = make_provider(sim.base_url, adapter_clock)
        send(adapter)
        adapter_clock.sleep(3000)
        send(adapter)
        assert endpoint_statuses(sim, "token") == [200]


def test_token_is_refreshed_five_minutes_before_expiry(
    sim: OrangeSimulator, provider: OrangeProvider, sim_clock: VirtualClock, adapter_clock: VirtualClock
) -> None:
    send(provider)
    for clock in (sim_clock, adapter_clock):
        clock.sleep(3600 - 300 - 1)
    send(provider)
    assert endpoint_statuses(sim, "token") == [200]
    for clock in (sim_clock, adapter_clock):
        clock.sleep(2)
    send(provider)
    # Refreshed ahead of time: the simulator never had to refuse a token.
    assert endpoint_statuses(sim, "token") == [200, 200]
    assert endpoint_statuses(sim, "send") == [201, 201, 201]


def test_token_expired_server_side_is_refreshed_once_and_the_send_replayed(
    sim: OrangeSimulator, provider: OrangeProvider, sim_clock: VirtualClock
) -> None:
    send(provider)
    sim_clock.sleep(3601)
    accepted = send(provider, to=BOB)
    assert endpoint_statuses(sim, "token") == [200, 200]
    assert endpoint_statuses(sim, "send") == [201, 401, 201]
    assert [r.to for r in sim.accepted] == [ALICE, BOB]
    assert accepted.provider_message_id == sim.accepted[1].message_id


def test_before_request_runs_after_the_token_and_before_each_send_request_the_replay_too(
    sim: OrangeSimulator, provider: OrangeProvider, sim_clock: VirtualClock
) -> None:
    """The sender paces in this hook, so it must see every request the send makes and none of the token's."""
    seen: list[list[str]] = []

    def before_request() -> None:
        seen.append([r.endpoint for r in sim.received])

    provider.send(to=ALICE, text="Rappel", message_id="m1", before_request=before_request)
    sim_clock.sleep(3601)  # the token is now refused server-side: 401, refresh, replay
    provider.send(to=BOB, text="Rappel", message_id="m2", before_request=before_request)

    assert seen == [["token"], ["token", "send"], ["token", "send", "send", "token"]]


def test_a_refresh_that_does_not_help_stops_after_one_replay(
    sim_clock: VirtualClock, adapter_clock: VirtualClock
) -> None:
    fault = FaultSpec.model_validate({"from": at(-10), "until": at(60), "status": 401, "code": 42}).fault()
    with make_sim(sim_clock, faults=[fault]) as sim:
        adapter = make_provider(sim.base_url, adapter_clock)
        with pytest.raises(ProviderError) as caught:
            send(adapter)
        assert (caught.value.kind, caught.value.code) == (FailureKind.TRANSIENT, "401/42")
        assert endpoint_statuses(sim, "token") == [200, 200]
        assert endpoint_statuses(sim, "send") == [401, 401]
        assert sim.accepted == []


def test_concurrent_senders_share_one_token(sim: OrangeSimulator, provider: OrangeProvider) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: send(provider, mid=f"m{i}"), range(16)))
    assert endpoint_statuses(sim, "token") == [200]
    ids = {r.provider_message_id for r in results}
    assert len(ids) == 16 and ids == {r.message_id for r in sim.accepted}


def test_invalid_credentials_are_provider_wide(sim: OrangeSimulator, adapter_clock: VirtualClock) -> None:
    adapter = make_provider(sim.base_url, adapter_clock, client_secret="wrong")
    with pytest.raises(ProviderError) as caught:
        send(adapter)
    assert (caught.value.kind, caught.value.code) == (FailureKind.PROVIDER_WIDE, "invalid_client")
    assert "wrong" not in str(caught.value)
    assert endpoint_statuses(sim, "send") == []


def test_revoked_credentials_401_41_hold_the_queue_without_a_refresh(
    sim_clock: VirtualClock, adapter_clock: VirtualClock
) -> None:
    with make_sim(sim_clock, faults=[FaultSpec.model_validate({"status": 401, "code": 41}).fault()]) as sim:
        adapter = make_provider(sim.base_url, adapter_clock)
        with pytest.raises(ProviderError) as caught:
            send(adapter)
        assert (caught.value.kind, caught.value.code) == (FailureKind.PROVIDER_WIDE, "401/41")
        assert endpoint_statuses(sim, "token") == [200]


def test_no_bundle_403_is_refused_and_the_balance_confirms_the_account(
    sim_clock: VirtualClock, adapter_clock: VirtualClock
) -> None:
    with make_sim(sim_clock, available_units=1) as sim:
        adapter = make_provider(sim.base_url, adapter_clock)
        send(adapter)
        with pytest.raises(ProviderError) as caught:
            send(adapter, to=BOB)
        assert caught.value.kind is FailureKind.REFUSED
        assert caught.value.code == "403/50"
        assert [r.to for r in sim.accepted] == [ALICE]
        assert not adapter.balance().can_send(adapter_clock.now())


def test_svc0004_for_one_recipient_is_permanent_and_others_still_go(
    sim_clock: VirtualClock, adapter_clock: VirtualClock
) -> None:
    fault = {"to": BLOCKED, "status": 400, "message_id": "SVC0004"}
    with OrangeSimulator.from_scenario(
        {"name": "orange", "faults": [fault]}, sim_clock, CLIENT_ID, CLIENT_SECRET, None
    ) as sim:
        adapter = make_provider(sim.base_url, adapter_clock)
        with pytest.raises(ProviderError) as caught:
            send(adapter, to=BLOCKED)
        assert (caught.value.kind, caught.value.code) == (FailureKind.PERMANENT, "SVC0004")
        assert "0700000009" not in caught.value.detail
        send(adapter, to=ALICE)
        assert [r.to for r in sim.accepted] == [ALICE]


def test_503_window_is_transient_and_ends_on_time(sim_clock: VirtualClock, adapter_clock: VirtualClock) -> None:
    fault = {"from": at(0), "until": at(600), "status": 503, "retry_after": 30}
    with OrangeSimulator.from_scenario({"faults": [fault]}, sim_clock, CLIENT_ID, CLIENT_SECRET, None) as sim:
        adapter = make_provider(sim.base_url, adapter_clock)
        with pytest.raises(ProviderError) as caught:
            send(adapter)
        assert caught.value.kind is FailureKind.TRANSIENT
        assert caught.value.code == "503/5"
        assert caught.value.retry_after_seconds == 30.0
        sim_clock.sleep(600)
        send(adapter)
        assert len(sim.accepted) == 1


def test_nth_fault_fails_only_that_request(sim_clock: VirtualClock, adapter_clock: VirtualClock) -> None:
    with OrangeSimulator.from_scenario(
        {"faults": [{"nth": 2, "status": 500}]}, sim_clock, CLIENT_ID, CLIENT_SECRET, None
    ) as sim:
        adapter = make_provider(sim.base_url, adapter_clock)
        send(adapter, mid="1")
        with pytest.raises(ProviderError) as caught:
            send(adapter, mid="2")
        assert caught.value.kind is FailureKind.TRANSIENT
        send(adapter, mid="3")
        assert endpoint_statuses(sim, "send") == [201, 500, 201]


def test_rate_limit_gives_429_with_retry_after(sim_clock: VirtualClock, adapter_clock: VirtualClock) -> None:
    with OrangeSimulator.from_scenario({"name": "orange"}, sim_clock, CLIENT_ID, CLIENT_SECRET, 3) as sim:
        adapter = make_provider(sim.base_url, adapter_clock)
        for i in range(3):
            send(adapter, mid=str(i))
        with pytest.raises(ProviderError) as caught:
            send(adapter, mid="3")
        assert (caught.value.kind, caught.value.code) == (FailureKind.THROTTLED, "429/53")
        assert caught.value.retry_after_seconds == 1.0
        assert len(sim.accepted) == 3
        sim_clock.sleep(1)
        send(adapter, mid="3")
        assert len(sim.accepted) == 4


def test_timeout_after_send_is_ambiguous_but_the_simulator_accepted_it(
    sim_clock: VirtualClock, adapter_clock: VirtualClock
) -> None:
    fault = {"from": at(0), "until": at(60), "timeout": "after_send"}
    with OrangeSimulator.from_scenario(
        {"faults": [fault], "receipt_delay_seconds": 5}, sim_clock, CLIENT_ID, CLIENT_SECRET, None
    ) as sim:
        adapter = make_provider(sim.base_url, adapter_clock)
        with pytest.raises(ProviderError) as caught:
            send(adapter)
        assert caught.value.kind is FailureKind.AMBIGUOUS
        assert [r.to for r in sim.accepted] == [ALICE]
        assert endpoint_statuses(sim, "send") == [None]
        assert sim.pending_receipt_count == 1


def test_timeout_before_send_is_not_accepted(sim_clock: VirtualClock, adapter_clock: VirtualClock) -> None:
    fault = {"from": at(0), "until": at(60), "timeout": "before_send"}
    with OrangeSimulator.from_scenario({"faults": [fault]}, sim_clock, CLIENT_ID, CLIENT_SECRET, None) as sim:
        adapter = make_provider(sim.base_url, adapter_clock)
        with pytest.raises(ProviderError) as caught:
            send(adapter)
        # Over TCP the client cannot tell the two apart; only the simulator knows nothing was accepted.
        assert caught.value.kind is FailureKind.AMBIGUOUS
        assert sim.accepted == []
        assert sim.available_units == 1_000_000


def test_answers_is_any_reply_to_a_read_that_sends_nothing(
    sim_clock: VirtualClock, adapter_clock: VirtualClock
) -> None:
    """An open circuit's probe asks this first: False only when the gateway gives no answer at all (hung, on every
    endpoint), and never at the cost of an SMS or a unit."""
    hung = {"from": at(60), "until": at(120), "timeout": "any_request"}
    refusing = {"from": at(120), "until": at(180), "status": 503}
    with OrangeSimulator.from_scenario(
        {"faults": [hung, refusing], "available_units": 5}, sim_clock, CLIENT_ID, CLIENT_SECRET, None
    ) as sim:
        adapter = make_provider(sim.base_url, adapter_clock)
        assert adapter.answers()
        # Refused credentials are an answer: the probe's own request meets the refusal and holds the provider.
        assert make_provider(sim.base_url, adapter_clock, client_secret="wrong").answers()
        sim_clock.sleep(60)
        assert not adapter.answers()
        assert endpoint_statuses(sim, "contracts") == [200, None]
        sim_clock.sleep(60)  # sends refused with 503, reads answered: the probe may go, and is refused, not lost
        assert adapter.answers()
        assert sim.accepted == [] and sim.available_units == 5 and endpoint_statuses(sim, "send") == []
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert not make_provider(f"http://127.0.0.1:{port}", adapter_clock).answers()


def test_connection_refused_is_transient(adapter_clock: VirtualClock) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    adapter = make_provider(f"http://127.0.0.1:{port}", adapter_clock)
    with pytest.raises(ProviderError) as caught:
        send(adapter)
    assert caught.value.kind is FailureKind.TRANSIENT
    assert caught.value.code == "connect_error"


def test_balance_decreases_with_each_accepted_send(sim: OrangeSimulator, provider: OrangeProvider) -> None:
    before = provider.balance()
    assert before.status == "ACTIVE"
    assert before.available_units == 100
    assert before.expires_at == START + timedelta(days=365)
    send(provider, mid="1")
    send(provider, mid="2", to=BOB)
    assert provider.balance().available_units == 98


def test_balance_reads_the_legacy_shape(sim_clock: VirtualClock, adapter_clock: VirtualClock) -> None:
    expiry = START + timedelta(days=30)
    with make_sim(sim_clock, contracts_legacy_shape=True, available_units=42, bundle_expires_at=expiry) as sim:
        adapter = make_provider(sim.base_url, adapter_clock)
        balance = adapter.balance()
        assert (balance.available_units, balance.expires_at, balance.status) == (42, expiry, "ACTIVE")


def test_balance_of_an_expired_bundle(sim_clock: VirtualClock, adapter_clock: VirtualClock) -> None:
    with make_sim(sim_clock, available_units=7, bundle_expires_at=START + timedelta(hours=1)) as sim:
        adapter = make_provider(sim.base_url, adapter_clock)
        sim_clock.sleep(7200)
        balance = adapter.balance()
        assert (balance.available_units, balance.status) == (7, "EXPIRED")
        assert not balance.can_send(adapter_clock.now())
        with pytest.raises(ProviderError) as caught:
            send(adapter)
        assert caught.value.kind is FailureKind.REFUSED


def test_balance_for_another_country_is_empty(sim: OrangeSimulator, adapter_clock: VirtualClock) -> None:
    adapter = make_provider(sim.base_url, adapter_clock, country="SEN")
    assert adapter.balance().available_units == 0
    assert sim.received[-1].path == "/sms/admin/v1/contracts?country=SEN"


def test_receipts_are_generated_after_the_delay(
    sim: OrangeSimulator, provider: OrangeProvider, sim_clock: VirtualClock
) -> None:
    ok = send(provider, to=ALICE)
    sim_clock.sleep(5)
    lost = send(provider, to=UNREACHABLE)
    assert sim.due_receipts(START + timedelta(seconds=19)) == []
    first = sim.due_receipts(START + timedelta(seconds=20))
    assert first == [
        {
            "deliveryInfoNotification": {
                "callbackData": ok.provider_message_id,
                "deliveryInfo": {"address": f"tel:{ALICE}", "deliveryStatus": "DeliveredToTerminal"},
            }
        }
    ]
    rest = sim.due_receipts(START + timedelta(seconds=3600))
    assert [r["deliveryInfoNotification"]["callbackData"] for r in rest] == [lost.provider_message_id]
    assert rest[0]["deliveryInfoNotification"]["deliveryInfo"]["deliveryStatus"] == "DeliveryImpossible"
    assert sim.due_receipts(START + timedelta(days=1)) == []


class _ReceiptSink(BaseHTTPRequestHandler):
    received: ClassVar[list[Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, json.loads(body)))
        status = 500 if b"DeliveryImpossible" in body else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_receipts_are_posted_to_the_receipt_endpoint(
    sim: OrangeSimulator, provider: OrangeProvider, sim_clock: VirtualClock
) -> None:
    _ReceiptSink.received = []
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _ReceiptSink)
    thread = threading.Thread(target=sink.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        send(provider, to=ALICE)
        send(provider, to=UNREACHABLE)
        url = f"http://127.0.0.1:{sink.server_address[1]}/receipts/orange?token=t0k"
        assert sim.post_due_receipts(sim_clock.now(), url) == 0
        sim_clock.sleep(20)
        # The sink refuses the DeliveryImpossible one: counted as not delivered and kept aside.
        assert sim.post_due_receipts(sim_clock.now(), url) == 1
        assert [path for path, _ in _ReceiptSink.received] == ["/receipts/orange?token=t0k"] * 2
        assert len(sim.failed_receipts) == 1
        assert sim.pending_receipt_count == 0
    finally:
        sink.shutdown()
        sink.server_close()


def test_simulator_rejects_a_sender_mismatch_and_a_bad_address(sim: OrangeSimulator, provider: OrangeProvider) -> None:
    provider.balance()
    token_response = requests.post(
        f"{sim.base_url}/oauth/v3/token",
        auth=(CLIENT_ID, CLIENT_SECRET),
        data={"grant_type": "client_credentials"},
        timeout=5,
    )
    token = token_response.json()["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    url = f"{sim.base_url}/smsmessaging/v1/outbound/tel%3A%2B2250000/requests"

    def post(request: dict[str, Any]) -> requests.Response:
        return requests.post(url, json={"outboundSMSMessageRequest": request}, headers=headers, timeout=5)

    text = {"outboundSMSTextMessage": {"message": "x"}}
    mismatch = post({"address": f"tel:{ALICE}", "senderAddress": "tel:+2210000", **text})
    assert mismatch.status_code == 400
    exc = mismatch.json()["requestError"]["serviceException"]
    assert (exc["messageId"], exc["variables"]) == ("SVC0004", ["senderAddress"])

    bad_address = post({"address": "0700000001", "senderAddress": SENDER, **text})
    assert bad_address.json()["requestError"]["serviceException"]["messageId"] == "SVC0004"

    no_text = post({"address": f"tel:{ALICE}", "senderAddress": SENDER})
    assert no_text.json()["requestError"]["serviceException"]["messageId"] == "SVC0002"

    html_only = requests.post(
        url,
        json={"outboundSMSMessageRequest": {"address": f"tel:{ALICE}", "senderAddress": SENDER, **text}},
        headers={"Authorization": f"Bearer {token}", "Accept": "text/html"},
        timeout=5,
    )
    assert html_only.status_code == 406

    unknown_token = requests.post(url, json={}, headers={**headers, "Authorization": "Bearer nope"}, timeout=5)
    assert (unknown_token.status_code, unknown_token.json()["code"]) == (401, 42)
    assert sim.accepted == []


@pytest.mark.parametrize(
    ("accept", "status"),
    [
        (None, 201),  # no Accept header: any type will do (RFC 9110 §12.5.1)
        ("*/*", 201),  # what curl, requests and most clients send by default
        ("application/*", 201),
        ("text/html, application/json;q=0.5", 201),
        ("APPLICATION/JSON; charset=utf-8", 201),
        ("text/html", 406),
        ("text/*, image/png", 406),
        ("application/json;q=0", 406),
        ("*/*;q=0", 406),
    ],
)
def test_send_accept_header_is_negotiated(
    sim: OrangeSimulator, provider: OrangeProvider, accept: str | None, status: int
) -> None:
    provider.balance()  # gets a token
    token = requests.post(
        f"{sim.base_url}/oauth/v3/token",
        auth=(CLIENT_ID, CLIENT_SECRET),
        data={"grant_type": "client_credentials"},
        timeout=5,
    ).json()["access_token"]
    # requests adds `Accept: */*` unless told otherwise; None removes the header altogether.
    headers: dict[str, str | None] = {"Authorization": f"Bearer {token}", "Accept": accept}
    request = {"address": f"tel:{ALICE}", "senderAddress": SENDER, "outboundSMSTextMessage": {"message": "x"}}
    response = requests.post(
        f"{sim.base_url}/smsmessaging/v1/outbound/tel%3A%2B2250000/requests",
        json={"outboundSMSMessageRequest": request},
        headers=headers,
        timeout=5,
    )
    assert response.status_code == status, response.text
    assert len(sim.accepted) == (1 if status == 201 else 0)


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({"name": "kannel"}, "provider.name"),
        ({"latency_ms": -1}, "provider.latency_ms"),
        ({"receipt_delay_seconds": "soon"}, "provider.receipt_delay_seconds"),
        ({"undeliverable": ["0700"]}, "provider.undeliverable[0]"),
        ({"faults": {}}, "provider.faults"),
        ({"faults": [{"status": 503, "from": "2027-03-01T00:00:00"}]}, "faults[0].from"),
        ({"faults": [{"status": 200}]}, "faults[0].status"),
        ({"faults": [{"timeout": "during_send"}]}, "faults[0].timeout"),
        ({"faults": [{"status": 503}, {"status": 503, "timeout": "after_send"}]}, "faults[1].status"),
        ({"faults": [{"status": 400, "message_id": "ERR1"}]}, "faults[0].message_id"),
        ({"faults": [{"status": 503, "from": at(60), "until": at(0)}]}, "faults[0].until"),
        ({"faults": [{"status": 503, "nth": 0}]}, "faults[0].nth"),
        ({"faults": [{"timeout": "any_request", "to": "+2250701020304"}]}, "faults[0].timeout"),
        ({"faults": [{"status": 503, "when": "now"}]}, "faults[0].when"),
        ({"undelivrable": []}, "provider.undelivrable"),
        ({"rate_limit_per_second": 0}, "provider.rate_limit_per_second"),
    ],
)
def test_scenario_config_errors_name_the_field(sim_clock: VirtualClock, cfg: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        OrangeSimulator.from_scenario(cfg, sim_clock, CLIENT_ID, CLIENT_SECRET, 5)


def test_latency_is_spent_on_the_simulator_clock(sim_clock: VirtualClock, adapter_clock: VirtualClock) -> None:
    with OrangeSimulator.from_scenario({"latency_ms": 150}, sim_clock, CLIENT_ID, CLIENT_SECRET, None) as sim:
        adapter = make_provider(sim.base_url, adapter_clock)
        send(adapter)
        # One token request and one send, 150 ms each, in virtual time.
        assert sim_clock.now() == START + timedelta(milliseconds=300)
        assert sim.accepted[0].at == START + timedelta(milliseconds=300)


def test_empty_credentials_hold_the_queue_without_a_request(sim: OrangeSimulator, adapter_clock: VirtualClock) -> None:
    adapter = make_provider(sim.base_url, adapter_clock, client_secret="")
    with pytest.raises(ProviderError) as caught:
        send(adapter)
    assert (caught.value.kind, caught.value.code) == (FailureKind.PROVIDER_WIDE, "missing_credentials")
    assert sim.received == []


def test_next_receipt_at_tracks_the_earliest_pending(
    sim: OrangeSimulator, provider: OrangeProvider, sim_clock: VirtualClock
) -> None:
    assert sim.next_receipt_at() is None
    send(provider)
    sim_clock.sleep(7)
    send(provider, to=BOB)
    assert sim.next_receipt_at() == START + timedelta(seconds=20)
    sim.due_receipts(START + timedelta(seconds=20))
    assert sim.next_receipt_at() == START + timedelta(seconds=27)


def test_receipt_pump_posts_in_the_background(sim: OrangeSimulator, provider: OrangeProvider) -> None:
    arrived = threading.Event()

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            arrived.set()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    sink = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=sink.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        with OrangeSimulator(
            clock=VirtualClock(START), client_id=CLIENT_ID, client_secret=CLIENT_SECRET, receipt_delay_seconds=0
        ) as live:
            adapter = make_provider(live.base_url, VirtualClock(START))
            send(adapter)
            live.start_receipt_pump(f"http://127.0.0.1:{sink.server_address[1]}/r", interval_seconds=0.01)
            assert arrived.wait(timeout=10)
            live.stop_receipt_pump()
            assert live.pending_receipt_count == 0
    finally:
        sink.shutdown()
        sink.server_close()


def test_rate_limit_judges_side_by_side_senders_on_their_timestamps(
    sim_clock: VirtualClock, adapter_clock: VirtualClock
) -> None:
    with make_sim(sim_clock, rate_limit_per_second=5) as sim:
        adapter = make_provider(sim.base_url, adapter_clock)
        # Two senders at 2.5/s each, run one after the other from the same virtual instant: 5/s together,
        # though three of each fall in the first whole second.
        for sender in ("a", "b"):
            sim_clock.set(START)
            for i in range(8):
                send(adapter, mid=f"{sender}{i}")
                sim_clock.sleep(0.4)
        assert len(sim.accepted) == 16
        # One sender at 10/s: a bucket of 5 refilled at 5/s admits 9 in a row, then every other one.
        sim_clock.set(START + timedelta(seconds=60))
        outcomes = []
        for i in range(16):
            try:
                send(adapter, mid=f"fast{i}")
                outcomes.append("ok")
            except ProviderError as error:
                assert error.code == "429/53"
                outcomes.append("429")
            sim_clock.sleep(0.1)
        assert outcomes == ["ok"] * 9 + ["429", "ok"] * 3 + ["429"]
