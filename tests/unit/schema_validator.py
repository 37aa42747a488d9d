"""Validate a custom resource against a CRD the way kube-apiserver does, offline.

What the API server does to a create request, and what this module does in its place
(kube-apiserver 1.36, k8s.io/apiextensions-apiserver):

1. Pruning: fields the schema does not declare are dropped (kubectl's default strict
   field validation turns them into errors: `unknown field "spec.foo"`). Non-nullable
   nulls without a default are dropped too.
2. Structural defaulting: a missing (or null, non-nullable) property with a `default`
   gets a copy of it, recursively, so `default: {}` on an object brings in the defaults
   of its properties.
3. metadata.name: a DNS subdomain (NameIsDNSSubdomain), as for every custom resource.
4. OpenAPI v3 schema validation, here by the jsonschema library on the schema with its
   OpenAPI bits converted (nullable, x-kubernetes-int-or-string); regular expressions go
   through RE2 as in Go. Each error is reworded to what the API server prints
   ("Unsupported value", "Required value", "should be less than or equal to", ...).
5. x-kubernetes-list-type map/set: duplicate keys are "Duplicate value" errors.
6. Unless an error above blocks it (an unsupported enum value, a missing required
   field, a too long string, too many items, a wrong type), every
   x-kubernetes-validations CEL rule is evaluated at its node with `self` bound, by
   cel-python; a failing rule reports at its node plus its fieldPath, with its message
   (or messageExpression) and its reason.

The Kubernetes CEL library functions the CRDs call (isCIDR, isQuantity, quantity,
Quantity.compareTo) are supplied in Python.

Not emulated: CEL cost estimation and budgets, transition rules (oldSelf), string
formats, CEL's typed declarations (rules run on dynamic values). The real API server
remains the judge of a CRD itself: this module trusts that the CRD was accepted.

Errors come back as Violation(path, message), where str(violation) is the line the API
server prints, e.g. `spec.listeners[0].port: Invalid value: 0: spec.listeners[0].port in
body should be greater than or equal to 1`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import celpy
import celpy.adapter
import jsonschema
import re2
import yaml
from jsonschema.exceptions import ValidationError

from roundhouse.model.common import cidr
from roundhouse.model.kubetypes import SUBDOMAIN_MESSAGE, parse_quantity
from roundhouse.model.reader import json_type as _json_type
from roundhouse.model.rules import K8S_DNS1123_SUBDOMAIN

Schema = dict[str, Any]
PathElems = tuple[str | int, ...]

# field.ErrorType values (k8s.io/apimachinery/pkg/util/validation/field).
INVALID = "FieldValueInvalid"
TYPE_INVALID = "FieldValueTypeInvalid"
REQUIRED = "FieldValueRequired"
NOT_SUPPORTED = "FieldValueNotSupported"
FORBIDDEN = "FieldValueForbidden"
DUPLICATE = "FieldValueDuplicate"
TOO_LONG = "FieldValueTooLong"
TOO_MANY = "FieldValueTooMany"
UNKNOWN_FIELD = "UnknownField"

# apiextensions-apiserver registry/customresource/strategy.go: hasBlockingErr.
BLOCKING = {NOT_SUPPORTED, REQUIRED, TOO_LONG, TOO_MANY, TYPE_INVALID}
NOT_CHECKED = ("some validation rules were not checked because the object was invalid; "
               "correct the existing errors to complete validation")
# metadata.name of every custom resource (NameIsDNSSubdomain): Kubernetes' expression and
# message, as roundhouse.model.rules and kubetypes state them for the parser.
DNS1123_SUBDOMAIN = f"^{K8S_DNS1123_SUBDOMAIN}$"
DNS1123_SUBDOMAIN_MESSAGE = SUBDOMAIN_MESSAGE


class Violation(NamedTuple):
    """One error, as the API server reports it: the field path and the message body."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class _Error(NamedTuple):
    type: str
    path: str
    message: str


class _Omitted:
    """field.OmitValueType: the value of an object or array node is not printed."""


OMIT = _Omitted()


# ------------------------------------------------------------------------ formatting


