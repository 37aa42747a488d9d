"""What a rendered config must never hold: directives that load or run code.

The renderer writes none of these; every value it writes is validated first. This is
the second wall: before any `haproxy -c` runs on a config (the offline CLI's --check),
a config with one of these directives is refused, so that even a value that slipped
past validation cannot run code while the config is only being checked (lua-load runs
its Lua file at parse time; ssl-engine and ssl-provider load shared objects).
"""

from __future__ import annotations

# First words of a line (HAProxy splits lines at "\n" only, words at spaces and tabs).
FORBIDDEN = frozenset({
    "lua-load", "lua-load-per-thread", "lua-prepend-path", "program", "command",
    "external-check", "insecure-fork-wanted", "insecure-setuid-wanted",
    "ssl-engine", "ssl-provider", "ssl-provider-path", "setenv", "presetenv", "resetenv",
    "unsetenv", "chroot", "filter", "51degrees-data-file", "wurfl-data-file",
    "deviceatlas-json-file", "set-dumpable",
})


def forbidden_lines(config: str) -> list[str]:
    """The lines of `config` whose directive is FORBIDDEN (or starts with '.', HAProxy's
    conditional blocks and diagnostics), stripped."""
    out = []
    for line in config.split("\n"):
        words = line.replace("\t", " ").split(" ")
        first = next((w for w in words if w), "")
        if first in FORBIDDEN or first.startswith("."):
            out.append(line.strip())
    return out
