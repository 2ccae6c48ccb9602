"""`rappel import` with several workers on AWS's own DynamoDB Local: patients imported at once end exactly as one row
after another does, with real concurrent requests and real conditional writes (moto in the test's process answers
under the importer's own GIL, and its tables are not safe to write while a query walks them)."""

from __future__ import annotations

import random
from datetime import date, timedelta

import pytest

from bench.import_pace import import_into_fresh_tables
from core import clock
from rappel_cli.importer import RegisterRow
from rappel_demo.register import generate_register

pytestmark = pytest.mark.contract


def _register() -> list[RegisterRow]:
    """A demo register of 40 children (siblings share a phone), its rows shuffled so that patients interleave, with
    the mistakes registers carry: a bad phone, a row that contradicts its patient's first, an appointment given to
    two patients, a short row."""
    start = clock.now().date() + timedelta(days=3)
    cells = [row.to_csv() for row in generate_register(40, seed=11, start=start, days=40)]
    random.Random(5).shuffle(cells)
    first, second = cells[0], next(c for c in cells if c["patient_id"] != cells[0]["patient_id"])
    cells += [
        {
            **first,
            "appointment_id": "later-visit",
            "due_date": str(date.fromisoformat(first["due_date"]) + timedelta(28)),
            "display_name": "Someone else",
        },
        {**second, "appointment_id": first["appointment_id"]},
        {**cells[3], "patient_id": "bad-phone", "phone": "+225 not a phone", "appointment_id": "bad-phone-visit"},
    ]
    rows = [RegisterRow(i + 2, c) for i, c in enumerate(cells)]
    rows.insert(7, RegisterRow(0, {}, "row has 3 of the header's 11 columns"))
    return [RegisterRow(i + 2, r.cells, r.fault) for i, r in enumerate(rows)]


@pytest.mark.usefixtures("virtual_clock")
def test_patients_imported_at_once_end_as_one_row_after_another(dynamodb_local_endpoint: str) -> None:
    _, (alone, stored_alone) = import_into_fresh_tables(_register(), dynamodb_local_endpoint, workers=1)
    _, (together, stored_together) = import_into_fresh_tables(_register(), dynamodb_local_endpoint, workers=8)

    assert together == alone
    assert stored_together == stored_alone
    assert alone.created > 60 and len(stored_alone["messages"]) == alone.created
    refusals = sorted(error.split(":")[0] for _, error in alone.errors)
    assert refusals == ["appointment_id", "detail.phone", "display_name", "row has 3 of the header's 11 columns"]
