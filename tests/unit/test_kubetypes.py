"""roundhouse.model.kubetypes.parse_quantity against resource.ParseQuantity's results."""

from __future__ import annotations

from fractions import Fraction

import pytest

from roundhouse.model.kubetypes import parse_quantity


@pytest.mark.parametrize(("text", "value"), [
    ("100m", Fraction(1, 10)),
    ("1Ki", Fraction(1024)),
    ("1Ei", Fraction(2**60)),        # the binary suffix, not an exponent "E" + "i"
    ("2E", Fraction(2 * 10**18)),    # the decimal suffix
    ("3e2", Fraction(300)),          # an exponent
    ("1.5E-3", Fraction(15, 10**4)),
    ("0E14637995", Fraction(0)),     # zero, whatever the exponent (a property test drew it)
    ("-0", Fraction(0)),
    ("+5", Fraction(5)),
    ("1e-12", Fraction(1, 10**9)),   # a non-zero amount rounds up to 1n
    ("-1.0000000001", -Fraction(10**9 + 1, 10**9)),  # away from zero, as ParseQuantity does
    ("1E9999999", Fraction(2**63 - 1)),              # capped at the largest int64
    (".444958408e4498967", Fraction(2**63 - 1)),     # the API server accepted it
    ("5e-4498967", Fraction(1, 10**9)),
    ("1e4294967296", Fraction(1)),   # ParseQuantity keeps the exponent as an int32: 0
])
def test_quantities_parse_as_the_api_server_reads_them(text: str, value: Fraction) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "1Q", "Ki", "1 Gi", "1e", "1e9223372036854775808"])
def test_non_quantities_are_refused(text: str) -> None:
    assert parse_quantity(text) is None
