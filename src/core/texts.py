"""Reminder texts: per-language templates, dates in words, GSM-7 normalisation and SMS segment counting.

Templates live in `core/texts/<language>.json`, one file per language; adding a language means adding a file.
Each file says whether its texts may be normalised to GSM-7, how dates are written, and, per reminder type,
a template with the clinic and one without it.

One character outside GSM-7 turns the whole SMS into UCS-2 (70 characters instead of 160), so languages that
allow it are normalised (ê→e, ç→c, ’→', …) and every text is measured and capped in segments before it is sent.
"""

from __future__ import annotations

import functools
import json
import string
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from importlib import resources
from importlib.resources.abc import Traversable
from typing import ClassVar, Final, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "GSM7_BASIC",
    "GSM7_EXTENSION",
    "REMINDER_TYPES",
    "DateFormat",
    "Encoding",
    "GroupedChild",
    "LanguagePack",
    "ReminderTemplate",
    "RenderedText",
    "Replies",
    "SlotPart",
    "TextTooLong",
    "UnknownLanguage",
    "UnknownReminderType",
    "available_languages",
    "count_segments",
    "load_language",
    "measure",
    "normalise_gsm7",
    "render_confirmation",
    "render_discreet",
    "render_grouped",
    "render_reminder",
    "sms_encoding",
]

Encoding = Literal["GSM-7", "UCS-2"]
_T = TypeVar("_T")

REMINDER_TYPES: tuple[str, ...] = ("7_day_reminder", "1_day_reminder", "overdue_reminder")

# GSM 03.38 default alphabet, in code order 0x00-0x7F, without 0x1B (the escape to the extension table).
GSM7_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
# GSM 03.38 extension table (each costs two septets); the form feed is left out on purpose, as handsets
# treat it as a page break rather than a character.
GSM7_EXTENSION = "^{}\\[~]|€"

_GSM7_BASIC_SET = frozenset(GSM7_BASIC)
_GSM7_EXTENSION_SET = frozenset(GSM7_EXTENSION)
_GSM7_SET = _GSM7_BASIC_SET | _GSM7_EXTENSION_SET

GSM7_SINGLE_SEPTETS = 160
GSM7_PART_SEPTETS = 153
UCS2_SINGLE_UNITS = 70
UCS2_PART_UNITS = 67

# Characters whose closest GSM-7 form is not what Unicode decomposition gives (or gives nothing).
_REPLACEMENTS: dict[str, str] = {
    "œ": "oe",
    "Œ": "OE",
    "‘": "'",
    "’": "'",
    "‚": "'",
    "‛": "'",
    "′": "'",
    "ʼ": "'",  # U+02BC, the modifier-letter apostrophe (NʼGuessan)
    "`": "'",
    "´": "'",
    "“": '"',
    "”": '"',
    "„": '"',
    "‟": '"',
    "″": '"',
    "«": '"',
    "»": '"',
    "‐": "-",
    "‑": "-",
    "‒": "-",
    "–": "-",
    "—": "-",
    "―": "-",
    "−": "-",
    "…": "...",
    "\u00a0": " ",
    "\u202f": " ",
    "\u2007": " ",
    "\u2009": " ",
    "\u200a": " ",
    "\t": " ",
    "\v": "\n",
    "\f": "\n",
    "\u2028": "\n",
    "\u2029": "\n",
    "\u00ad": "",
    "\u200b": "",
    "\u200c": "",
    "\u200d": "",
    "\u2060": "",
    "\ufeff": "",
    "°": "o",
    "×": "x",
    "⁄": "/",
    "•": "-",
    "·": ".",
    "ł": "l",
    "Ł": "L",
    "đ": "d",
    "Đ": "D",
    "ı": "i",
}

_PLACEHOLDERS = frozenset({"name", "vaccine", "dose", "date", "clinic"})
_REQUIRED_PLACEHOLDERS = frozenset({"name", "vaccine", "dose", "date"})
_DATE_PLACEHOLDERS = frozenset({"weekday", "day", "month", "year"})


