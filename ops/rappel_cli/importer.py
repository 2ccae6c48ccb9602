"""`rappel import FILE.csv`: a register in bulk, through the same validation and planning as clinic events.

Each row is one appointment; the patient columns repeat on every row of a child. The file is read as spreadsheets
save it (a byte order mark, `,` `;` or tab between cells); what cannot be read right (no header, a missing or
unknown column, text that is not UTF-8, an unclosed quote) refuses the whole file, before anything is applied.
Errors of a row are reported with its spreadsheet row (the header is row 1) and the field, and the import goes on;
a patient's rows after a refused patient are refused too, as are later rows that contradict a patient's first
row or give its appointment to another patient. Rows older than what is stored are reported as ignored.

Several patients may be imported at once (`workers`), each patient's rows one after another on one worker. What a
row decides for another patient's (which patient owns an appointment) is decided from the whole register first,
so the outcome is the same with any number of workers.
"""

from __future__ import annotations

import csv
import io
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
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


# The cell separators spreadsheets save with: `,`; `;` where the comma is the decimal mark (French Excel); tab.
DELIMITERS = (",", ";", "\t")


@dataclass(frozen=True)
class RegisterRow:
    """One data row of a register: its spreadsheet row number (the header is row 1), its cells by column, and why
    it cannot be read, if it cannot (more or fewer cells than the header)."""

    number: int
    cells: dict[str, str]
    fault: str | None = None


@dataclass
class ImportReport:
    """Rows read, events applied, reminders created, the rows older than what is stored (ignored), and the errors,
    each with its spreadsheet row number; when the import stopped on failures in a row, the rows it never tried."""

    rows: int = 0
    patients: int = 0
    appointments: int = 0
    created: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    ignored: list[int] = field(default_factory=list)
    not_tried: list[int] = field(default_factory=list)

    @property
    def stopped_at(self) -> int | None:
        """The first row not tried, when the import stopped on failures in a row."""
        return min(self.not_tried, default=None)

    def merge(self, other: ImportReport) -> None:
        """Add `other`'s rows to this report (its lists in the order they come: sort them once all are in)."""
        self.rows += other.rows
        self.patients += other.patients
        self.appointments += other.appointments
        self.created += other.created
        self.errors += other.errors
        self.ignored += other.ignored
        self.not_tried += other.not_tried


# Rows that fail on the way (not refused: a throttle, a lost connection, expired credentials) one after another before
# the import stops: what keeps failing will fail for every row left.
FAILURES_IN_A_ROW_TO_STOP = 10


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
# What a patient's rows must agree on.
_PATIENT_COLUMNS = ("phone", "timezone", "language", "sms_opt_in", "display_name", *OPTIONAL_PATIENT_COLUMNS)


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
    rows: Iterable[RegisterRow | dict[str, str]],
    settings: Settings,
    progress: Callable[[int], None] | None = None,
    as_of: datetime | None = None,
    workers: int = 1,
) -> ImportReport:
    """Apply register rows as clinic events; never stops at a bad row. Rows given as plain dicts are numbered as
    a spreadsheet would show them after a header (2, 3, …).

    `as_of`: when the register was exported (now by default). Every row's events are stamped with it, as a clinic
    system stamps its events: a clinic event after it is newer and stands, so importing the same register again
    (or an older one) never undoes a dose given, an opt-out or a reschedule since; the same register imported twice
    makes the same events, which change nothing the second time.

    `workers`: patients imported at once. A patient's rows always go one after another, in the register's order;
    what one row decides about another patient's (who owns an appointment) is decided before any row is applied, so
    the outcome is the same with any number of workers. `progress` is called with the number of rows done."""
    register = [given if isinstance(given, RegisterRow) else RegisterRow(i + 2, given) for i, given in enumerate(rows)]
    store.bind(settings)
    stamp = min(as_of, clock.now()) if as_of is not None else None
    owners = _appointment_owners(register)
    run = _Run(progress)
    report = ImportReport()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="import") as pool:
        try:
            # Submitting tens of thousands of patients takes a while, and the first are running meanwhile.
            parts = [pool.submit(_import_patient, rows, owners, stamp, settings, run) for rows in _by_patient(register)]
            for part in as_completed(parts):
                report.merge(part.result())
        except BaseException:  # an interrupt too: the rows in flight end, no other row starts
            run.stop()
            pool.shutdown(cancel_futures=True)
            raise
    report.errors.sort()
    report.ignored.sort()
    report.not_tried.sort()
    return report


