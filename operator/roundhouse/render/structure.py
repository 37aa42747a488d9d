"""A config's hashes and its structure: the text with each server line cut to its slot
name.

Two configs with the same structure differ only in what the Runtime API can change
(server addresses, weights, states), so the agent applies the difference without a
reload. One definition for both sides: the renderer writes the hashes (configHash,
structureHash), the agent compares with them.

Lines are split exactly as HAProxy reads haproxy.cfg: at "\\n" only. Python's
str.splitlines() also splits at \\r, \\v, \\f, \\x1c-\\x1e, \\x85, \\u2028 and \\u2029,
which may sit inside a quoted header value; splitting there would let a value that
merely contains "server x" be cut like a server line, and two different configs
would share one structure. Only a server line in exactly the form the renderer
writes (server_line) is cut; any other line is kept whole.
"""

from __future__ import annotations

import functools
import hashlib
import operator
import re

# The forms of render.haproxy.server_line; words are separated by spaces only. One
# substitution over the whole text: with MULTILINE, ^ and $ match at "\n" only (the
# line breaks HAProxy knows), and no part of the pattern matches a "\n", so it cuts
# exactly the lines a line-by-line full match would, in one pass of the regex engine
# (a Python loop over the lines took 20-40 ms at 8,192 slots).
_SERVER_LINE = re.compile(
    r"^( *server [A-Za-z0-9_.:-]+)"
    r"(?: 127\.0\.0\.1:1 disabled"
    r"| (?:[0-9.]+|\[[0-9A-Fa-f:.]+\]):[0-9]+ weight [0-9]+(?: disabled)?)$", re.MULTILINE)


# The replacement as a C-level callable: a template (r"\1") is expanded in Python for
# each match, which made the substitution twice as slow at 8,192 slots.
_SLOT_PART = operator.itemgetter(1)


@functools.lru_cache(maxsize=4)
def structure(config: str) -> str:
    """Cached: the agent compares its applied config with every desired one."""
    return _SERVER_LINE.sub(_SLOT_PART, config)


def config_hash(config: str) -> str:
    """sha256 of the whole file, 16 hex digits."""
    return hashlib.sha256(config.encode()).hexdigest()[:16]


def structure_hash(config: str) -> str:
    return hashlib.sha256(structure(config).encode()).hexdigest()[:16]
