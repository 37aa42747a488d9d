"""Route logic the HTTP builders (reverseproxy, gateway) share. Pure."""

from __future__ import annotations

# Path match kinds (the graph's names), in precedence order: Exact before any Prefix,
# regular expressions last.
PATH_RANK = {"Exact": 0, "Prefix": 1, "RegularExpression": 2}
# A redirect's Location leaves out the port when it is its scheme's.
DEFAULT_PORTS = {"http": 80, "https": 443}


def normalized_prefix(value: str) -> str:
    """'/api/' -> '/api'; '/' -> '' (every path): prefixes match whole segments."""
    return value.rstrip("/")
