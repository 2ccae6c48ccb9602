"""What the local SMS gateways have in common: an HTTP server on 127.0.0.1, the fault model, receipts on a clock.

`OrangeSimulator` (orange_simulator.py) and `KannelSimulator` (kannel_simulator.py) subclass `ProviderSimulator`
and add their wire contract: how a request is routed, what a fault looks like on that wire, how a receipt travels.
The behaviour a scenario describes (docs/simulation.md#faults) lives here once: latency spent on the injected clock,
faults by time window, recipient, n-th request, status or timeout, numbers that never receive, the receipt delay,
and the log of what was received and accepted.
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

import requests

from core.clock import Clock

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SentRecord:
    """One send the simulator accepted (whether or not the client got the reply).

    `message_id` is the gateway's own id; `dlr_url` is the delivery-report URL a Kannel client asked for, which is
    where it keeps its own id (Kannel returns none).
    """

    at: datetime
    to: str
    text: str
    message_id: str
    sender_name: str | None
    sender_address: str
    path: str
    dlr_url: str | None = None


@dataclass(frozen=True)
class ReceivedRequest:
    """One HTTP request as it arrived; `status` is None when the connection was dropped without a reply."""

    at: datetime
    method: str
    path: str
    endpoint: str
    status: int | None


# A `timeout` fault for every request, whatever its endpoint: the whole gateway hung.
HUNG = "any_request"


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

    @property
    def provider_wide(self) -> bool:
        """A fault for every recipient (no `to`, no `nth`): the account, not a number, is refused."""
        return self.to is None and self.nth is None


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: a JSON document, or text when `content_type` is not JSON."""

    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    def payload(self) -> bytes:
        """The body as sent on the wire."""
        if self.content_type == "application/json":
            return json.dumps(self.body).encode("utf-8")
        return str(self.body).encode("utf-8")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Keep-alive connections would otherwise make stop() wait for the client to hang up.
    block_on_close = False
    # Callbacks and sends come in bursts: the default backlog of 5 drops connections and stalls clients for seconds.
    request_queue_size = 128
    simulator: ProviderSimulator


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
        payload = reply.payload()
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(payload)))
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug(f"{self.server.simulator.name} simulator: " + format, *args)


