"""A config's hashes and its structure: the text with each server line cut to its slot
name.

Two configs with the same structure differ only in what the Runtime API can change
(server addresses, weights, states), so the agent applies the difference without a
reload. One definition for both sides: the renderer writes the hashes (configHash,
structureHash), the agent compares with them.
"""

from __future__ import annotations

import functools
import hashlib
import re

_SERVER_LINE = re.compile(r"^(\s*server\s+\S+)(?:\s.*)?$")


@functools.lru_cache(maxsize=4)
def structure(config: str) -> str:
    """Cached: the agent compares its applied config with every desired one (8 ms a pass
    at 8,192 slots)."""
    return "".join(
        (m.group(1) + ("\n" if line.endswith("\n") else "")) if (m := _SERVER_LINE.match(line))
        else line
        for line in config.splitlines(keepends=True)
    )


def config_hash(config: str) -> str:
    """sha256 of the whole file, 16 hex digits."""
    return hashlib.sha256(config.encode()).hexdigest()[:16]


def structure_hash(config: str) -> str:
    return hashlib.sha256(structure(config).encode()).hexdigest()[:16]
