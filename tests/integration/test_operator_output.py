"""What operators and health workers take away from the commands: files they open in a spreadsheet, and what a
scenario's run says about the events it refused."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from core.planning import handle_clinic_event
from rappel_cli import cli
from tests.helpers import dose, patient
from tests.integration.pipeline_kit import Pipeline

pytestmark = pytest.mark.integration

FORMULAS = ['=HYPERLINK("http://evil.example/x","CSU Abobo")', "+SUM(1+1)", "-2+3", "@cmd|' /C calc'!A0"]


@pytest.fixture
def pipe(aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipeline]:
    pipeline = Pipeline(aws, monkeypatch)
    pipeline.start_orange()
    monkeypatch.setattr(cli, "_settings", lambda *_: pipeline.settings)
    yield pipeline
    pipeline.close()


@pytest.mark.parametrize("clinic", FORMULAS)
def test_the_call_list_csv_never_hands_a_spreadsheet_a_formula(pipe: Pipeline, tmp_path: Path, clinic: str) -> None:
    """A clinic name (typed by anyone with access to the clinic system) starting with = + - @ was written as it is:
    Excel runs it as a formula when a health worker opens the call list. It is written as text."""
    handle_clinic_event(patient("p1", sms_opt_in=False), pipe.settings)  # no reminder: a follow-up when overdue
    handle_clinic_event(dose("a1", "p1", due_date="2027-03-05", clinic=clinic), pipe.settings)
    pipe.clock.advance_to(datetime(2027, 3, 7, 12, 0, tzinfo=UTC))
    pipe.follow_up_pass()
    out = tmp_path / "calls.csv"

    result = CliRunner().invoke(cli.app, ["followup", "--local", "--csv", str(out)])

    assert result.exit_code == 0, result.output
    (row,) = csv.DictReader(out.open(encoding="utf-8-sig"))
    assert row["clinic"] == "'" + clinic


def _scenario(events: list[dict[str, Any]]) -> dict[str, Any]:
    return {"start": "2027-03-01T00:00:00Z", "until": "2027-03-25T00:00:00Z", "events": events}


PATIENT = {"at": "2027-03-01T08:00:00Z", "type": "PatientUpserted", "detail": patient()["detail"]}
DOSE = {"at": "2027-03-01T08:00:00Z", "type": "DoseScheduled", "detail": dose(due_date="2027-03-18")["detail"]}


def _simulate(tmp_path: Path, scenario: dict[str, Any], *args: str) -> Any:
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(scenario))
    return CliRunner().invoke(cli.app, ["simulate", str(path), *args])


def test_simulate_says_which_events_it_refused_without_json(tmp_path: Path) -> None:
    """The table view said only `sends: 1; invariants: hold`: a refused event (a dose of "two") went unseen."""
    bad = {**DOSE, "detail": {**DOSE["detail"], "appointment_id": "a2", "dose": "two"}}
    result = _simulate(tmp_path, _scenario([PATIENT, DOSE, bad]))
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "events: 2 applied, 0 ignored, 1 refused" in output and "DoseScheduled: detail.dose:" in output


def test_an_event_after_until_is_counted_as_never_run(tmp_path: Path) -> None:
    """It was never applied and never counted: the run's figures silently left it out."""
    late = {**DOSE, "at": "2027-04-01T08:00:00Z"}
    result = _simulate(tmp_path, _scenario([PATIENT, late]))
    assert result.exit_code == 0, result.output
    assert "events: 1 applied, 0 ignored, 0 refused, 1 after until (never run)" in " ".join(result.output.split())


def test_a_scenario_setting_the_settings_refuse_is_an_error_naming_it(tmp_path: Path) -> None:
    result = _simulate(tmp_path, {**_scenario([PATIENT]), "settings": {"SMS_RATE_LIMIT_PER_SECOND": 0}})
    assert result.exit_code == 2, result.output
    assert "SMS_RATE_LIMIT_PER_SECOND" in result.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["resend", "", "--local"], "empty: a message id"),
        (["messages", "--id", " ", "--local"], "empty: a message id"),
        (["followup", "--local", "--csv", "/no/such/folder/calls.csv"], "--csv: no such folder /no/such/folder"),
    ],
    ids=["resend-empty-id", "messages-empty-id", "csv-missing-folder"],
)
def test_an_operators_slip_is_an_error_naming_it_not_a_traceback(pipe: Pipeline, args: list[str], says: str) -> None:
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.exception
    assert says in " ".join(result.output.split())


