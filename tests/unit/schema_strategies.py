"""Hypothesis strategies drawn from a CRD's own openAPIV3Schema and CEL rules.

Unlike tests/unit/strategies.py (the model's idea of a valid spec), nothing here knows
what a LoadBalancer or a ReverseProxy is: the walker reads types, enums, patterns,
min/max, minItems/maxItems, maxLength, maxProperties, required, defaults and the
x-kubernetes-* markers of the CRD, and the x-kubernetes-validations (CEL) rules are used
twice: each node's own rules filter that node while it is drawn (so that cross-field
rules do not throw whole objects away), and two rule shapes give hints for drawing:

- `self.all(k, k.matches('P'))` on a map: its keys are drawn from P;
- `self.f.matches('P')` on an object: field f is drawn from P as well as from its schema.

Draws lean toward edges: lists of their largest allowed size, strings of their largest
allowed length, boundary numbers, any Unicode text where the schema allows it. The API
server's rules that are not in the schema (metadata.name a DNS subdomain) come with the
metadata strategy. What is drawn may still be invalid (rules across several nodes): the
unit tier keeps what tests/unit/schema_validator.py accepts, the integration tier keeps
what the real API server accepts.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
import re._constants as sre
import re._parser as sre_parser
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import re2
from hypothesis import assume
from hypothesis import strategies as st

from roundhouse.model import rules
from tests.unit.schema_validator import (
    SchemaValidator,
    _evaluate,
    apply_defaults,
    as_json,
    load_crd,
)

REPO = Path(__file__).resolve().parents[2]
CRD_FILES = {"LoadBalancer": REPO / "crds" / "loadbalancers.yaml",
             "ReverseProxy": REPO / "crds" / "reverseproxies.yaml"}

Schema = dict[str, Any]
Obj = dict[str, Any]

# Lists of objects that hold lists of objects (hosts -> routes -> backends) multiply:
# at their largest they make objects of megabytes, so they stay short.
NESTED_LIST_CAP = 3
# Short draws for everything else, next to draws of exactly the largest size.
SHORT_LIST = 4
SHORT_STRING = 24
EDGE_ODDS = 5
# A node whose own rules fail is drawn again this many times before the example is
# given up: most rules (a duration's range, a field allowed with one type only) pass
# within a few draws.
NODE_TRIES = 6
INT64 = (-(2**63), 2**63 - 1)
# The API server's own rule for every object's name; namespaces are DNS labels (the
# patterns of roundhouse.model.rules, without their anchors).
DNS_SUBDOMAIN = rules.DNS_SUBDOMAIN.removeprefix("^").removesuffix("$")
DNS_LABEL = rules.DNS_LABEL.removeprefix("^").removesuffix("$")

_MAP_KEY_RULE = re.compile(r"^self\.all\((\w+),\s*\1\.matches\('((?:[^'\\]|\\.)*)'\)\)$")
_FIELD_MATCH_RULE = re.compile(r"self\.(\w+)\.matches\('((?:[^'\\]|\\.)*)'\)")
# A pattern that is one character class repeated: its strings can be drawn at any length.
_CLASS_STAR = re.compile(r"^\^(\[(?:[^\]\\]|\\.)+\])([*+])\$$")


def regex(pattern: str) -> st.SearchStrategy[str]:
    """Strings the whole of which match a Go (RE2) pattern anchored with ^ and $.

    Compiled from the parsed pattern into text strategies: hypothesis's own from_regex
    tracks every group (for backreferences, which no CRD pattern has) and drew half a
    second per object here. Go's `$` is the end of the text, so no trailing newline is
    ever drawn (Python's `$` would allow one)."""
    return _compile(sre_parser.parse(pattern))


def _compile(items: Any) -> st.SearchStrategy[str]:
    parts = [_compile_one(op, arg) for op, arg in items]
    if len(parts) == 1:
        return parts[0]
    return st.tuples(*parts).map("".join)


def _compile_one(op: Any, arg: Any) -> st.SearchStrategy[str]:
    if op is sre.AT:
        return st.just("")
    if op is sre.SUBPATTERN:
        return _compile(arg[-1])
    if op is sre.BRANCH:
        return st.one_of(*(_compile(alt) for alt in arg[1]))
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
        low, high, sub = arg
        high = None if high is sre.MAXREPEAT else high
        alphabet = _alphabet(sub)
        if alphabet is None:
            return st.lists(_compile(sub), min_size=low,
                            max_size=min(high, SHORT_LIST) if high else SHORT_LIST
                            ).map("".join)
        short = st.text(alphabet, min_size=low,
                        max_size=min(high, SHORT_STRING) if high else SHORT_STRING)
        if high is None or high <= SHORT_STRING:
            return short
        return _mostly(short, st.text(alphabet, min_size=high, max_size=high))
    alphabet = _alphabet([(op, arg)])
    if alphabet is None:
        raise NotImplementedError(f"regex element {op} {arg}")
    return alphabet


def _alphabet(items: Any) -> st.SearchStrategy[str] | None:
    """One character's strategy when items are a single character element."""
    if len(items) != 1:
        return None
    op, arg = items[0]
    if op is sre.LITERAL:
        return st.just(chr(arg))
    if op is sre.ANY:
        return st.characters(exclude_categories=["Cs"], exclude_characters="\n")
    if op is not sre.IN:
        return None
    chars: set[str] = set()
    negate = False
    for kind, value in arg:
        if kind is sre.NEGATE:
            negate = True
        elif kind is sre.LITERAL:
            chars.add(chr(value))
        elif kind is sre.RANGE:
            chars.update(chr(c) for c in range(value[0], value[1] + 1))
        else:
            raise NotImplementedError(f"character class element {kind}")
    if negate:
        return st.characters(exclude_categories=["Cs"], exclude_characters="".join(chars))
    return st.sampled_from(sorted(chars))


def _mostly(usual: st.SearchStrategy[Any], edge: st.SearchStrategy[Any]
            ) -> st.SearchStrategy[Any]:
    """usual, and one draw in EDGE_ODDS the edge (the largest size): edges of every
    node at once would make every object huge and slow."""
    return st.integers(1, EDGE_ODDS).flatmap(lambda n: edge if n == 1 else usual)


def _satisfying(base: st.SearchStrategy[Any], check: Callable[[Any], bool],
                tries: int = NODE_TRIES) -> st.SearchStrategy[Any]:
    """base, drawn again until check passes; after `tries` the example is given up."""
    @st.composite
    def draw_one(draw: st.DrawFn) -> Any:
        for _ in range(tries):
            value = draw(base)
            if check(value):
                return value
        assume(False)
        raise AssertionError("unreachable")
    return draw_one()


def rules_pass(value: Any, node: Schema) -> bool:
    """Every CEL rule of this node (not its children) holds for the value as the API
    server sees it: defaults applied first."""
    key = (id(node), json.dumps(value, sort_keys=True))
    if key not in _RULES_PASS:
        if len(_RULES_PASS) > 100_000:
            _RULES_PASS.clear()
        _RULES_PASS[key] = _rules_pass(value, node)
    return _RULES_PASS[key]


# Hypothesis draws the same small values again and again (and CEL in Python costs a
# millisecond a rule): the verdicts, by schema node and value.
_RULES_PASS: dict[tuple[int, str], bool] = {}


def _rules_pass(value: Any, node: Schema) -> bool:
    rules = [r for r in node.get("x-kubernetes-validations") or []
             if "oldSelf" not in r["rule"]]
    if not rules:
        return True
    seen = as_json(value)
    apply_defaults(seen, node)
    for rule in rules:
        result = _evaluate(rule["rule"], seen)
        if not _is_true(result):
            return False
    return True


def cidrs() -> st.SearchStrategy[str]:
    """What the Kubernetes CEL library's isCIDR accepts: both families, host bits set
    or not, the shortest and longest prefixes often."""
    v4 = st.builds(lambda a, n: f"{ipaddress.IPv4Address(a)}/{n}",
                   st.one_of(st.sampled_from([0, 2**32 - 1]), st.integers(0, 2**32 - 1)),
                   st.one_of(st.sampled_from([0, 32]), st.integers(0, 32)))
    v6 = st.builds(lambda a, n: f"{ipaddress.IPv6Address(a)}/{n}",
                   st.one_of(st.sampled_from([0, 1, 2**128 - 1]), st.integers(0, 2**128 - 1)),
                   st.one_of(st.sampled_from([0, 128]), st.integers(0, 128)))
    return st.one_of(v4, v6)


# Rules that call a Kubernetes CEL library function on the node itself: what to draw.
LIBRARY_HINTS: dict[str, st.SearchStrategy[Any]] = {rules.CIDR.expr: cidrs()}


class SchemaStrategies:
    """Strategies for the objects of one CRD (its storage version)."""

    def __init__(self, crd: dict[str, Any], keep_rules: bool = True) -> None:
        """keep_rules=False: draw from the OpenAPI schema alone, CEL rules ignored (what
        the API server must then reject, the evaluator too)."""
        self.keep_rules = keep_rules
        self.validator = SchemaValidator(crd)
        self.schema: Schema = self.validator.schema
        self.kind = self.validator.kind
        self.api_version = self.validator.api_version

    @classmethod
    @cache
    def for_kind(cls, kind: str, keep_rules: bool = True) -> SchemaStrategies:
        return cls(load_crd(CRD_FILES[kind]), keep_rules)

    # ------------------------------------------------------------------ objects

    def objects(self, namespaces: st.SearchStrategy[str] | None = None
                ) -> st.SearchStrategy[Obj]:
        """Whole objects: apiVersion, kind, metadata (name, namespace) and spec."""
        spec_schema = self.schema["properties"]["spec"]
        return st.builds(
            lambda name, namespace, spec: {
                "apiVersion": self.api_version, "kind": self.kind,
                "metadata": {"name": name, "namespace": namespace},
                "spec": spec},
            self.names(),
            namespaces if namespaces is not None else regex(f"^{DNS_LABEL}$"),
            self.node(spec_schema, "spec"))

    def names(self) -> st.SearchStrategy[str]:
        """DNS subdomains (every object's name) kept to the root rules on metadata.name."""
        root_rules = [r for r in self.schema.get("x-kubernetes-validations") or []
                      if "self.metadata" in r["rule"] and "self.spec" not in r["rule"]]
        subdomains = st.one_of(regex(f"^{DNS_LABEL}$"), regex(f"^{DNS_SUBDOMAIN}$"))
        if not self.keep_rules:
            return subdomains.filter(lambda n: len(n) <= rules.SUBDOMAIN_LENGTH)
        return _satisfying(
            subdomains.filter(lambda n: len(n) <= rules.SUBDOMAIN_LENGTH),
            lambda n: rules_pass({"metadata": {"name": n}},
                                 {"x-kubernetes-validations": root_rules}))

    # ------------------------------------------------------------------- nodes

    def node(self, node: Schema, path: str,
             hint: st.SearchStrategy[Any] | None = None) -> st.SearchStrategy[Any]:
        """A value for one schema node, its own CEL rules kept."""
        for rule in node.get("x-kubernetes-validations") or []:
            if rule["rule"].strip() in LIBRARY_HINTS:
                # Random text is never a CIDR: the library function's own domain.
                return LIBRARY_HINTS[rule["rule"].strip()]
        base = self._untested(node, path, hint)
        if self.keep_rules and node.get("x-kubernetes-validations"):
            return _satisfying(base, lambda v: rules_pass(v, node))
        return base

    def _untested(self, node: Schema, path: str,
                  hint: st.SearchStrategy[Any] | None) -> st.SearchStrategy[Any]:
        if "enum" in node:
            return st.sampled_from(node["enum"])
        if node.get("x-kubernetes-int-or-string"):
            return st.one_of(self._integer(node), self._string(node))
        kind = node.get("type")
        if kind == "object":
            return self._object(node, path)
        if kind == "array":
            return self._array(node, path)
        if kind == "string":
            return self._string(node) if hint is None else st.one_of(
                hint.filter(lambda s: self._string_ok(node, s)), self._string(node))
        if kind == "integer":
            return self._integer(node)
        if kind == "number":
            return st.floats(node.get("minimum"), node.get("maximum"), allow_nan=False,
                             allow_infinity=False)
        if kind == "boolean":
            return st.booleans()
        raise NotImplementedError(f"{path}: no strategy for schema {sorted(node)}")

    def _object(self, node: Schema, path: str) -> st.SearchStrategy[Any]:
        props: dict[str, Schema] = node.get("properties") or {}
        if not props and isinstance(node.get("additionalProperties"), dict):
            return self._map(node, path)
        hints = _field_hints(node)
        required = [k for k in props if k in set(node.get("required") or [])]
        # status is the status subresource's: ignored on create, so it is not drawn.
        optional = [k for k in props if k not in required and k != "status"]
        drawn = {k: self.node(props[k], f"{path}.{k}", hints.get(k))
                 for k in (*required, *optional)}
        presence = _presence_rules(node) if self.keep_rules else []
        defaulted = {k for k, sub in props.items() if "default" in sub}

        @st.composite
        def draw_object(draw: st.DrawFn) -> Obj:
            # Which optional fields are set is drawn first and kept to the rules that
            # only ask which fields are set (`has(self.a) != has(self.b)`): cheap to
            # draw again, where drawing the whole object again is not.
            for _ in range(NODE_TRIES * 2):
                present = [k for k in optional if draw(st.booleans())]
                shown = set(required) | set(present) | defaulted
                if all(_is_true(_evaluate(rule, dict.fromkeys(shown, True)))
                       for rule in presence):
                    break
            else:
                assume(False)
            return {k: draw(drawn[k]) for k in (*required, *present)}
        return draw_object()

    def _map(self, node: Schema, path: str) -> st.SearchStrategy[Any]:
        values = self.node(node["additionalProperties"], f"{path}[*]")
        keys = _map_key_hint(node)
        if keys is None:
            keys = st.text(min_size=1, max_size=SHORT_STRING)
        largest = node.get("maxProperties", SHORT_LIST)
        return _mostly(st.dictionaries(keys, values, max_size=min(largest, SHORT_LIST)),
                       st.dictionaries(keys, values, min_size=largest, max_size=largest))

    def _array(self, node: Schema, path: str) -> st.SearchStrategy[Any]:
        items: Schema = node["items"]
        least = node.get("minItems", 0)
        largest = node.get("maxItems", SHORT_LIST)
        if _holds_object_lists(items):
            largest = max(least, min(largest, NESTED_LIST_CAP))
        unique_by = _list_identity(node)
        item = self.node(items, f"{path}[]")

        def lists(low: int, high: int) -> st.SearchStrategy[list[Any]]:
            if unique_by is None:
                return st.lists(item, min_size=low, max_size=high)
            return st.lists(item, min_size=low, max_size=high, unique_by=unique_by)
        return _mostly(lists(least, max(least, min(largest, SHORT_LIST))),
                       lists(largest, largest))

    # ----------------------------------------------------------------- scalars

    def _integer(self, node: Schema) -> st.SearchStrategy[int]:
        low = node.get("minimum", INT64[0])
        high = node.get("maximum", INT64[1])
        edges = sorted({low, high, min(low + 1, high), max(high - 1, low)})
        return st.one_of(st.sampled_from(edges), st.integers(low, high))

    def _string(self, node: Schema) -> st.SearchStrategy[str]:
        least = node.get("minLength", 0)
        longest = node.get("maxLength", 256)
        pattern = node.get("pattern")
        if pattern is None:
            alphabet: st.SearchStrategy[str] = st.characters(exclude_categories=["Cs"])
        elif (repeated := _CLASS_STAR.match(pattern)) is not None:
            alphabet = _alphabet(sre_parser.parse(repeated.group(1)))
            least = max(least, 1 if repeated.group(2) == "+" else 0)
        else:
            return regex(pattern).filter(lambda s: least <= len(s) <= longest)
        short = st.text(alphabet, min_size=least, max_size=max(least, min(longest,
                                                                           SHORT_STRING)))
        # The longest allowed: a short draw repeated (one draw of thousands of
        # characters would overrun hypothesis's buffer).
        longest_text = st.text(alphabet, min_size=max(1, least), max_size=8).map(
            lambda s: (s * (longest // len(s) + 1))[:longest])
        return _mostly(short, longest_text)

    @staticmethod
    def _string_ok(node: Schema, value: str) -> bool:
        pattern = node.get("pattern")
        return (node.get("minLength", 0) <= len(value) <= node.get("maxLength", 1 << 30)
                and (pattern is None or re2.search(pattern, value) is not None))


# --------------------------------------------------------------------- helpers


def _is_true(result: Any) -> bool:
    return isinstance(result, celpy.celtypes.BoolType) and bool(result)


_PRESENCE_TEST = re.compile(r"has\(self\.\w+\)")


def _presence_rules(node: Schema) -> list[str]:
    """The node's rules that only ask which of its own fields are set."""
    return [r["rule"] for r in node.get("x-kubernetes-validations") or []
            if "self" not in _PRESENCE_TEST.sub("", r["rule"])]


def _map_key_hint(node: Schema) -> st.SearchStrategy[str] | None:
    for rule in node.get("x-kubernetes-validations") or []:
        found = _MAP_KEY_RULE.match(rule["rule"].strip())
        if found:
            return regex(_cel_string(found.group(2)))
    return None


def _field_hints(node: Schema) -> dict[str, st.SearchStrategy[str]]:
    hints: dict[str, st.SearchStrategy[str]] = {}
    for rule in node.get("x-kubernetes-validations") or []:
        for field, pattern in _FIELD_MATCH_RULE.findall(rule["rule"]):
            hints[field] = regex(_cel_string(pattern))
    return hints


def _cel_string(literal: str) -> str:
    """The value of a single-quoted CEL string literal's body."""
    return literal.replace("\\'", "'").replace("\\\\", "\\")


def _holds_object_lists(node: Schema) -> bool:
    if node.get("type") == "array" and (node.get("items") or {}).get("type") == "object":
        return True
    subs = list((node.get("properties") or {}).values())
    if isinstance(node.get("items"), dict):
        subs.append(node["items"])
    return any(_holds_object_lists(s) for s in subs)


def _list_identity(node: Schema) -> Callable[[Any], str] | None:
    """What makes two items duplicates in an x-kubernetes-list-type map or set, defaults
    applied (a port 80 and a port "80" differ, as in JSON)."""
    list_type = node.get("x-kubernetes-list-type")
    items: Schema = node.get("items") or {}
    if list_type == "set":
        return lambda item: json.dumps(item, sort_keys=True)
    if list_type == "map":
        keys = node.get("x-kubernetes-list-map-keys") or []

        def identity(item: Any) -> str:
            seen = copy.deepcopy(item)
            apply_defaults(seen, items)
            return json.dumps([seen.get(k) for k in keys])
        return identity
    return None
