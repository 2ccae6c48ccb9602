"""The synthetic register: deterministic, valid phones, one row per visit on the schedule, inside the window."""

from __future__ import annotations

import zoneinfo
from collections import Counter, defaultdict
from datetime import date, timedelta
from pathlib import Path

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.texts import REMINDER_TYPES, available_languages, normalise_gsm7, render_reminder
from rappel_demo.register import (
    CSV_COLUMNS,
    EPI_SCHEDULE,
    MAX_VACCINE_LENGTH,
    PER_VACCINE_CLINIC,
    SAMPLE_CHILDREN,
    SAMPLE_DAYS,
    SAMPLE_REGISTER_PATH,
    SAMPLE_SEED,
    SAMPLE_START,
    RegisterRow,
    ScheduledVisit,
    generate_register,
    read_register_csv,
    write_register_csv,
)

pytestmark = pytest.mark.unit

START = date(2027, 3, 1)


@pytest.fixture(scope="module")
def register() -> list[RegisterRow]:
    return generate_register(200, seed=7, start=START, days=45)


def by_patient(rows: list[RegisterRow]) -> dict[str, list[RegisterRow]]:
    grouped: dict[str, list[RegisterRow]] = defaultdict(list)
    for row in rows:
        grouped[row.patient_id].append(row)
    return grouped


def test_same_seed_same_register() -> None:
    assert generate_register(50, seed=3, start=START, days=30) == generate_register(50, seed=3, start=START, days=30)


def test_different_seeds_differ() -> None:
    assert generate_register(50, seed=3, start=START, days=30) != generate_register(50, seed=4, start=START, days=30)


def test_every_child_has_at_least_one_appointment(register: list[RegisterRow]) -> None:
    assert len(by_patient(register)) == 200
    assert len(register) > 200


def test_due_dates_within_the_window(register: list[RegisterRow]) -> None:
    end = START + timedelta(days=45)
    assert all(START <= row.due_date < end for row in register)


@settings(max_examples=30, deadline=None)
@given(
    n_children=st.integers(min_value=0, max_value=30),
    seed=st.integers(),
    start=st.dates(min_value=date(2024, 1, 1), max_value=date(2032, 12, 31)),
    days=st.integers(min_value=1, max_value=120),
)
def test_due_dates_within_any_window(n_children: int, seed: int, start: date, days: int) -> None:
    rows = generate_register(n_children, seed=seed, start=start, days=days)
    assert len({row.patient_id for row in rows}) == n_children
    assert all(start <= row.due_date < start + timedelta(days=days) for row in rows)


def test_all_phones_are_valid_ci_mobiles_unique_but_for_twins(register: list[RegisterRow]) -> None:
    phones = {row.patient_id: row.phone for row in register}
    shared = {phone: [p for p, number in phones.items() if number == phone] for phone in set(phones.values())}
    twins = [children for children in shared.values() if len(children) > 1]
    assert twins and all(len(children) == 2 for children in twins)  # twins, never triplets
    due = by_patient(register)
    for first, second in twins:  # born the same day: their visits fall due together
        assert [r.due_date for r in due[first]] == [r.due_date for r in due[second]]
    for phone in phones.values():
        parsed = phonenumbers.parse(phone, None)
        assert phonenumbers.is_valid_number(parsed)
        assert phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) == phone
        assert phonenumbers.number_type(parsed) == phonenumbers.PhoneNumberType.MOBILE
        assert phone[:6] in {"+22507", "+22505", "+22501"}
        assert len(phone) == len("+225") + 10


def test_patient_fields_are_the_same_on_every_row(register: list[RegisterRow]) -> None:
    for rows in by_patient(register).values():
        first = rows[0]
        for row in rows:
            assert (row.phone, row.timezone, row.language, row.sms_opt_in, row.display_name, row.clinic) == (
                first.phone,
                first.timezone,
                first.language,
                first.sms_opt_in,
                first.display_name,
                first.clinic,
            )


def test_appointment_ids_are_unique(register: list[RegisterRow]) -> None:
    ids = [row.appointment_id for row in register]
    assert len(ids) == len(set(ids))


def visit_of(row: RegisterRow) -> ScheduledVisit:
    """The schedule visit a row stands for, found from its appointment id."""
    visit_id = row.appointment_id.removeprefix(f"{row.patient_id}-V").split("-")[0]
    (visit,) = [visit for visit in EPI_SCHEDULE if visit.code == visit_id]
    return visit