class _Run:
    """What the workers share: rows done (for `progress`), and the failures on the way in a row (in the order they
    end) that stop the import."""

    def __init__(self, progress: Callable[[int], None] | None) -> None:
        self._lock = threading.Lock()
        self._progress = progress
        self._done = 0
        self._failing = 0
        self.stopped = False

    def done(self, failed: bool | None) -> None:
        """One row done: applied (False), failed on the way (True) or refused (None, which breaks no run)."""
        with self._lock:
            self._done += 1
            if failed is not None:
                self._failing = self._failing + 1 if failed else 0
            self.stopped = self.stopped or self._failing >= FAILURES_IN_A_ROW_TO_STOP
            if self._progress:
                self._progress(self._done)

    def stop(self) -> None:
        with self._lock:
            self.stopped = True


def _ids_missing(row: RegisterRow) -> str | None:
    missing = [c for c in ("patient_id", "appointment_id") if not row.cells.get(c)]
    return row.fault or (f"{missing[0]}: missing" if missing else None)


def _by_patient(register: list[RegisterRow]) -> list[list[RegisterRow]]:
    """The rows of each patient, in the register's order, patients in the order they first appear; a row that
    cannot name its patient is one of its own."""
    patients: dict[str | int, list[RegisterRow]] = {}
    for row in register:
        key: str | int = row.number if _ids_missing(row) else row.cells["patient_id"]
        patients.setdefault(key, []).append(row)
    return list(patients.values())


def _appointment_owners(register: list[RegisterRow]) -> dict[str, RegisterRow]:
    """Each appointment's first row: the register gives the appointment to that row's patient, whatever becomes of
    the row, so a later row of another patient naming it is refused."""
    owners: dict[str, RegisterRow] = {}
    for row in register:
        if not _ids_missing(row):
            owners.setdefault(row.cells["appointment_id"], row)
    return owners


@dataclass
class _Patient:
    """What a patient's earlier rows decided: its first row (the one that wrote the patient) and whether it was
    refused."""

    first: RegisterRow | None = None
    refused: bool = False


def _import_patient(
    rows: list[RegisterRow], owners: dict[str, RegisterRow], stamp: datetime | None, settings: Settings, run: _Run
) -> ImportReport:
    """One patient's rows, one after another."""
    report = ImportReport()
    patient = _Patient()
    for row in rows:
        if run.stopped:
            report.not_tried.append(row.number)
            continue
        report.rows += 1
        if error := _row_fault(row, patient, owners):
            report.errors.append((row.number, error))
            run.done(failed=None)
            continue
        try:
            _import_row(row, patient, stamp or clock.now(), settings, report)
        except Exception as exc:  # its events are replays the second time, so importing the register again is safe
            report.errors.append((row.number, f"not applied: {_failure(exc)} (importing the register again is safe)"))
            run.done(failed=True)
        else:
            run.done(failed=False)
    return report


def _failure(exc: Exception) -> str:
    """What failed, without the request's data: an AWS error's code (pynamodb's or botocore's), else the type."""
    response = getattr(exc, "response", None) or {}  # some errors carry a response of None
    code = getattr(exc, "cause_response_code", None) or response.get("Error", {}).get("Code")
    return str(code or type(exc).__name__)


def _row_fault(row: RegisterRow, patient: _Patient, owners: dict[str, RegisterRow]) -> str | None:
    """Why a row is refused before anything of it is applied, if it is."""
    if fault := _ids_missing(row):
        return fault
    patient_id, appointment_id = row.cells["patient_id"], row.cells["appointment_id"]
    if patient.refused:
        return "patient_id: this patient's first row was refused"
    first = patient.first
    differs = [c for c in _PATIENT_COLUMNS if first is not None and first.cells.get(c, "") != row.cells.get(c, "")]
    if first is not None and differs:
        return f"{differs[0]}: differs from this patient's row {first.number}"
    owner = owners[appointment_id]
    if owner.cells["patient_id"] != patient_id:
        return f"appointment_id: {appointment_id} is patient {owner.cells['patient_id']}'s, in row {owner.number}"
    return None


