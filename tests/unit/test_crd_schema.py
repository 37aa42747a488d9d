"""The CRDs agree with the offline model, and reject what the API server must reject.

The CRDs are generated (roundhouse.model.crd, through crds/generate.py) from
roundhouse.model.rules, which the offline parser reads too: the tests below check that
every copy of the CRDs is the generated one, and that the generated schema holds no
pattern, enum, bound or CEL rule the rules module does not state.

Each invalid case in tests/cases/invalid-loadbalancers.yaml and
invalid-reverseproxies.yaml is checked twice: against the CRD as kube-apiserver applies
it (tests/unit/schema_validator.py: defaulting, OpenAPI validation, list types, CEL rules)
and against roundhouse.model.parse_loadbalancer / parse_reverseproxy, so that `kubectl
apply` and `roundhouse render` refuse the same objects for the same field.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roundhouse.model import (
    FieldError,
    LoadBalancer,
    SpecError,
    crd,
    parse_loadbalancer,
    parse_reverseproxy,
    rules,
)
from roundhouse.model.pod import RESERVED_PORTS, reserved_port_message
from roundhouse.model.reader import shown
from roundhouse.model.values import parse_duration_ms
from tests.unit.schema_validator import (
    SchemaValidator,
    Violation,
    apply_defaults,
    compile_rule,
    iter_rules,
    load_crd,
    merge_patch,
)
from tests.unit.strategies import durations, valid_loadbalancers, valid_reverseproxies

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
CASES = ROOT / "tests" / "cases"
LB_CRD = CRDS / "loadbalancers.yaml"
RP_CRD = CRDS / "reverseproxies.yaml"
CRD_FILES = [LB_CRD, RP_CRD]

Obj = dict[str, Any]


LB = SchemaValidator.from_file(LB_CRD)
RP = SchemaValidator.from_file(RP_CRD)
VALIDATORS = {"LoadBalancer": LB, "ReverseProxy": RP}

LB_CASES: Obj = yaml.safe_load((CASES / "invalid-loadbalancers.yaml").read_text())
RP_CASES: Obj = yaml.safe_load((CASES / "invalid-reverseproxies.yaml").read_text())
LB_BASE: Obj = LB_CASES["base"]


def _case_params(cases: list[Obj]) -> list[Any]:
    return [pytest.param(c, id=c["name"]) for c in cases]


def _names_field(path: str, field: str) -> bool:
    """The error is for field itself or for a field inside it."""
    return path == field or path.startswith((field + ".", field + "["))


def _parse_errors(obj: Obj) -> list[FieldError]:
    try:
        if obj.get("kind") == "ReverseProxy":
            parse_reverseproxy(obj)
        else:
            parse_loadbalancer(obj)
    except SpecError as exc:
        return exc.errors
    return []


def _explain(errors: list[Violation] | list[FieldError]) -> str:
    return "\n".join(f"  {e}" for e in errors) or "  (accepted)"


# ------------------------------------------------------------------ the YAML files


@pytest.mark.parametrize("name", sorted(crd.FILES))
def test_crd_file_is_what_the_generator_writes(name: str) -> None:
    expected = crd.render(crd.FILES[name]())
    assert (CRDS / name).read_text() == expected, \
        f"crds/{name} differs from roundhouse.model.crd: run python crds/generate.py"


def test_generate_py_check_passes_and_catches_a_hand_edit(tmp_path: Path) -> None:
    """crds/generate.py --check, the entry point, on the real files and on an edited copy."""
    def check(directory: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(directory / "generate.py"), "--check"],
                              capture_output=True, text=True, check=False, timeout=120)

    assert check(CRDS).returncode == 0, check(CRDS).stderr
    copy = tmp_path / "crds"
    copy.mkdir()
    (copy / "generate.py").write_text((CRDS / "generate.py").read_text().replace(
        'HERE.parent / "operator"', f'Path({str(ROOT)!r}) / "operator"'))
    for name in crd.FILES:
        (copy / name).write_text((CRDS / name).read_text())
    assert check(copy).returncode == 0
    edited = (copy / "loadbalancers.yaml").read_text().replace("maxItems: 16", "maxItems: 17", 1)
    (copy / "loadbalancers.yaml").write_text(edited)
    result = check(copy)
    assert result.returncode == 1
    assert "crds/loadbalancers.yaml is out of date" in result.stderr


# ------------------------------------------------------------------ one source: rules.py


def _stated() -> dict[str, list[Any]]:
    """What roundhouse.model.rules states, by kind of value."""
    stated: dict[str, list[Any]] = {"strings": [], "enums": [], "numbers": [],
                                    "defaults": [], "rules": []}
    for value in vars(rules).values():
        if isinstance(value, bool):
            stated["defaults"].append(value)
        elif isinstance(value, str):
            stated["strings"].append(value)
            stated["defaults"].append(value)
        elif isinstance(value, int):
            stated["numbers"].append(value)
        elif isinstance(value, rules.Enum):
            stated["enums"].append(list(value.values))
            stated["defaults"].append(value.default)
        elif isinstance(value, rules.Int):
            stated["numbers"] += [value.minimum, value.maximum]
            stated["defaults"].append(value.default)
        elif isinstance(value, rules.Items):
            stated["numbers"] += [value.minimum, value.maximum]
        elif isinstance(value, rules.Duration):
            stated["defaults"].append(value.default)
        elif isinstance(value, tuple) and value and all(isinstance(v, int) for v in value):
            stated["enums"].append(list(value))
    stated["rules"] = [r.schema() for r in rules.all_rules()]
    return stated


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_every_rule_of_the_crd_is_stated_in_the_rules_module(path: Path) -> None:
    """A pattern, enum, bound, default or CEL rule written only into the CRD (or only
    into the generator) fails here: each must be a value roundhouse.model.rules exports,
    the module the offline parser reads too."""
    stated = _stated()
    problems = []
    for where, node in _nodes(_schema(path)):
        if "pattern" in node and node["pattern"] not in stated["strings"]:
            problems.append(f"{where}: pattern {node['pattern']!r}")
        if "enum" in node and node["enum"] not in stated["enums"]:
            problems.append(f"{where}: enum {node['enum']!r}")
        for key in ("minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems",
                    "maxProperties"):
            if key in node and node[key] not in stated["numbers"]:
                problems.append(f"{where}: {key} {node[key]!r}")
        default = node.get("default")
        if default is not None and not isinstance(default, dict) \
                and default not in stated["defaults"]:
            problems.append(f"{where}: default {default!r}")
        for rule in node.get("x-kubernetes-validations", []):
            if rule not in stated["rules"]:
                problems.append(f"{where}: CEL rule {rule!r}")
    assert not problems, "not from roundhouse.model.rules:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_descriptions_state_the_bounds_and_defaults_of_their_node(path: Path) -> None:
    """A description's range ("1-100") and "Defaults to X." are text: they must say
    what the node's minimum, maximum and default are, so a bound changed in rules.py
    cannot leave a stale description behind."""
    problems = []
    for where, node in _nodes(_schema(path)):
        text = node.get("description", "")
        if node.get("type") == "integer" and "minimum" in node and "maximum" in node:
            found = re.search(r"\b(\d+)-(\d+)\b", text)
            if not found or (int(found[1]), int(found[2])) != (node["minimum"],
                                                               node["maximum"]):
                problems.append(f"{where}: {node['minimum']}-{node['maximum']}: {text}")
        default = node.get("default")
        if default is not None and not isinstance(default, dict):
            said = re.search(r"Defaults to (\S+?)\.?(?: |$)", text)
            want = str(default).lower() if isinstance(default, bool) else str(default)
            if not said or said[1] != want:
                problems.append(f"{where}: default {want}: {text}")
    assert not problems, "\n".join(problems)


def test_the_check_above_catches_a_rule_written_only_into_the_crd() -> None:
    """The walk above, on a schema with one hand-written pattern and one CEL message."""
    schema = _schema(LB_CRD)
    port = schema["properties"]["spec"]["properties"]["listeners"]["items"]["properties"]
    assert port["name"]["pattern"] in _stated()["strings"]
    port["name"]["pattern"] = "^[a-z]+$"
    assert port["name"]["pattern"] not in _stated()["strings"]
    rule = {**port["port"].get("x-kubernetes-validations", [{}])[0], "message": "other words"}
    assert rule not in _stated()["rules"]


def _literals(tree: ast.AST) -> list[str]:
    """Bounds, patterns, enums and rules written as literals in the generator's code."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            found.append(f"line {node.lineno}: number {node.value!r}")
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if name in ("Rule", "Int", "Enum", "Items", "Duration"):
                found.append(f"line {node.lineno}: {name}(...)")
            for kw in node.keywords:
                literal = isinstance(kw.value, ast.List | ast.Tuple) or (
                    isinstance(kw.value, ast.Constant) and kw.value.value is not None)
                if kw.arg in ("pattern", "enum", "default") and literal:
                    found.append(f"line {node.lineno}: {kw.arg}= literal")
    return found


