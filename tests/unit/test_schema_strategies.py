"""The schema-driven strategies draw what the CRDs' patterns and CEL hints describe."""

from __future__ import annotations

from typing import Any

import pytest
import re2
from hypothesis import given, settings

from tests.unit.schema_strategies import CRD_FILES, cidrs, regex
from tests.unit.schema_validator import _is_cidr, load_crd


def _patterns(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("pattern"), str):
            found.add(node["pattern"])
        for sub in node.values():
            found |= _patterns(sub)
    elif isinstance(node, list):
        for sub in node:
            found |= _patterns(sub)
    return found


PATTERNS = sorted(set().union(*(_patterns(load_crd(p)) for p in CRD_FILES.values())))


@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_crd_pattern_draws_only_what_go_accepts(pattern: str) -> None:
    @settings(max_examples=40, deadline=None, database=None)
    @given(regex(pattern))
    def one(text: str) -> None:
        # RE2 is what the API server matches with: no trailing newline, no stray character.
        assert re2.search(pattern, text), text
    one()


@settings(max_examples=60, deadline=None, database=None)
@given(regex("^[a-z]{1,3}$"))
def test_anchors_are_go_anchors(text: str) -> None:
    assert len(PATTERNS) >= 8
    assert 1 <= len(text) <= 3 and text.isalpha() and text.islower(), repr(text)


@settings(max_examples=60, deadline=None, database=None)
@given(cidrs())
def test_cidr_hint_draws_what_is_cidr_accepts(text: str) -> None:
    assert _is_cidr(text), text


