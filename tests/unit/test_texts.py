"""Reminder texts: GSM-7 table, normalisation, segment counting, templates, dates and shortening."""

from __future__ import annotations

import json
import re
import unicodedata
from datetime import date, timedelta
from importlib import resources
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from core.texts import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    REMINDER_TYPES,
    LanguagePack,
    RenderedText,
    TextTooLong,
    UnknownLanguage,
    UnknownReminderType,
    available_languages,
    count_segments,
    load_language,
    measure,
    normalise_gsm7,
    render_reminder,
    sms_encoding,
)

pytestmark = pytest.mark.unit

GSM7 = set(GSM7_BASIC) | set(GSM7_EXTENSION)

VACCINES = ["Penta", "VPO", "VPI", "PCV13", "Rotavirus", "Rougeole-Rubéole", "Fièvre jaune", "BCG"]
CLINICS = [
    "CSU Abobo",
    "CSR Bingerville",
    "CSU Yopougon Attié",
    "CSU Port-Bouët",
    "PMI Cocody",
    "CSU Communautaire Anonkoua",  # 25 characters
]
NAME_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZéèêëïîôçâàùûÉÈÏ '-’"
WORST_NAME = "Marie-Françoise Koné"  # 20 characters, with a character that needs normalising

names = st.text(alphabet=NAME_ALPHABET, min_size=1, max_size=20).filter(lambda s: s.strip(" '-’"))
due_dates = st.dates(min_value=date(2026, 1, 1), max_value=date(2030, 12, 31))


def pack_data(**changes: Any) -> dict[str, Any]:
    """A valid language pack as raw JSON data, with `changes` applied on top."""
    data: dict[str, Any] = json.loads((resources.files("core") / "texts" / "en.json").read_text(encoding="utf-8"))
    data["language"] = "xx"
    data.update(changes)
    return data


def render(**overrides: Any) -> RenderedText:
    arguments: dict[str, Any] = {
        "reminder_type": "7_day_reminder",
        "language": "fr",
        "name": "Awa",
        "vaccine": "Penta",
        "dose": 2,
        "due_date": date(2029, 3, 20),
        "clinic": "CSU Abobo",
        "max_segments": 1,
    }
    arguments.update(overrides)
    return render_reminder(**arguments)


# --- GSM 03.38 tables ---------------------------------------------------------------------------------------------


def test_basic_table_is_the_128_code_points_minus_escape() -> None:
    assert len(GSM7_BASIC) == 127
    assert len(set(GSM7_BASIC)) == 127
    assert "\x1b" not in GSM7_BASIC
    assert GSM7_BASIC[0] == "@"
    assert GSM7_BASIC[0x1F - 1] == "É"  # shifted by one after the escape at 0x1B
    assert GSM7_BASIC[-1] == "à"


def test_extension_table_without_form_feed() -> None:
    assert set(GSM7_EXTENSION) == set("^{}\\[~]|€")
    assert "\f" not in GSM7_EXTENSION
    assert not set(GSM7_EXTENSION) & set(GSM7_BASIC)


@pytest.mark.parametrize("ch", list("éèùìòàÉÇØøÅåÄÖÑÜäöñüÆæß§¿¡£$¥¤@_ΔΦΓΛΩΠΨΣΘΞ\n\r"))
def test_characters_in_the_basic_table(ch: str) -> None:
    assert sms_encoding(ch) == "GSM-7"
    assert normalise_gsm7(ch) == ch


@pytest.mark.parametrize("ch", [*"êâîôûëïçœŒÀÈÊÔÙÛáíóú’“”«»–—…`\t\f\x1b\x00", "\u00a0", "\u202f", "😀", "ت"])
def test_characters_outside_gsm7(ch: str) -> None:
    assert sms_encoding(ch) == "UCS-2"


def test_empty_text_is_gsm7_in_one_segment() -> None:
    assert sms_encoding("") == "GSM-7"
    assert count_segments("") == 1


# --- Segment counting ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "segments"),
    [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)],
)
def test_gsm7_segment_boundaries(length: int, segments: int) -> None:
    assert count_segments("a" * length) == segments