def test_the_generator_states_no_rule_of_its_own() -> None:
    """roundhouse.model.crd gives the schema its shape and descriptions only: no number,
    no literal pattern, enum or default, no Rule(...) of its own (the yaml width aside)."""
    source = Path(crd.__file__).read_text()
    found = [f for f in _literals(ast.parse(source)) if f != _YAML_WIDTH]
    assert not found, "\n".join(found)
    assert _literals(ast.parse('string("x", pattern="^a$", enum=["a"])\nRule("x", "y")\n'
                               "integer('x', minimum=3)\n"))


_YAML_WIDTH = next(f"line {i}: number 100" for i, line in
                   enumerate(Path(crd.__file__).read_text().splitlines(), 1)
                   if "width=100" in line)


@pytest.mark.parametrize("n", range(0, 200))
def test_le_regex_matches_exactly_0_to_n(n: int) -> None:
    pattern = re.compile(rf"^{rules.le_regex(n)}$")
    for value in range(0, n * 10 + 20):
        assert bool(pattern.match(str(value))) == (value <= n), (n, value)


@pytest.mark.parametrize("n", [24, 720, 17520])
def test_le_regex_for_the_hour_limits(n: int) -> None:
    pattern = re.compile(rf"^{rules.le_regex(n)}$")
    for value in range(0, n * 2 + 10):
        assert bool(pattern.match(str(value))) == (value <= n), (n, value)


