"""A synthetic immunization register for demos and tests.

Children get birth dates such that their visits on the infant schedule of the Côte d'Ivoire EPI fall due in a
chosen window; each row is one appointment, in the CSV layout `rappel import` reads. An appointment is usually one
clinic visit, with all the vaccines given together at it; one clinic (`PER_VACCINE_CLINIC`) books one appointment
per vaccine instead, and some children are twins sharing their caregiver's phone, so the demo shows reminders for
one phone grouped into one SMS. Everything is drawn from one seeded generator, so a seed always gives the same
register.

`python -m rappel_demo.register [PATH]` rewrites the bundled sample (`data/sample_register.csv`).
"""

from __future__ import annotations

import calendar
import csv
import random
import re
import sys
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import phonenumbers

from core.zones import known_zone
from rappel_cli.importer import CSV_COLUMNS

__all__ = [
    "CSV_COLUMNS",
    "EPI_SCHEDULE",
    "MAX_VACCINE_LENGTH",
    "PER_VACCINE_CLINIC",
    "SAMPLE_CHILDREN",
    "SAMPLE_DAYS",
    "SAMPLE_REGISTER_PATH",
    "SAMPLE_SEED",
    "SAMPLE_START",
    "RegisterRow",
    "ScheduledVisit",
    "generate_register",
    "read_register_csv",
    "write_register_csv",
]


SAMPLE_CHILDREN = 200
SAMPLE_SEED = 7
SAMPLE_START = date(2027, 3, 1)
SAMPLE_DAYS = 45
SAMPLE_REGISTER_PATH = Path(__file__).parent / "data" / "sample_register.csv"

# The longest `vaccine` a clinic event accepts (`core.events`, ShortText).
MAX_VACCINE_LENGTH = 40


@dataclass(frozen=True)
class ScheduledVisit:
    """One clinic visit of the infant schedule, `weeks` weeks or `months` months after birth.

    `vaccines` are the short names of the vaccines given together at the visit; `dose` is the number that
    identifies the visit in the register: the Penta dose at 6, 10 and 14 weeks, the RR dose at 9 and 15 months.
    """

    vaccines: tuple[str, ...]
    dose: int
    weeks: int = 0
    months: int = 0

    def __post_init__(self) -> None:
        if not self.vaccines or len(self.vaccine) > MAX_VACCINE_LENGTH:
            raise ValueError(f"a visit needs 1 to {MAX_VACCINE_LENGTH} characters of vaccines, got {self.vaccine!r}")
        if (self.weeks > 0) == (self.months > 0):
            raise ValueError("a visit is due after a number of weeks or of months, not both or neither")

    @property
    def code(self) -> str:
        """The age of the visit, e.g. "6W" (6 weeks) or "9M" (9 months); stable, used in appointment ids."""
        return f"{self.weeks}W" if self.weeks else f"{self.months}M"

    @property
    def vaccine(self) -> str:
        """The vaccines of the visit as one register value, e.g. "Penta+VPO+PCV13+Rota"."""
        return "+".join(self.vaccines)

    def due_for(self, birth: date) -> date:
        """The date this visit falls due for a child born on `birth`."""
        return _add_months(birth, self.months) + timedelta(weeks=self.weeks)


# Birth doses (BCG, VPO 0) are left out: they are given at the maternity, so there is nothing to remind.
# Ordered by age; a child's anchor visit is drawn uniformly among these.
EPI_SCHEDULE: tuple[ScheduledVisit, ...] = (
    ScheduledVisit(("Penta", "VPO", "PCV13", "Rota"), 1, weeks=6),
    ScheduledVisit(("Penta", "VPO", "PCV13", "Rota"), 2, weeks=10),
    ScheduledVisit(("Penta", "VPO", "PCV13", "VPI"), 3, weeks=14),
    ScheduledVisit(("RR", "Fièvre jaune"), 1, months=9),
    ScheduledVisit(("RR",), 2, months=15),
)