@pytest.mark.parametrize(
    ("length", "segments"),
    [(1, 1), (70, 1), (71, 2), (134, 2), (135, 3), (201, 3), (202, 4)],
)
def test_ucs2_segment_boundaries(length: int, segments: int) -> None:
    assert count_segments("ç" * length) == segments


def test_extension_characters_take_two_septets() -> None:
    assert count_segments("€" * 80) == 1
    assert count_segments("€" * 80 + "a") == 2
    assert count_segments("a" * 158 + "{") == 1
    assert count_segments("a" * 159 + "{") == 2


def test_an_escape_sequence_is_never_split_across_parts() -> None:
    # 306 septets would fill two parts exactly, but the last euro of part one cannot be cut in half.
    text = "a" * 152 + "€" * 77
    assert count_segments(text) == 3
    assert count_segments("a" * 153 + "€" * 76 + "a") == 2


def test_emoji_take_two_utf16_units() -> None:
    assert count_segments("😀" * 35) == 1
    assert count_segments("😀" * 35 + "a") == 2
    assert count_segments("a" * 69 + "😀") == 2
    assert count_segments("a" * 68 + "😀") == 1


def test_a_surrogate_pair_is_never_split_across_parts() -> None:
    assert count_segments("ç" * 66 + "😀" * 34) == 3
    assert count_segments("ç" * 67 + "😀" * 33 + "ç") == 2


def test_one_non_gsm_character_switches_the_whole_text_to_ucs2() -> None:
    assert count_segments("a" * 100) == 1
    assert count_segments("a" * 100 + "ê") == 2


def test_measure() -> None:
    assert measure("Bonjour") == RenderedText(text="Bonjour", encoding="GSM-7", segments=1)
    assert measure("Forêt" * 20) == RenderedText(text="Forêt" * 20, encoding="UCS-2", segments=2)


# --- Normalisation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ê â î ô û ë ï ç", "e a i o u e i c"),
        ("Œuvre, cœur", "OEuvre, coeur"),
        ("l’enfant", "l'enfant"),
        ("Nʼ Guessan", "N' Guessan"),  # U+02BC, the modifier-letter apostrophe some keyboards type in names
        ("“oui” «non»", '"oui" "non"'),
        ("6–10 — 14", "6-10 - 14"),
        ("attendez…", "attendez..."),
        ("Rappel\u00a0: 9\u202fh", "Rappel : 9 h"),
        ("ÀÂÊÎÔÛËÏ", "AAEIOUEI"),
        ("õ ã á í ó ú ý ÿ", "o a a i o u y y"),
        ("ﬁn 2ᵉ dose ½", "fin 2e dose 1/2"),
        ("e\u0302", "e"),  # decomposed ê
        ("e\u0301", "é"),  # decomposed é composes to a GSM-7 letter
        ("x\u0323\u0302", "x"),  # accents with no precomposed form, on a GSM-7 base
        ("n°3", "no3"),
        ("a\u200bb\u00adc", "abc"),
    ],
)
def test_normalise_substitutions(raw: str, expected: str) -> None:
    assert normalise_gsm7(raw) == expected
    assert sms_encoding(normalise_gsm7(raw)) == "GSM-7"


def test_normalise_keeps_gsm7_characters() -> None:
    assert normalise_gsm7(GSM7_BASIC + GSM7_EXTENSION) == GSM7_BASIC + GSM7_EXTENSION
    assert normalise_gsm7("Élève à l'école, où Ça? Ñandú") == "Élève à l'école, où Ça? Ñandu"


def test_normalise_leaves_characters_without_equivalent() -> None:
    assert normalise_gsm7("Awa 😀") == "Awa 😀"
    assert normalise_gsm7("عائشة") == "عائشة"
    assert normalise_gsm7("ɐ\u0301") == "ɐ\u0301"  # the accent belongs to a kept non-GSM letter