def test_the_schedule_is_five_visits() -> None:
    assert [(visit.code, visit.vaccine, visit.dose) for visit in EPI_SCHEDULE] == [
        ("6W", "Penta+VPO+PCV13+Rota", 1),
        ("10W", "Penta+VPO+PCV13+Rota", 2),
        ("14W", "Penta+VPO+PCV13+VPI", 3),
        ("9M", "RR+Fièvre jaune", 1),
        ("15M", "RR", 2),
    ]
    assert MAX_VACCINE_LENGTH == 40


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"vaccines": ()}, "vaccines"),
        ({"vaccines": ("x" * 41,)}, "vaccines"),
        ({"weeks": 0, "months": 0}, "weeks"),
        ({"weeks": 6, "months": 9}, "weeks"),
    ],
)
def test_bad_visits(kwargs: dict[str, object], error: str) -> None:
    arguments: dict[str, object] = {"vaccines": ("RR",), "dose": 1, "weeks": 6, **kwargs}
    with pytest.raises(ValueError, match=error):
        ScheduledVisit(**arguments)  # type: ignore[arg-type]


def test_one_row_per_visit_or_per_vaccine_at_the_clinic_that_books_so(register: list[RegisterRow]) -> None:
    per_vaccine = 0
    for rows in by_patient(register).values():
        visits = [visit_of(row) for row in rows]
        if rows[0].clinic == PER_VACCINE_CLINIC:
            per_vaccine += 1
            expected = sorted((v.code, vaccine) for v in set(visits) for vaccine in v.vaccines)
            assert sorted((v.code, row.vaccine) for v, row in zip(visits, rows, strict=True)) == expected
            continue
        assert len(set(visits)) == len(rows)
        assert len({row.due_date for row in rows}) == len(rows)
        for row, visit in zip(rows, visits, strict=True):
            assert (row.vaccine, row.dose) == (visit.vaccine, visit.dose)
    assert per_vaccine, "no child of the per-vaccine clinic in the register"


def test_vaccine_and_dose_are_valid_event_fields(register: list[RegisterRow]) -> None:
    for row in register:
        assert 0 < len(row.vaccine) <= MAX_VACCINE_LENGTH
        assert row.vaccine == row.vaccine.strip()
        assert type(row.dose) is int
        assert row.dose >= 0


def test_visits_follow_the_schedule_from_one_birth_date(register: list[RegisterRow]) -> None:
    for rows in by_patient(register).values():
        possible_births: set[date] | None = None
        for row in rows:
            scheduled = visit_of(row)
            births = {
                birth
                for birth in (row.due_date - timedelta(days=age) for age in range(480))
                if scheduled.due_for(birth) == row.due_date
            }
            possible_births = births if possible_births is None else possible_births & births
        assert possible_births, rows[0].patient_id


def test_mix_of_zones_languages_and_opt_in(register: list[RegisterRow]) -> None:
    children = {row.patient_id: row for row in register}.values()
    zones = Counter(row.timezone for row in children)
    assert set(zones) == {
        "Africa/Abidjan",
        "Africa/Dakar",
        "Africa/Douala",
        "Africa/Kinshasa",
        "Africa/Lubumbashi",
        "Europe/Paris",
    }
    assert zones.most_common(1)[0][0] == "Africa/Abidjan"
    languages = Counter(row.language for row in children)
    assert set(languages) == {"fr", "en"}
    assert languages["fr"] > languages["en"]
    opted_out = sum(not row.sms_opt_in for row in children)
    assert 1 <= opted_out <= 25
    assert any(row.clinic == "" for row in children)
    for row in children:
        zoneinfo.ZoneInfo(row.timezone)
        assert row.language in available_languages()
        assert 0 < len(row.display_name) <= 20


def test_custom_zones() -> None:
    rows = generate_register(40, seed=1, start=START, days=10, zones=["Africa/Abidjan", "Europe/Paris"])
    assert {row.timezone for row in rows} == {"Africa/Abidjan", "Europe/Paris"}


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"n_children": -1}, "n_children"),
        ({"days": 0}, "days"),
        ({"zones": []}, "zones"),
        ({"zones": ["Mars/Olympus"]}, "Mars/Olympus"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: str) -> None:
    arguments: dict[str, object] = {"n_children": 5, "seed": 1, "start": START, "days": 10, **kwargs}
    with pytest.raises(ValueError, match=error):
        generate_register(**arguments)  # type: ignore[arg-type]


