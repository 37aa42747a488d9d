"""Small value parsers shared by the model: durations, ports, names."""

from __future__ import annotations

import re


def _whole(pattern: str) -> re.Pattern[str]:
    """A pattern that must match the whole text, as the CRD's (RE2, Go) `$` does.

    Python's `$` also matches before a trailing newline, so "web\n" would pass a
    pattern the API server refuses (and a header value "x\n" would end a haproxy.cfg
    line): `\\Z` is the end of the text only."""
    return re.compile(pattern.removesuffix("$") + r"\Z")


DURATION_RE = _whole(r"^([0-9]{1,7})(ms|s|m|h)$")
DNS_LABEL_RE = _whole(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_NAME_RE = _whole(
    r"^(\*\.)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
)
HOST_NAME_RE = _whole(  # no wildcard: a Secret name or a Host header
    r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
)
# URL path characters only: nothing that could end or comment a haproxy.cfg token.
HTTP_PATH_RE = _whole(r"^/[A-Za-z0-9._~!&()*+,;=:@%/?-]*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


def parse_duration_ms(value: str) -> int | None:
    """'5s' -> 5000. None when the text is not a duration (the caller reports the field)."""
    match = DURATION_RE.match(value) if isinstance(value, str) else None
    if not match:
        return None
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def format_duration_ms(ms: int) -> str:
    """5000 -> '5s': the shortest exact HAProxy time literal."""
    for unit, factor in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % factor == 0 and ms >= factor:
            return f"{ms // factor}{unit}"
    return f"{ms}ms"

# RFC 7230 header field names (tokens) and values without control characters: what the
# CRD allows, and nothing that could end a haproxy.cfg line.
HEADER_NAME_RE = _whole(r"^[A-Za-z0-9!#%&*+.^_|~-]+$")
HEADER_VALUE_RE = _whole(r"^[^\x00-\x1f\x7f]*$")
