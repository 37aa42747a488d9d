"""Small value parsers shared by the model: durations, ports, names. The patterns are
roundhouse.model.rules' (the CRD's), compiled for Python."""

from __future__ import annotations

import re

from roundhouse.model import rules


def _whole(pattern: str) -> re.Pattern[str]:
    """A pattern that must match the whole text, as the CRD's (RE2, Go) `$` does.

    Python's `$` also matches before a trailing newline, so "web\n" would pass a
    pattern the API server refuses (and a header value "x\n" would end a haproxy.cfg
    line): `\\Z` is the end of the text only."""
    return re.compile(pattern.removesuffix("$") + r"\Z")


DURATION_RE = _whole(rules.DURATION)
DNS_LABEL_RE = _whole(rules.DNS_LABEL)
DNS_NAME_RE = _whole(rules.DNS_NAME)
HOST_NAME_RE = _whole(rules.DNS_SUBDOMAIN)  # no wildcard: a Secret name or a Host header
# URL path characters only: nothing that could end or comment a haproxy.cfg token.
HTTP_PATH_RE = _whole(rules.HTTP_PATH)
COOKIE_NAME_RE = _whole(rules.COOKIE_NAME)
# RFC 7230 header field names (tokens) and values without control characters: what the
# CRD allows, and nothing that could end a haproxy.cfg line.
HEADER_NAME_RE = _whole(rules.HEADER_NAME)
HEADER_VALUE_RE = _whole(rules.HEADER_VALUE)
_NUMBER_AND_UNIT = re.compile(r"([0-9]+)([a-z]+)")


def parse_duration_ms(value: str) -> int | None:
    """'5s' -> 5000. None when the text is not a duration (the caller reports the field)."""
    if not isinstance(value, str) or not DURATION_RE.match(value):
        return None
    match = _NUMBER_AND_UNIT.fullmatch(value)
    assert match is not None  # the duration pattern is a number and a unit
    return int(match.group(1)) * rules.DURATION_UNITS_MS[match.group(2)]


def format_duration_ms(ms: int) -> str:
    """5000 -> '5s': the shortest exact HAProxy time literal."""
    for unit, factor in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % factor == 0 and ms >= factor:
            return f"{ms // factor}{unit}"
    return f"{ms}ms"