class UnknownLanguage(ValueError):
    """No template file exists for the language."""


class UnknownReminderType(ValueError):
    """The reminder type is not one of `REMINDER_TYPES`."""


# How a reminder whose text could not be made is failed (its `last_error` starts with one of these): no request was
# made, so what to look at is the program's texts and settings, not the phone or the provider.
TEXT_TOO_LONG: Final = "text too long"
TEXT_NOT_RENDERED: Final = "text could not be rendered"
TEXT_ERRORS: Final = (TEXT_TOO_LONG, TEXT_NOT_RENDERED)


class TextTooLong(ValueError):
    """The text does not fit `max_segments` even after dropping the clinic and shortening the name."""


@dataclass(frozen=True)
class RenderedText:
    """A text ready to send, with how it will be encoded and how many SMS parts it takes."""

    text: str
    encoding: Encoding
    segments: int


def normalise_gsm7(text: str) -> str:
    """Replace characters outside GSM-7 with their closest GSM-7 equivalent.

    Characters of the GSM 03.38 basic and extension tables are kept as they are (é è ù ì ò à É Ç …).
    Others get an explicit substitute (ê→e, ç→c, œ→oe, ’→', «»→", –→-, …→..., no-break space→space),
    or else their Unicode compatibility decomposition without accents when that is all GSM-7 (õ→o, ﬁ→fi).
    Combining accents on a GSM-7 letter are dropped. Characters with no equivalent (emoji, Arabic, …) stay,
    and the text will then need UCS-2.
    """
    out: list[str] = []
    # A combining mark decorates the character before it: dropped if that base is GSM-7, kept otherwise.
    base_is_gsm = False
    for ch in unicodedata.normalize("NFC", text):
        if ch in _GSM7_SET:
            out.append(ch)
            base_is_gsm = True
        elif unicodedata.combining(ch):
            if not base_is_gsm:
                out.append(ch)
        else:
            equivalent = _gsm7_equivalent(ch)
            if equivalent is None:
                out.append(ch)
                base_is_gsm = False
            elif equivalent:
                out.append(equivalent)
                base_is_gsm = True
    return "".join(out)


@functools.lru_cache(maxsize=4096)
def _gsm7_equivalent(ch: str) -> str | None:
    """The GSM-7 string standing for `ch` ("" to drop it), or None when there is none."""
    if ch in _REPLACEMENTS:
        return _REPLACEMENTS[ch]
    decomposed = "".join(
        _REPLACEMENTS.get(part, part) for part in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(part)
    )
    if decomposed and decomposed != ch and all(part in _GSM7_SET for part in decomposed):
        return decomposed
    return None


def sms_encoding(text: str) -> Encoding:
    """ "GSM-7" when every character is in the GSM 03.38 basic or extension table, else "UCS-2"."""
    return "GSM-7" if all(ch in _GSM7_SET for ch in text) else "UCS-2"


def count_segments(text: str) -> int:
    """How many SMS parts `text` takes (an empty text still takes one).

    GSM-7: 160 septets in a single SMS, 153 per part when concatenated; extension characters take two
    septets. UCS-2: 70 UTF-16 code units single, 67 per part; characters beyond the BMP (emoji) take two.
    As senders do, an escape sequence or a surrogate pair is never split across two parts.
    """
    if sms_encoding(text) == "GSM-7":
        units = [2 if ch in _GSM7_EXTENSION_SET else 1 for ch in text]
        return _parts(units, GSM7_SINGLE_SEPTETS, GSM7_PART_SEPTETS)
    units = [2 if ord(ch) > 0xFFFF else 1 for ch in text]
    return _parts(units, UCS2_SINGLE_UNITS, UCS2_PART_UNITS)


def _parts(units: list[int], single: int, per_part: int) -> int:
    if sum(units) <= single:
        return 1
    parts, used = 1, 0
    for unit in units:
        if used + unit > per_part:
            parts += 1
            used = 0
        used += unit
    return parts


