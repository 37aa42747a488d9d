"""Kubernetes types the spec passes through to the proxy Pod (node selectors, tolerations,
compute resources) and the resource's own labels, validated as the API server validates
a Pod (k8s.io/apimachinery/pkg/util/validation, pkg/apis/core/validation), in its words.

Without this, a spec the CRD accepted could render a Deployment the API server refuses.
The CRD states the same rules in its schema (patterns and CEL); both take Kubernetes'
expressions, enums and messages from roundhouse.model.rules.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Any

from roundhouse.model.reader import Reader, shown, type_error
from roundhouse.model.rules import (
    EMPTY_KEY_MESSAGE,
    EXISTS_VALUE_MESSAGE,
    LABEL_VALUE_LENGTH,
    NAME_LENGTH,
    RESOURCE_NAMES,
    SECONDS_MESSAGE,
    SUBDOMAIN_LENGTH,
    TAINT_EFFECT,
    TOLERATION_OPERATOR,
    request_at_most_limit_message,
)
from roundhouse.model.rules import K8S_DNS1123_SUBDOMAIN as DNS1123_SUBDOMAIN
from roundhouse.model.rules import K8S_LABEL_NAME as LABEL_NAME
from roundhouse.model.rules import K8S_LABEL_VALUE as LABEL_VALUE

_NAME_RE = re.compile(LABEL_NAME)
_VALUE_RE = re.compile(LABEL_VALUE)
_SUBDOMAIN_RE = re.compile(DNS1123_SUBDOMAIN)

NAME_MESSAGE = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
    "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex "
    f"used for validation is '{LABEL_NAME}')")
VALUE_MESSAGE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    f"'my_value',  or '12345', regex used for validation is '{LABEL_VALUE}')")
SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
    f"regex used for validation is '{DNS1123_SUBDOMAIN}')")


def qualified_name_errors(key: str) -> list[str]:
    """validation.IsQualifiedName: a label key, a taint key, an annotation key."""
    parts = key.split("/")
    if len(parts) > 2:
        return ["a qualified name must consist of alphanumeric characters, '-', '_' or '.', "
                "and must start and end with an alphanumeric character (e.g. 'MyName',  or "
                "'my.name',  or '123-abc', regex used for validation is "
                f"'{LABEL_NAME}') with an optional DNS subdomain prefix and '/' (e.g. "
                "'example.com/MyName')"]
    errors = []
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            errors.append("prefix part must be non-empty")
        else:
            if len(prefix) > SUBDOMAIN_LENGTH:
                errors.append(f"prefix part must be no more than {SUBDOMAIN_LENGTH} characters")
            if not _SUBDOMAIN_RE.fullmatch(prefix):
                errors.append("prefix part " + SUBDOMAIN_MESSAGE)
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > NAME_LENGTH:
        errors.append(f"name part must be no more than {NAME_LENGTH} characters")
    if name and not _NAME_RE.fullmatch(name):
        errors.append(NAME_MESSAGE)
    return errors


def label_value_errors(value: str) -> list[str]:
    """validation.IsValidLabelValue."""
    errors = []
    if len(value) > LABEL_VALUE_LENGTH:
        errors.append(f"must be no more than {LABEL_VALUE_LENGTH} characters")
    if not _VALUE_RE.fullmatch(value):
        errors.append(VALUE_MESSAGE)
    return errors


def check_labels(r: Reader, key: str, max_items: int | None = None) -> dict[str, str]:
    """A label map (metadata.labels, a nodeSelector): each key and value as Kubernetes
    has them. Errors name the map, then the key, as the CRD's rules do."""
    labels = r.string_map(key)
    if max_items is not None and len(labels) > max_items:
        r.error(key, f"Too many: {len(labels)}: must have at most {max_items} items")
    for name, value in labels.items():
        for problem in qualified_name_errors(name):
            r.error(key, f"Invalid value: {shown(name)}: {problem}")
        for problem in label_value_errors(value):
            r.error(f"{key}.{name}", f"Invalid value: {shown(value)}: {problem}")
    return labels


# ---------------------------------------------------------------- tolerations