# ------------------------------------------------------------------ the CRD objects


@pytest.mark.parametrize("path,kind,plural,short_names", [
    (LB_CRD, "LoadBalancer", "loadbalancers", ["lb", "rhlb"]),
    (RP_CRD, "ReverseProxy", "reverseproxies", ["rp"]),
])
def test_crd_names_scope_and_version(path: Path, kind: str, plural: str,
                                     short_names: list[str]) -> None:
    crd = load_crd(path)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == f"{plural}.roundhouse.dev"
    spec = crd["spec"]
    assert spec["group"] == "roundhouse.dev"
    assert spec["scope"] == "Namespaced"
    names = spec["names"]
    assert (names["kind"], names["plural"]) == (kind, plural)
    assert names["shortNames"] == short_names
    assert names["categories"] == ["roundhouse"]
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_printer_columns(path: Path) -> None:
    [version] = load_crd(path)["spec"]["versions"]
    columns = [(c["name"].upper(), c["type"], c["jsonPath"])
               for c in version["additionalPrinterColumns"]]
    assert columns == [
        ("READY", "string", '.status.conditions[?(@.type=="Ready")].status'),
        ("BACKENDS", "string", ".status.backendSummary"),
        ("ADDRESS", "string", ".status.address"),
        ("AGE", "date", ".metadata.creationTimestamp"),
    ]


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_status_schema(path: Path) -> None:
    [version] = load_crd(path)["spec"]["versions"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert set(status) == {"observedGeneration", "conditions", "backends", "backendSummary",
                           "address"}
    condition = status["conditions"]["items"]["properties"]
    assert set(condition) == {"type", "status", "reason", "message", "observedGeneration",
                              "lastTransitionTime"}
    assert set(status["backends"]["properties"]) == {"ready", "total"}


def _nodes(schema: Obj, path: str = "") -> Iterator[tuple[str, Obj]]:
    yield path, schema
    for key, sub in (schema.get("properties") or {}).items():
        yield from _nodes(sub, f"{path}.{key}" if path else key)
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}[*]")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")


