"""`rappel import` with several workers on AWS's own DynamoDB Local: patients imported at once end exactly as one row
after another does, with real concurrent requests and real conditional writes (moto in the test's process answers
under the importer's own GIL, and its tables are not safe to write while a query walks them)."""

from __future__ import annotations

import random
import uuid
from datetime import date, timedelta
from typing import Any

import boto3
import pytest

from core import clock, store
from core.settings import Settings, build_settings
from rappel_cli.importer import ImportReport, RegisterRow, import_rows
from rappel_demo.register import generate_register
from rappel_local.stack import create_stack

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


def _stack(endpoint: str) -> Settings:
    stack = create_stack(prefix=f"i{uuid.uuid4().hex[:8]}", endpoint_url=endpoint, services=("dynamodb",))
    return build_settings(**stack.environment())


def _contents(settings: Settings, endpoint: str) -> dict[str, list[dict[str, Any]]]:
    client = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    tables = {
        "patients": settings.PATIENTS_TABLE,
        "appointments": settings.APPOINTMENTS_TABLE,
        "messages": settings.MESSAGES_TABLE,
        "ops": settings.OPS_TABLE,
    }
    contents = {}
    for name, table in tables.items():
        items = [i for page in client.get_paginator("scan").paginate(TableName=table) for i in page["Items"]]
        contents[name] = sorted(items, key=repr)
    return contents


def _import(endpoint: str, workers: int) -> tuple[ImportReport, dict[str, list[dict[str, Any]]]]:
    settings = _stack(endpoint)
    store.unbind()
    try:
        report = import_rows(_register(), settings, as_of=clock.now() - timedelta(hours=1), workers=workers)
        return report, _contents(settings, endpoint)
    finally:
        store.unbind()


@pytest.mark.usefixtures("virtual_clock")
def test_patients_imported_at_once_end_as_one_row_after_another(dynamodb_local_endpoint: str) -> None:
    alone, stored_alone = _import(dynamodb_local_endpoint, workers=1)
    together, stored_together = _import(dynamodb_local_endpoint, workers=8)

    assert together == alone
    assert stored_together == stored_alone
    assert alone.created > 60 and len(stored_alone["messages"]) == alone.created
    refusals = sorted(error.split(":")[0] for _, error in alone.errors)
    assert refusals == ["appointment_id", "detail.phone", "display_name", "row has 3 of the header's 11 columns"]
