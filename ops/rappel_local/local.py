"""`rappel local up`: the embedded stack in real time, for the operator commands to talk to with `--local`.

An AWS emulation (moto's server) with the stack's tables, queues and secrets created from template.yaml, the
Orange simulator, the receipt Function URL on localhost, and the schedules firing on the wall clock.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from datetime import UTC, datetime

from rich.console import Console
from rich.text import Text

from core import clock
from core.receipts import Route, route_url
from core.settings import sender_concurrency_within
from rappel_cli.operations import drain_send_queue
from rappel_cli.target import CONSOLE_FEED, LOCAL_STATE, write_local_state
from rappel_local import console as operator_console
from rappel_local.change_streams import ChangeStreams
from rappel_local.embedded import ReceiptEndpoint, invoke, reset_core_caches, schedule_event
from rappel_local.orange_simulator import OrangeSimulator
from rappel_local.stack import create_stack

LOCAL_CREDENTIALS = {"client_id": "rappel-local-client", "client_secret": "local-secret-not-real"}
FAKE_AWS = {"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local", "AWS_DEFAULT_REGION": "us-east-1"}


class PortInUse(Exception):
    """The embedded stack's port is taken; the message says what to do."""


def start(*, rate: float, port: int) -> tuple[dict[str, str], list[object]]:
    """Start the embedded stack's servers; returns the environment to reach it and what to stop. PortInUse when
    something already listens on `port` (another `rappel local up`, whose stack this one would write into)."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        # As the server binds: a port a stopped stack's connections still hold (TIME_WAIT) is free, one listened on
        # is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            raise PortInUse(f"port {port} is in use (another `rappel local up`?): stop it, or pass --port") from None
    os.environ.update(FAKE_AWS)
    for name in ("werkzeug", "moto"):  # moto's server logs every request; the operators' console says what matters
        logging.getLogger(name).setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    stack = create_stack(prefix="local", endpoint_url=endpoint, orange_credentials=LOCAL_CREDENTIALS, exist_ok=True)
    simulator = OrangeSimulator(
        clock=clock.SystemClock(),
        client_id=LOCAL_CREDENTIALS["client_id"],
        client_secret=LOCAL_CREDENTIALS["client_secret"],
        rate_limit_per_second=rate,
        receipt_delay_seconds=5,
    ).start()
    receipts = ReceiptEndpoint().start()
    environment = {
        **FAKE_AWS,
        **stack.environment(),
        "AWS_ENDPOINT_URL": endpoint,
        "ORANGE_API_BASE_URL": simulator.base_url,
        "RECEIPT_BASE_URL": receipts.base_url,
        "SMS_RATE_LIMIT_PER_SECOND": str(rate),
        "SMS_SENDER_MAX_CONCURRENCY": str(sender_concurrency_within(rate)),
    }
    os.environ.update(environment)
    reset_core_caches()
    simulator.start_receipt_pump(route_url(receipts.base_url, Route.ORANGE, stack.receipt_token), interval_seconds=1)
    return environment, [simulator, receipts, server]


# How often `local up` hands the tables' changes to tally_changes (on AWS, at most the mappings' batching window).
LOCAL_TALLY_SECONDS = 2


def serve(*, rate: float, port: int, console: Console) -> None:
    """Run in the foreground until Ctrl-C, firing the schedules in real time."""
    from core.settings import load_settings

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly on TERM as on Ctrl-C
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background by a shell
        signal.signal(signal.SIGINT, signal.default_int_handler)
    environment, parts = start(rate=rate, port=port)
    feed = _attach_console(console)
    write_local_state(
        environment, {"started_at": datetime.now(UTC).isoformat(), "pid": os.getpid(), "console_feed": str(feed.path)}
    )
    settings = load_settings()
    console.print(
        Text.assemble(
            ("embedded stack up", "green"),
            f" on {environment['AWS_ENDPOINT_URL']}; Orange simulator {environment['ORANGE_API_BASE_URL']}; "
            f"receipts {environment['RECEIPT_BASE_URL']}",
        )
    )
    console.print(
        "other terminals: `rappel import FILE.csv --as-of WHEN --local`, `rappel messages --local`, ... (Ctrl-C stops)"
    )
    stop = threading.Event()
    streams = ChangeStreams()
    next_dispatch = next_pass = next_health = next_tally = time.monotonic()
    try:
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_dispatch:
                invoke("dispatch_due", schedule_event("dispatch", datetime.now(UTC).isoformat()))
                drain_send_queue(settings)
                next_dispatch = now + settings.SMS_PROCESSING_INTERVAL_MINUTES * 60
            if now >= next_pass:
                invoke("follow_up_pass", schedule_event("follow-up", datetime.now(UTC).isoformat()))
                next_pass = now + settings.FOLLOW_UP_PASS_MINUTES * 60
            if now >= next_tally:  # the stream mappings, read more often than AWS's window: stats follow at once
                streams.drain(invoke)
                next_tally = now + LOCAL_TALLY_SECONDS
            if now >= next_health:
                invoke("health_check", schedule_event("health", datetime.now(UTC).isoformat()))
                next_health = now + settings.SMS_HEALTH_CHECK_INTERVAL_MINUTES * 60
            for at, function, text in feed.read_new():  # what `rappel … --local` did in other terminals
                _print_line(console, at, function, text)
            stop.wait(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        for part in parts:
            getattr(part, "stop")()  # noqa: B009 - simulator, receipt endpoint and moto server all have stop()
        LOCAL_STATE.unlink(missing_ok=True)
        feed.path.unlink(missing_ok=True)
        console.print("embedded stack stopped")


def _attach_console(console: Console) -> operator_console.Feed:
    """One line per event that matters on this terminal, instead of the functions' JSON logs and EMF."""
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"  # EMF is for CloudWatch; the console says what happened
    operator_console.attach(lambda at, function, text: _print_line(console, at, function, text))
    return operator_console.Feed(CONSOLE_FEED.resolve()).reset()


def _print_line(console: Console, at: str, function: str, text: str) -> None:
    console.print(operator_console.line(at, function, text), highlight=False, soft_wrap=True)
