"""Phone numbers: validation to E.164 and masking for logs.

Every number Rappel stores or sends to is E.164 ("+2250701020304"), validated with `phonenumbers`.
Logs and error messages only ever carry the masked form (country code and last two digits).
"""

from __future__ import annotations

import re

import phonenumbers

__all__ = ["InvalidPhoneNumber", "known_region", "mask_phone", "mask_phones", "normalize_phone"]

# Longer inputs are not phone numbers; refusing them early keeps parsing cheap on hostile events.
_MAX_RAW_LENGTH = 64
# Fixed width, so the mask does not reveal how many digits the number has.
_MASK = "******"
# Below this many digits after the country code, even the last two would reveal too much of the number.
_MIN_DIGITS_TO_SHOW_TAIL = 6


def known_region(region: str) -> str:
    """`region` if phonenumbers knows it as a country for numbers written without their country code; raises
    ValueError otherwise (the United Kingdom is "GB", not "UK")."""
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"{region!r} is not a region phonenumbers knows (an ISO 3166 alpha-2 code, e.g. CI or GB)")
    return region


_PARSE_ERRORS: dict[int, str] = {
    phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: "unknown country code, or no country code and no "
    "usable default region",
    phonenumbers.NumberParseException.NOT_A_NUMBER: "it does not look like a phone number",
    phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "too short after the international prefix",
    phonenumbers.NumberParseException.TOO_SHORT_NSN: "too short",
    phonenumbers.NumberParseException.TOO_LONG: "too long",
}


# Where the numbering plan cannot tell mobiles from fixed lines (the US, Canada), the number is given the benefit.
_REACHABLE_BY_SMS = {phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE}
_TYPE_NAMES = {
    phonenumbers.PhoneNumberType.FIXED_LINE: "a fixed line",
    phonenumbers.PhoneNumberType.TOLL_FREE: "a toll-free number",
    phonenumbers.PhoneNumberType.PREMIUM_RATE: "a premium-rate number",
    phonenumbers.PhoneNumberType.SHARED_COST: "a shared-cost number",
    phonenumbers.PhoneNumberType.VOIP: "a VoIP number",
    phonenumbers.PhoneNumberType.PAGER: "a pager",
    phonenumbers.PhoneNumberType.VOICEMAIL: "a voicemail access number",
}


class InvalidPhoneNumber(ValueError):
    """The input is not a valid, dialable phone number; the message never contains the full number."""


def normalize_phone(raw: str, default_region: str) -> str:
    """Return `raw` as an E.164 string, or raise InvalidPhoneNumber.

    `default_region` (ISO 3166 alpha-2, e.g. "CI") is used for numbers written without a country code,
    such as "07 01 02 03 04". International forms ("+225 …", "00225 …", "tel:+225…") are accepted.
    The number must be valid for its region (`phonenumbers.is_valid_number`), not merely well-formed.
    """
    if not isinstance(raw, str):
        raise InvalidPhoneNumber(f"phone number must be text, got {type(raw).__name__}")
    if not raw.strip():
        raise InvalidPhoneNumber("phone number is empty")
    if len(raw) > _MAX_RAW_LENGTH:
        raise InvalidPhoneNumber(f"phone number is too long ({len(raw)} characters, at most {_MAX_RAW_LENGTH})")
    masked = mask_phone(raw)
    try:
        parsed = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException as exc:
        reason = _PARSE_ERRORS.get(exc.error_type, "it could not be parsed")
        raise InvalidPhoneNumber(f"invalid phone number {masked}: {reason} (default region {default_region})") from None
    if not phonenumbers.is_valid_number(parsed):
        region = phonenumbers.region_code_for_number(parsed) or f"+{parsed.country_code}"
        raise InvalidPhoneNumber(f"invalid phone number {masked}: not a valid number for {region}")
    kind = phonenumbers.number_type(parsed)
    if kind not in _REACHABLE_BY_SMS:
        name = _TYPE_NAMES.get(kind, "not a mobile number")
        raise InvalidPhoneNumber(f"phone number {masked} cannot receive SMS: {name}")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def mask_phone(e164: str) -> str:
    """Mask a phone number for logs: "+2250701020304" -> "+225******04".

    Only the country code and the last two digits are kept, and only when enough digits remain hidden;
    anything else (short numbers, garbage, local formats) degrades to a mask that reveals less, never more.
    """
    if not isinstance(e164, str):
        return _MASK
    text = e164.strip()[:_MAX_RAW_LENGTH]
    digits = "".join(ch for ch in text if "0" <= ch <= "9")
    country_code = _country_code(text)
    if country_code is None:
        tail = digits[-2:] if len(digits) >= _MIN_DIGITS_TO_SHOW_TAIL + 2 else ""
        return _MASK + tail
    rest = digits[len(country_code) :]
    tail = rest[-2:] if len(rest) >= _MIN_DIGITS_TO_SHOW_TAIL else ""
    return f"+{country_code}{_MASK}{tail}"


def _country_code(text: str) -> str | None:
    """The country calling code of an international-format number, or None when there is none to trust."""
    if not text.startswith("+"):
        return None
    try:
        parsed = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return None
    code = str(parsed.country_code)
    # Guard against parse leniency: the code must be what the input actually starts with.
    digits = "".join(ch for ch in text if "0" <= ch <= "9")
    return code if digits.startswith(code) else None


# A run of digits and single separators (space, dot, dash) that may be a phone; `_is_phone` decides.
_DIGIT_RUN = re.compile(r"(?<![\w.+-])(\+|%2[Bb])?(\d(?:[ .\-]?\d)*)(?![\w.-])")


def _is_phone(sign: str | None, run: str) -> bool:
    """8 to 15 digits: after a + (or %2B), however grouped; else unbroken, in groups of two or more split by spaces,
    or in four or more groups split by dashes (a date has three). Never a decimal number or an address (dots)."""
    digits = sum(ch.isdigit() for ch in run)
    if not 8 <= digits <= 15:
        return False
    if sign:
        return True
    for separator in (" ", "-"):
        groups = run.split(separator)
        if set(run) <= set("0123456789" + separator) and all(len(g) >= 2 for g in groups):
            return separator == " " or len(groups) >= 4
    return False


def mask_phones(text: str) -> str:
    """`text` with every phone-shaped number masked (country code and last two digits kept)."""

    def masked(match: re.Match[str]) -> str:
        sign, run = match.group(1), match.group(2)
        return mask_phone("+" + re.sub(r"\D", "", run)) if _is_phone(sign, run) else match.group(0)

    return _DIGIT_RUN.sub(masked, text)