def _schema(path: Path) -> Obj:
    schema: Obj = load_crd(path)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_schema_is_structural_described_and_bounded(path: Path) -> None:
    problems = []
    for where, node in _nodes(_schema(path)):
        if where == "metadata" or where.startswith("metadata."):
            continue  # the root may only restrict metadata.name, without a description
        typed = node.get("type") or node.get("x-kubernetes-int-or-string") \
            or node.get("x-kubernetes-preserve-unknown-fields")
        if not typed:
            problems.append(f"{where}: no type")
        if not node.get("description"):
            problems.append(f"{where}: no description")
        for banned in ("anyOf", "oneOf", "allOf", "not", "$ref"):
            if banned in node:
                problems.append(f"{where}: {banned}")
        kind = node.get("type")
        if kind == "string" and "enum" not in node and "maxLength" not in node:
            problems.append(f"{where}: string without maxLength")
        if node.get("x-kubernetes-int-or-string") and "maxLength" not in node:
            problems.append(f"{where}: int-or-string without maxLength")
        if kind == "array" and "maxItems" not in node:
            problems.append(f"{where}: array without maxItems")
        if kind == "object" and "additionalProperties" in node and "maxProperties" not in node:
            problems.append(f"{where}: map without maxProperties")
        if kind == "object" and "properties" not in node and "additionalProperties" not in node \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            problems.append(f"{where}: object without properties")
        if node.get("x-kubernetes-list-type") == "map":
            items = node["items"]
            for key in node["x-kubernetes-list-map-keys"]:
                key_schema = items["properties"][key]
                if key not in items.get("required", []) and "default" not in key_schema:
                    problems.append(f"{where}: list-map key {key} neither required nor defaulted")
        for req in node.get("required", []):
            if req not in (node.get("properties") or {}):
                problems.append(f"{where}: required {req} is not a property")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_cel_rules_compile_and_name_their_field(path: Path) -> None:
    schema = _schema(path)
    rules = list(iter_rules(schema))
    assert rules
    for where, rule in rules:
        compile_rule(rule["rule"])
        assert rule.get("message"), f"{where}: {rule['rule']} has no message"
        assert rule.get("reason") in ("FieldValueInvalid", "FieldValueForbidden"), where
        if "fieldPath" in rule:
            node = _node_at(schema, where)
            for key in rule["fieldPath"].lstrip(".").split("."):
                assert key in node.get("properties", {}), f"{where}: fieldPath {rule['fieldPath']}"
                node = node["properties"][key]


def _node_at(schema: Obj, where: str) -> Obj:
    node = schema
    for part in filter(None, re.split(r"\.|(?=\[)", where)):
        if part in ("[]", "[*]"):
            node = node["items"] if part == "[]" else node["additionalProperties"]
        else:
            node = node["properties"][part]
    return node


@pytest.mark.parametrize("path", CRD_FILES, ids=lambda p: p.name)
def test_defaults_are_valid_where_they_are_declared(path: Path) -> None:
    """The API server refuses a CRD whose default fails the node's own rules (it checks
    the default as written: nested defaults are not applied first)."""
    for where, node in _nodes(_schema(path)):
        if "default" not in node:
            continue
        fake_crd = {"metadata": {"name": "x"}, "spec": {
            "group": "g", "names": {"kind": "K"},
            "versions": [{"name": "v", "storage": True,
                          "schema": {"openAPIV3Schema": {
                              "type": "object", "properties": {"value": node}}}}]}}
        errors = SchemaValidator(fake_crd).validate(
            {"apiVersion": "g/v", "kind": "K", "metadata": {"name": "x"},
             "value": node["default"]}, defaults=False)
        assert errors == [], f"{where}: default {node['default']!r}: {errors}"


# ------------------------------------------------------------------ the cases files


def test_case_files_are_well_formed() -> None:
    for doc, minimum in ((LB_CASES, 30), (RP_CASES, 25)):
        names = [c["name"] for c in doc["cases"]]
        assert len(names) >= minimum
        assert len(set(names)) == len(names), "duplicate case names"
        for case in doc["cases"]:
            assert set(case) == {"name", "patch", "field", "message"}, case["name"]


def test_every_loadbalancer_cel_rule_has_a_case() -> None:
    messages = [c["message"] for c in LB_CASES["cases"]]
    for where, rule in iter_rules(LB.schema):
        assert any(m in rule["message"] for m in messages), \
            f"no invalid case exercises {where}: {rule['message']}"


def test_base_loadbalancer_is_valid_for_schema_and_parser() -> None:
    assert LB.validate(LB_BASE) == []
    lb = parse_loadbalancer(LB_BASE)
    assert lb.name == "web"
    assert parse_loadbalancer(LB.default(LB_BASE)) == lb


