"""A typed reader over untyped YAML that records every problem with its field path.

The API server validates the same rules through the CRD schema and CEL; this
reader exists so that `roundhouse render` gives the same clear errors offline and
so the pure pipeline never trusts its input.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from roundhouse.model.errors import FieldError
from roundhouse.model.rules import Duration, Enum, Int, Items
from roundhouse.model.values import format_duration_ms, parse_duration_ms


def shown(value: Any) -> str:
    """A bad value as the API server prints it: short, and never the repr of a deep or
    huge structure (a list nested 10,000 deep must give a message, not a crash)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= 80 else text[:76] + '..."'
    return f'"{json_type(value)}"'


def json_type(value: Any) -> str:
    """The JSON type name the API server uses in its messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__  # not JSON at all (only a hand-made object has these)


def type_error(value: Any, expected: str) -> str:
    return f"Invalid value: {shown(value)}: must be of type {expected}"


class Reader:
    """Reads one object of the spec. Every key it is asked about counts as a declared
    field: `unknown_fields()` then reports the rest, as kubectl's strict field
    validation does (`unknown field "spec.foo"`)."""

    def __init__(self, data: Any, path: str, errors: list[FieldError],
                 readers: list[Reader] | None = None) -> None:
        self.data = data if isinstance(data, dict) else {}
        self.path = path
        self.errors = errors
        self.asked: set[Any] = set()
        self.readers = [] if readers is None else readers
        self.readers.append(self)
        if data is not None and not isinstance(data, dict):
            self.error("", type_error(data, "object"))

    def _get(self, key: str) -> Any:
        self.asked.add(key)
        return self.data.get(key)

    def unknown_fields(self) -> None:
        """Report each key that no reader of this tree asked about."""
        for r in self.readers:
            for key in r.data:
                if key not in r.asked:
                    where = r.field(str(key))
                    r.errors.append(FieldError(where, f'unknown field "{where}"'))

    def field(self, key: str) -> str:
        return f"{self.path}.{key}" if key else self.path

    def error(self, key: str, message: str) -> None:
        self.errors.append(FieldError(self.field(key), message))

    def has(self, key: str) -> bool:
        return self._get(key) is not None

    def child(self, key: str) -> Reader:
        return Reader(self._get(key), self.field(key), self.errors, self.readers)

    def items(self, key: str, size: Items, *, check_minimum: bool = True) -> Iterator[Reader]:
        """The objects of a list within its size (an absent list is empty)."""
        value = self._get(key)
        if value is None:
            value = []
        if not isinstance(value, list):
            self.error(key, type_error(value, "array"))
            return
        if check_minimum and size.minimum and len(value) < size.minimum:
            self.error(key, f"must have at least {size.minimum} item(s)")
        if len(value) > size.maximum:
            self.error(key, f"must have at most {size.maximum} items")
        for index, item in enumerate(value):
            yield Reader(item, f"{self.field(key)}[{index}]", self.errors, self.readers)

    def string(self, key: str, default: str | None = None, *, required: bool = False) -> str:
        value = self._get(key)
        if value is None:
            if required:
                self.error(key, "Required value")
            return default or ""
        if not isinstance(value, str):
            self.error(key, type_error(value, "string"))
            return default or ""
        return value

    def enum(self, key: str, allowed: Enum, default: str | None = None) -> str:
        """One of allowed.values; absent or refused: the default (allowed's own unless
        given: a field without a default still needs a placeholder value)."""
        fallback = default if default is not None else allowed.default or ""
        value = self.string(key, fallback)
        if value not in allowed.values:
            self.error(key, f"Unsupported value: {shown(value)}: supported values: "
                       + ", ".join(f'"{a}"' for a in allowed.values))
            return fallback
        return value

    def integer(self, key: str, bounds: Int, default: int | None = None) -> int:
        """An integer within bounds; absent or refused: the default (the bounds' own
        unless given: a field without a default still needs a placeholder value)."""
        fallback = default if default is not None else bounds.default or 0
        value = self._get(key)
        if value is None:
            return fallback
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(key, type_error(value, "integer"))
            return fallback
        if not bounds.contains(value):
            self.error(key, f"must be between {bounds.minimum} and {bounds.maximum}, "
                       f"got {value}")
            return fallback
        return value

    def boolean(self, key: str, default: bool = False) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(key, type_error(value, "boolean"))
            return default
        return value

    def duration_ms(self, key: str, rule: Duration) -> int:
        """A duration in milliseconds within the rule's bounds (more than 0 unless it says
        otherwise, at most its limit); absent
        or refused: the rule's default (0 when it has none)."""
        default = rule.default or "0s"
        text = self.string(key, default)
        ms = parse_duration_ms(text)
        if ms is None:
            self.error(key, f"invalid duration {text!r}: use a number and a unit, "
                       "e.g. 500ms, 5s, 2m, 1h")
            ms = parse_duration_ms(default) or 0
        elif ms < max(rule.min_ms, 1) or ms > rule.max_ms:
            self.error(key, f"must be {rule.minimum} and at most "
                       f"{format_duration_ms(rule.max_ms)}, got {text!r}")
            ms = parse_duration_ms(default) or 0
        return ms

    def string_list(self, key: str) -> list[str]:
        value = self._get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(key, "must be a list of strings")
            return []
        return list(value)

    def string_map(self, key: str) -> dict[str, str]:
        value = self._get(key) or {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            self.error(key, "must be a map of strings to strings")
            return {}
        return dict(value)

    def raw(self, key: str) -> Any:
        return self._get(key)
