"""`rappel import FILE.csv`: a register in bulk, through the same validation and planning as clinic events.

Each row is one appointment; the patient columns repeat on every row of a child. Errors are reported per
row (with the field) and the import goes on; a patient's rows after a refused patient are refused too.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from core import clock, store
from core.events import make_envelope
from core.planning import PlanningResult, handle_clinic_event
from core.settings import Settings
from core.store import PatientRecord

# The register layout: one row per appointment, the patient columns repeated on every row of a child. Optional
# columns: `discreet` (true/false: texts naming neither the child nor the vaccine) and `preferred_hour` (0-23, the
# family's hour for its reminders); without the column, or with its cell empty, a patient keeps what it has.
CSV_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "phone",
    "timezone",
    "language",
    "sms_opt_in",
    "display_name",
    "appointment_id",
    "vaccine",
    "dose",
    "due_date",
    "clinic",
)


@dataclass
class ImportReport:
    """Rows read, events applied, reminders created, and the errors by row number (1 = first data row)."""

    rows: int = 0
    patients: int = 0
    appointments: int = 0
    created: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)


def _boolean(value: str) -> bool | str:
    lowered = value.strip().lower()
    return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(lowered, value)


def _integer(value: str) -> int | str:
    try:
        return int(value)
    except ValueError:
        return value


# The optional patient columns, each with how its CSV text is read.
OPTIONAL_PATIENT_COLUMNS: dict[str, Callable[[str], Any]] = {"discreet": _boolean, "preferred_hour": _integer}


def row_events(row: dict[str, str], stored: PatientRecord | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The PatientUpserted and DoseScheduled details of one register row (types coerced from CSV text). An optional
    column the register lacks, or leaves empty, keeps the value of the patient as `stored` (an upsert replaces the
    whole patient: a register export without them turned a discreet family's texts back to naming the child)."""
    patient = {
        "patient_id": row.get("patient_id", ""),
        "phone": row.get("phone", ""),
        "timezone": row.get("timezone") or None,
        "language": row.get("language", ""),
        "sms_opt_in": _boolean(row.get("sms_opt_in", "")),
        "display_name": row.get("display_name", ""),
    }
    for column, read in OPTIONAL_PATIENT_COLUMNS.items():
        cell = (row.get(column) or "").strip()
        if cell:
            patient[column] = read(cell)
        elif stored is not None and getattr(stored, column) is not None:
            patient[column] = getattr(stored, column)
    dose = {
        "appointment_id": row.get("appointment_id", ""),
        "patient_id": row.get("patient_id", ""),
        "vaccine": row.get("vaccine", ""),
        "dose": _integer(row.get("dose", "")),
        "due_date": row.get("due_date", ""),
        "clinic": row.get("clinic") or None,
    }
    return patient, dose


def import_rows(
    rows: Iterable[dict[str, str]],
    settings: Settings,
    progress: Callable[[int], None] | None = None,
    as_of: datetime | None = None,
) -> ImportReport:
    """Apply register rows as clinic events; never stops at a bad row.

    `as_of`: when the register was exported (now by default). Every row's events are stamped with it, as a clinic
    system stamps its events: a clinic event after it is newer and stands, so importing the same register again
    (or an older one) never undoes a dose given, an opt-out or a reschedule since; the same register imported twice
    makes the same events, which change nothing the second time."""
    report = ImportReport()
    store.bind(settings)
    seen_patients: dict[str, bool] = {}
    stamp = min(as_of, clock.now()) if as_of is not None else None
    for number, row in enumerate(rows, start=1):
        report.rows += 1
        missing = [c for c in ("patient_id", "appointment_id") if not row.get(c)]
        if missing:
            report.errors.append((number, f"{missing[0]}: missing"))
            continue
        patient_id = row["patient_id"]
        patient, dose = row_events(row, store.get_patient(patient_id) if patient_id not in seen_patients else None)
        at = stamp or clock.now()
        if patient_id not in seen_patients:
            outcome = _apply("PatientUpserted", patient, f"import-{patient_id}-{at.timestamp()}", at, settings, report)
            seen_patients[patient_id] = outcome.rejected == 0
            report.patients += 1 if outcome.rejected == 0 else 0
            if outcome.rejected:
                report.errors.append((number, outcome.errors[0]))
                continue
        elif not seen_patients[patient_id]:
            report.errors.append((number, "patient_id: this patient's first row was refused"))
            continue
        event_id = f"import-{dose['appointment_id']}-{at.timestamp()}"
        outcome = _apply("DoseScheduled", dose, event_id, at, settings, report)
        if outcome.rejected:
            report.errors.append((number, outcome.errors[0]))
        else:
            report.appointments += 1
        if progress:
            progress(number)
    return report


def _apply(
    kind: str, detail: dict[str, Any], event_id: str, at: datetime, settings: Settings, report: ImportReport
) -> PlanningResult:
    result = handle_clinic_event(make_envelope(kind, detail, event_id=event_id, at=at), settings)
    report.created += result.created
    return result


def read_csv(path: Path) -> list[dict[str, str]]:
    """Register rows; raises ValueError naming a missing column."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column {missing[0]!r} (expected: {', '.join(CSV_COLUMNS)})")
        return list(reader)