def go_value(value: Any) -> str:
    """A bad value as field.Error prints it: %q for strings, %v for numbers and bools,
    JSON (keys sorted, as Go's encoding/json) for the rest."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _body(kind: str, value: Any = OMIT, detail: str = "") -> str:
    """field.Error.ErrorBody()."""
    titles = {INVALID: "Invalid value", TYPE_INVALID: "Invalid value",
              REQUIRED: "Required value", NOT_SUPPORTED: "Unsupported value",
              FORBIDDEN: "Forbidden", DUPLICATE: "Duplicate value", TOO_LONG: "Too long",
              TOO_MANY: "Too many"}
    text = titles[kind]
    if kind in (INVALID, TYPE_INVALID, NOT_SUPPORTED, DUPLICATE, TOO_MANY) and value is not OMIT:
        text += f": {go_value(value)}"
    if detail:
        text += f": {detail}"
    return text


def render_path(elems: Iterable[str | int]) -> str:
    """spec.listeners[0].port, as kube-openapi names a field (a map key prints as .key)."""
    out = ""
    for elem in elems:
        if isinstance(elem, int):
            out += f"[{elem}]"
        else:
            out += f".{elem}" if out else elem
    return out


# ------------------------------------------------------------------- schema walking


def _props(schema: Schema) -> dict[str, Schema]:
    props: dict[str, Schema] = schema.get("properties") or {}
    return props


def _additional(schema: Schema) -> Schema | None:
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def _preserves(schema: Schema) -> bool:
    return bool(schema.get("x-kubernetes-preserve-unknown-fields"))


def _is_root_meta(path: PathElems) -> bool:
    return path in (("metadata",), ("apiVersion",), ("kind",))


def prune(value: Any, schema: Schema | None, path: PathElems = ()) -> list[str]:
    """Drop undeclared fields and non-nullable nulls without a default, in place.

    Returns the paths of the undeclared fields (strict field validation reports them).
    Like the API server, it looks into a value of the wrong type too: the keys of an
    object where the schema has no properties are all undeclared."""
    unknown: list[str] = []
    node: Schema = schema or {}
    if isinstance(value, dict):
        props, extra = _props(node), _additional(node)
        for key in list(value):
            sub = props.get(key, extra)
            child = (*path, key)
            if not path and key in ("apiVersion", "kind", "metadata"):
                continue  # TypeMeta and ObjectMeta are the API server's own
            if sub is None:
                if not _preserves(node) and node.get("additionalProperties") is not True:
                    unknown.append(render_path(child))
                    del value[key]
                continue
            if value[key] is None and not sub.get("nullable") and "default" not in sub:
                del value[key]
                continue
            unknown += prune(value[key], sub, child)
    elif isinstance(value, list):
        items = node.get("items")
        for i, item in enumerate(value):
            unknown += prune(item, items if isinstance(items, dict) else None, (*path, i))
    return unknown


def apply_defaults(value: Any, schema: Schema) -> None:
    """structuraldefaulting.Default, in place."""
    if isinstance(value, dict):
        props = _props(schema)
        for key, sub in props.items():
            if "default" in sub and (key not in value or
                                     (value[key] is None and not sub.get("nullable"))):
                value[key] = copy.deepcopy(sub["default"])
        extra = _additional(schema)
        for key in value:
            if key in props:
                apply_defaults(value[key], props[key])
            elif extra is not None:
                if value[key] is None and not extra.get("nullable") and "default" in extra:
                    value[key] = copy.deepcopy(extra["default"])
                apply_defaults(value[key], extra)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        items = schema["items"]
        for i, item in enumerate(value):
            if item is None and not items.get("nullable") and "default" in items:
                value[i] = copy.deepcopy(items["default"])
            apply_defaults(value[i], items)


# ------------------------------------------------------------------ OpenAPI -> JSON


_DROP = {"description", "default", "nullable", "format", "example", "externalDocs"}


def to_json_schema(node: Schema) -> Schema:
    """The JSON Schema (draft 7) that validates what an OpenAPI v3 CRD schema does."""
    out: Schema = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "not") or (key == "additionalProperties"
                                         and isinstance(value, dict)):
            out[key] = to_json_schema(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_json_schema(sub) for sub in value]
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if node.get("nullable") and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
    return out


def _re2_pattern(validator: Any, pattern: str, instance: Any,
                 schema: Schema) -> Iterator[ValidationError]:
    """The pattern keyword with RE2, the regular expressions of Go and of CEL."""
    if isinstance(instance, str) and not re2.search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


_Draft7RE2 = jsonschema.validators.extend(jsonschema.Draft7Validator, {"pattern": _re2_pattern})

_STRING_ORDER = {"maxLength": 0, "minLength": 1, "pattern": 2}


def _schema_errors(validator: Any, obj: Any) -> list[_Error]:
    errors: list[_Error] = []
    seen: set[tuple[str, str]] = set()
    string_failed: dict[str, int] = {}
    raw = sorted(validator.iter_errors(obj),
                 key=lambda e: _STRING_ORDER.get(str(e.validator), -1))
    for err in raw:
        path = render_path(err.absolute_path)
        keyword = str(err.validator)
        # kube-openapi checks maxLength, minLength, pattern in turn and stops at the first.
        if keyword in _STRING_ORDER:
            if path in string_failed:
                continue
            string_failed[path] = _STRING_ORDER[keyword]
        for e in _convert(err, keyword, path):
            if (e.path, e.message) not in seen:
                seen.add((e.path, e.message))
                errors.append(e)
    return errors


def _convert(err: ValidationError, keyword: str, path: str) -> list[_Error]:
    value, limit = err.instance, err.validator_value
    where = f"{path} in body"
    if keyword == "type":
        expected = ",".join(limit) if isinstance(limit, list) else str(limit)
        actual = _json_type(value)
        errors = [_Error(TYPE_INVALID, path, _body(TYPE_INVALID, actual,
                                                   f"{where} must be of type {expected}: "
                                                   f"{json.dumps(actual)}"))]
        if expected == "integer" and isinstance(value, float):
            # kube-openapi's numberValidator also checks the value's range, and says so
            # with a plain error that apiextensions reports without a path.
            errors.append(_Error(INVALID, "<nil>", _body(
                INVALID, "", f"Checked value must be of type integer (default format) in "
                f"{path}")))
        return errors
    if keyword == "required":
        return [_Error(REQUIRED, f"{path}.{name}" if path else name, _body(REQUIRED))
                for name in limit if isinstance(value, dict) and name not in value]
    if keyword == "enum":
        allowed = ", ".join(json.dumps(v if isinstance(v, str) else json.dumps(v))
                            for v in limit)
        return [_Error(NOT_SUPPORTED, path,
                       _body(NOT_SUPPORTED, value, f"supported values: {allowed}"))]
    if keyword in ("maximum", "minimum"):
        relation = "less" if keyword == "maximum" else "greater"
        return [_Error(INVALID, path, _body(
            INVALID, value, f"{where} should be {relation} than or equal to {limit}"))]
    if keyword == "maxLength":
        unit = "byte" if limit == 1 else "bytes"
        return [_Error(TOO_LONG, path, _body(TOO_LONG, OMIT,
                                             f"may not be more than {limit} {unit}"))]
    if keyword == "minLength":
        return [_Error(INVALID, path, _body(INVALID, value,
                                            f"{where} should be at least {limit} chars long"))]
    if keyword == "pattern":
        return [_Error(INVALID, path, _body(INVALID, value, f"{where} should match '{limit}'"))]
    if keyword in ("maxItems", "maxProperties"):
        unit = "item" if limit == 1 else "items"
        return [_Error(TOO_MANY, path, _body(TOO_MANY, len(value),
                                             f"must have at most {limit} {unit}"))]
    if keyword == "minItems":
        return [_Error(INVALID, path, _body(INVALID, len(value),
                                            f"{where} should have at least {limit} items"))]
    if keyword == "minProperties":
        return [_Error(INVALID, path, _body(
            INVALID, len(value), f"{where} should have at least {limit} properties"))]
    return [_Error(INVALID, path, _body(INVALID, value, f"{where}: {err.message}"))]


# ---------------------------------------------------------------------- list types


def _list_type_errors(value: Any, schema: Schema, path: tuple[str, ...]) -> list[_Error]:
    """structurallisttype.ValidateListSetsAndMaps: path holds rendered path segments."""
    errors: list[_Error] = []
    if isinstance(value, dict):
        props, extra = _props(schema), _additional(schema)
        for key, sub in value.items():
            if key in props:
                errors += _list_type_errors(sub, props[key], (*path, f".{key}" if path else key))
            elif extra is not None:
                errors += _list_type_errors(sub, extra, (*path, f"[{key}]"))
    elif isinstance(value, list):
        list_type = schema.get("x-kubernetes-list-type")
        not_object = next((i for i, item in enumerate(value)
                           if item is not None and not isinstance(item, dict)), None)
        if list_type == "map" and not_object is not None:
            errors.append(_Error(INVALID, "".join(path) + f"[{not_object}]", _body(
                INVALID, value[not_object], "must be an object for an array of list-type map")))
        elif list_type in ("set", "map"):
            keys = schema.get("x-kubernetes-list-map-keys") or []
            seen: dict[str, int] = {}
            for i, item in enumerate(value):
                if list_type == "map" and isinstance(item, dict):
                    shown: Any = {k: item[k] for k in keys if k in item}
                else:
                    shown = item
                ident = json.dumps(shown, sort_keys=True) + _json_type(shown)
                seen[ident] = seen.get(ident, 0) + 1
                if seen[ident] == 2:
                    errors.append(_Error(DUPLICATE, "".join(path) + f"[{i}]",
                                         _body(DUPLICATE, shown)))
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                errors += _list_type_errors(item, items, (*path, f"[{i}]"))
    return errors


# --------------------------------------------------------------------------- CEL


def _is_cidr(value: Any) -> celpy.celtypes.BoolType:
    """k8s.io/apiserver/pkg/cel/library/cidr.go isCIDR(): netip.ParsePrefix succeeds
    (host bits may be set; no zone, no netmask, no leading zeros) and the address is
    not IPv4-mapped IPv6. roundhouse.model.common.cidr() is that same rule."""
    return celpy.celtypes.BoolType(cidr(str(value)) is not None)


class _Quantity(celpy.celtypes.StringType):
    """A Kubernetes CEL Quantity (k8s.io/apiserver/pkg/cel/library/quantity.go): only
    made by quantity(), whose text roundhouse.model.kubetypes.parse_quantity reads."""


def _is_quantity(value: Any) -> celpy.celtypes.BoolType:
    return celpy.celtypes.BoolType(parse_quantity(str(value)) is not None)


def _quantity(value: Any) -> _Quantity:
    if parse_quantity(str(value)) is None:
        raise ValueError(f"quantities must match the regular expression: {value}")
    return _Quantity(str(value))


def _compare_to(left: Any, right: Any) -> celpy.celtypes.IntType:
    a, b = parse_quantity(str(left)), parse_quantity(str(right))
    assert a is not None and b is not None
    return celpy.celtypes.IntType((a > b) - (a < b))


# The Kubernetes CEL library functions the CRDs use, which cel-python lacks.
_KUBERNETES_FUNCTIONS = {"isCIDR": _is_cidr, "isQuantity": _is_quantity,
                         "quantity": _quantity, "compareTo": _compare_to}


@cache
def _program(expr: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(expr), functions=_KUBERNETES_FUNCTIONS)


def compile_rule(expr: str) -> None:
    """Raise when cel-python cannot parse the expression."""
    _program(expr)


def _evaluate(expr: str, self_value: Any) -> Any:
    try:
        result = _program(expr).evaluate({"self": celpy.adapter.json_to_cel(self_value)})
    except Exception as exc:  # every evaluation failure is reported, as cel-go's
        return exc
    return result


def _normalized_field_path(field_path: str) -> str:
    return field_path.strip().lstrip(".")


def _cel_errors(value: Any, schema: Schema, path: str) -> list[_Error]:
    errors: list[_Error] = []
    if value is None:
        return errors
    node_type = schema.get("type", "")
    for rule in schema.get("x-kubernetes-validations") or []:
        expr = rule["rule"]
        if "oldSelf" in expr:
            continue  # transition rules: not evaluated on create
        result = _evaluate(expr, value)
        shown: Any = OMIT if node_type in ("object", "array") else value
        message = (rule.get("message") or "").strip() or f"failed rule: {expr.strip()}"
        if not isinstance(result, celpy.celtypes.BoolType):
            errors.append(_Error(INVALID, path or "<nil>", _body(
                INVALID, shown, f"{result} evaluating rule: {message}")))
            continue
        if result:
            continue
        if rule.get("messageExpression"):
            custom = _evaluate(rule["messageExpression"], value)
            if isinstance(custom, celpy.celtypes.StringType) and str(custom).strip():
                message = str(custom)
        where = path
        if rule.get("fieldPath"):
            sub = _normalized_field_path(rule["fieldPath"])
            where = f"{path}.{sub}" if path else sub
        reason = rule.get("reason") or INVALID
        if reason == FORBIDDEN:
            errors.append(_Error(FORBIDDEN, where, _body(FORBIDDEN, OMIT, message)))
        elif reason == REQUIRED:
            errors.append(_Error(REQUIRED, where, _body(REQUIRED, OMIT, message)))
        elif reason == DUPLICATE:
            errors.append(_Error(DUPLICATE, where, _body(DUPLICATE, shown)))
        else:
            errors.append(_Error(INVALID, where, _body(INVALID, shown, message)))
    if isinstance(value, dict):
        props, extra = _props(schema), _additional(schema)
        for key, sub in value.items():
            if key in props:
                errors += _cel_errors(sub, props[key], f"{path}.{key}" if path else key)
            elif extra is not None:
                errors += _cel_errors(sub, extra, f"{path}[{key}]")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += _cel_errors(item, schema["items"], f"{path}[{i}]")
    return errors


def iter_rules(schema: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every x-kubernetes-validations rule with the schema path of its node
    (spec.listeners[] for list items, spec.proxy.nodeSelector[*] for map values)."""
    for rule in schema.get("x-kubernetes-validations") or []:
        yield path, rule
    for key, sub in _props(schema).items():
        yield from iter_rules(sub, f"{path}.{key}" if path else key)
    extra = _additional(schema)
    if extra is not None:
        yield from iter_rules(extra, f"{path}[*]")
    if isinstance(schema.get("items"), dict):
        yield from iter_rules(schema["items"], f"{path}[]")


