"""The operator commands against the embedded stack: `rappel local up` in the background, the rest with --local."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from rappel_demo.register import CSV_COLUMNS

pytestmark = pytest.mark.integration
RAPPEL = [sys.executable, "-m", "rappel_cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _zone_in_the_afternoon() -> str:
    """A zone where it is now between 10:00 and 18:59, so a 09:00 reminder of today is due and not in quiet hours."""
    now = datetime.now(UTC)
    for offset in range(-12, 15):
        name = f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}" if offset else "Etc/GMT"
        if 10 <= now.astimezone(ZoneInfo(name)).hour <= 18:
            return name
    raise AssertionError("some zone is always in the afternoon")


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RAPPEL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def console_lines() -> list[str]:
    """What `rappel local up` printed so far (its stdout and stderr), line by line."""
    return []


def _tallied_stats(cwd: Path, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """`rappel stats` once the stack's tally has caught up with what was done (it reads the streams every 2 s)."""
    deadline = time.monotonic() + 60
    while True:
        stats: dict[str, Any] = json.loads(_run("stats", "--local", "--json", "--since", "hour", cwd=cwd).stdout)
        if done(stats["total"]) or time.monotonic() > deadline:
            return stats
        time.sleep(0.5)


def _wait_for(lines: list[str], wanted: Callable[[str], bool], what: str) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = next((line for line in list(lines) if wanted(line)), None)
        if found is not None:
            return found
        time.sleep(0.2)
    raise AssertionError(f"rappel local up never printed {what}; it printed:\n" + "\n".join(lines))


