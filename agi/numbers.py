"""Phone numbers: normalise to E.164 with ``phonenumbers`` (Google's libphonenumber data)."""

from __future__ import annotations

import functools

import phonenumbers

__all__ = ["WITHHELD_TOKENS", "normalise", "presentation_restricted"]

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