def test_base_reverseproxy_is_valid() -> None:
    assert RP.validate(RP_CASES["base"]) == []
    rp = parse_reverseproxy(RP_CASES["base"])
    assert rp.name == "site"
    assert parse_reverseproxy(RP.default(RP_CASES["base"])) == rp


def test_every_reverseproxy_cel_rule_has_a_case() -> None:
    messages = [c["message"] for c in RP_CASES["cases"]]
    for where, rule in iter_rules(RP.schema):
        assert any(m in rule["message"] for m in messages), \
            f"no invalid case exercises {where}: {rule['message']}"


@pytest.mark.parametrize("case", _case_params(LB_CASES["cases"]))
def test_invalid_loadbalancer_is_rejected_by_schema(case: Obj) -> None:
    obj = merge_patch(LB_BASE, case["patch"])
    errors = LB.validate(obj)
    assert any(_names_field(e.path, case["field"]) and case["message"] in e.message
               for e in errors), \
        f"want {case['field']}: ...{case['message']}...; the API server would say:\n" \
        + _explain(errors)


@pytest.mark.parametrize("case", _case_params(LB_CASES["cases"]))
def test_invalid_loadbalancer_is_rejected_by_parser(case: Obj) -> None:
    obj = merge_patch(LB_BASE, case["patch"])
    errors = _parse_errors(obj)
    assert any(e.path.startswith(case["field"]) for e in errors), \
        f"want an error under {case['field']}; parse_loadbalancer says:\n" + _explain(errors)


@pytest.mark.parametrize("case", _case_params(RP_CASES["cases"]))
def test_invalid_reverseproxy_is_rejected_by_schema(case: Obj) -> None:
    obj = merge_patch(RP_CASES["base"], case["patch"])
    errors = RP.validate(obj)
    assert any(_names_field(e.path, case["field"]) and case["message"] in e.message
               for e in errors), \
        f"want {case['field']}: ...{case['message']}...; the API server would say:\n" \
        + _explain(errors)


@pytest.mark.parametrize("case", _case_params(RP_CASES["cases"]))
def test_invalid_reverseproxy_is_rejected_by_parser(case: Obj) -> None:
    obj = merge_patch(RP_CASES["base"], case["patch"])
    errors = _parse_errors(obj)
    assert any(_names_field(e.path, case["field"]) for e in errors), \
        f"want an error at {case['field']}; parse_reverseproxy says:\n" + _explain(errors)


# ------------------------------------------------------------------ every bound: CRD == parser


def _set_at(obj: Obj, schema_path: str, value: Any) -> tuple[Obj, str]:
    """A copy of obj with value at schema_path (spec.listeners[].tls.dnsNames[]: the
    first item of each list, made when missing), and the concrete path it went to."""
    out = merge_patch(obj, {})
    node: Any = out
    parts = schema_path.split(".")
    concrete = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        key, is_list = part.removesuffix("[]"), part.endswith("[]")
        if not is_list:
            if last:
                node[key] = value
            else:
                if not isinstance(node.get(key), dict):
                    node[key] = {}
                node = node[key]
            concrete.append(key)
            continue
        if not isinstance(node.get(key), list) or not node[key]:
            node[key] = [value if last else {}]
        elif last:
            node[key][0] = value
        concrete.append(f"{key}[0]")
        node = node[key][0]
    return out, ".".join(concrete)