class ProviderSimulator:
    """A gateway on 127.0.0.1 (random port); use as a context manager or call start()/stop().

    Subclasses set `name`, and implement `_endpoint` (which requests are sends), `_route` (the answer),
    `_internal_error` and `_post_receipt` (how one due receipt reaches its URL).
    """

    name: ClassVar[str]

    def __init__(
        self,
        *,
        clock: Clock,
        latency_ms: float = 0,
        receipt_delay_seconds: float = 5,
        faults: Iterable[Fault] = (),
        undeliverable: Iterable[str] = (),
    ) -> None:
        if latency_ms < 0 or receipt_delay_seconds < 0:
            raise ValueError("latency and receipt delay must be >= 0")
        self._clock = clock
        self._latency = latency_ms / 1000
        self._receipt_delay = timedelta(seconds=receipt_delay_seconds)
        self._faults = tuple(faults)
        self._undeliverable = frozenset(undeliverable)
        self._created_at = clock.now()

        self._lock = threading.Lock()
        self._send_requests = 0
        self._accepted: list[SentRecord] = []
        self._received: list[ReceivedRequest] = []
        # A heap of (due, sequence, payload): the sequence keeps equal due times in send order.
        self._pending: list[tuple[datetime, int, Any]] = []
        self._receipt_seq = 0
        self.failed_receipts: list[Any] = []

        self._server: _Server | None = None
        self._base_url = ""
        self._thread: threading.Thread | None = None
        self._pump: threading.Thread | None = None
        self._pump_stop = threading.Event()
        self._receipt_session = requests.Session()

    # Lifecycle.

    def start(self) -> Self:
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
            name=f"{self.name}-simulator",
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

    def __enter__(self) -> Self:
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
        """`http://127.0.0.1:<port>`."""
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
    def pending_receipt_count(self) -> int:
        """Receipts generated but not yet handed out."""
        with self._lock:
            return len(self._pending)

    # Receipts.

    def _schedule_receipt(self, due: datetime, payload: Any) -> None:
        """Queue a receipt for `due` (call with the lock held)."""
        self._receipt_seq += 1
        heapq.heappush(self._pending, (due, self._receipt_seq, payload))

    def next_receipt_at(self) -> datetime | None:
        """When the earliest pending receipt falls due, or None when none is pending."""
        with self._lock:
            return self._pending[0][0] if self._pending else None

    def due_receipts(self, now: datetime) -> list[Any]:
        """Pop and return the receipts due at `now`, oldest first."""
        due: list[Any] = []
        with self._lock:
            while self._pending and self._pending[0][0] <= now:
                due.append(heapq.heappop(self._pending)[2])
        return due

    def _post_receipt(self, payload: Any, url: str | None) -> requests.Response:
        raise NotImplementedError

    def post_due_receipts(self, now: datetime, url: str | None = None) -> int:
        """Deliver each receipt due at `now` as the gateway would; returns how many got a 2xx.

        `url` is where Orange posts receipts; a Kannel receipt carries its own. A receipt that fails or gets another
        status is kept in `failed_receipts` and not retried (neither gateway is known to retry by default).
        """
        delivered = 0
        for payload in self.due_receipts(now):
            try:
                response = self._post_receipt(payload, url)
            except requests.RequestException as exc:
                logger.warning("%s simulator: receipt failed (%s)", self.name, type(exc).__name__)
                self.failed_receipts.append(payload)
                continue
            if 200 <= response.status_code <= 299:
                delivered += 1
            else:
                logger.warning("%s simulator: receipt answered %s", self.name, response.status_code)
                self.failed_receipts.append(payload)
        return delivered

    def start_receipt_pump(self, url: str | None, interval_seconds: float) -> None:
        """Deliver due receipts (to `url` for Orange) every `interval_seconds` of real time, in a background thread."""
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
                    logger.exception("%s simulator: receipt pump error", self.name)

        self._pump = threading.Thread(target=pump, name=f"{self.name}-simulator-receipts", daemon=True)
        self._pump.start()

    def stop_receipt_pump(self) -> None:
        """Stop the background receipt pump, if any."""
        if self._pump is not None:
            self._pump_stop.set()
            self._pump.join(timeout=5)
            self._pump = None

    # HTTP.

    def _endpoint(self, path: str) -> str:
        """The endpoint a path names; "send" requests are the ones faults, latency and `nth` count."""
        raise NotImplementedError

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
        raise NotImplementedError

    def _internal_error(self) -> Reply:
        raise NotImplementedError

    def handle(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> Reply | None:
        """Answer one request; None means: drop the connection without replying."""
        endpoint = self._endpoint(urlsplit(raw_path).path)
        nth = 0
        if endpoint == "send":
            with self._lock:
                self._send_requests += 1
                nth = self._send_requests
        if self._latency:
            self._clock.sleep(self._latency)
        now = self._clock.now()
        try:
            reply = self._route(endpoint, method, now, nth, raw_path, headers, body)
        except Exception:
            logger.exception("%s simulator: error handling %s %s", self.name, method, urlsplit(raw_path).path)
            reply = self._internal_error()
        with self._lock:
            status = None if reply is None else reply.status
            self._received.append(ReceivedRequest(now, method, raw_path, endpoint, status))
        return reply

    def _faulted(
        self, now: datetime, to: str | None, nth: int, accept: Callable[[], object], refuse: Callable[[Fault], Reply]
    ) -> tuple[bool, Reply | None]:
        """Apply the first fault matching this send: (True, its reply or None for a dropped connection), or
        (False, None) when none matches. `accept` processes the send (a timeout after it), `refuse` builds the
        gateway's error for a `status` fault."""
        for fault in self._faults:
            if not fault.matches(now=now, to=to, nth=nth):
                continue
            if fault.timeout in {"before_send", HUNG}:
                return True, None
            if fault.timeout == "after_send":
                accept()
                return True, None
            return True, refuse(fault)
        return False, None

    def _hung(self, now: datetime) -> bool:
        """Whether an `any_request` timeout applies now: the gateway takes connections and answers nothing, on every
        endpoint (its token and contracts requests too)."""
        return any(f.timeout == HUNG and f.matches(now=now, to=None, nth=0) for f in self._faults)

    def _provider_wide_fault(self, now: datetime, status: int) -> bool:
        """Whether a fault with this status for every recipient applies now (what an account check would see)."""
        return any(f.status == status and f.to is None and f.matches(now=now, to=None, nth=0) for f in self._faults)
