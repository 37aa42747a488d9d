"""YAML read as kubectl reads it, so `roundhouse render` judges the very objects the API
server would receive, not what PyYAML's YAML 1.1 rules make of the same text.

kubectl (sigs.k8s.io/yaml over go-yaml v2) turns YAML into JSON before sending it. Checked
with kubectl v1.36.3 (`kubectl annotate --local -o json`): `y`, `n`, `yes`, `on`, `off`
are booleans (`tRUE` is a string); `017` and `0o17` are 15, `0x1F` 31, `0b101` 5,
`1_000` 1000, `08080` and `09` 8080 and 9; `1e3`, `1.0e3` and `80.0` are the JSON numbers
1000 and 80, so integers to the API server; `2024-01-01` and `1:30` are strings (no
timestamps, no base 60). Keys become strings (`80:` is "80", `on:` is "true"); a null
key, `.nan` and `.inf` are refused ("json: unsupported value"). PyYAML alone differs on
most of these: it reads `2024-01-01` as a date, `08080`, `1e3` and `0o17` as strings,
`1:30` as 90 and `y` as a string.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import yaml

MAX_DEPTH = 100  # a valid resource nests about 10 deep; this is far from both


class YAMLInputError(ValueError):
    """Text that kubectl could not send as JSON; the message names where."""


class Loader(yaml.SafeLoader):
    """SafeLoader with the implicit types kubectl's YAML reader resolves."""

    yaml_implicit_resolvers: dict[Any, Any] = {}


_BOOLS = {"y": True, "yes": True, "true": True, "on": True,
          "n": False, "no": False, "false": False, "off": False}
_RESOLVERS = [
    ("tag:yaml.org,2002:bool",
     r"y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF",
     "yYnNtTfFoO"),
    ("tag:yaml.org,2002:int", r"[-+]?(0b[01_]+|0o[0-7_]+|0x[0-9a-fA-F_]+|[0-9][0-9_]*)",
     "-+0123456789"),
    ("tag:yaml.org,2002:float",
     r"[-+]?(\.[0-9_]+|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)"
     r"|\.(nan|NaN|NAN)", "-+.0123456789"),
    ("tag:yaml.org,2002:null", r"~|null|Null|NULL|", ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:merge", r"<<", "<"),
]
for _tag, _pattern, _first in _RESOLVERS:
    Loader.add_implicit_resolver(_tag, re.compile(rf"^(?:{_pattern})\Z"), list(_first))


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """Go's strconv.ParseInt(text without '_', 0, 64), as go-yaml v2; an octal-looking
    number with an 8 or 9 in it is then read as a decimal float (09 is 9)."""
    text = str(loader.construct_scalar(node)).replace("_", "")
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-")
    bases = {"0b": 2, "0o": 8, "0x": 16}
    if digits[:2] in bases:
        return sign * int(digits[2:], bases[digits[:2]])
    if len(digits) > 1 and digits.startswith("0") and set(digits) <= set("01234567"):
        return sign * int(digits, 8)  # 017 is 15, as for kubectl
    return sign * int(digits, 10)


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    text = str(loader.construct_scalar(node)).lower().replace("_", "")
    if text.endswith(".inf"):
        return -math.inf if text.startswith("-") else math.inf
    if text == ".nan":
        return math.nan
    return float(text)


def _construct_bool(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> bool:
    return _BOOLS[str(loader.construct_scalar(node)).lower()]


Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)
Loader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)


def _as_json(value: Any, path: str) -> Any:
    """The value kubectl sends: integral floats are JSON integers, keys are strings."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise YAMLInputError(f"{path or '<root>'}: json: unsupported value: {value}")
        return int(value) if value.is_integer() and abs(value) < 1e21 else value
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key is None or isinstance(key, list | dict):
                raise YAMLInputError(f"{path or '<root>'}: unsupported map key {key!r:.40}")
            name = key if isinstance(key, str) else json.dumps(_as_json(key, path))
            out[name] = _as_json(item, f"{path}.{name}" if path else name)
        return out
    if isinstance(value, list):
        return [_as_json(item, f"{path}[{i}]") for i, item in enumerate(value)]
    return value


def _check_depth(text: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH before building it (the recursive YAML
    composer would crash), naming the field where it goes too deep."""
    stack: list[list[Any]] = []  # [is_mapping, path, index or key, expecting_key]

    def child_path() -> str:
        if not stack:
            return ""
        is_map, path, at, _ = stack[-1]
        if is_map:
            return f"{path}.{at}" if path else str(at)
        return f"{path}[{at}]"

    def advance() -> None:
        if stack:
            top = stack[-1]
            if top[0]:
                top[3] = not top[3]
            else:
                top[2] += 1

    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.DocumentStartEvent):
            stack.clear()
        elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            if len(stack) >= MAX_DEPTH:
                where = child_path() or "<root>"
                where = where if len(where) <= 80 else where[:80] + "..."
                raise YAMLInputError(f"{where}: nests deeper than {MAX_DEPTH} levels; no "
                                     "valid object does")
            is_map = isinstance(event, yaml.MappingStartEvent)
            stack.append([is_map, child_path(), "" if is_map else 0, True])
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            stack.pop()
            advance()
        elif isinstance(event, yaml.ScalarEvent | yaml.AliasEvent):
            if stack and stack[-1][0] and stack[-1][3]:
                stack[-1][2] = getattr(event, "value", "*")  # a mapping key
            advance()


def load_all(text: str) -> list[Any]:
    """Every document of text, as the JSON kubectl would send. Raises YAMLInputError."""
    try:
        _check_depth(text)
        docs = list(yaml.load_all(text, Loader=Loader))
    except yaml.YAMLError as err:
        raise YAMLInputError(f"not valid YAML: {err}") from err
    except RecursionError as err:  # aliases can still nest: refuse rather than crash
        raise YAMLInputError(f"nests deeper than {MAX_DEPTH} levels") from err
    return [_as_json(doc, "") for doc in docs]