def measure(text: str) -> RenderedText:
    """`text` with its encoding and segment count, unchanged."""
    return RenderedText(text=text, encoding=sms_encoding(text), segments=count_segments(text))


def _placeholders(template: str) -> set[str]:
    """The `{field}` names of a template; raises ValueError on anything but plain `{field}` placeholders."""
    names: set[str] = set()
    for _literal, field, spec, conversion in string.Formatter().parse(template):
        if field is None:
            continue
        if spec or conversion:
            raise ValueError(f"placeholder {{{field}}} must not carry a format spec or conversion")
        names.add(field)
    return names


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DateFormat(_Strict):
    """How a language writes a due date, e.g. "{weekday} {day} {month}" -> "mar. 20 mars"."""

    pattern: str
    weekdays: tuple[str, ...] = Field(min_length=7, max_length=7, description="Monday first")
    months: tuple[str, ...] = Field(min_length=12, max_length=12, description="January first")
    days: dict[int, str] = Field(default_factory=dict, description="day numbers written differently, e.g. 1 -> 1er")

    @field_validator("pattern")
    @classmethod
    def _known_fields(cls, value: str) -> str:
        unknown = _placeholders(value) - _DATE_PLACEHOLDERS
        if unknown:
            raise ValueError(f"unknown date placeholders {sorted(unknown)}; allowed: {sorted(_DATE_PLACEHOLDERS)}")
        return value

    def format(self, day: date) -> str:
        """`day` written in this language."""
        return self.pattern.format(
            weekday=self.weekdays[day.weekday()],
            day=self.days.get(day.day, str(day.day)),
            month=self.months[day.month - 1],
            year=day.year,
        )


class _ClinicVariants(_Strict):
    """A text with the clinic and one without it (when the appointment has none, or it does not fit)."""

    # Which placeholders the text may (and must) use: (allowed, required).
    placeholders: ClassVar[tuple[frozenset[str], frozenset[str]]] = (_PLACEHOLDERS, _REQUIRED_PLACEHOLDERS)

    with_clinic: str
    without_clinic: str

    @field_validator("with_clinic")
    @classmethod
    def _has_clinic(cls, value: str) -> str:
        return _check_template(value, clinic=True, placeholders=cls.placeholders)

    @field_validator("without_clinic")
    @classmethod
    def _has_no_clinic(cls, value: str) -> str:
        return _check_template(value, clinic=False, placeholders=cls.placeholders)


class ReminderTemplate(_ClinicVariants):
    """One reminder type's text for one child and dose."""


class GroupedTemplate(_ClinicVariants):
    """The text of one SMS carrying several reminders of one type (siblings, or one child's several doses)."""

    placeholders = (frozenset({"doses", "date", "clinic"}), frozenset({"doses", "date"}))


class DiscreetTemplate(_ClinicVariants):
    """A text naming neither the child nor the vaccine (a shared phone shows only that a visit is due, when, where);
    the same text serves one reminder or several."""

    placeholders = (frozenset({"date", "clinic"}), frozenset({"date"}))


class GroupedList(_Strict):
    """How a grouped SMS lists its children and their doses: "Awa (Penta dose 1, VPO dose 1) et Kofi (…)"."""

    child: str
    dose: str
    doses: str
    children: str

    def format(self, children: Sequence[GroupedChild]) -> str:
        return self.children.join(
            _fill(
                self.child,
                {
                    "name": child.name,
                    "doses": self.doses.join(
                        _fill(self.dose, {"vaccine": vaccine, "dose": str(dose)}) for vaccine, dose in child.doses
                    ),
                },
            )
            for child in children
        )


@dataclass(frozen=True)
class GroupedChild:
    """One child named in a grouped SMS, with its doses (vaccine, dose number) in the order they are listed."""

    name: str
    doses: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class SlotPart:
    """The reminders of one type and due date among those an SMS carries: one sentence of its text. A phone's
    reminders in one send slot may be of several (a sibling's 7-day reminder beside another's 1-day reminder)."""

    reminder_type: str
    due_date: date
    children: tuple[GroupedChild, ...] = ()  # none in a discreet text