def test_normalise_makes_french_reminders_gsm7() -> None:
    text = (
        "Rappel : le vaccin Fièvre jaune (2ᵉ dose) d’Aïcha est prévu le mer. 15 août à l’hôpital — "
        "n’oubliez pas le carnet de santé ; à bientôt… « Merci » Noël, Maël, Françoise, Œdipe"
    )
    assert sms_encoding(text) == "UCS-2"
    normalised = normalise_gsm7(text)
    assert sms_encoding(normalised) == "GSM-7"
    assert "prévu" in normalised  # é is GSM-7 and stays
    assert "aout" in normalised
    assert "Francoise" in normalised


def test_every_explicit_substitute_is_gsm7() -> None:
    from core.texts import _REPLACEMENTS

    for source, target in _REPLACEMENTS.items():
        assert source not in GSM7, source
        assert all(ch in GSM7 for ch in target), source


def _has_no_equivalent(ch: str) -> bool:
    return normalise_gsm7(ch) == ch


@settings(max_examples=500)
@given(st.text())
def test_normalise_output_is_gsm7_or_keeps_only_characters_without_equivalent(text: str) -> None:
    out = normalise_gsm7(text)
    assert sms_encoding(out) == "GSM-7" or all(ch in GSM7 or _has_no_equivalent(ch) for ch in out)


@settings(max_examples=300)
@given(st.text())
def test_normalise_is_idempotent(text: str) -> None:
    once = normalise_gsm7(text)
    assert normalise_gsm7(once) == once


FRENCH_ALPHABET = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    "àâäçéèêëîïôöùûüÿœæÀÂÄÇÉÈÊËÎÏÔÖÙÛÜŸŒÆ"
    " .,;:!?'\"()-/%+€’‘“”«»–—…\u00a0\u202f"
)


@given(st.text(alphabet=FRENCH_ALPHABET))
def test_any_french_text_normalises_to_gsm7(text: str) -> None:
    assert sms_encoding(normalise_gsm7(text)) == "GSM-7"


# --- Language files -----------------------------------------------------------------------------------------------


def test_available_languages_lists_the_bundled_files() -> None:
    languages = available_languages()
    assert "fr" in languages
    assert "en" in languages
    assert list(languages) == sorted(languages)
    files = {entry.name for entry in (resources.files("core") / "texts").iterdir()}
    assert {f"{language}.json" for language in languages} == {name for name in files if name.endswith(".json")}


@pytest.mark.parametrize("language", available_languages())
def test_every_language_file_is_valid_and_complete(language: str) -> None:
    pack = load_language(language)
    assert pack.language == language
    assert set(pack.templates) == set(REMINDER_TYPES)
    for template in pack.templates.values():
        assert "{clinic}" in template.with_clinic
        assert "{clinic}" not in template.without_clinic


def test_unknown_language_raises_and_names_it() -> None:
    with pytest.raises(UnknownLanguage, match="'de'"):
        render(language="de")
    assert issubclass(UnknownLanguage, ValueError)


@pytest.mark.parametrize("language", ["../fr", "fr.json", "", "FR", "texts/fr"])
def test_language_codes_are_not_paths(language: str) -> None:
    with pytest.raises(UnknownLanguage):
        load_language(language)