def _import_row(row: RegisterRow, patient: _Patient, at: datetime, settings: Settings, report: ImportReport) -> None:
    """A row's events: its patient's on the patient's first row, then its appointment's."""
    patient_id = row.cells["patient_id"]
    first = patient.first is None
    upsert, dose = row_events(row.cells, store.get_patient(patient_id) if first else None)
    ignored = False
    if first:
        outcome = _apply("PatientUpserted", upsert, f"import-{patient_id}-{at.timestamp()}", at, settings, report)
        # Only now: a first row that failed on the way leaves the patient's next row to be its first.
        patient.first = row
        if outcome.rejected:
            patient.refused = True
            report.errors.append((row.number, outcome.errors[0]))
            return
        report.patients += outcome.applied
        ignored = outcome.ignored > 0
    outcome = _apply("DoseScheduled", dose, f"import-{dose['appointment_id']}-{at.timestamp()}", at, settings, report)
    if outcome.rejected:
        report.errors.append((row.number, outcome.errors[0]))
        return
    report.appointments += outcome.applied
    if ignored or outcome.ignored:
        report.ignored.append(row.number)


def _apply(
    kind: str, detail: dict[str, Any], event_id: str, at: datetime, settings: Settings, report: ImportReport
) -> PlanningResult:
    result = handle_clinic_event(make_envelope(kind, detail, event_id=event_id, at=at), settings)
    report.created += result.created
    return result


def read_csv(path: Path) -> list[RegisterRow]:
    """Register rows, as spreadsheets save them; raises ValueError naming the file, and the row where it applies,
    for what cannot be read right: no header, a missing, unknown or repeated column, text that is not UTF-8, an
    unclosed quote, a cell over the csv module's limit. Blank rows are skipped (and counted in the numbering)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        row = raw[: exc.start].count(b"\n") + 1
        raise ValueError(f"{path}: not UTF-8 text (row {row}): save the register as 'CSV UTF-8'") from None
    header_line = text.splitlines()[0] if text.strip() else ""
    if not header_line.strip():
        raise ValueError(f"{path}: empty: no header row")
    known = (*CSV_COLUMNS, *OPTIONAL_PATIENT_COLUMNS)
    delimiter = max(DELIMITERS, key=lambda d: sum(name.strip() in known for name in header_line.split(d)))
    records = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    rows: list[RegisterRow] = []
    number = 1  # the record last read: the header
    try:
        header = [name.strip() for name in next(records)]
        _check_header(path, header, known)
        for cells in records:
            number += 1
            if any(cell.strip() for cell in cells):
                rows.append(_register_row(number, header, cells))
    except csv.Error as exc:
        raise ValueError(f"{path}: row {number + 1}: {_csv_error(exc)}") from None
    return rows


def _check_header(path: Path, header: list[str], known: tuple[str, ...]) -> None:
    missing = [c for c in CSV_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{path}: missing column {missing[0]!r} (expected: {', '.join(CSV_COLUMNS)})")
    unknown = [c for c in header if c and c not in known]
    if unknown:
        raise ValueError(f"{path}: unknown column {unknown[0]!r} (known: {', '.join(known)})")
    repeated = [c for c in header if c and header.count(c) > 1]
    if repeated:
        raise ValueError(f"{path}: column {repeated[0]!r} appears twice")


def _register_row(number: int, header: list[str], cells: list[str]) -> RegisterRow:
    # Empty trailing cells past the header (a spreadsheet's stray separators) are no fault; anything else is.
    named = [c for c in header if c]
    extra = cells[len(header) :]
    fault = None
    if len(cells) < len(header):
        fault = f"row has {len(cells)} of the header's {len(header)} columns"
    elif any(cell.strip() for cell in extra):
        fault = f"row has {len(cells)} cells, the header {len(header)} columns"
    values = dict(zip(header, cells, strict=False))
    return RegisterRow(number, {c: values.get(c, "") for c in named}, fault)


def _csv_error(exc: csv.Error) -> str:
    text = str(exc)
    if "unexpected end of data" in text:
        return "a quote opened in a cell is never closed"
    if "field larger than field limit" in text:
        return f"a cell is longer than {csv.field_size_limit()} characters"
    return text
