"""Debian's real Kannel for a test: bearerbox, smsbox and the fake SMSC, on free ports of 127.0.0.1, in a temp dir.

`KannelBoxes` writes a kannel.conf (one `sendsms-user`, one catch-all `sms-service` whose `get-url` is ours, the fake
SMSC), starts the three programs in the only order that works and waits until each is really ready (the status page
shows smsbox registered and the SMSC online: an open port is not enough), and stops them all, process groups
included. What it relies on is in docs/providers.md#a-real-kannel-in-tests.

The fake SMSC (`fakesmsc` from kannel-extras) is the phone network: every message bearerbox routes to it is printed
(`Got message N: <from to type text>`) and acknowledged, which makes bearerbox report DLR 8 and 1; each line written
to its standard input is a mobile-originated SMS (`sender receiver text words…`).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

BEARERBOX = "/usr/sbin/bearerbox"
SMSBOX = "/usr/sbin/smsbox"
FAKESMSC = "/usr/lib/kannel/test/fakesmsc"
HOST = "127.0.0.1"
SMSC_ID = "fake1"
READY_SECONDS = 20.0

_CONF = """\
group = core
admin-port = {admin}
admin-interface = {host}
admin-password = {admin_password}
status-password = {status_password}
admin-allow-ip = "{host}"
smsbox-port = {smsbox}
smsbox-interface = {host}
box-allow-ip = "{host}"
log-file = "{dir}/bearerbox.log"
log-level = 0
access-log = "{dir}/bearerbox-access.log"
dlr-storage = internal

group = smsc
smsc = fake
smsc-id = {smsc_id}
our-host = {host}
port = {fake}
connect-allow-ip = "{host}"

group = smsbox
bearerbox-host = {host}
bearerbox-port = {smsbox}
sendsms-port = {sendsms}
sendsms-interface = {host}
mo-recode = true
log-file = "{dir}/smsbox.log"
log-level = 0
access-log = "{dir}/smsbox-access.log"

group = sendsms-user
username = {username}
password = {password}
max-messages = 10
concatenation = true

group = sms-service
keyword = default
catch-all = true
max-messages = 0
get-url = "{get_url}"
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")


class FakeSmsc:
    """fakesmsc connected to bearerbox: the MT messages it printed, and MO lines written one at a time."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.messages: list[str] = []
        self._sent = 0
        self._changed = threading.Condition()
        self._log = (workdir / "fakesmsc.log").open("w")
        # -i 0: no pause between MO lines; -v 0: the debug level, the only one that prints the messages received.
        self.process = subprocess.Popen(
            [FAKESMSC, "-H", HOST, "-r", str(port), "-i", "0", "-v", "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            start_new_session=True,
            text=True,
            bufsize=1,
        )
        threading.Thread(target=self._read, name="fakesmsc-output", daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self._log:  # until fakesmsc's output ends
            for line in self.process.stdout:
                self._log.write(line)
                self._log.flush()
                got = re.search(r"Got message \d+: <(.*)>$", line.rstrip("\n"))
                with self._changed:
                    if got:
                        self.messages.append(got.group(1))
                    elif "fakesmsc: sent message" in line:
                        self._sent += 1
                    self._changed.notify_all()

    def wait_for_messages(self, count: int, timeout: float = READY_SECONDS) -> list[str]:
        """The first `count` messages the SMSC received (it reads its socket only when its input is idle)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.messages) >= count, timeout):
                raise TimeoutError(f"the fake SMSC received {self.messages}, not {count} messages")
            return list(self.messages)

    def send_mo(self, sender: str, receiver: str, text: str, timeout: float = 10.0) -> None:
        """One SMS from a phone. fakesmsc reads its input with buffered fgets behind select(): a second line written
        before the first is sent would wait in its buffer, so each line waits for `sent message`."""
        assert self.process.stdin is not None
        with self._changed:
            target = self._sent + 1
            self.process.stdin.write(f"{sender} {receiver} text {text}\n")
            self.process.stdin.flush()
            if not self._changed.wait_for(lambda: self._sent >= target, timeout):
                raise TimeoutError("fakesmsc did not send the MO line")

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()  # EOF: fakesmsc exits (and aborts on its way out, always)


