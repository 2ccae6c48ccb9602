"""A TLS failure is classed by when it happened: during the handshake no request has left (safe to retry), after the
request was written the provider may have accepted it (ambiguous, never replayed). A real TLS server on localhost
breaks each way; the client is `requests`, as the adapters call it."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import pytest
import requests
import trustme

from core.providers.base import FailureKind, classify_transport

REQUEST = b'{"outboundSMSMessageRequest": {}}'


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@contextmanager
def tls_server(authority: trustme.CA, behave: Callable[[socket.socket, ssl.SSLContext], None]) -> Iterator[str]:
    """A one-connection server on localhost: `behave` gets the accepted plain socket and the server's TLS context."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    authority.issue_cert("localhost").configure_cert(context)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            behave(connection, context)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"https://localhost:{port}/smsmessaging/v1/outbound/tel%3A%2B2250000/requests"
    finally:
        thread.join(timeout=10)
        listener.close()


def post(url: str, verify: str | bool) -> BaseException:
    with pytest.raises(requests.exceptions.RequestException) as caught:
        requests.post(url, data=REQUEST, timeout=5, verify=verify)
    return caught.value


def test_a_tls_session_broken_after_the_request_was_read_is_ambiguous(authority: trustme.CA) -> None:
    received: list[bytes] = []

    def read_then_break(connection: socket.socket, context: ssl.SSLContext) -> None:
        tls = context.wrap_socket(connection, server_side=True)
        data = b""
        while REQUEST not in data:
            data += tls.recv(4096)
        received.append(data)
        # Bytes that are no TLS record, under the TLS layer: the client fails inside it, reading the reply.
        with socket.socket(fileno=os.dup(tls.fileno())) as raw:
            raw.sendall(b"\x17\x03\x03\x00\x05garbage-not-a-record")

    with authority.cert_pem.tempfile() as ca_file, tls_server(authority, read_then_break) as url:
        exc = post(url, ca_file)

    assert received, "the provider read the whole request"
    assert isinstance(exc, requests.exceptions.SSLError)
    error = classify_transport(exc)
    assert (error.kind, error.code) == (FailureKind.AMBIGUOUS, "connection_dropped")


def test_a_failed_tls_handshake_sent_nothing_and_is_retried(authority: trustme.CA) -> None:
    def garbage_handshake(connection: socket.socket, context: ssl.SSLContext) -> None:
        connection.recv(4096)
        connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    with authority.cert_pem.tempfile() as ca_file, tls_server(authority, garbage_handshake) as url:
        exc = post(url, ca_file)

    error = classify_transport(exc)
    assert (error.kind, error.code) == (FailureKind.TRANSIENT, "connect_error")


def test_an_untrusted_certificate_sent_nothing_and_is_retried(authority: trustme.CA) -> None:
    def handshake(connection: socket.socket, context: ssl.SSLContext) -> None:
        with suppress(ssl.SSLError, OSError):  # the client hangs up on the certificate it does not trust
            context.wrap_socket(connection, server_side=True)

    with tls_server(authority, handshake) as url:
        exc = post(url, True)  # the system's trust store, which does not know this authority

    error = classify_transport(exc)
    assert (error.kind, error.code) == (FailureKind.TRANSIENT, "connect_error")