# The anchor visit is drawn from this order (the months visits first), which keeps the children, birth dates
# and contact details a seed gave when rows were single doses.
_ANCHOR_ORDER: tuple[ScheduledVisit, ...] = tuple(sorted(EPI_SCHEDULE, key=lambda visit: (visit.weeks, visit.months)))

_DEFAULT_ZONES: tuple[tuple[str, float], ...] = (
    ("Africa/Abidjan", 0.55),
    ("Africa/Dakar", 0.10),
    ("Africa/Douala", 0.09),
    ("Africa/Kinshasa", 0.08),
    ("Africa/Lubumbashi", 0.08),
    ("Europe/Paris", 0.10),
)

# Mobile prefixes of the 10-digit plan (since 2021): Orange 07, MTN 05, Moov 01.
_MOBILE_PREFIXES: tuple[tuple[str, float], ...] = (("07", 0.47), ("05", 0.35), ("01", 0.18))

_FIRST_NAMES: tuple[str, ...] = (
    "Awa",
    "Aminata",
    "Fatou",
    "Mariam",
    "Aïcha",
    "Adjoua",
    "Akissi",
    "Amenan",
    "Affoué",
    "Ahou",
    "Aya",
    "Amoin",
    "Fanta",
    "Kadiatou",
    "Salimata",
    "Rokia",
    "Djeneba",
    "Assita",
    "Bintou",
    "Grâce",
    "Prisca",
    "Emeline",
    "Marie-Noëlle",
    "Nadège",
    "Kouadio",
    "Koffi",
    "Kouamé",
    "Yao",
    "Konan",
    "N'Guessan",
    "Kouassi",
    "Brou",
    "Moussa",
    "Ibrahim",
    "Seydou",
    "Souleymane",
    "Bakary",
    "Mamadou",
    "Ousmane",
    "Drissa",
    "Lassina",
    "Yacouba",
    "Emmanuel",
    "Désiré",
    "Ange",
    "Serge",
    "Jean-Baptiste",
    "Christ-Roi",
)

_LAST_NAMES: tuple[str, ...] = (
    "Koné",
    "Traoré",
    "Coulibaly",
    "Diabaté",
    "Bamba",
    "Touré",
    "Kouassi",
    "Yao",
    "Koffi",
    "N'Guessan",
    "Konan",
    "Kouamé",
    "Diallo",
    "Camara",
    "Cissé",
    "Sanogo",
    "Soro",
    "Doumbia",
    "Fofana",
    "Bakayoko",
    "Aké",
    "Assi",
    "Gnahoré",
    "Zadi",
    "Tapé",
    "Gueu",
    "Kra",
    "Amani",
    "Ouattara",
    "Dosso",
)

_CLINICS: tuple[str, ...] = (
    "CSU Abobo",
    "CSU Abobo Avocatier",
    "CSR Bingerville",
    "CSU Yopougon Attié",
    "CSU Treichville",
    "CSU Adjamé",
    "CSU Koumassi",
    "CSU Port-Bouët",
    "CSR Anyama",
    "CSU Cocody Angré",
    "CSU Marcory",
    "CSR Songon",
    "PMI Cocody",
    "CSU Grand-Bassam",
    "CSR Dabou",
    "CSU Bouaké Air France",
    "CSU Yamoussoukro",
    "CSR Jacqueville",
)

# One clinic of the list books one appointment per vaccine (some registers do): its families get one SMS per
# send slot all the same, since reminders for one phone in one slot are grouped.
PER_VACCINE_CLINIC = "CSR Dabou"
# Twins: a second child of the same caregiver (same phone, zone, language, clinic), born the same day, so their
# visits fall due together: one SMS names both.
_SHARE_TWINS = 0.08

_MAX_DISPLAY_NAME = 20
_SHARE_ENGLISH = 0.15
_SHARE_OPTED_OUT = 0.05
_SHARE_FULL_NAME = 0.3
_SHARE_NO_CLINIC = 0.08