def test_unknown_reminder_type() -> None:
    with pytest.raises(UnknownReminderType, match="'2_day_reminder'"):
        render(reminder_type="2_day_reminder")


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"templates": {}}, "missing"),
        ({"date_format": {"pattern": "{weekday}", "weekdays": ["a"] * 6, "months": ["m"] * 12}}, "weekdays"),
        ({"date_format": {"pattern": "{hour}", "weekdays": ["a"] * 7, "months": ["m"] * 12}}, "hour"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_invalid_language_files_are_refused(changes: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        LanguagePack.model_validate(pack_data(**changes))


@pytest.mark.parametrize(
    ("with_clinic", "without_clinic", "error"),
    [
        ("{name} {vaccine} {dose} {date}", "{name} {vaccine} {dose} {date}", "must contain"),
        ("{name} {vaccine} {dose} {date} {clinic}", "{name} {vaccine} {dose} {date} {clinic}", "must not contain"),
        ("{name} {vaccine} {dose} {date} {clinic} {phone}", "{name} {vaccine} {dose} {date}", "phone"),
        ("{vaccine} {dose} {date} {clinic}", "{name} {vaccine} {dose} {date}", "missing placeholders"),
        ("{name!r} {vaccine} {dose} {date} {clinic}", "{name} {vaccine} {dose} {date}", "format spec"),
        ("{name} {vaccine} {dose} {date} {clinic", "{name} {vaccine} {dose} {date}", "with_clinic"),
    ],
)
def test_invalid_templates_are_refused(with_clinic: str, without_clinic: str, error: str) -> None:
    data = pack_data()
    data["templates"]["1_day_reminder"] = {"with_clinic": with_clinic, "without_clinic": without_clinic}
    with pytest.raises(ValidationError, match=error):
        LanguagePack.model_validate(data)


# --- Dates --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("language", "day", "expected"),
    [
        ("fr", date(2029, 3, 20), "mar. 20 mars"),
        ("fr", date(2027, 3, 1), "lun. 1er mars"),
        ("fr", date(2027, 8, 15), "dim. 15 août"),
        ("fr", date(2027, 9, 22), "mer. 22 sept."),
        ("fr", date(2027, 2, 6), "sam. 6 févr."),
        ("en", date(2029, 3, 20), "Tue 20 Mar"),
        ("en", date(2027, 3, 1), "Mon 1 Mar"),
        ("en", date(2027, 12, 31), "Fri 31 Dec"),
    ],
)
def test_date_format(language: str, day: date, expected: str) -> None:
    assert load_language(language).date_format.format(day) == expected


@pytest.mark.parametrize("language", available_languages())
def test_every_day_of_a_year_has_a_name(language: str) -> None:
    fmt = load_language(language).date_format
    written = {fmt.format(date(2027, 1, 1) + timedelta(days=offset)) for offset in range(365)}
    assert len(written) == 365


def test_dates_render_in_the_text() -> None:
    assert "mar. 20 mars" in render(language="fr", due_date=date(2029, 3, 20)).text
    assert "Tue 20 Mar" in render(language="en", due_date=date(2029, 3, 20)).text
    # août is normalised: û is not GSM-7.
    assert "dim. 15 aout" in render(language="fr", due_date=date(2027, 8, 15)).text


def test_abbreviated_month_before_a_full_stop_is_not_doubled() -> None:
    text = render(language="fr", due_date=date(2027, 9, 22)).text
    assert "sept. Lieu" in text
    assert ".." not in text


# --- Rendering ----------------------------------------------------------------------------------------------------


def test_french_seven_day_reminder() -> None:
    rendered = render()
    assert rendered == RenderedText(
        text="Rappel pour Awa: vaccin Penta (dose 2) prévu le mar. 20 mars. Lieu: CSU Abobo. "
        "Pensez au carnet de santé.",
        encoding="GSM-7",
        segments=1,
    )


def test_english_overdue_reminder() -> None:
    rendered = render(language="en", reminder_type="overdue_reminder", name="Kofi", vaccine="VPO", dose=3)
    assert rendered.text == (
        "Kofi: the VPO vaccine (dose 3) due Tue 20 Mar is not recorded yet. Please come to CSU Abobo soon."
    )


def test_overdue_texts_say_the_dose_is_not_recorded() -> None:
    assert "pas encore enregistré" in render(reminder_type="overdue_reminder").text
    assert "not recorded yet" in render(reminder_type="overdue_reminder", language="en").text


@pytest.mark.parametrize("language", available_languages())
@pytest.mark.parametrize("reminder_type", REMINDER_TYPES)
@pytest.mark.parametrize("clinic", [CLINICS[-1], None])
def test_worst_realistic_case_fits_one_gsm7_segment(language: str, reminder_type: str, clinic: str | None) -> None:
    longest_date = date(2027, 9, 22)  # a Wednesday in September: the longest date in French
    rendered = render(
        language=language,
        reminder_type=reminder_type,
        name=WORST_NAME,
        vaccine="Rougeole-Rubéole",
        dose=2,
        due_date=longest_date,
        clinic=clinic,
    )
    assert rendered.segments == 1
    assert rendered.encoding == "GSM-7"
    assert "Francoise" in rendered.text  # whole name, not shortened
    assert (clinic or "") in rendered.text


@settings(max_examples=300)
@given(
    language=st.sampled_from(available_languages()),
    reminder_type=st.sampled_from(REMINDER_TYPES),
    name=names,
    vaccine=st.sampled_from(VACCINES),
    dose=st.integers(min_value=1, max_value=3),
    due_date=due_dates,
    clinic=st.one_of(st.none(), st.sampled_from(CLINICS)),
)
def test_every_template_renders_realistic_inputs_in_one_segment(
    language: str, reminder_type: str, name: str, vaccine: str, dose: int, due_date: date, clinic: str | None
) -> None:
    rendered = render_reminder(
        reminder_type=reminder_type,
        language=language,
        name=name,
        vaccine=vaccine,
        dose=dose,
        due_date=due_date,
        clinic=clinic,
        max_segments=1,
    )
    assert rendered.segments == 1
    assert rendered.encoding == "GSM-7"
    assert rendered.text == normalise_gsm7(rendered.text)
    if clinic:
        assert clinic.replace("ë", "e") in rendered.text  # the clinic is never dropped for realistic input


def _assert_clean(text: str) -> None:
    assert "{" not in text and "}" not in text
    assert "  " not in text
    assert not re.search(r"\s[.,:;!?)]", text), text
    assert not re.search(r"\(\s*\)", text), text
    assert not re.search(r"\b(au|at|to|Lieu:)\s*[.,]", text), text
    assert text == text.strip()


@pytest.mark.parametrize("language", available_languages())
@pytest.mark.parametrize("reminder_type", REMINDER_TYPES)
@pytest.mark.parametrize("clinic", [None, "", "   ", "\n"])
def test_without_clinic_renders_cleanly(language: str, reminder_type: str, clinic: str | None) -> None:
    rendered = render(language=language, reminder_type=reminder_type, clinic=clinic)
    _assert_clean(rendered.text)
    assert "Lieu" not in rendered.text
    assert "CSU" not in rendered.text
    assert " at " not in rendered.text


@pytest.mark.parametrize("language", available_languages())
@pytest.mark.parametrize("reminder_type", REMINDER_TYPES)
def test_with_clinic_renders_cleanly(language: str, reminder_type: str) -> None:
    rendered = render(language=language, reminder_type=reminder_type, clinic="CSR Bingerville")
    _assert_clean(rendered.text)
    assert "CSR Bingerville" in rendered.text


def test_names_are_inserted_verbatim_not_interpreted() -> None:
    rendered = render(name="{clinic} {0}", language="en")
    assert "Reminder for {clinic} {0}:" in rendered.text


def test_whitespace_and_control_characters_in_values_are_flattened() -> None:
    rendered = render(name="  Awa\n\tKoné\x00 ", clinic=" CSU\r\nAbobo ")
    assert "pour Awa Koné:" in rendered.text
    assert "Lieu: CSU Abobo." in rendered.text


@pytest.mark.parametrize(("field", "value"), [("name", ""), ("name", "  "), ("vaccine", ""), ("dose", -1)])
def test_empty_values_are_refused(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        render(**{field: value})


def test_names_are_normalised_when_the_language_allows_it() -> None:
    assert "pour Aicha:" in render(name="Aïcha").text
    assert "for Chloe" in render(language="en", name="Chloë").text


def test_language_without_normalisation_keeps_characters_and_counts_ucs2() -> None:
    pack = LanguagePack.model_validate(pack_data(gsm7_normalise=False))
    rendered = pack.render(
        reminder_type="7_day_reminder",
        name="Aïcha",
        vaccine="Penta",
        dose=1,
        due_date=date(2027, 3, 1),
        clinic=None,
        max_segments=3,
    )
    assert "Aïcha" in rendered.text
    assert rendered.encoding == "UCS-2"
    assert rendered.segments == 2


# --- Shortening ---------------------------------------------------------------------------------------------------


def test_a_long_clinic_is_dropped_first() -> None:
    clinic = "Centre de Santé Urbain à Base Communautaire de Yopougon Toits-Rouges"
    rendered = render(name="Awa", clinic=clinic)
    assert rendered.segments == 1
    assert "Lieu" not in rendered.text
    assert rendered.text == render(name="Awa", clinic=None).text


def test_the_clinic_stays_when_more_segments_are_allowed() -> None:
    clinic = "Centre de Santé Urbain à Base Communautaire de Yopougon Toits-Rouges"
    rendered = render(clinic=clinic, max_segments=2)
    assert rendered.segments == 2
    assert "Yopougon Toits-Rouges" in rendered.text


def test_then_the_name_is_truncated_to_fit() -> None:
    name = "Adjoua Akissi Amenan Affoué " * 4
    rendered = render(name=name, clinic="CSU Abobo")
    assert rendered.segments == 1
    assert "Lieu" not in rendered.text
    shown = rendered.text.removeprefix("Rappel pour ").split(":", 1)[0]
    assert name.startswith(shown)
    assert 0 < len(shown) < len(name.strip())
    # The longest prefix that fits, so the text is close to a full segment.
    assert len(rendered.text) >= 150


def test_shortening_is_deterministic() -> None:
    name = "Ébène " * 20
    assert render(name=name, clinic="X" * 80) == render(name=name, clinic="X" * 80)


def test_a_name_with_no_gsm7_equivalent_is_cut_to_fit_ucs2() -> None:
    rendered = render(name="عائشة " * 10, max_segments=2)
    assert rendered.encoding == "UCS-2"
    assert rendered.segments == 2
    assert "Lieu" not in rendered.text
    assert "عائشة" in rendered.text
    with pytest.raises(TextTooLong):
        render(name="عائشة", max_segments=1)


def test_text_too_long_when_even_one_letter_of_name_does_not_fit() -> None:
    with pytest.raises(TextTooLong, match="1 segment"):
        render(vaccine="V" * 400)
    assert issubclass(TextTooLong, ValueError)


def test_max_segments_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_segments"):
        render(max_segments=0)


def test_rendering_does_not_depend_on_normalisation_details_of_the_template() -> None:
    for language in available_languages():
        for template in load_language(language).templates.values():
            for text in (template.with_clinic, template.without_clinic):
                assert unicodedata.is_normalized("NFC", text)


# ---------------------------------------------------------------------------------------------- grouped and discreet


def _siblings() -> list[Any]:
    from core.texts import GroupedChild

    return [GroupedChild("Awa", (("Penta", 1), ("VPO", 1))), GroupedChild("Kofi", (("PCV13", 2),))]


@pytest.mark.parametrize("language", ["fr", "en"])
@pytest.mark.parametrize("reminder_type", REMINDER_TYPES)
def test_a_grouped_text_names_every_child_and_dose_once_in_gsm7(language: str, reminder_type: str) -> None:
    from core.texts import SlotPart, render_grouped

    rendered = render_grouped(
        language=language,
        parts=[SlotPart(reminder_type, date(2027, 3, 12), tuple(_siblings()))],
        clinic="CSU Abobo",
        max_segments=3,
    )
    for word in ("Awa", "Kofi", "Penta", "VPO", "PCV13", "CSU Abobo", "12"):
        assert rendered.text.count(word) == 1, (word, rendered.text)
    assert rendered.encoding == "GSM-7" and rendered.segments == count_segments(rendered.text) == 1


def test_a_grouped_text_drops_the_clinic_before_giving_up_and_never_truncates() -> None:
    from core.texts import GroupedChild, SlotPart, render_grouped

    clinic = "Centre de santé urbain communautaire de Yopougon Attié"

    def part(children: list[Any]) -> list[Any]:
        return [SlotPart("7_day_reminder", date(2027, 3, 12), tuple(children))]

    shown = render_grouped(language="fr", parts=part(_siblings()), clinic=clinic, max_segments=1)
    assert clinic not in shown.text and "Kofi" in shown.text and shown.segments == 1
    many = [GroupedChild(f"Enfant numero {n}", (("Penta", 1), ("VPO", 1))) for n in range(4)]
    with pytest.raises(TextTooLong):
        render_grouped(language="fr", parts=part(many), clinic=None, max_segments=1)


@pytest.mark.parametrize("language", ["fr", "en"])
def test_an_sms_of_several_types_and_dates_has_a_sentence_for_each_earliest_date_first_and_names_the_clinic_once(
    language: str,
) -> None:
    from core.texts import GroupedChild, SlotPart, load_language, render_discreet, render_grouped

    awa = SlotPart("7_day_reminder", date(2027, 3, 12), (GroupedChild("Awa", (("Penta", 1),)),))
    kofi = SlotPart("1_day_reminder", date(2027, 3, 6), (GroupedChild("Kofi", (("VPO", 2),)),))
    days = load_language(language).date_format
    rendered = render_grouped(language=language, parts=[awa, kofi], clinic="CSU Abobo", max_segments=3)
    text = rendered.text
    first = max(text.index("Kofi"), text.index(days.format(date(2027, 3, 6))))
    assert first < min(text.index("Awa"), text.index(days.format(date(2027, 3, 12)))), text
    assert text.count("CSU Abobo") == 1 and text.index("CSU Abobo") > text.index("Awa"), text
    assert rendered.segments == count_segments(text) == 2 and rendered.encoding == "GSM-7"
    with pytest.raises(TextTooLong):
        render_grouped(language=language, parts=[awa, kofi], clinic="CSU Abobo", max_segments=1)
    discreet = render_discreet(language=language, parts=[awa, kofi], clinic="CSU Abobo", max_segments=2)
    assert not any(word in discreet.text for word in ("Awa", "Kofi", "Penta", "VPO"))
    assert all(days.format(d) in discreet.text for d in (date(2027, 3, 6), date(2027, 3, 12))), discreet.text


@pytest.mark.parametrize("language", ["fr", "en"])
def test_an_overdue_dose_comes_before_a_later_one_whatever_the_names_of_their_types(language: str) -> None:
    """Ordered by due date, not by type: "overdue_reminder" sorts after "7_day_reminder" as a name."""
    from core.texts import GroupedChild, SlotPart, load_language, render_grouped

    later = SlotPart("7_day_reminder", date(2027, 3, 12), (GroupedChild("Awa", (("Penta", 1),)),))
    overdue = SlotPart("overdue_reminder", date(2027, 3, 4), (GroupedChild("Kofi", (("VPO", 2),)),))
    days = load_language(language).date_format
    text = render_grouped(language=language, parts=[later, overdue], clinic=None, max_segments=3).text
    assert text.index(days.format(date(2027, 3, 4))) < text.index(days.format(date(2027, 3, 12))), text
    assert text.index("Kofi") < text.index("Awa"), text


@pytest.mark.parametrize("language", ["fr", "en"])
@pytest.mark.parametrize("reminder_type", REMINDER_TYPES)
def test_a_discreet_text_names_neither_child_nor_vaccine_and_fits_one_segment(
    language: str, reminder_type: str
) -> None:
    from core.texts import SlotPart, render_discreet

    for clinic in ("CSU Abobo", "Centre de santé urbain communautaire de Yopougon Attié " * 2, None):
        rendered = render_discreet(
            language=language, parts=[SlotPart(reminder_type, date(2027, 3, 12))], clinic=clinic, max_segments=1
        )
        assert rendered.segments == 1 and rendered.encoding == "GSM-7", rendered
        assert "12" in rendered.text and "vaccin" in rendered.text.lower()
        assert not any(word in rendered.text for word in ("Penta", "VPO", "dose", "{"))


def test_a_grouped_template_may_not_name_one_child() -> None:
    from core.texts import GroupedTemplate

    with pytest.raises(ValidationError, match="unknown placeholders"):
        GroupedTemplate(with_clinic="{name}: {doses} {date} {clinic}", without_clinic="{doses} {date}")
