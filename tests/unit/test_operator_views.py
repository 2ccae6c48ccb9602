"""What operators and health workers read: the console lines of `rappel local up`, the report's words and the
demo's terminal summary of outcomes and follow-ups."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from rich.console import Console

from rappel_demo.demo import DemoSummary, _print_outcomes
from rappel_demo.report import nice_ticks, reason_in_words, type_label
from rappel_local import console

pytestmark = pytest.mark.unit


def _record(message: str, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("rappel", level, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    return record


def test_records_become_one_line_per_event() -> None:
    lines: list[tuple[str, str]] = []
    handler = console.OperatorConsole(lambda at, function, text: lines.append((function, text)))
    handler.emit(_record("clinic event applied", detail_type="DoseScheduled", appointment_id="a1", messages_created=3))
    handler.emit(_record("dispatch run", claimed=0, enqueued=0, expired=0))  # idle: no line
    handler.emit(_record("dispatch run", claimed=12, enqueued=12, expired=1))
    handler.emit(_record("follow-up pass", looked_at=3, opened=1, published=1, errors=0))
    handler.emit(_record("orange token obtained"))  # routine: no line
    with handler.invocation("send_sms"):
        for n in range(3):
            handler.emit(_record("sms sent", message_id=f"msg_{n}", sms="sms-1" if n < 2 else "sms-2"))
        handler.emit(_record("message settled without sending", message_id="msg_9", status="expired"))
        handler.emit(_record("provider did not accept", level=logging.WARNING, message_id="m", kind="transient"))
    with handler.invocation("delivery_receipt"):
        handler.emit(_record("receipt applied", message_id="msg_0", status="delivered"))
        handler.emit(_record("receipt applied", message_id="msg_1", status="delivered"))
    handler.emit(_record("messages claimed but not enqueued", level=logging.ERROR, count=2))
    assert lines == [
        ("plan_reminders", "DoseScheduled a1: 3 reminders"),
        ("dispatch_due", "claimed 12, enqueued 12, expired 1"),
        ("follow_up_pass", "follow-up pass: looked at 3 families; opened 1, published 1"),
        ("send_sms", "sent 3 reminders in 2 SMS; expired 1; provider refused 1 (transient)"),
        ("delivery_receipt", "receipt delivered msg_0, msg_1"),
        ("error", "messages claimed but not enqueued (count 2)"),
    ]


def test_an_invocation_with_nothing_to_report_prints_nothing() -> None:
    lines: list[str] = []
    handler = console.OperatorConsole(lambda at, function, text: lines.append(text))
    with handler.invocation("send_sms"):
        pass
    assert lines == []


def test_the_feed_carries_lines_between_processes(tmp_path: Path) -> None:
    reader = console.Feed(tmp_path / "feed.jsonl").reset()
    writer = console.Feed(tmp_path / "feed.jsonl")
    writer.append("09:00:00", "plan_reminders", "PatientUpserted p1: recorded")
    with (tmp_path / "feed.jsonl").open("a") as handle:
        handle.write('{"at": "09:00:01", "function"')  # a line still being written is left for the next read
    assert reader.read_new() == [("09:00:00", "plan_reminders", "PatientUpserted p1: recorded")]
    assert reader.read_new() == []


@pytest.mark.parametrize(
    ("message", "words"),
    [
        ({"status": "failed", "last_error": None}, "not delivered: the phone could not be reached"),
        ({"status": "failed", "last_error": "permanent SVC0004: invalid"}, "refused by the SMS provider (SVC0004)"),
        ({"status": "cancelled", "last_error": "cancelled: appointment administered"}, "cancelled: the dose was given"),
        ({"status": "cancelled", "last_error": "cancelled at send time: opted out"}, "cancelled: the family opted out"),
        ({"status": "expired", "last_error": "superseded: the 1_day_reminder"}, "a later reminder of the same dose"),
        ({"status": "dead_letter", "last_error": "transient 503"}, "gave up: sending kept failing"),
    ],
)
def test_reasons_in_words(message: dict[str, object], words: str) -> None:
    assert words in reason_in_words(message)
    assert "_" not in reason_in_words(message)


def test_labels_and_ticks() -> None:
    assert [type_label(t) for t in ("7_day_reminder", "1_day_reminder", "overdue_reminder")] == [
        "7 days before",
        "1 day before",
        "1 day after",
    ]
    assert nice_ticks(7) == [0, 2, 4, 6, 8]
    assert nice_ticks(294) == [0, 100, 200, 300]
    assert nice_ticks(0) == [0, 1]


def _summary(**fields: object) -> DemoSummary:
    base: dict[str, object] = {
        "messages": 0,
        "reminders_sent": 0,
        "sends": 0,
        "by_type": {},
        "delivery_rate": None,
        "lateness_p50": None,
        "lateness_p95": None,
        "segments_per_sms": None,
        "invariants_ok": True,
        "invariants": {},
        "report": Path("report.html"),
    }
    return DemoSummary(**{**base, **fields})  # type: ignore[arg-type]


def test_the_terminal_summary_shows_outcomes_and_follow_ups() -> None:
    out = Console(width=120, record=True)
    _print_outcomes(
        _summary(
            outcomes={
                "reached": {"appointments": 4, "given_by_due_date": 2, "given_later": 1, "not_given": 1},
                "not_reached": {"appointments": 1, "given_by_due_date": 0, "given_later": 0, "not_given": 1},
            },
            follow_ups=[
                {"patient_id": "p1", "clinic": "CSU Abobo"},
                {"patient_id": "p2", "clinic": "CSU Abobo"},
                {"patient_id": "p3", "clinic": None},
            ],
        ),
        out,
    )
    text = out.export_text()
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in text.splitlines() if line.startswith("│")]
    assert rows == [
        ["reached", "4", "2 (50%)", "1 (25%)", "1 (25%)"],
        ["not reached", "1", "0 (0%)", "0 (0%)", "1 (100%)"],
    ]
    assert "Families to call: 3 (CSU Abobo 2, no clinic named 1; listed in the report)" in text


def test_the_terminal_summary_says_when_nothing_was_recorded() -> None:
    out = Console(width=120, record=True)
    _print_outcomes(_summary(), out)
    assert out.export_text().splitlines() == [
        "Outcomes: not recorded in this run's output",
        "Families to call: not recorded in this run's output",
    ]


def test_families_to_call_are_counted_once_however_many_of_their_appointments_are_open() -> None:
    """One child whose visit is booked as one appointment per vaccine (as the demo's per-vaccine clinic does),
    unreachable: the report and the demo's console said two families to call."""
    from rappel_demo.demo import families_line
    from rappel_demo.report import follow_up_section

    rows = [
        {"patient_id": "p1", "appointment_id": "p1-V6W-Penta", "clinic": "CSU Abobo", "reasons": [], "at": None},
        {"patient_id": "p1", "appointment_id": "p1-V6W-VPO", "clinic": "CSU Abobo", "reasons": [], "at": None},
        {"patient_id": "p2", "appointment_id": "a2", "clinic": "HG Yopougon", "reasons": [], "at": None},
    ]
    html = follow_up_section(rows)
    assert html.startswith("<p>2 families with an overdue dose"), html[:80]
    assert "CSU Abobo — 1 to call" in html and "HG Yopougon — 1 to call" in html
    assert html.count("<tr><td>p1</td>") == 2  # each appointment keeps its row and reasons
    assert families_line(rows) == "Families to call: 2 (CSU Abobo 1, HG Yopougon 1; listed in the report)"