def assert_renders_in_one_segment(row: RegisterRow | dict[str, str]) -> None:
    """Every reminder type fits one GSM-7 SMS, clinic and full name kept, although three parts are allowed."""
    record = row.to_csv() if isinstance(row, RegisterRow) else row
    for reminder_type in REMINDER_TYPES:
        rendered = render_reminder(
            reminder_type=reminder_type,
            language=record["language"],
            name=record["display_name"],
            vaccine=record["vaccine"],
            dose=int(record["dose"]),
            due_date=date.fromisoformat(record["due_date"]),
            clinic=record["clinic"] or None,
            max_segments=3,
        )
        assert (rendered.segments, rendered.encoding) == (1, "GSM-7"), (reminder_type, record, rendered)
        assert normalise_gsm7(record["display_name"]) in rendered.text
        assert normalise_gsm7(record["clinic"]) in rendered.text
        assert normalise_gsm7(record["vaccine"]) in rendered.text


def test_every_sample_row_renders_in_one_segment() -> None:
    records = read_register_csv(SAMPLE_REGISTER_PATH)
    assert records
    for record in records:
        assert_renders_in_one_segment(record)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_row_of_any_year_renders_in_one_segment(seed: int) -> None:
    # A whole year, so that every month and weekday name is written at least once.
    for row in generate_register(150, seed=seed, start=date(2028, 1, 1), days=366):
        assert_renders_in_one_segment(row)


def test_csv_round_trip(tmp_path: Path, register: list[RegisterRow]) -> None:
    path = tmp_path / "register.csv"
    write_register_csv(register, path)
    records = read_register_csv(path)
    assert records == [row.to_csv() for row in register]
    assert list(records[0]) == list(CSV_COLUMNS)
    assert path.read_text(encoding="utf-8").splitlines()[0] == ",".join(CSV_COLUMNS)


def test_csv_text_forms(register: list[RegisterRow]) -> None:
    record = register[0].to_csv()
    assert record["sms_opt_in"] in {"true", "false"}
    assert date.fromisoformat(record["due_date"]) == register[0].due_date
    assert int(record["dose"]) == register[0].dose


def test_read_tolerates_bom_and_short_rows(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffpatient_id,phone,clinic\r\np1,+2250701020304\r\n".encode())
    assert read_register_csv(path) == [{"patient_id": "p1", "phone": "+2250701020304", "clinic": ""}]


def test_read_refuses_rows_longer_than_the_header(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("patient_id,phone\np1,+2250701020304,extra\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        read_register_csv(path)


def test_bundled_sample_is_the_seeded_register() -> None:
    expected = generate_register(SAMPLE_CHILDREN, seed=SAMPLE_SEED, start=SAMPLE_START, days=SAMPLE_DAYS)
    assert (200, 7, date(2027, 3, 1), 45) == (SAMPLE_CHILDREN, SAMPLE_SEED, SAMPLE_START, SAMPLE_DAYS)
    assert len(expected) == 295
    assert read_register_csv(SAMPLE_REGISTER_PATH) == [row.to_csv() for row in expected], (
        "regenerate with: python -m rappel_demo.register"
    )


@pytest.mark.parametrize("source", ["generated", "bundled_sample"])
def test_every_row_is_a_clinic_event_the_system_accepts(source: str) -> None:
    """The per-vaccine clinic's appointment ids carried the vaccine's name (`P00039-V9M-Fièvre jaune`): a space and
    an accent, which the id's pattern refuses, so `rappel import` of the sample refused two rows and `make run`
    dropped those events, every invariant still ok."""
    from datetime import UTC, datetime

    from core.events import make_envelope, parse_event
    from rappel_cli.importer import row_events

    rows = (
        [row.to_csv() for row in generate_register(300, seed=11, start=START, days=365)]
        if source == "generated"
        else read_register_csv(SAMPLE_REGISTER_PATH)
    )
    assert any(row["clinic"] == PER_VACCINE_CLINIC for row in rows)
    at = datetime(2027, 3, 1, tzinfo=UTC)
    for row in rows:
        for kind, detail in zip(("PatientUpserted", "DoseScheduled"), row_events(row), strict=True):
            envelope = make_envelope(kind, detail, event_id="import", at=at)
            parse_event(envelope, default_region="CI", now=at, max_years_ahead=5)
