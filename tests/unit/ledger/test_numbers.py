"""Phone numbers: the strict path and the fast path of agi.ledger.numbers, and that they agree."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from agi.ledger.numbers import fast_e164, normalise, normalise_number

US_NY = "+12125551234"


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        pytest.param("020 7946 0000", "GB", "+442079460000", id="uk-national"),
        pytest.param("+44 (0)20 7946 0000", "GB", "+442079460000", id="uk-trunk-in-brackets"),
        pytest.param("0044 20 7946 0000", "GB", "+442079460000", id="uk-idd-prefix"),
        pytest.param("(212) 555-1234", "US", US_NY, id="us-national"),
        pytest.param("+1 212 555 1234", "GB", US_NY, id="international-ignores-region"),
        pytest.param(" +12125551234 ", "us", US_NY, id="lowercase-region-and-spaces"),
        pytest.param("anonymous", "GB", None, id="anonymous"),
        pytest.param("Anonymous", "GB", None, id="anonymous-capitalised"),
        pytest.param("unknown", "GB", None, id="unknown"),
        pytest.param("", "GB", None, id="empty"),
        pytest.param("   ", "GB", None, id="blank"),
        pytest.param("withheld", "GB", None, id="withheld"),
        pytest.param("Restricted", "US", None, id="restricted"),
        pytest.param("private", "US", None, id="private"),
        pytest.param("1-800-FLOWERS", "US", None, id="vanity-letters-refused"),
        pytest.param("020 7946 0000 ext. 12", "GB", None, id="extension"),
        pytest.param("020 7946 0000;ext=12", "GB", None, id="rfc3966-extension"),
        pytest.param("+447700900123", "GB", None, id="drama-range-invalid"),
        pytest.param("+15555550100", "US", None, id="us-555-invalid"),
        pytest.param("12345", "GB", None, id="too-short"),
        pytest.param("+" + "1" * 80, "GB", None, id="too-long"),
    ],
)
def test_normalise_number(raw: str, region: str, expected: str | None) -> None:
    assert normalise_number(raw, region) == expected


@pytest.mark.parametrize("region", ["XX", "UK", ""], ids=["xx", "uk-is-not-iso", "empty"])
def test_normalise_number_rejects_unknown_region(region: str) -> None:
    with pytest.raises(ValueError, match="unsupported default region"):
        normalise_number("020 7946 0000", region)




@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("07700900123", "GB", "+447700900123"),
        ("7700900123", "GB", "+447700900123"),  # TPS files drop the trunk 0
        ("447700900123", "GB", "+447700900123"),
        ("+447700900123", "GB", "+447700900123"),
        ("0044 7700 900123", "GB", "+447700900123"),
        ("2125550100", "US", "+12125550100"),
        ("1-212-555-0100", "US", "+12125550100"),
        ("hello", "GB", None),
        ("", "GB", None),
        ("+0123", "GB", None),
    ],
)
def test_fast_e164(raw: str, region: str, expected: str | None) -> None:
    assert fast_e164(raw, region) == expected


#: regions whose national shapes fast_e164 handles by string operations
_FAST_REGIONS = ("GB", "US", "CA")


@st.composite
def _valid_numbers(draw: st.DrawFn) -> tuple[str, str]:
    """A valid number of a fast-path region, written as people and list files write it."""
    region = draw(st.sampled_from(_FAST_REGIONS))
    kind = draw(st.sampled_from([phonenumbers.PhoneNumberType.FIXED_LINE,
                                 phonenumbers.PhoneNumberType.MOBILE]))
    example = phonenumbers.example_number_for_type(region, kind)
    assert example is not None
    national = str(example.national_number)
    # vary the subscriber digits, keep the number's own prefix so it stays in a valid range
    keep = max(len(national) - 4, 1)
    tail = draw(st.text("0123456789", min_size=len(national) - keep,
                        max_size=len(national) - keep))
    parsed = phonenumbers.parse("+" + str(example.country_code) + national[:keep] + tail)
    style = draw(st.sampled_from([phonenumbers.PhoneNumberFormat.E164,
                                  phonenumbers.PhoneNumberFormat.NATIONAL,
                                  phonenumbers.PhoneNumberFormat.INTERNATIONAL]))
    return phonenumbers.format_number(parsed, style), region


@given(_valid_numbers())
def test_fast_path_agrees_with_the_strict_path(case: tuple[str, str]) -> None:
    """Wherever the strict path accepts a number, the fast path gives the same E.164."""
    raw, region = case
    strict = normalise(raw, region)
    assume(strict is not None)  # hypothesis fails the test if that filters out too much
    assert fast_e164(raw, region) == strict