def parse_toleration(r: Reader) -> dict[str, Any]:
    """core/validation.ValidateTolerations, for one toleration."""
    key = r.string("key")
    operator = r.enum("operator", TOLERATION_OPERATOR)
    value = r.string("value")
    effect = r.enum("effect", TAINT_EFFECT)
    seconds = r.raw("tolerationSeconds")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int)):
        r.error("tolerationSeconds", type_error(seconds, "integer"))
        seconds = None
    if key:
        for problem in qualified_name_errors(key):
            r.error("key", f"Invalid value: {shown(key)}: {problem}")
    elif operator != "Exists":
        r.error("operator", f"Invalid value: {shown(operator)}: {EMPTY_KEY_MESSAGE}")
    if seconds is not None and effect != "NoExecute":
        r.error("effect", f"Invalid value: {shown(effect)}: {SECONDS_MESSAGE}")
    if operator == "Exists" and value:
        r.error("operator", f"Invalid value: {shown(value)}: {EXISTS_VALUE_MESSAGE}")
    elif operator != "Exists":
        for problem in label_value_errors(value):
            r.error("value", f"Invalid value: {shown(value)}: {problem}")
    out: dict[str, Any] = {k: v for k, v in (("key", key), ("operator", operator),
                                               ("value", value), ("effect", effect)) if v}
    if seconds is not None:
        out["tolerationSeconds"] = seconds
    return out


# ---------------------------------------------------------------- resources

_QUANTITY_RE = re.compile(
    r"([+-]?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|"
    r"[eE][+-]?[0-9]+)?")
_SUFFIX = {"n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000),
           "": Fraction(1), "k": Fraction(10**3), "M": Fraction(10**6),
           "G": Fraction(10**9), "T": Fraction(10**12), "P": Fraction(10**15),
           "E": Fraction(10**18), "Ki": Fraction(2**10), "Mi": Fraction(2**20),
           "Gi": Fraction(2**30), "Ti": Fraction(2**40), "Pi": Fraction(2**50),
           "Ei": Fraction(2**60)}
# resource.ParseQuantity caps a quantity at the largest int64 and rounds any non-zero
# amount up to a whole nano (1n), so an exponent far out either way needs no arithmetic.
MAX_QUANTITY = Fraction(2**63 - 1)
NANO = Fraction(1, 10**9)


def _int32(value: int) -> int:
    """Go's int32(x) conversion: ParseQuantity keeps the exponent as an int32."""
    return (value + 2**31) % 2**32 - 2**31


def parse_quantity(value: Any) -> Fraction | None:
    """resource.ParseQuantity, exactly: "100m" -> 1/10, "1Ki" -> 1024, a non-zero amount
    rounded up to 1n, anything above 2^63-1 capped there. None when it is not a quantity."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    match = _QUANTITY_RE.fullmatch(str(value))
    if not match:
        return None
    sign, number, suffix = match.group(1), match.group(2), match.group(3) or ""
    mantissa = Fraction(number)
    if mantissa == 0:
        return Fraction(0)  # zero with any suffix or exponent, however large
    if suffix[:1] in ("e", "E") and suffix not in _SUFFIX:  # "E" and "Ei" are suffixes
        exponent = int(suffix[1:])
        if abs(exponent) >= 2**63:
            return None  # strconv.ParseInt refuses it
        exponent = _int32(exponent)
        digits = len(number)  # 10^-digits <= mantissa < 10^digits
        if exponent - digits > 19:
            amount = MAX_QUANTITY
        elif exponent + digits < -10:
            amount = NANO
        else:
            amount = mantissa * Fraction(10) ** exponent
    else:
        amount = mantissa * _SUFFIX[suffix]
    amount = min(MAX_QUANTITY, -((-amount) // NANO) * NANO)  # round up to 1n, then cap
    return -amount if sign == "-" else amount


def parse_resources(r: Reader) -> dict[str, Any]:
    """core/validation.ValidateResourceRequirements for the HAProxy container: known
    resource names, non-negative quantities, requests at most the limits."""
    out: dict[str, Any] = {}
    amounts: dict[str, dict[str, Fraction]] = {}
    for part in ("limits", "requests"):
        if not r.has(part):
            continue
        block = r.child(part)
        values: dict[str, Any] = {}
        amounts[part] = {}
        for name in RESOURCE_NAMES:
            raw = block.raw(name)
            if raw is None:
                continue
            amount = parse_quantity(raw)
            if isinstance(raw, bool) or not isinstance(raw, int | str):
                block.error(name, type_error(raw, "integer,string"))
            elif amount is None:
                block.error(name, f"Invalid value: {shown(raw)}: quantities must match the "
                            "regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")
            elif amount < 0:
                block.error(name, f"Invalid value: {shown(raw)}: must be greater than or "
                            "equal to 0")
            else:
                values[name] = raw
                amounts[part][name] = amount
        out[part] = values
    for name, request in amounts.get("requests", {}).items():
        limit = amounts.get("limits", {}).get(name)
        if limit is not None and request > limit:
            r.error(f"requests.{name}", f"Invalid value: {shown(out['requests'][name])}: "
                    + request_at_most_limit_message(name))
    return {part: values for part, values in out.items() if values}