def test_an_import_that_stopped_on_failures_says_which_rows_it_never_tried(
    pipe: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rappel_cli import importer

    header = ",".join(importer.CSV_COLUMNS)
    rows = [f"p{n},+22507010{n:05d},Africa/Abidjan,fr,true,Awa,a{n},Penta,1,2027-03-20,CSU Abobo" for n in range(15)]
    register = tmp_path / "register.csv"
    register.write_text("\n".join([header, *rows, ""]), encoding="utf-8")

    def unreachable(event: dict[str, Any], settings: Any) -> Any:
        raise ConnectionError("the network went away")

    monkeypatch.setattr(importer, "handle_clinic_event", unreachable)
    arguments = ["import", str(register), "--local", "--as-of", "2026-12-01T00:00:00Z", "--workers", "1"]
    result = CliRunner().invoke(cli.app, arguments)

    assert result.exit_code == 1
    assert "not applied: ConnectionError (importing the register again is safe)" in result.output
    assert "5 rows were not tried, the first of them row 12" in " ".join(result.output.split())


# Rich markup, and Rich's emoji codes (`:ok:`), which it replaces even where markup is off.
BRACKETED = ["PMI [site 2] Yopougon", "CSU Abobo [annexe]", "Abobo [/annexe]", "CSU :ok: Abobo"]


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables as wide as they need: a narrow one wraps a clinic's name over two lines."""
    monkeypatch.setattr(cli.out, "width", 300)


@pytest.mark.parametrize("clinic", BRACKETED)
@pytest.mark.usefixtures("wide")
def test_the_call_list_shows_the_clinic_as_written(pipe: Pipeline, clinic: str) -> None:
    """Text from the clinic system was printed as Rich markup: `[site 2]` vanished from the health workers' call list,
    and a closing tag (`[/annexe]`) stopped `rappel followup` with a MarkupError, so nobody on the list was called."""
    handle_clinic_event(patient("p1", sms_opt_in=False), pipe.settings)
    handle_clinic_event(dose("a1", "p1", due_date="2027-03-05", clinic=clinic), pipe.settings)
    pipe.clock.advance_to(datetime(2027, 3, 7, 12, 0, tzinfo=UTC))
    pipe.follow_up_pass()

    result = CliRunner().invoke(cli.app, ["followup", "--local"])

    assert result.exit_code == 0, repr(result.exception)
    assert clinic in result.output


@pytest.mark.usefixtures("wide")
def test_the_call_list_shows_a_patient_id_with_colons_as_written(pipe: Pipeline) -> None:
    """Identifiers may hold colons: `CI:x:0042` was shown as `CI❌0042`, the id health workers and operators copy."""
    handle_clinic_event(patient("CI:x:0042", sms_opt_in=False), pipe.settings)
    handle_clinic_event(dose("a1", "CI:x:0042", due_date="2027-03-05"), pipe.settings)
    pipe.clock.advance_to(datetime(2027, 3, 7, 12, 0, tzinfo=UTC))
    pipe.follow_up_pass()

    result = CliRunner().invoke(cli.app, ["followup", "--local"])

    assert result.exit_code == 0, repr(result.exception)
    assert "CI:x:0042" in result.output


@pytest.mark.usefixtures("wide")
def test_the_outcomes_table_shows_the_clinic_as_written(pipe: Pipeline) -> None:
    clinic = BRACKETED[0]
    handle_clinic_event(patient("p1", sms_opt_in=False), pipe.settings)
    handle_clinic_event(dose("a1", "p1", due_date="2027-03-05", clinic=clinic), pipe.settings)
    pipe.clock.advance_to(datetime(2027, 3, 7, 12, 0, tzinfo=UTC))
    pipe.follow_up_pass()
    pipe.aws.tally()

    result = CliRunner().invoke(cli.app, ["stats", "--outcomes", "--local"])

    assert result.exit_code == 0, repr(result.exception)
    assert clinic in result.output


def test_an_import_error_quoting_the_register_is_printed_as_written(pipe: Pipeline, tmp_path: Path) -> None:
    """A header cell `[/notes]` quoted in the import's error made Rich raise: a traceback (exit 1), not the error."""
    from rappel_cli import importer

    register = tmp_path / "register.csv"
    register.write_text(",".join([*importer.CSV_COLUMNS, "[/notes]"]) + "\n", encoding="utf-8")

    result = CliRunner().invoke(cli.app, ["import", str(register), "--local", "--as-of", "2026-12-01T00:00:00Z"])

    assert result.exit_code == 2, repr(result.exception)
    assert "[/notes]" in result.output


@pytest.mark.parametrize(("given", "used"), [([], 1), (["--workers", "3"], 3)])
def test_an_import_on_the_embedded_stack_takes_one_patient_at_a_time_unless_told(
    pipe: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: list[str], used: int
) -> None:
    """moto's server answers requests in threads, and its tables are not safe to write while a query walks them."""
    from rappel_cli import importer

    register = tmp_path / "register.csv"
    register.write_text(",".join(importer.CSV_COLUMNS) + "\n", encoding="utf-8")
    asked: list[int] = []

    def recorded(rows: Any, settings: Any, **options: Any) -> importer.ImportReport:
        asked.append(options["workers"])
        return importer.ImportReport()

    monkeypatch.setattr(importer, "import_rows", recorded)
    arguments = ["import", str(register), "--local", "--as-of", "2026-12-01T00:00:00Z", *given]
    result = CliRunner().invoke(cli.app, arguments)

    assert result.exit_code == 0, repr(result.exception)
    assert asked == [used]
