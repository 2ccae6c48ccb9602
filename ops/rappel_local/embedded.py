"""The embedded stack's plumbing shared by the CLI, the simulator, tests and benchmarks."""

from __future__ import annotations

import contextlib
import importlib
import io
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from core import notify, provider_state, queue, secrets, sending, store
from core.providers import factory
from core.settings import reset_settings
from rappel_local import console


@contextlib.contextmanager
def shared_service_models() -> Iterator[None]:
    """Within the block, every botocore session reads its service models through one loader per search path.

    Each pynamodb model opens its own botocore session, and each new session parses DynamoDB's service model and
    the endpoint rules from disk again (tens of milliseconds each), so every `reset_core_caches` costs a Lambda cold
    start's worth of parsing. The parsed models are read-only data that botocore already shares between the
    clients of one session; sharing them between sessions changes no request and no answer."""
    import botocore.session

    original = botocore.session.create_loader
    loaders: dict[str | None, Any] = {}

    def create_loader(search_path_string: str | None = None) -> Any:
        loader = loaders.get(search_path_string)
        if loader is None:
            loader = loaders[search_path_string] = original(search_path_string)
            # boto3 appends its data path to each new session's loader: once is enough for a shared one.
            loader._search_paths = _PathsOnce(loader.search_paths)
        return loader

    botocore.session.create_loader = create_loader
    try:
        yield
    finally:
        botocore.session.create_loader = original


class _PathsOnce(list[str]):
    """A search path list that keeps one copy of each path appended to it."""

    def append(self, path: str) -> None:
        if path not in self:
            super().append(path)


def reset_core_caches() -> None:
    """Forget every cached client, binding and setting, so core code talks to the stack now in place."""
    store.unbind()
    provider_state.forget()
    queue.reset_clients()
    notify.reset_clients()
    secrets.reset()
    factory.reset()
    sending.reset()
    reset_settings()


@dataclass
class FakeLambdaContext:
    """What Powertools reads from a Lambda context, for handlers invoked outside Lambda."""

    function_name: str = "rappel-local"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:000000000000:function:rappel-local"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    timeout_millis: int = 120_000

    def get_remaining_time_in_millis(self) -> int:
        return self.timeout_millis


_HANDLERS = {
    "plan_reminders": "handlers.plan_reminders",
    "dispatch_due": "handlers.dispatch_due",
    "follow_up_pass": "handlers.follow_up_pass",
    "send_sms": "handlers.send_sms",
    "delivery_receipt": "handlers.delivery_receipt",
    "health_check": "handlers.health_check",
    "daily_statistics": "handlers.daily_statistics",
    "tally_changes": "handlers.tally_changes",
}


def invoke(function: str, event: dict[str, Any]) -> Any:
    """Invoke a Lambda handler in-process, as `sam local invoke` would with an events/ file."""
    module = importlib.import_module(_HANDLERS[function])
    with console.invocation(function):
        return module.lambda_handler(event, FakeLambdaContext(function_name=f"rappel-{function}"))


def function_url_event(method: str, path: str, query: str, body: str, headers: dict[str, str]) -> dict[str, Any]:
    """The Lambda Function URL (payload 2.0) event for one HTTP request."""
    params = dict(parse_qsl(query, keep_blank_values=True))
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": {k.lower(): v for k, v in headers.items()},
        "queryStringParameters": params or None,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "local",
            "domainName": "localhost",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": headers.get("User-Agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": "01/Jan/2027:00:00:00 +0000",
            "timeEpoch": 0,
        },
        "body": body,
        "isBase64Encoded": False,
    }


class ReceiptEndpoint:
    """The delivery_receipt Function URL on localhost: real HTTP in, the real handler behind it."""

    def __init__(self, lock: threading.Lock | None = None) -> None:
        # Receipts and the simulation loop share one moto backend: the lock keeps them from interleaving.
        self.lock = lock or threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
                event = function_url_event(self.command, parts.path, parts.query, body, dict(self.headers.items()))
                with endpoint.lock:
                    response = invoke("delivery_receipt", event)
                payload = str(response.get("body") or "").encode()
                self.send_response(int(response.get("statusCode", 500)))
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = _serve
            do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ReceiptEndpoint:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def sqs_event(messages: list[dict[str, Any]], queue_arn: str) -> dict[str, Any]:
    """The SQS event Lambda's event source mapping would deliver for received messages."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": {
                    "ApproximateReceiveCount": m.get("Attributes", {}).get("ApproximateReceiveCount", "1"),
                    "SentTimestamp": "0",
                    "SenderId": "local",
                    "ApproximateFirstReceiveTimestamp": "0",
                },
                "messageAttributes": {},
                "md5OfBody": m.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": "us-east-1",
            }
            for m in messages
        ]
    }


def schedule_event(rule: str, at: str) -> dict[str, Any]:
    """The EventBridge Scheduler event that fires a scheduled function."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.scheduler",
        "account": "000000000000",
        "time": at,
        "region": "us-east-1",
        "resources": [rule],
        "detail": {},
    }


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """Silence the functions' JSON logs and EMF on the terminal (they are for CloudWatch, not for people).

    With an operator console attached, the records still reach it (it has muted the JSON output itself)."""
    import logging

    logger = logging.getLogger("rappel")
    level = logger.level
    if not console.attached():
        logger.setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            yield
        finally:
            logger.setLevel(level)
