"""Phone numbers: the one place they are normalised to E.164.

The strict path (:func:`normalise`, :func:`normalise_number`: valid numbers only, through
``phonenumbers``, Google's libphonenumber data) is for consent records and callers; the fast
path (:func:`fast_e164`: common shapes by string operations, validity not required) is for
suppression lists of millions of rows. tests/unit/ledger/test_numbers.py holds them to the same
answer wherever both give one.
"""

from __future__ import annotations

import functools
import re

import phonenumbers

__all__ = ["WITHHELD_TOKENS", "fast_e164", "normalise", "normalise_number",
           "presentation_restricted"]

_E164 = re.compile(r"\+[1-9][0-9]{6,14}")

#: What Asterisk and carriers put in the caller ID when there is none to show.
WITHHELD_TOKENS = frozenset(
    {"", "anonymous", "unknown", "withheld", "restricted", "private", "unavailable", "blocked",
     "asterisk", "none", "null", "<unknown>"}
)


@functools.lru_cache(maxsize=4096)
def normalise(raw: str | None, default_region: str) -> str | None:
    """E.164 form of ``raw`` (national numbers read in ``default_region``), or ``None``.

    ``None`` for withheld tokens, text that is not a number, and numbers that are not
    valid (wrong length, unassigned range): a consent record needs a number that
    identifies a real line. Letters are refused outright (phonenumbers would read
    "1-800-FLOWERS" as digits, and a mangled withheld marker must never become somebody's
    real number), and so are extensions (not one dialable destination).

    >>> normalise("07700 900123", "GB")
    >>> normalise("020 7946 0018", "GB")
    '+442079460018'
    >>> normalise("anonymous", "GB") is None
    True

    Pure, and memoised (bounded LRU): a call parses its caller ID more than once (the
    call bookkeeping, the flow, an attempt row), ~30 µs a parse.
    """
    if raw is None:
        return None
    text = raw.strip()
    if text.lower() in WITHHELD_TOKENS or len(text) > 64:
        return None
    if any(ch.isalpha() for ch in text):
        return None
    try:
        parsed = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException:
        return None
    if parsed.extension or not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def normalise_number(raw: str, default_region: str) -> str | None:
    """Return ``raw`` as E.164, or ``None`` when it is withheld, malformed or not a valid number.

    ``default_region`` (ISO 3166 alpha-2, e.g. "GB", "US") is used for national-format input;
    an unsupported region raises ``ValueError`` because it is configuration, not data.

    >>> normalise_number("020 7946 0000", "GB")
    '+442079460000'
    >>> normalise_number("Anonymous", "GB") is None
    True

    Letters are refused outright: phonenumbers would read "1-800-FLOWERS" as digits, and a
    mangled withheld marker must never be turned into somebody's real number.  Numbers with an
    extension are refused because they cannot be dialled as a single destination.
    """
    region = default_region.strip().upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"unsupported default region {default_region!r}")
    return normalise(raw, region)


def fast_e164(raw: str, region: str) -> str | None:
    """Normalise one suppression-list number quickly; ``None`` when it is not a number.

    Suppression files hold millions of numbers, so common shapes are handled with string
    operations (``+447…``, ``07…`` / ``7…`` for GB, 10 or 11 digits for US/CA) and only the
    rest goes through phonenumbers.  Validity is *not* required: suppressing a number that
    phonenumbers considers unassigned is harmless, dropping it is not.
    """
    text = raw.strip().strip('"').replace(" ", "").replace("-", "")
    if not text:
        return None
    if text[0] == "+":
        return text if _E164.fullmatch(text) else None
    if text.startswith("00") and text[2:].isdigit():
        cand = "+" + text[2:]
        return cand if _E164.fullmatch(cand) else None
    if text.isdigit():
        if region == "GB":
            if text[0] == "0" and len(text) in (10, 11):
                return "+44" + text[1:]
            if text.startswith("44") and len(text) in (11, 12):
                return "+" + text
            if text[0] != "0" and len(text) in (9, 10):  # TPS files omit the trunk 0
                return "+44" + text
        elif region in ("US", "CA"):
            if len(text) == 10 and text[0] not in "01":
                return "+1" + text
            if len(text) == 11 and text[0] == "1":
                return "+" + text
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    cand = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return cand if _E164.fullmatch(cand) else None


def presentation_restricted(callingpres: str) -> bool:
    """True when ``agi_callingpres`` says the caller asked to withhold their number.

    Asterisk's presentation values: bits 0x60 are the presentation indicator
    (0x00 allowed, 0x20 restricted, 0x40 unavailable).
    """
    try:
        value = int(callingpres)
    except ValueError:
        return False
    return (value & 0x60) != 0