# --------------------------------------------------------------------- validator


class SchemaValidator:
    """The API server's create-time handling of one CRD version."""

    def __init__(self, crd: dict[str, Any], version: str | None = None) -> None:
        self.crd = crd
        spec = crd["spec"]
        versions = spec["versions"]
        chosen = next((v for v in versions if v["name"] == version), None) if version \
            else next((v for v in versions if v.get("storage")), versions[0])
        if chosen is None:
            raise KeyError(f"{crd['metadata']['name']} has no version {version}")
        self.group: str = spec["group"]
        self.version: str = chosen["name"]
        self.kind: str = spec["names"]["kind"]
        self.schema: Schema = chosen["schema"]["openAPIV3Schema"]
        self._validator = _Draft7RE2(to_json_schema(self.schema))

    @classmethod
    def from_file(cls, path: str | Path, version: str | None = None) -> SchemaValidator:
        return cls(load_crd(path), version)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    def default(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The object as stored: a pruned, defaulted copy."""
        out: dict[str, Any] = as_json(obj)
        prune(out, self.schema)
        apply_defaults(out, self.schema)
        return out

    def validate(self, obj: dict[str, Any], *, strict: bool = True,
                 defaults: bool = True) -> list[Violation]:
        """Every error the API server reports for creating obj; [] when it accepts it.

        strict: report undeclared fields, as kubectl's default strict field validation
        does (the API server otherwise drops them silently).
        defaults: apply the schema's defaults first, as for a request; False checks a
        value as written, as the API server checks a CRD's own default values."""
        errors = self._errors(obj, strict=strict, defaults=defaults)
        return [Violation(e.path, e.message) for e in errors]

    def _errors(self, obj: dict[str, Any], *, strict: bool, defaults: bool) -> list[_Error]:
        if obj.get("apiVersion") != self.api_version or obj.get("kind") != self.kind:
            return [_Error(INVALID, "apiVersion", _body(
                INVALID, f"{obj.get('apiVersion')}, Kind={obj.get('kind')}",
                f"must be {self.api_version}, Kind={self.kind}"))]
        work = as_json(obj)
        unknown = prune(work, self.schema)
        if strict and unknown:
            return [_Error(UNKNOWN_FIELD, p, f'unknown field "{p}"') for p in unknown]
        if defaults:
            apply_defaults(work, self.schema)
        errors = _metadata_errors(work.get("metadata"))
        errors += _schema_errors(self._validator, work)
        errors += _list_type_errors(work, self.schema, ())
        if any(e.type in BLOCKING for e in errors):
            errors.append(_Error(INVALID, "<nil>", _body(INVALID, None, NOT_CHECKED)))
        else:
            errors += _cel_errors(work, self.schema, "")
        return errors


def _metadata_errors(meta: Any) -> list[_Error]:
    """ValidateObjectMetaAccessor with NameIsDNSSubdomain, for the name only."""
    if not isinstance(meta, dict) or not (meta.get("name") or meta.get("generateName")):
        return [_Error(REQUIRED, "metadata.name",
                       _body(REQUIRED, OMIT, "name or generateName is required"))]
    name = meta.get("name")
    if not isinstance(name, str):
        return []
    errors = []
    if len(name) > 253:
        errors.append(_Error(INVALID, "metadata.name",
                             _body(INVALID, name, "must be no more than 253 characters")))
    if not re2.search(DNS1123_SUBDOMAIN, name):
        errors.append(_Error(INVALID, "metadata.name",
                             _body(INVALID, name, DNS1123_SUBDOMAIN_MESSAGE)))
    return errors


def as_json(obj: Any) -> Any:
    """A copy as the API server receives it: YAML keys such as 80 or on (true) become the
    strings JSON has ("80", "true"), as kubectl converts them."""
    return json.loads(json.dumps(obj))


def load_crd(path: str | Path) -> dict[str, Any]:
    """The CustomResourceDefinition in a YAML file."""
    with open(path) as f:
        for doc in yaml.safe_load_all(f):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                return doc
    raise ValueError(f"{path} holds no CustomResourceDefinition")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out
