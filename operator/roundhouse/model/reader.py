"""A typed reader over untyped YAML that records every problem with its field path.

The API server validates the same rules through the CRD schema and CEL; this
reader exists so that `roundhouse render` gives the same clear errors offline and
so the pure pipeline never trusts its input.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from roundhouse.model.errors import FieldError
from roundhouse.model.values import format_duration_ms, parse_duration_ms


class Reader:
    def __init__(self, data: Any, path: str, errors: list[FieldError]) -> None:
        self.data = data if isinstance(data, dict) else {}
        self.path = path
        self.errors = errors
        if data is not None and not isinstance(data, dict):
            self.error("", "must be an object")

    def field(self, key: str) -> str:
        return f"{self.path}.{key}" if key else self.path

    def error(self, key: str, message: str) -> None:
        self.errors.append(FieldError(self.field(key), message))

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def child(self, key: str) -> Reader:
        return Reader(self.data.get(key), self.field(key), self.errors)

    def items(self, key: str, *, min_items: int = 0, max_items: int = 1000) -> Iterator[Reader]:
        value = self.data.get(key)
        if value is None:
            value = []
        if not isinstance(value, list):
            self.error(key, "must be a list")
            return
        if len(value) < min_items:
            self.error(key, f"must have at least {min_items} item(s)")
        if len(value) > max_items:
            self.error(key, f"must have at most {max_items} items")
        for index, item in enumerate(value):
            yield Reader(item, f"{self.field(key)}[{index}]", self.errors)

    def string(self, key: str, default: str | None = None, *, required: bool = False) -> str:
        value = self.data.get(key)
        if value is None:
            if required:
                self.error(key, "Required value")
            return default or ""
        if not isinstance(value, str):
            self.error(key, f"must be a string, got {value!r}")
            return default or ""
        return value

    def enum(self, key: str, allowed: tuple[str, ...], default: str) -> str:
        value = self.string(key, default)
        if value not in allowed:
            self.error(key, f"Unsupported value: {value!r}: supported values: "
                       + ", ".join(f'"{a}"' for a in allowed))
            return default
        return value

    def integer(self, key: str, default: int, *, minimum: int, maximum: int) -> int:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(key, f"must be an integer, got {value!r}")
            return default
        if not minimum <= value <= maximum:
            self.error(key, f"must be between {minimum} and {maximum}, got {value}")
            return default
        return value

    def boolean(self, key: str, default: bool = False) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(key, f"must be true or false, got {value!r}")
            return default
        return value

    def duration_ms(self, key: str, default: str, *, maximum_ms: int = 86_400_000) -> int:
        text = self.string(key, default)
        ms = parse_duration_ms(text)
        if ms is None:
            self.error(key, f"invalid duration {text!r}: use a number and a unit, "
                       "e.g. 500ms, 5s, 2m, 1h")
            ms = parse_duration_ms(default) or 0
        elif ms == 0 or ms > maximum_ms:
            self.error(key, f"must be more than 0 and at most "
                       f"{format_duration_ms(maximum_ms)}, got {text!r}")
            ms = parse_duration_ms(default) or 0
        return ms

    def string_list(self, key: str) -> list[str]:
        value = self.data.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(key, "must be a list of strings")
            return []
        return list(value)

    def string_map(self, key: str) -> dict[str, str]:
        value = self.data.get(key) or {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            self.error(key, "must be a map of strings to strings")
            return {}
        return dict(value)

    def raw(self, key: str) -> Any:
        return self.data.get(key)