@dataclass(frozen=True)
class RegisterRow:
    """One appointment (a clinic visit due, with all its vaccines) of one child.

    The child's contact details are repeated on every row.
    """

    patient_id: str
    phone: str
    timezone: str
    language: str
    sms_opt_in: bool
    display_name: str
    appointment_id: str
    vaccine: str
    dose: int
    due_date: date
    clinic: str

    def to_csv(self) -> dict[str, str]:
        """The row as CSV text fields, in `CSV_COLUMNS` order (booleans as true/false, dates ISO-8601)."""
        return {
            "patient_id": self.patient_id,
            "phone": self.phone,
            "timezone": self.timezone,
            "language": self.language,
            "sms_opt_in": "true" if self.sms_opt_in else "false",
            "display_name": self.display_name,
            "appointment_id": self.appointment_id,
            "vaccine": self.vaccine,
            "dose": str(self.dose),
            "due_date": self.due_date.isoformat(),
            "clinic": self.clinic,
        }


def generate_register(
    n_children: int,
    *,
    seed: int,
    start: date,
    days: int,
    zones: list[str] | None = None,
) -> list[RegisterRow]:
    """A deterministic synthetic register: `n_children` children, every visit of theirs due in the window.

    The window is `days` calendar days from `start`: due dates d satisfy start <= d < start + days.
    Each child has at least one visit in it, often several in a long window (the 6-, 10- and 14-week visits
    are four weeks apart); a visit is one row, whatever the number of vaccines given at it. `zones` (IANA
    names) are drawn uniformly; by default a mix weighted towards Africa/Abidjan, with diaspora caregivers in
    Europe/Paris. Rows are ordered by patient, then due date.
    """
    if n_children < 0:
        raise ValueError(f"n_children must be >= 0, got {n_children}")
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    zone_names, zone_weights = _zones(zones)
    rng = random.Random(seed)
    end = start + timedelta(days=days)
    used_phones: set[str] = set()
    rows: list[RegisterRow] = []
    family: tuple[date, list[ScheduledVisit], str, str, str, bool, str] | None = None
    for index in range(n_children):
        patient_id = f"P{index + 1:05d}"
        if family is not None and rng.random() < _SHARE_TWINS:
            birth, visits, phone, timezone, language, sms_opt_in, clinic = family  # the previous child's twin
            family = None  # no triplets
        else:
            birth, visits = _birth_with_visits_in(rng, start, end)
            phone = _mobile_number(rng, used_phones)
            timezone = rng.choices(zone_names, zone_weights)[0]
            language = "en" if rng.random() < _SHARE_ENGLISH else "fr"
            sms_opt_in = rng.random() >= _SHARE_OPTED_OUT
            clinic = "" if rng.random() < _SHARE_NO_CLINIC else rng.choice(_CLINICS)
            family = (birth, visits, phone, timezone, language, sms_opt_in, clinic)
        display_name = _display_name(rng)
        for visit in visits:
            bookings = (
                [(v, f"-{_id_safe(v)}") for v in visit.vaccines]
                if clinic == PER_VACCINE_CLINIC
                else [(visit.vaccine, "")]
            )
            rows += [
                RegisterRow(
                    patient_id=patient_id,
                    phone=phone,
                    timezone=timezone,
                    language=language,
                    sms_opt_in=sms_opt_in,
                    display_name=display_name,
                    appointment_id=f"{patient_id}-V{visit.code}{suffix}",
                    vaccine=vaccine,
                    dose=visit.dose,
                    due_date=visit.due_for(birth),
                    clinic=clinic,
                )
                for vaccine, suffix in bookings
            ]
    return rows