@pytest.fixture
def local_stack(tmp_path: Path, console_lines: list[str]):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    process = subprocess.Popen(
        [*RAPPEL, "local", "up", "--port", str(_free_port())],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    stdout = process.stdout

    def read() -> None:
        for output_line in stdout:
            console_lines.append(output_line.rstrip("\n"))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    state = tmp_path / ".rappel" / "local.json"
    deadline = time.monotonic() + 60
    while not state.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("rappel local up did not start: " + "".join(console_lines))
        time.sleep(0.2)
    yield tmp_path
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
    reader.join(timeout=10)
    assert not state.exists()  # a clean stop removes what --local reads


def test_import_process_and_read_back(local_stack: Path, console_lines: list[str]) -> None:
    zone = _zone_in_the_afternoon()
    today = datetime.now(ZoneInfo(zone)).date()
    register = local_stack / "register.csv"
    with register.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        writer.writerow(
            [
                "p1",
                "+2250701020304",
                zone,
                "fr",
                "true",
                "Awa",
                "a1",
                "Penta",
                "2",
                (today + timedelta(days=7)).isoformat(),
                "CSU Abobo",
            ]
        )
        writer.writerow(
            [
                "p2",
                "not-a-phone",
                zone,
                "fr",
                "true",
                "Kofi",
                "a2",
                "VPO",
                "1",
                (today + timedelta(days=7)).isoformat(),
                "",
            ]
        )

    as_of = datetime.now(UTC).isoformat()
    imported = _run("import", str(register), "--local", "--json", "--as-of", as_of, cwd=local_stack)
    assert imported.returncode == 1, imported.stderr  # a row refused: a script must notice
    data = json.loads(imported.stdout)
    assert (data["rows"], data["appointments"], data["reminders_created"]) == (2, 1, 3)
    assert data["rows_not_tried"] == [] and data["stopped_at_row"] is None
    # The second data row: spreadsheet row 3 (the header is row 1).
    assert data["errors"][0]["row"] == 3 and data["errors"][0]["error"].startswith("detail.phone")

    processed = json.loads(_run("process", "--local", "--json", cwd=local_stack).stdout)
    assert processed["enqueued"] >= 0 and processed["records_failed"] == 0

    messages = json.loads(_run("messages", "--local", "--json", "--patient", "p1", cwd=local_stack).stdout)
    by_type = {m["reminder_type"]: m for m in messages}
    assert by_type["7_day_reminder"]["status"] in {"sent", "delivered"}
    assert by_type["1_day_reminder"]["status"] == "pending"
    sent_id = by_type["7_day_reminder"]["message_id"]
    shown = json.loads(_run("messages", "--local", "--json", "--id", sent_id, cwd=local_stack).stdout)
    assert [(e["from"], e["to"]) for e in shown["history"]][:3] == [
        (None, "pending"),
        ("pending", "queued"),
        ("queued", "sent"),
    ]
    assert shown["history"][2]["reason"] == "sent via orange" and shown["history"][-1]["to"] == shown["status"]
    table = _run("messages", "--local", "--id", sent_id, cwd=local_stack)
    assert table.returncode == 0 and "History (" in table.stdout and "sent via orange" in table.stdout

    health = _run("health", "--local", "--json", cwd=local_stack)
    assert health.returncode == 0 and json.loads(health.stdout)["pending_count"] == 0  # the rest: days away
    families = local_stack / "followups.csv"
    followups = _run("followup", "--local", "--json", "--csv", str(families), cwd=local_stack)
    assert followups.returncode == 0 and json.loads(followups.stdout) == []  # nothing overdue yet
    assert families.read_text(encoding="utf-8-sig").splitlines() == [
        "at,clinic,patient_id,appointment_id,due_date,phone,reasons"
    ]
    assert _run("followup", "--local", "--since", "last week", cwd=local_stack).returncode == 2
    stats = _tallied_stats(local_stack, lambda total: (total["planned"], total["sent"]) == (3, 1))
    assert stats["total"]["planned"] == 3 and stats["total"]["sent"] == 1

    opted_out = json.loads(_run("optout", "+2250701020304", "--local", "--json", cwd=local_stack).stdout)
    assert opted_out == {
        "number": "+225******04",
        "number_stop": "written",
        "patients": 1,
        "cancelled": 2,
        "revived": 0,
        "created": 0,
    }
    restored = json.loads(_run("optin", "+2250701020304", "--local", "--json", cwd=local_stack).stdout)
    assert (restored["number_stop"], restored["revived"], restored["created"]) == ("lifted", 2, 0)
    replanned = _run("replan", "--local", "--json", cwd=local_stack)  # the timing rules have not changed
    assert replanned.returncode == 0 and json.loads(replanned.stdout) == {
        "replanned": 0,
        "created": 0,
        "cancelled": 0,
        "revived": 0,
    }
    assert json.loads(_run("optout", "+2250701020304", "--local", "--json", cwd=local_stack).stdout)["cancelled"] == 2
    # A number no patient has yet: its stop is written all the same (for those registered on it later), and said.
    stranger = _run("optout", "+2250709999999", "--local", "--json", cwd=local_stack)
    assert stranger.returncode == 0 and json.loads(stranger.stdout)["number_stop"] == "written"
    assert json.loads(stranger.stdout)["patients"] == 0
    lifted = _run("optin", "+2250709999999", "--local", "--json", cwd=local_stack)
    assert lifted.returncode == 0 and json.loads(lifted.stdout)["number_stop"] == "lifted"
    again = _run("optin", "+2250709999999", "--local", "--json", cwd=local_stack)
    assert again.returncode == 1 and json.loads(again.stdout)["number_stop"] == "unchanged"  # nothing changed
    cleanup = json.loads(_run("cleanup", "--local", "--json", cwd=local_stack).stdout)
    assert cleanup["deleted"] == 0  # nothing has reached the end of its retention yet
    released = json.loads(_run("release-hold", "--local", "--json", cwd=local_stack).stdout)
    assert released == {"closed": []}  # no provider's circuit was open
    redrive = json.loads(_run("redrive", "--local", "--json", cwd=local_stack).stdout)
    assert redrive["method"] == "receive-send-delete"  # moto has no StartMessageMoveTask: not asked for it
    assert not [line for line in console_lines if "Traceback" in line], "the console showed a traceback"
    not_dead = _run("resend", sent_id, "--local", "--json", cwd=local_stack)  # sent, not a dead letter
    assert not_dead.returncode == 1 and json.loads(not_dead.stdout) == {"message_id": sent_id, "resent": False}
    assert "not a dead letter" in not_dead.stderr  # why, not only that it was not
    assert "no such message" in _run("resend", "msg_nope", "--local", cwd=local_stack).stderr


def test_the_console_prints_one_line_per_event(local_stack: Path, console_lines: list[str]) -> None:
    """The operators' console: what each function did, from this terminal's commands too, and no request log."""
    zone = _zone_in_the_afternoon()
    due = (datetime.now(ZoneInfo(zone)).date() + timedelta(days=7)).isoformat()
    register = local_stack / "register.csv"
    with register.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        writer.writerow(["p7", "+2250701020399", zone, "fr", "true", "Awa", "a7", "Penta", "2", due, "CSU Abobo"])
        writer.writerow(["p8", "not-a-phone", zone, "fr", "true", "Kofi", "a8", "VPO", "1", due, ""])
    as_of = datetime.now(UTC).isoformat()
    assert _run("import", str(register), "--local", "--json", "--as-of", as_of, cwd=local_stack).returncode == 1
    assert json.loads(_run("process", "--local", "--json", cwd=local_stack).stdout)["enqueued"] == 1
    messages = json.loads(_run("messages", "--local", "--json", "--patient", "p7", cwd=local_stack).stdout)
    (sent,) = [m for m in messages if m["status"] in {"sent", "delivered"}]

    line = re.compile(r"^\d\d:\d\d:\d\d (\w+) +(.+)$")

    def event(function: str, text: str) -> Callable[[str], bool]:
        return lambda printed: bool((m := line.match(printed)) and m.group(1) == function and text in m.group(2))

    _wait_for(console_lines, event("plan_reminders", "PatientUpserted p7: recorded"), "the patient")
    _wait_for(console_lines, event("plan_reminders", "DoseScheduled a7: 3 reminders"), "the appointment")
    _wait_for(console_lines, event("plan_reminders", "event refused: detail.phone"), "the refused row")
    _wait_for(console_lines, event("dispatch_due", "claimed 1, enqueued 1"), "the dispatch")
    _wait_for(console_lines, event("send_sms", "sent 1 reminder in 1 SMS"), "the send")
    _wait_for(console_lines, event("delivery_receipt", f"receipt delivered {sent['message_id']}"), "the receipt")
    _wait_for(console_lines, event("health_check", "healthy"), "the health check")
    assert not [printed for printed in console_lines if "HTTP/1.1" in printed or printed.startswith("{")]
    idle = [printed for printed in console_lines if event("dispatch_due", "")(printed)]
    assert len(idle) == 1  # the stack's own runs every minute claim nothing: no line for them


def test_commands_say_clearly_when_the_stack_is_missing(tmp_path: Path) -> None:
    result = _run("messages", "--local", cwd=tmp_path)
    assert result.returncode == 2 and "rappel local up" in result.stderr


def test_an_import_without_its_export_time_is_refused_naming_the_flag(tmp_path: Path) -> None:
    """A file's modification time is not its export time (a copy resets it): an old register stamped now would
    undo the opt-outs and doses given since. Nothing is read or written."""
    register = tmp_path / "register.csv"
    register.write_text(",".join(CSV_COLUMNS) + "\n")

    result = _run("import", str(register), "--local", cwd=tmp_path)

    assert result.returncode == 2 and "--as-of: required" in result.stderr
    # A mistyped year: its events were stamped now, silently.
    future = _run("import", str(register), "--local", "--as-of", "2099-01-01T00:00:00Z", cwd=tmp_path)
    assert future.returncode == 2 and "--as-of: 2099-01-01T00:00:00+00:00 is in the future" in future.stderr


def test_commands_say_clearly_when_the_stack_they_were_started_for_is_gone(tmp_path: Path) -> None:
    """`rappel local up` killed: its state file is left, naming an endpoint nothing answers on."""
    state = tmp_path / ".rappel" / "local.json"
    state.parent.mkdir()
    state.write_text(json.dumps({"environment": {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{_free_port()}"}}))

    result = _run("health", "--local", cwd=tmp_path)

    assert result.returncode == 2 and "rappel local up" in result.stderr and "Traceback" not in result.stderr


def test_simulate_as_a_command_prints_only_its_json_document_and_exits_0_or_2_naming_the_field(
    tmp_path: Path,
) -> None:
    """The contract end-to-end checks rely on: stdout is the JSON document alone; a bad scenario exits 2."""
    event = {"at": "2027-03-01T08:00:00Z", "type": "PatientUpserted"}
    patient_detail = {"patient_id": "p1", "phone": "+2250701020304", "timezone": "Africa/Abidjan", "language": "fr"}
    dose_detail = {"appointment_id": "a1", "patient_id": "p1", "vaccine": "Penta", "dose": 1, "due_date": "2027-03-09"}
    scenario = {
        "start": "2027-03-01T00:00:00Z",
        "until": "2027-03-03T00:00:00Z",
        "provider": {"name": "orange"},
        "events": [
            {**event, "detail": {**patient_detail, "sms_opt_in": True, "display_name": "Awa"}},
            {**event, "type": "DoseScheduled", "detail": dose_detail},
        ],
    }
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(scenario))

    result = _run("simulate", str(path), "--json", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)  # nothing else on stdout
    assert {m["reminder_type"]: m["status"] for m in document["messages"]} == {
        "7_day_reminder": "delivered",
        "1_day_reminder": "pending",
        "overdue_reminder": "pending",
    }
    path.write_text(json.dumps({**scenario, "until": "not a time"}))
    refused = _run("simulate", str(path), "--json", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stdout == "" and "until" in refused.stderr


def test_a_second_local_stack_on_a_taken_port_says_so_and_exits(tmp_path: Path) -> None:
    """It would otherwise write its tables into whatever listens there (another `rappel local up`) and run on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run("local", "up", "--port", str(port), cwd=tmp_path)
    assert result.returncode == 2 and f"port {port} is in use" in result.stderr
    assert not (tmp_path / ".rappel" / "local.json").exists()


class _Served(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # the server closes each connection first: its side keeps the TIME_WAIT

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class _PastThePortCheck(Exception):
    pass


def test_a_port_a_stopped_stack_served_on_is_not_taken_for_one_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """Right after Ctrl-C, the stopped stack's connections hold its port in TIME_WAIT for a minute: nothing listens,
    and moto's server (which binds with SO_REUSEADDR) can bind it, so the check must not refuse it."""
    import moto.server

    from rappel_local import local

    first = HTTPServer(("127.0.0.1", 0), _Served)
    port = first.server_address[1]
    serving = threading.Thread(target=first.serve_forever)
    serving.start()
    urllib.request.urlopen(f"http://127.0.0.1:{port}/").read()
    first.shutdown()
    first.server_close()
    serving.join()

    def server(*args: object, **kwargs: object) -> None:
        raise _PastThePortCheck

    monkeypatch.setattr(moto.server, "ThreadedMotoServer", server)
    for name in local.FAKE_AWS:  # what `start` sets in this process's environment is given back after the test
        monkeypatch.setenv(name, os.environ.get(name, ""))
    with pytest.raises(_PastThePortCheck):
        local.start(rate=1.0, port=port)