class KannelBoxes:
    """bearerbox + smsbox + fakesmsc on free ports of 127.0.0.1; `start()` then `stop()` (or use `with`)."""

    def __init__(self, workdir: Path, *, username: str, password: str, get_url: str) -> None:
        for binary in (BEARERBOX, SMSBOX, FAKESMSC):
            if not os.access(binary, os.X_OK):
                raise FileNotFoundError(f"{binary} is missing: `make kannel` installs kannel and kannel-extras")
        self.workdir = workdir
        self.ports = {name: free_port() for name in ("admin", "smsbox", "sendsms", "fake")}
        self._admin_password = "admin-" + os.urandom(6).hex()
        self._status_password = "status-" + os.urandom(6).hex()
        self.conf = workdir / "kannel.conf"
        self.conf.write_text(
            _CONF.format(
                host=HOST,
                dir=workdir,
                smsc_id=SMSC_ID,
                admin_password=self._admin_password,
                status_password=self._status_password,
                username=username,
                password=password,
                get_url=get_url,
                **self.ports,
            )
        )
        self.processes: list[subprocess.Popen[Any]] = []
        self._logs: list[IO[str]] = []
        self.smsc: FakeSmsc | None = None

    @property
    def sendsms_url(self) -> str:
        return f"http://{HOST}:{self.ports['sendsms']}/cgi-bin/sendsms"

    def status(self) -> str:
        """bearerbox's status page (a wrong password answers 200 `Denied`, so the body is what counts)."""
        return _get(f"http://{HOST}:{self.ports['admin']}/status.txt?password={self._status_password}")[1]

    def _start(self, name: str, argv: list[str]) -> subprocess.Popen[Any]:
        log = (self.workdir / f"{name}.out").open("w")
        self._logs.append(log)
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True)
        self.processes.append(process)
        return process

    def _wait(self, what: str, ready: Callable[[], object]) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args[0]} exited with {process.returncode} while waiting for {what}")
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"Kannel: no {what} after {READY_SECONDS} s (logs in {self.workdir})")

    def _port_open(self, name: str) -> bool:
        with socket.socket() as probe:
            probe.settimeout(0.2)
            return probe.connect_ex((HOST, self.ports[name])) == 0

    def start(self) -> KannelBoxes:
        self._start("bearerbox", [BEARERBOX, "-v", "1", str(self.conf)])
        self._wait("bearerbox status page", lambda: "Status: running" in self.status())
        self._wait("bearerbox smsbox port", lambda: self._port_open("smsbox"))
        # smsbox exits at once when bearerbox is not listening yet, hence the order.
        self._start("smsbox", [SMSBOX, "-v", "1", str(self.conf)])
        # Its sendsms port opens about a second before it has registered with bearerbox: wait for the box line.
        self._wait("smsbox registered", lambda: re.search(r"^\s+smsbox:", self.status(), re.MULTILINE))
        self.connect_smsc()
        return self

    def connect_smsc(self) -> None:
        """Start the fake SMSC and wait until bearerbox has it online (what bearerbox held goes out then)."""
        self.smsc = FakeSmsc(self.ports["fake"], self.workdir)
        self.processes.append(self.smsc.process)
        self._wait("fake SMSC online", lambda: re.search(r"FAKE:\d+ \(online", self.status()))

    def disconnect_smsc(self) -> None:
        """End the fake SMSC (the operator's link down) and wait until bearerbox has seen it go: sendsms then answers
        `3: Queued for later delivery` and bearerbox holds the messages."""
        assert self.smsc is not None
        self.smsc.close()
        self.smsc.process.wait(timeout=READY_SECONDS)
        self.processes.remove(self.smsc.process)  # its exit is expected (it aborts on its way out, always)
        self._wait("fake SMSC gone", lambda: re.search(r"FAKE:\d+ \((?!online)", self.status()))
        self.smsc = None

    def stop(self) -> None:
        """Ask bearerbox to shut down (smsbox follows), then end whatever is left in each process group."""
        with contextlib.suppress(OSError):
            _get(f"http://{HOST}:{self.ports['admin']}/shutdown?password={self._admin_password}")
        if self.smsc is not None:
            self.smsc.close()
        deadline = time.monotonic() + 10
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        for process in self.processes:  # a smsbox restarting itself after its bearerbox died forks a new process
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        for log in self._logs:
            log.close()

    def __enter__(self) -> KannelBoxes:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