def _check_template(template: str, *, clinic: bool, placeholders: tuple[frozenset[str], frozenset[str]]) -> str:
    names = _placeholders(template)
    allowed, required = placeholders
    unknown = names - allowed
    if unknown:
        raise ValueError(f"unknown placeholders {sorted(unknown)}; allowed: {sorted(allowed)}")
    missing = required - names
    if missing:
        raise ValueError(f"missing placeholders {sorted(missing)}")
    if clinic and "clinic" not in names:
        raise ValueError("the with_clinic template must contain {clinic}")
    if not clinic and "clinic" in names:
        raise ValueError("the without_clinic template must not contain {clinic}")
    return template


class Replies(_Strict):
    """What a family may reply, and what Rappel answers (core.replies): the keywords that stop the number's
    reminders or start them again, and the one confirmation SMS each change gets."""

    opt_out: tuple[str, ...] = Field(min_length=1)
    opt_in: tuple[str, ...] = Field(min_length=1)
    opted_out: str
    opted_in: str

    @field_validator("opt_out", "opt_in")
    @classmethod
    def _words(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for keyword in value:
            if not any(ch.isalnum() for ch in keyword) or len(keyword) > 30:
                raise ValueError(f"a keyword must have a letter or digit and at most 30 characters: {keyword!r}")
        return value

    @field_validator("opted_out", "opted_in")
    @classmethod
    def _plain(cls, value: str) -> str:
        if _placeholders(value) or not clean_text(value):
            raise ValueError("a confirmation is plain text: no placeholders, not empty")
        return value


class LanguagePack(_Strict):
    """Everything needed to write reminders in one language (the content of `core/texts/<language>.json`)."""

    language: str
    gsm7_normalise: bool
    date_format: DateFormat
    templates: dict[str, ReminderTemplate]
    grouped_templates: dict[str, GroupedTemplate]
    grouped_list: GroupedList
    discreet_templates: dict[str, DiscreetTemplate]
    replies: Replies

    @field_validator("templates", "grouped_templates", "discreet_templates")
    @classmethod
    def _every_type(cls, value: dict[str, _T]) -> dict[str, _T]:
        missing = set(REMINDER_TYPES) - set(value)
        extra = set(value) - set(REMINDER_TYPES)
        if missing or extra:
            raise ValueError(
                f"templates must be exactly {list(REMINDER_TYPES)} (missing {sorted(missing)}, "
                f"unexpected {sorted(extra)})"
            )
        return value

    def render(
        self,
        *,
        reminder_type: str,
        name: str,
        vaccine: str,
        dose: int,
        due_date: date,
        clinic: str | None,
        max_segments: int,
    ) -> RenderedText:
        """Render one reminder in this language; see `render_reminder`."""
        template = _of_type(self.templates, reminder_type)
        name, vaccine = _checked(max_segments, dose, name, vaccine)
        values = {"vaccine": vaccine, "dose": str(dose), "date": self.date_format.format(due_date)}
        # Shortening order: the clinic goes first (the family knows where they go), the child's name after.
        fitting, longest = self._fitting([(template, {**values, "name": name})], clinic, max_segments)
        if fitting is not None:
            return fitting
        best: RenderedText | None = None
        low, high = 1, len(name) - 1
        while low <= high:
            keep = (low + high) // 2
            shortened = name[:keep].rstrip(" -'.,")
            candidate = self._text(template.without_clinic, {**values, "name": shortened}) if shortened else None
            if candidate is not None and candidate.segments <= max_segments:
                best, low = candidate, keep + 1
            else:
                high = keep - 1
        if best is None:
            raise TextTooLong(
                f"{reminder_type} in {self.language!r} does not fit {max_segments} segment(s) even without the "
                f"clinic and with the name cut to one letter ({longest.segments} segments, {longest.encoding})"
            )
        return best

    def render_grouped(self, *, parts: Sequence[SlotPart], clinic: str | None, max_segments: int) -> RenderedText:
        """One SMS naming every child and dose: a sentence per reminder type and due date (earliest date first), the
        clinic named once, at the end, and dropped if that is what it takes to fit. TextTooLong when it still does
        not fit: the caller splits it, never truncates it."""
        sentences = []
        for part in _in_order(parts):
            cleaned = []
            for child in part.children:
                name = clean_text(child.name)
                doses = tuple((clean_text(vaccine), dose) for vaccine, dose in child.doses)
                if not name or not doses or not all(vaccine for vaccine, _ in doses):
                    raise ValueError("a child of a grouped SMS has an empty name or vaccine")
                cleaned.append(GroupedChild(name, doses))
            if not cleaned:
                raise ValueError("a part of a grouped SMS names no child")
            values = {"doses": self.grouped_list.format(cleaned), "date": self.date_format.format(part.due_date)}
            sentences.append((_of_type(self.grouped_templates, part.reminder_type), values))
        fitting, longest = self._fitting(sentences, clinic, max_segments)
        if fitting is None:
            raise TextTooLong(f"{len(sentences)} sentence(s) need {longest.segments} segments (limit {max_segments})")
        return fitting

    def render_discreet(self, *, parts: Sequence[SlotPart], clinic: str | None, max_segments: int) -> RenderedText:
        """The discreet text: the dates and the clinic only. The clinic is dropped if that is what it takes to fit."""
        sentences = [
            (_of_type(self.discreet_templates, part.reminder_type), {"date": self.date_format.format(part.due_date)})
            for part in _in_order(parts)
        ]
        fitting, longest = self._fitting(sentences, clinic, max_segments)
        if fitting is None:
            raise TextTooLong(f"the discreet text needs {longest.segments} segments (limit {max_segments})")
        return fitting

    def render_confirmation(self, opted_out: bool) -> RenderedText:
        """The SMS that confirms a reply's change: the number opted out, or opted in again."""
        text = self.replies.opted_out if opted_out else self.replies.opted_in
        return measure(normalise_gsm7(text) if self.gsm7_normalise else text)

    def _fitting(
        self,
        sentences: Sequence[tuple[_ClinicVariants, Mapping[str, str]]],
        clinic: str | None,
        max_segments: int,
    ) -> tuple[RenderedText | None, RenderedText]:
        """The sentences joined, the last one naming the clinic, if that fits; else none naming it if that fits
        (else None); and the last text tried."""
        clinic = clean_text(clinic or "") or None
        *lead, (last, values) = sentences
        texts = [_fill(template.without_clinic, v) for template, v in lead]
        rendered = self._joined([*texts, _fill(last.with_clinic, {**values, "clinic": clinic})]) if clinic else None
        if rendered is not None and rendered.segments <= max_segments:
            return rendered, rendered
        rendered = self._joined([*texts, _fill(last.without_clinic, values)])
        return (rendered if rendered.segments <= max_segments else None), rendered

    def _text(self, template: str, values: Mapping[str, str]) -> RenderedText:
        return self._joined([_fill(template, values)])

    def _joined(self, texts: Sequence[str]) -> RenderedText:
        text = " ".join(texts)
        return measure(normalise_gsm7(text) if self.gsm7_normalise else text)


def _in_order(parts: Sequence[SlotPart]) -> list[SlotPart]:
    """The sentences of an SMS in the order of their due dates (the one soonest past first); at least one."""
    if not parts:
        raise ValueError("an SMS needs at least one reminder")
    return sorted(parts, key=lambda p: (p.due_date, p.reminder_type))


def _of_type(templates: Mapping[str, _T], reminder_type: str) -> _T:
    template = templates.get(reminder_type)
    if template is None:
        raise UnknownReminderType(f"unknown reminder type {reminder_type!r}; expected one of {list(REMINDER_TYPES)}")
    return template


def _checked(max_segments: int, dose: int, name: str, vaccine: str) -> tuple[str, str]:
    """The name and vaccine as they go into the text; ValueError for what no text can be made from."""
    if max_segments < 1:
        raise ValueError(f"max_segments must be at least 1, got {max_segments}")
    if isinstance(dose, bool) or dose < 0:
        raise ValueError(f"dose must be a non-negative integer, got {dose!r}")
    name, vaccine = clean_text(name), clean_text(vaccine)
    if not name:
        raise ValueError("name is empty")
    if not vaccine:
        raise ValueError("vaccine is empty")
    return name, vaccine


def clean_text(value: str) -> str:
    """Text as it may go into an SMS: one line, single spaces, ends stripped; control characters and invisible
    format characters (zero-width space, BOM, bidi marks) removed, since they would garble or blank the SMS; and
    half characters (a lone surrogate: a producer that cut an emoji in two), which no store or SMS can encode."""
    kept = "".join(
        " " if ch.isspace() else ch
        for ch in value
        if ch.isspace() or unicodedata.category(ch) not in {"Cc", "Cf", "Cs"}
    )
    return " ".join(kept.split())


def _fill(template: str, values: Mapping[str, str]) -> str:
    """Substitute placeholders, without doubling a full stop when a value already ends with one ("sept.")."""
    out: list[str] = []
    for literal, field, _spec, _conversion in string.Formatter().parse(template):
        text = "".join(out)
        if literal.startswith(".") and text.endswith(".") and not text.endswith(".."):
            literal = literal[1:]
        out.append(literal)
        if field is not None:
            out.append(values[field])
    return "".join(out)


def _texts_dir() -> Traversable:
    return resources.files("core") / "texts"


@functools.cache
def _languages() -> tuple[str, ...]:
    return tuple(
        sorted(entry.name[: -len(".json")] for entry in _texts_dir().iterdir() if entry.name.endswith(".json"))
    )


def available_languages() -> tuple[str, ...]:
    """The language codes that have a template file, sorted (e.g. ("en", "fr"))."""
    return _languages()


@functools.cache
def load_language(language: str) -> LanguagePack:
    """The validated templates of `language`; raises UnknownLanguage when there is no file for it."""
    if language not in _languages():
        shown = language[:40] if isinstance(language, str) else type(language).__name__
        raise UnknownLanguage(f"unknown language {shown!r}; available: {', '.join(_languages())}")
    raw = (_texts_dir() / f"{language}.json").read_text(encoding="utf-8")
    return LanguagePack.model_validate({**json.loads(raw), "language": language})


def render_grouped(*, language: str, parts: Sequence[SlotPart], clinic: str | None, max_segments: int) -> RenderedText:
    """Render one SMS carrying several reminders to one phone (see LanguagePack.render_grouped)."""
    return load_language(language).render_grouped(parts=parts, clinic=clinic, max_segments=max_segments)


def render_discreet(*, language: str, parts: Sequence[SlotPart], clinic: str | None, max_segments: int) -> RenderedText:
    """Render the discreet text of one or several reminders (see LanguagePack.render_discreet)."""
    return load_language(language).render_discreet(parts=parts, clinic=clinic, max_segments=max_segments)


def render_reminder(
    *,
    reminder_type: str,
    language: str,
    name: str,
    vaccine: str,
    dose: int,
    due_date: date,
    clinic: str | None,
    max_segments: int,
) -> RenderedText:
    """Render a reminder in the patient's language, normalised to GSM-7 if the language allows it.

    `clinic` may be None or empty: the template variant without a clinic is used. If the text needs more than
    `max_segments` SMS parts, the clinic is dropped, then the name is shortened, until it fits; TextTooLong
    if it still does not. Raises UnknownLanguage (validate with `available_languages()` when planning) and
    UnknownReminderType.
    """
    return load_language(language).render(
        reminder_type=reminder_type,
        name=name,
        vaccine=vaccine,
        dose=dose,
        due_date=due_date,
        clinic=clinic,
        max_segments=max_segments,
    )


def render_confirmation(*, language: str, opted_out: bool) -> RenderedText:
    """The confirmation of a reply's change in `language` (see LanguagePack.render_confirmation)."""
    return load_language(language).render_confirmation(opted_out)