def _id_safe(vaccine: str) -> str:
    """A vaccine's name as part of an appointment id, which allows letters, digits and `._:-` only ("Fièvre jaune"
    gives "Fievre-jaune")."""
    ascii_name = unicodedata.normalize("NFKD", vaccine).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9._:]+", "-", ascii_name).strip("-")


def write_register_csv(rows: Iterable[RegisterRow], path: str | Path) -> None:
    """Write `rows` as UTF-8 CSV with a header of `CSV_COLUMNS`."""
    with Path(path).open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row.to_csv())


def read_register_csv(path: str | Path) -> list[dict[str, str]]:
    """Read a register CSV into one dict per row, keyed by the header; values are left as text.

    A byte-order mark (spreadsheet exports) is ignored; missing trailing fields read as "". A row with more
    fields than the header raises ValueError naming its line.
    """
    with Path(path).open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, restval="")
        rows: list[dict[str, str]] = []
        for record in reader:
            if None in record:
                raise ValueError(f"{path}: line {reader.line_num} has more fields than the header")
            rows.append({key: value for key, value in record.items() if key is not None})
        return rows


def _zones(zones: Sequence[str] | None) -> tuple[list[str], list[float]]:
    if zones is None:
        return [name for name, _ in _DEFAULT_ZONES], [weight for _, weight in _DEFAULT_ZONES]
    if not zones:
        raise ValueError("zones must not be empty")
    for name in zones:
        known_zone(name)
    return list(zones), [1.0] * len(zones)


def _birth_with_visits_in(rng: random.Random, start: date, end: date) -> tuple[date, list[ScheduledVisit]]:
    """A birth date for which at least one visit falls due in [start, end), and those visits by due date."""
    while True:
        anchor = rng.choice(_ANCHOR_ORDER)
        due = start + timedelta(days=rng.randrange((end - start).days))
        birth = _add_months(due - timedelta(weeks=anchor.weeks), -anchor.months)
        visits = [visit for visit in EPI_SCHEDULE if start <= visit.due_for(birth) < end]
        # Month arithmetic clamps the 29th-31st, which can push the anchor visit just out of the window.
        if visits:
            return birth, sorted(visits, key=lambda visit: visit.due_for(birth))


def _mobile_number(rng: random.Random, used: set[str]) -> str:
    prefixes = [prefix for prefix, _ in _MOBILE_PREFIXES]
    weights = [weight for _, weight in _MOBILE_PREFIXES]
    while True:
        prefix = rng.choices(prefixes, weights)[0]
        candidate = f"+225{prefix}{rng.randrange(10**8):08d}"
        if candidate not in used and phonenumbers.is_valid_number(phonenumbers.parse(candidate, None)):
            used.add(candidate)
            return candidate


def _display_name(rng: random.Random) -> str:
    first = rng.choice(_FIRST_NAMES)
    if rng.random() < _SHARE_FULL_NAME:
        full = f"{first} {rng.choice(_LAST_NAMES)}"
        if len(full) <= _MAX_DISPLAY_NAME:
            return full
    return first


def _add_months(day: date, months: int) -> date:
    """`day` moved by whole calendar months, clamped to the end of a shorter month (31 Jan + 1 month = 28 Feb)."""
    month_index = day.year * 12 + day.month - 1 + months
    year, month = divmod(month_index, 12)
    last_day = calendar.monthrange(year, month + 1)[1]
    return date(year, month + 1, min(day.day, last_day))


def main(argv: Sequence[str] | None = None) -> None:
    """Regenerate the bundled sample register (or write it to the path given as the only argument)."""
    args = list(sys.argv[1:] if argv is None else argv)
    path = Path(args[0]) if args else SAMPLE_REGISTER_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = generate_register(SAMPLE_CHILDREN, seed=SAMPLE_SEED, start=SAMPLE_START, days=SAMPLE_DAYS)
    write_register_csv(rows, path)
    print(f"wrote {len(rows)} appointments (visits) for {SAMPLE_CHILDREN} children to {path}")


if __name__ == "__main__":
    main()
