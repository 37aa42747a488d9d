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
])
def test_quantities_parse_as_the_api_server_reads_them(text: str, value: Fraction) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "1Q", "Ki", "1 Gi", "1e", "1E9999999"])
def test_non_quantities_and_unreasonable_exponents_are_refused(text: str) -> None:
    assert parse_quantity(text) is None