def _bad_values(node: Obj) -> Iterator[tuple[str, Any]]:
    """Values just outside a node's bounds, with the API server's words for each."""
    if node.get("type") == "string" or node.get("x-kubernetes-int-or-string"):
        if "maxLength" in node:
            n = node["maxLength"]
            for text in ("a" * (n + 1), "/" + "a" * n, ".".join(["a" * 63] * (n // 64 + 1))):
                yield "may not be more than", text[:max(n + 1, len(text))]
        if "pattern" in node:
            for text in (" ", "A B", "\n", "/#", "a\n", "-"):
                yield "should match", text
        if "enum" in node:
            yield "Unsupported value", "Unsupported"
    if node.get("type") == "integer" or node.get("x-kubernetes-int-or-string"):
        if "maximum" in node:
            yield "should be less than or equal to", node["maximum"] + 1
        if "minimum" in node:
            yield "should be greater than or equal to", node["minimum"] - 1


@pytest.mark.parametrize("kind", ["LoadBalancer", "ReverseProxy"])
def test_every_bound_of_the_crd_is_refused_by_the_parser(kind: str) -> None:
    """Each maxLength, pattern, enum, minimum and maximum of the CRD, one value past it:
    where the API server refuses the field, the offline parser refuses it too."""
    validator = VALIDATORS[kind]
    base = LB_BASE if kind == "LoadBalancer" else RP_CASES["base"]
    checked, missed = [], []
    for where, node in _nodes(validator.schema):
        if not where.startswith("spec.") or "[*]" in where:
            continue
        done: set[str] = set()
        for words, value in _bad_values(node):
            obj, path = _set_at(base, where, value)
            if words in done or not any(e.path == path and words in e.message
                                        for e in validator.validate(obj)):
                continue  # one value per bound; a pattern this value happens to match
            done.add(words)
            checked.append(f"{path} {words}")
            if not any(_names_field(e.path, path) for e in _parse_errors(obj)):
                missed.append(f"{path}: {words} {shown(value)}")
    assert not missed, "the API server refuses, the parser accepts:\n" + "\n".join(missed)
    assert len(checked) > 60, checked


# ------------------------------------------------------------------ the validator itself


def test_validator_reports_like_the_api_server() -> None:
    """Exact lines, as kube-apiserver 1.36.3 printed them for these objects."""
    def errors(patch: Obj) -> list[str]:
        return sorted(str(e) for e in LB.validate(merge_patch(LB_BASE, patch)))

    listeners = [{"name": "http", "port": 0}, {"name": "https", "port": 443,
                                               "protocol": "HTTPS"}]
    assert errors({"spec": {"listeners": listeners}}) == [
        "spec.listeners[0].port: Invalid value: 0: spec.listeners[0].port in body should be "
        "greater than or equal to 1"]
    assert errors({"spec": {"algorithm": "x"}}) == [
        "<nil>: Invalid value: null: some validation rules were not checked because the "
        "object was invalid; correct the existing errors to complete validation",
        'spec.algorithm: Unsupported value: "x": supported values: "roundrobin", '
        '"leastconn", "source", "random", "first"']
    assert errors({"spec": {"listeners": []}}) == [
        "spec.listeners: Invalid value: 0: spec.listeners in body should have at least 1 "
        "items",
        "spec.sessionPersistence.type: Invalid value: Cookie persistence needs an HTTP or "
        "HTTPS listener; use SourceIP for TCP"]
    assert errors({"spec": {"timeouts": {"client": "0s"}}}) == [
        'spec.timeouts.client: Invalid value: "0s": client must be more than 0 and at most '
        "24h"]
    assert errors({"spec": {"backends": [{"service": "web", "port": True}]}}) == [
        "<nil>: Invalid value: null: some validation rules were not checked because the "
        "object was invalid; correct the existing errors to complete validation",
        'spec.backends[0].port: Invalid value: "boolean": spec.backends[0].port in body must '
        'be of type integer,string: "boolean"']
    assert errors({"spec": {"healthCheck": {"type": None}}}) == [
        "spec.healthCheck.expectStatus: Forbidden: expectStatus is only allowed when type is "
        "HTTP",
        "spec.healthCheck.host: Forbidden: host is only allowed when type is HTTP",
        "spec.healthCheck.path: Forbidden: path is only allowed when type is HTTP"]
    assert errors({"spec": {"proxy": {"tolerations": {"key": "x"}}}}) == [
        'spec.proxy.tolerations.key: unknown field "spec.proxy.tolerations.key"']


def test_validator_defaults_like_the_api_server() -> None:
    obj = {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "LoadBalancer",
           "metadata": {"name": "x"},
           "spec": {"listeners": [{"name": "a", "port": 1, "tls": None}],
                    "backends": [{"service": "s", "port": "http"}],
                    "timeouts": None, "sessionPersistence": {}, "unknown": 1}}
    spec = LB.default(obj)["spec"]
    assert "unknown" not in spec
    assert spec["listeners"] == [{"name": "a", "port": 1, "protocol": "HTTP",
                                  "redirectToHTTPS": False}]
    assert spec["backends"] == [{"service": "s", "port": "http", "weight": 1}]
    assert spec["timeouts"] == {"connect": "5s", "client": "50s", "server": "50s",
                                "queue": "30s", "tunnel": "1h",
                                "request": "10s", "drain": "10m"}
    assert spec["sessionPersistence"] == {"type": "Cookie", "maxAge": "1h"}
    assert spec["limits"] == {"maxConnections": 10_000, "maxConnectionsPerServer": 0,
                              "maxConnectionsPerClient": 0}
    assert spec["proxy"] == {"replicas": 2, "serviceType": "LoadBalancer"}


# ------------------------------------------------------------------ defaults: CRD == model


def _minimal(**spec: Any) -> Obj:
    return {"apiVersion": "roundhouse.dev/v1alpha1", "kind": "LoadBalancer",
            "metadata": {"name": "m", "namespace": "default"},
            "spec": {"listeners": [{"name": "a", "port": 80}],
                     "backends": [{"service": "s", "port": 80}], **spec}}


MINIMAL_OBJECTS = [
    _minimal(),
    _minimal(sessionPersistence={}, healthCheck={}),
    _minimal(sessionPersistence={"type": "SourceIP"}, healthCheck={"type": "HTTP"},
             timeouts={}, limits={}, proxy={}),
    _minimal(listeners=[{"name": "a", "port": 443, "protocol": "HTTPS", "tls": {}},
                        {"name": "b", "port": 80, "redirectToHTTPS": True}]),
    _minimal(listeners=[{"name": "a", "port": 443, "protocol": "HTTPS"}]),
]


@pytest.mark.parametrize("obj", MINIMAL_OBJECTS)
def test_schema_defaulting_does_not_change_what_the_model_reads(obj: Obj) -> None:
    assert LB.validate(obj) == []
    assert parse_loadbalancer(LB.default(obj)) == parse_loadbalancer(obj)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _model_value(lb: LoadBalancer, schema_path: str) -> Any:
    """The model's value for a schema path such as spec.listeners[].tls.minVersion."""
    value: Any = lb
    for part in schema_path.removeprefix("spec.").split("."):
        key = part.removesuffix("[]")
        snake = {"sessionPersistence": "session_persistence",
                 "redirectToHTTPS": "redirect_to_https",
                 "upstreamTLS": "upstream_tls"}.get(key, _snake(key))
        if hasattr(value, snake + "_ms"):
            snake += "_ms"
        value = getattr(value, snake)
        if part.endswith("[]"):
            value = value[0]
    return value


def test_every_crd_default_is_the_model_default() -> None:
    """Parse an object that leaves every defaulted field out, then compare each default
    the CRD declares with the value the model chose."""
    lb = parse_loadbalancer(_minimal(sessionPersistence={}, healthCheck={}, upstreamTLS={},
                                     limits={"requestRatePerClient": {"requests": 5}}))
    with_tls = parse_loadbalancer(_minimal(listeners=[
        {"name": "a", "port": 443, "protocol": "HTTPS", "tls": {}}]))
    checked = []
    for where, node in _nodes(LB.schema):
        if "default" not in node or not where.startswith("spec.") \
                or isinstance(node["default"], dict):
            continue
        model = _model_value(with_tls if ".tls." in where else lb, where)
        default = node["default"]
        if isinstance(model, int) and isinstance(default, str):
            default = parse_duration_ms(default)
        assert default == model, f"{where}: CRD default {node['default']!r}, model {model!r}"
        checked.append(where)
    assert len(checked) >= 20, checked


def test_model_defaults_the_crd_leaves_out_are_described() -> None:
    """cookieName, path and expectStatus have model defaults but none in the CRD: a
    defaulted value would trip "only allowed when type is ..." for the other type."""
    lb = parse_loadbalancer(_minimal(sessionPersistence={}, healthCheck={}))
    assert lb.session_persistence is not None and lb.health_check is not None
    spec = LB.schema["properties"]["spec"]["properties"]
    described = {
        "cookieName": (spec["sessionPersistence"], lb.session_persistence.cookie_name),
        "path": (spec["healthCheck"], f"'{lb.health_check.path}'"),
        "expectStatus": (spec["healthCheck"], str(lb.health_check.expect_status)),
    }
    for key, (parent, model_default) in described.items():
        node = parent["properties"][key]
        assert "default" not in node, key
        assert model_default in node["description"], (key, node["description"])


def test_model_dataclass_defaults_match_the_crd() -> None:
    """The dataclass defaults themselves (used when a block is absent) are the CRD's."""
    from roundhouse.model import Limits, ProxySettings, Timeouts

    spec = LB.default(_minimal())["spec"]
    assert dataclasses.asdict(Timeouts()) == {f"{k}_ms": parse_duration_ms(v)
                                              for k, v in spec["timeouts"].items()}
    assert dataclasses.astuple(Limits()) == (spec["limits"]["maxConnections"],
                                             spec["limits"]["maxConnectionsPerServer"],
                                             spec["limits"]["maxConnectionsPerClient"],
                                             None)  # requestRatePerClient: absent
    assert (ProxySettings().replicas, ProxySettings().service_type) == (
        spec["proxy"]["replicas"], spec["proxy"]["serviceType"])


# ------------------------------------------------------------------ durations: CRD == model

DURATION_FIELDS = [
    ("timeouts", "connect", 86_400_000),
    ("healthCheck", "interval", 86_400_000),
    ("sessionPersistence", "maxAge", 30 * 86_400_000),
]


@pytest.mark.parametrize("block,key,max_ms", DURATION_FIELDS)
@settings(max_examples=150, deadline=None, database=None)
@given(data=st.data())
def test_duration_rule_agrees_with_the_model(block: str, key: str, max_ms: int,
                                             data: st.DataObject) -> None:
    text = data.draw(st.one_of(
        durations(max_ms),
        st.tuples(st.integers(0, 9_999_999), st.sampled_from(["ms", "s", "m", "h"])).map(
            lambda t: f"{t[0]}{t[1]}"),
        st.tuples(st.integers(0, 99_999_999), st.sampled_from(["ms", "s", "m", "h"])).map(
            lambda t: f"{t[0]}{t[1]}"),
        st.sampled_from(["0h", "0000h", "24h", "0024h", "25h", "720h", "721h", "1441m",
                         "86400s", "86401s", "1.5s", "5", "5d", "", "9999999h"]),
    ))
    obj = merge_patch(LB_BASE, {"spec": {block: {key: text}}})
    schema_ok = LB.validate(obj) == []
    model_ok = _parse_errors(obj) == []
    ms = parse_duration_ms(text)
    assert schema_ok == (ms is not None and 0 < ms <= max_ms), (text, LB.validate(obj))
    assert schema_ok == model_ok, (text, LB.validate(obj), _parse_errors(obj))


# ------------------------------------------------------------------ examples


def _examples() -> list[Any]:
    params = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if isinstance(doc, dict) and doc.get("kind") in VALIDATORS:
                params.append(pytest.param(doc, id=f"{path.name}[{i}]"))
    return params


@pytest.mark.parametrize("doc", _examples())
def test_example_passes_the_schema(doc: Obj) -> None:
    assert VALIDATORS[doc["kind"]].validate(doc) == []
    if doc["kind"] == "LoadBalancer":
        parse_loadbalancer(doc)
    else:
        parse_reverseproxy(doc)


# ------------------------------------------------------------------ random valid objects


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(valid_loadbalancers())
def test_random_valid_loadbalancers_pass_schema_and_parser(obj: Obj) -> None:
    assert LB.validate(obj) == []
    lb = parse_loadbalancer(obj)
    assert parse_loadbalancer(LB.default(obj)) == lb


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(valid_reverseproxies())
def test_random_valid_reverseproxies_pass_schema_and_parser(obj: Obj) -> None:
    assert RP.validate(obj) == []
    rp = parse_reverseproxy(obj)
    assert parse_reverseproxy(RP.default(obj)) == rp


def test_apply_defaults_is_idempotent() -> None:
    once = LB.default(LB_BASE)
    twice = LB.default(once)
    assert once == twice
    copy = dict(once)
    apply_defaults(copy, LB.schema)
    assert copy == once


def test_crd_reserves_the_ports_the_model_reserves() -> None:
    """The ports the proxy Pod uses are refused by both, in the same words."""
    for validator in (LB, RP):
        messages = [r["message"] for _, r in iter_rules(validator.schema)]
        for port in RESERVED_PORTS:
            assert reserved_port_message(port) in messages
