"""`rappel import`: a register as spreadsheets save it, and the mistakes they carry. Each row's fault is reported
with its spreadsheet row (the header is row 1) and the column, and the import goes on; nothing is applied from a row
that is refused."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import botocore.exceptions
import botocore.session
import pytest
from pynamodb.exceptions import PutError

from core import store
from rappel_cli import importer
from rappel_cli.importer import import_rows, read_csv

pytestmark = pytest.mark.integration

HEADER = "patient_id,phone,timezone,language,sms_opt_in,display_name,appointment_id,vaccine,dose,due_date,clinic"
ROW = "p1,+2250701020304,Africa/Abidjan,fr,true,Awa,a1,Penta,1,2027-03-20,CSU Abobo"
SECOND = "p2,+2250701020305,Africa/Abidjan,fr,true,Kofi,a2,Penta,1,2027-03-20,CSU Abobo"


def _register(tmp_path: Path, text: str, encoding: str = "utf-8") -> Path:
    path = tmp_path / "register.csv"
    path.write_bytes(text.encode(encoding))
    return path


def _row(**cells: str) -> dict[str, str]:
    return {**dict(zip(HEADER.split(","), ROW.split(","), strict=True)), **cells}


@pytest.mark.parametrize(
    "text",
    [
        "\ufeff" + HEADER + "\r\n" + ROW + "\r\n",  # Excel's "CSV UTF-8": a byte order mark, Windows line ends
        HEADER.replace(",", ";") + "\n" + ROW.replace(",", ";") + "\n",  # French Excel: semicolons
        HEADER.replace(",", "\t") + "\n" + ROW.replace(",", "\t") + "\n",  # tab-separated
    ],
    ids=["bom", "semicolons", "tabs"],
)
def test_a_register_as_spreadsheets_save_it_is_read(tmp_path: Path, text: str) -> None:
    (row,) = read_csv(_register(tmp_path, text))
    assert (row.number, row.cells["patient_id"], row.cells["clinic"]) == (2, "p1", "CSU Abobo")


@pytest.mark.parametrize(
    ("text", "encoding", "message"),
    [
        (HEADER + ",discret\n" + ROW + ",true\n", "utf-8", r"unknown column 'discret'"),
        ("", "utf-8", r"empty: no header row"),
        (HEADER + "\n" + ROW.replace("Awa", "Aïcha") + "\n", "cp1252", r"not UTF-8 .*row 2"),
        (HEADER + "\n" + ROW.replace("Awa", '"Awa la petite') + "\n" + SECOND + "\n", "utf-8", r"row 2: .*quote"),
        (HEADER + "\n" + ROW.replace("Awa", "A" * 140_000) + "\n", "utf-8", r"row 2: "),
    ],
    ids=["misspelt-column", "empty", "cp1252", "unclosed-quote", "huge-cell"],
)
def test_a_register_that_cannot_be_read_right_is_refused_naming_where(
    tmp_path: Path, text: str, encoding: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        read_csv(_register(tmp_path, text, encoding))


def test_a_short_row_is_refused_naming_its_row_and_the_import_goes_on(aws, tmp_path: Path) -> None:
    short = "p3,+2250701020306,Africa/Abidjan,fr,true,Ama,a3"  # stops after appointment_id
    path = _register(tmp_path, "\n".join([HEADER, ROW, short, SECOND, ""]))
    report = import_rows(read_csv(path), aws.settings)
    assert report.errors == [(3, "row has 7 of the header's 11 columns")]
    assert report.appointments == 2 and store.get_patient("p3") is None


def test_a_patients_later_row_that_contradicts_its_first_is_refused_naming_the_column(aws) -> None:
    later = _row(phone="+2250701020399", sms_opt_in="false", appointment_id="a2", due_date="2027-03-27")
    report = import_rows([_row(), later], aws.settings, as_of=aws.clock.now())
    assert report.errors == [(3, "phone: differs from this patient's row 2")]
    assert store.get_appointment("a2") is None


def test_an_appointment_id_given_to_two_patients_is_refused_on_the_second(aws) -> None:
    other = _row(patient_id="p2", phone="+2250701020305", display_name="Kofi")  # a1 again
    report = import_rows([_row(), other], aws.settings, as_of=aws.clock.now())
    assert report.errors == [(3, "appointment_id: a1 is patient p1's, in row 2")]
    assert store.get_appointment("a1").patient_id == "p1"  # type: ignore[union-attr]


def test_rows_older_than_what_is_stored_are_reported_as_ignored(aws) -> None:
    now = aws.clock.now()
    import_rows([_row()], aws.settings, as_of=now)
    report = import_rows([_row(sms_opt_in="false", due_date="2027-03-27")], aws.settings, as_of=now - timedelta(1))
    assert (report.patients, report.appointments, report.ignored) == (0, 0, [2])
    assert store.get_patient("p1").sms_opt_in is True  # type: ignore[union-attr]


def test_a_phone_typed_into_another_column_is_masked_in_the_error(aws) -> None:
    report = import_rows([_row(timezone="+2250701020304")], aws.settings)
    (error,) = [e for _, e in report.errors]
    assert error.startswith("detail.timezone: ") and "+2250701020304" not in error and "+225******04" in error


def _throttled() -> botocore.exceptions.ClientError:
    error = {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "Rate of requests exceeded"}}
    return botocore.exceptions.ClientError(error, "UpdateItem")


def test_a_row_that_fails_on_the_way_is_reported_and_the_import_goes_on(aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """A throttle or a lost connection on one of 100,000 rows (a million requests) stopped the import with a
    traceback and no report: the rows after it were never applied, and nobody was told which."""
    real = importer.handle_clinic_event

    def flaky(event: dict[str, Any], settings: Any) -> Any:
        if event["detail"].get("appointment_id") == "a1":
            raise _throttled()
        return real(event, settings)

    monkeypatch.setattr(importer, "handle_clinic_event", flaky)
    report = import_rows([_row(), _row(patient_id="p2", phone="+2250701020305", appointment_id="a2")], aws.settings)
    assert report.errors == [
        (2, "not applied: ProvisionedThroughputExceededException (importing the register again is safe)")
    ]
    assert report.appointments == 1 and store.get_appointment("a2") is not None
    assert report.stopped_at is None


def test_an_import_that_keeps_failing_stops_and_says_where(aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials that expired half-way fail every row from then on: the import stops after a few in a row and says
    from which row nothing was applied, instead of listing 50,000 failures."""
    rows = [_row(patient_id=f"p{n}", phone=f"+22507010{n:05d}", appointment_id=f"a{n}") for n in range(30)]
    real = importer.handle_clinic_event
    calls = 0

    def expiring(event: dict[str, Any], settings: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls > 4:  # the first two rows (a patient and a dose each) go through
            raise _throttled()
        return real(event, settings)

    monkeypatch.setattr(importer, "handle_clinic_event", expiring)
    report = import_rows(rows, aws.settings)
    assert report.appointments == 2
    assert len(report.errors) == importer.FAILURES_IN_A_ROW_TO_STOP
    assert report.stopped_at == 4 + importer.FAILURES_IN_A_ROW_TO_STOP
    assert report.rows == 2 + importer.FAILURES_IN_A_ROW_TO_STOP


def test_a_patients_first_row_that_fails_on_the_way_leaves_its_next_row_to_write_the_patient(
    aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The patient's first row was marked done before its PatientUpserted went: when that failed, the patient's next
    row sent only its dose, reported applied with no reminder planned, and importing only the failed rows again did
    not mend it."""
    real = importer.handle_clinic_event
    calls = 0

    def throttled_once(event: dict[str, Any], settings: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:  # row 2's PatientUpserted
            raise PutError(cause=_throttled())
        return real(event, settings)

    monkeypatch.setattr(importer, "handle_clinic_event", throttled_once)
    report = import_rows([_row(), _row(appointment_id="a2", due_date="2027-03-27")], aws.settings)

    assert report.errors == [
        (2, "not applied: ProvisionedThroughputExceededException (importing the register again is safe)")
    ]
    assert store.get_patient("p1") is not None
    assert report.created == 3, "row 3 planned its dose's three reminders"


# The workers' real planning runs one at a time: moto's tables are not safe to write while a query walks them.
_moto_one_at_a_time = threading.Lock()


def _patients(count: int, rows_each: int, prefix: str = "") -> list[dict[str, str]]:
    """`count` patients with `rows_each` visits, their rows interleaved as a register sorted by date has them."""
    return [
        _row(
            patient_id=f"{prefix}p{n}",
            phone=f"+22507010{n:05d}",
            appointment_id=f"{prefix}a{n}-{visit}",
            due_date=f"2027-03-{20 + visit}",
        )
        for visit in range(rows_each)
        for n in range(count)
    ]


def test_patients_are_imported_at_once_and_each_patients_rows_in_order(aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """A register of 100,000 rows took hours one row after another, each row waiting for its ten requests in turn."""
    real = importer.handle_clinic_event
    workers = 4
    together = threading.Barrier(workers, timeout=30)  # passes only once `workers` patients are in flight at once
    seen: list[tuple[str, str]] = []

    def recorded(event: dict[str, Any], settings: Any) -> Any:
        detail = event["detail"]
        seen.append((detail["patient_id"], detail.get("appointment_id", "patient")))
        if event["detail-type"] == "PatientUpserted":
            together.wait()
        with _moto_one_at_a_time:
            return real(event, settings)

    monkeypatch.setattr(importer, "handle_clinic_event", recorded)
    rows = _patients(workers, 3)
    report = import_rows(rows, aws.settings, as_of=aws.clock.now(), workers=workers)

    assert report.errors == [] and (report.patients, report.appointments) == (workers, 3 * workers)
    for n in range(workers):
        assert [a for p, a in seen if p == f"p{n}"] == ["patient", f"a{n}-0", f"a{n}-1", f"a{n}-2"]


def test_one_row_after_another_never_has_two_patients_in_flight(aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """The barrier above is what proves the workers: with one worker it is never passed."""
    real = importer.handle_clinic_event
    together = threading.Barrier(2, timeout=1)

    def waiting(event: dict[str, Any], settings: Any) -> Any:
        together.wait()
        return real(event, settings)

    monkeypatch.setattr(importer, "handle_clinic_event", waiting)
    report = import_rows(_patients(2, 1), aws.settings, workers=1)

    assert [e for _, e in report.errors] == [
        "not applied: BrokenBarrierError (importing the register again is safe)"
    ] * 2


def test_an_import_with_workers_that_keeps_failing_stops_and_lists_the_rows_it_never_tried(
    aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each row is applied, refused, failed on the way or listed as not tried: none is left out of the report."""
    rows = _patients(40, 2)
    tried: list[str] = []
    lock = threading.Lock()

    def unreachable(event: dict[str, Any], settings: Any) -> Any:
        with lock:
            tried.append(event["detail"]["patient_id"])
        raise ConnectionError("the network went away")

    monkeypatch.setattr(importer, "handle_clinic_event", unreachable)
    workers = 4
    report = import_rows(rows, aws.settings, workers=workers)

    failed = [row for row, _ in report.errors]
    assert importer.FAILURES_IN_A_ROW_TO_STOP <= len(failed) < importer.FAILURES_IN_A_ROW_TO_STOP + workers
    assert sorted(failed + report.not_tried) == list(range(2, len(rows) + 2))
    assert report.rows == len(failed) and report.stopped_at == min(report.not_tried)
    assert len(tried) == len(failed), "no row was tried after the stop, beyond those already in flight"


def test_an_interrupted_import_starts_no_other_row(aws, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C stops the import: the rows in flight end (none is left half-applied), no other row starts."""
    started: list[str] = []
    real = importer.handle_clinic_event

    def counted(event: dict[str, Any], settings: Any) -> Any:
        started.append(event["detail"].get("appointment_id", "patient"))
        with _moto_one_at_a_time:
            return real(event, settings)

    def interrupt(done: int) -> None:
        if done == 3:  # in a worker: Python raises KeyboardInterrupt in the main thread, as a Ctrl-C would
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(importer, "handle_clinic_event", counted)
    workers = 4
    with pytest.raises(KeyboardInterrupt):
        import_rows(_patients(30, 1), aws.settings, progress=interrupt, workers=workers)

    doses = [a for a in started if a != "patient"]
    assert 3 <= len(doses) <= 3 + 2 * workers, "the rows in flight, and none started after"
    assert all(store.get_appointment(a) is not None for a in doses), "every row started was applied whole"


def test_an_import_interrupted_while_its_patients_are_queued_starts_none_of_those_queued(
    aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queuing 60,000 patients takes long enough for a Ctrl-C to land meanwhile: it left every patient already queued
    to run to its end, most of the register, before the interrupt surfaced."""
    started: list[str] = []

    def counted(event: dict[str, Any], settings: Any) -> Any:
        started.append(event["detail"]["patient_id"])
        raise ConnectionError("not needed: the test counts the rows started")

    def queued_then_interrupted(register: list[importer.RegisterRow]) -> Iterator[list[importer.RegisterRow]]:
        yield from ([row] for row in register)
        raise KeyboardInterrupt

    monkeypatch.setattr(importer, "handle_clinic_event", counted)
    monkeypatch.setattr(importer, "_by_patient", queued_then_interrupted)
    workers = 2
    with pytest.raises(KeyboardInterrupt):
        import_rows(_patients(30, 1), aws.settings, workers=workers)

    assert len(started) <= workers, "only the rows already in flight"


def test_a_failure_without_a_response_is_named_by_its_type() -> None:
    """An error whose `response` is None (some clients set it so) raised inside the handler of a failed row, and the
    whole import stopped with a traceback."""
    failure = type("EndpointGone", (Exception,), {"response": None})()
    assert importer._failure(failure) == "EndpointGone"
