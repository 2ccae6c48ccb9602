"""Phone numbers: E.164 normalisation with phonenumbers, and masking for logs."""

from __future__ import annotations

import json
from typing import Any

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.phone import InvalidPhoneNumber, mask_phone, normalize_phone
from core.providers.base import redact

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "raw",
    [
        "+2250701020304",
        "+225 07 01 02 03 04",
        "07 01 02 03 04",
        "0701020304",
        "07.01.02.03.04",
        "07-01-02-03-04",
        "00225 07 01 02 03 04",
        "tel:+2250701020304",
        "  0701020304  ",
    ],
)
def test_local_and_international_ci_formats_give_e164(raw: str) -> None:
    assert normalize_phone(raw, "CI") == "+2250701020304"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("05 44 33 22 11", "+2250544332211"),
        ("01 02 03 04 05", "+2250102030405"),
        ("+33 6 12 34 56 78", "+33612345678"),
        ("+221 77 123 45 67", "+221771234567"),
    ],
)
def test_other_operators_and_countries(raw: str, expected: str) -> None:
    assert normalize_phone(raw, "CI") == expected


def test_default_region_applies_only_to_local_formats() -> None:
    assert normalize_phone("06 12 34 56 78", "FR") == "+33612345678"
    assert normalize_phone("+2250701020304", "FR") == "+2250701020304"


@pytest.mark.parametrize(
    "raw",
    [
        "+22507010203",  # the pre-2021 8-digit plan: well-formed but no longer valid
        "0701020",  # too short
        "07010203040506",  # too long
        "+2259901020304",  # no such range
        "+999 123 456 789",  # no such country code
        "not a number",
        "+225",
        "",
        "   ",
        "0" * 200,
    ],
)
def test_invalid_numbers_raise(raw: str) -> None:
    with pytest.raises(InvalidPhoneNumber):
        normalize_phone(raw, "CI")


def test_invalid_phone_number_is_a_value_error() -> None:
    assert issubclass(InvalidPhoneNumber, ValueError)


def test_non_text_input_is_refused_without_echoing_it() -> None:
    with pytest.raises(InvalidPhoneNumber, match="must be text, got int") as caught:
        normalize_phone(2250701020304, "CI")  # type: ignore[arg-type]
    assert "2250701020304" not in str(caught.value)


@pytest.mark.parametrize("raw", ["+22507010203", "0701020", "+2259901020304", "07 99 88 77"])
def test_error_message_never_contains_the_number(raw: str) -> None:
    with pytest.raises(InvalidPhoneNumber) as caught:
        normalize_phone(raw, "CI")
    message = str(caught.value)
    digits = "".join(ch for ch in raw if ch.isdigit())
    assert raw not in message
    # No run of more than the country code or the last two digits survives.
    for start in range(len(digits) - 3):
        assert digits[start : start + 4] not in message.replace("+225", "")


def test_error_message_says_what_is_wrong_and_shows_the_mask() -> None:
    with pytest.raises(InvalidPhoneNumber, match=r"\+225\*{6}03.*not a valid number"):
        normalize_phone("+22507010203", "CI")


def test_result_is_always_valid_e164() -> None:
    e164 = normalize_phone("07 01 02 03 04", "CI")
    parsed = phonenumbers.parse(e164, None)
    assert phonenumbers.is_valid_number(parsed)
    assert phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164) == e164


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("+2250701020304", "+225******04"),
        ("+33612345678", "+33******78"),
        ("+12025550123", "+1******23"),
        ("07 01 02 03 04", "******04"),
        ("+225", "******"),
        ("+22512", "+225******"),
        ("12", "******"),
        ("", "******"),
        ("garbage", "******"),
        ("+", "******"),
        ("tel:+2250701020304", "******04"),
    ],
)
def test_mask_phone(value: str, expected: str) -> None:
    assert mask_phone(value) == expected


def test_mask_width_does_not_depend_on_number_length() -> None:
    assert len(mask_phone("+2250701020304")) == len(mask_phone("+2250102030405"))
    assert mask_phone("+33612345678").count("*") == mask_phone("+2250701020304").count("*")


@given(st.text(max_size=80))
def test_mask_never_reveals_more_than_two_digits_beyond_the_country_code(value: str) -> None:
    masked = mask_phone(value)
    body = masked
    if masked.startswith("+"):
        code = masked[1:].split("*", 1)[0]
        assert value.strip().startswith("+")
        assert "".join(ch for ch in value if "0" <= ch <= "9").startswith(code)
        body = masked[1 + len(code) :]
    assert body.startswith("******")
    assert len(body) - len("******") <= 2
    assert all(ch.isdigit() for ch in body[len("******") :])


@pytest.mark.parametrize(
    "phone",
    [
        "+2250701020304",
        "2250701020304",
        "0701020304",
        "07 01 02 03 04",
        "+225 07 01 02 03 04",
        "+225-07-01-02-03-04",
        "07-01-02-03-04",
        "+225 07-01-02-03-04",
        "+225.07.01.02.03.04",
        "%2B2250701020304",
    ],
)
def test_the_log_formatter_masks_a_phone_however_it_is_written(phone: str, real_logs: Any) -> None:
    from core.observability import logger

    logger.warning("rejected", extra={"reason": f"unknown IANA time zone '{phone}'"})
    record = json.loads(real_logs.getvalue().strip().splitlines()[-1])
    assert "03" not in record["reason"] and "02" not in record["reason"], record["reason"]
    assert record["reason"].endswith("04'"), record["reason"]  # the mask keeps the last two digits


def test_the_log_formatter_leaves_dates_numbers_addresses_and_ids_as_they_are(real_logs: Any) -> None:
    from core.observability import logger

    fields = {
        "at": "2027-03-13T09:00:00.000Z",
        "day": "2027-03-13 09:00",
        "lateness_avg_seconds": 123.456789,
        "big": 1500000.0,
        "gateway": "10.120.113.200",
        "message_id": "msg_2e2ed831a9629ab834eb416656921846",
        "digits": "0 1 2 3 4 5 6 7",
        "ratio": "1.015",
    }
    logger.info("figures", extra=fields)
    record = json.loads(real_logs.getvalue().strip().splitlines()[-1])
    assert {name: record[name] for name in fields} == fields


@pytest.mark.parametrize(
    "text",
    [
        "SVC0004: invalid address tel:+225 07 01 02 03 04",
        "number 07-01-02-03-04 is barred",
        "refused +2250701020304",
    ],
)
def test_a_provider_error_keeps_no_phone_however_it_is_written(text: str) -> None:
    """What a provider says goes into `last_error`, the history and the follow-up reasons: a number written in
    groups (as a gateway may echo it) was kept whole."""
    redacted = redact(text)
    digits = "".join(ch for ch in redacted if ch.isdigit())
    assert "01020304" not in digits and "0102" not in redacted.replace(" ", "").replace("-", ""), redacted
