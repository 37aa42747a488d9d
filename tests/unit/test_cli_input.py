"""`roundhouse render` on any input: the YAML read as kubectl reads it, and every bad input
ends in exit 2 with a message naming the field, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from roundhouse import kubeyaml
from roundhouse.cli import main

# Recorded from the real kubectl v1.36.3: `kubectl annotate --local -f f.yaml x=y -o json`
# (the same YAML-to-JSON path as `kubectl apply -f`), the spec of each.
KUBECTL_READS = [
    ("a: y\nb: 08080\nc: 1e3\nd: 2024-01-01\ne: 80.0\nf: on\ng: 0o17\nh: 017\ni: 0x1F\n"
     "j: 1_000\nk: .5\nl: +12\n",
     {"a": True, "b": 8080, "c": 1000, "d": "2024-01-01", "e": 80, "f": True, "g": 15,
      "h": 15, "i": 31, "j": 1000, "k": 0.5, "l": 12}),
    ("a1: Y\na2: yes\na3: No\na4: off\na5: n\na6: ~\na7: NULL\na8: 0b101\na9: -0x1F\n"
     "b1: 1:30\nb3: 1.5e3\nb4: 1e+3\nb5: 0.\nb6: +.5\nb7: 0777\nb8: 09\nb9: 1_0.5\nc2: 1E3\n"
     "c3: -0\nc4: 0o8\nc7: 0x_1F\nc8: True\nc9: tRUE\nd1: 2024-01-01T10:00:00Z\n"
     "d2: 1.0e3\nd3: \"-.5\"\nd4: -.5\nd5: 00\nd6: 0.1e1\n",
     {"a1": True, "a2": True, "a3": False, "a4": False, "a5": False, "a6": None,
      "a7": None, "a8": 5, "a9": -31, "b1": "1:30", "b3": 1500, "b4": 1000, "b5": 0,
      "b6": 0.5, "b7": 511, "b8": 9, "b9": 10.5, "c2": 1000, "c3": 0, "c4": "0o8",
      "c7": 31, "c8": True, "c9": "tRUE", "d1": "2024-01-01T10:00:00Z", "d2": 1000,
      "d3": "-.5", "d4": -0.5, "d5": 0, "d6": 1}),
]


@pytest.mark.parametrize("text,expected", KUBECTL_READS)
def test_yaml_is_read_as_kubectl_reads_it(text: str, expected: dict[str, object]) -> None:
    [doc] = kubeyaml.load_all(text)
    assert doc == expected
    # Types too: 80.0 arrives as the JSON integer 80, as kubectl sends it.
    assert json.dumps(doc, sort_keys=True) == json.dumps(expected, sort_keys=True)


@pytest.mark.parametrize("text,where", [
    ("a: .nan\n", "a: json: unsupported value"),
    ("a: {b: [-.inf]}\n", "a.b[0]: json: unsupported value"),
    ("~: 5\n", "unsupported map key"),
])
def test_what_kubectl_cannot_send_is_refused(text: str, where: str) -> None:
    with pytest.raises(kubeyaml.YAMLInputError, match=where.replace("[", r"\[")):
        kubeyaml.load_all(text)


def test_keys_become_json_strings() -> None:
    assert kubeyaml.load_all("80: a\non: b\n1.5: c\n") == [{"80": "a", "true": "b", "1.5": "c"}]


LB = """apiVersion: roundhouse.dev/v1alpha1
kind: LoadBalancer
metadata: {name: web}
spec:
  listeners: [{name: http, port: PORT}]
  backends: [{service: web, port: 80}]
"""
RP = """apiVersion: roundhouse.dev/v1alpha1
kind: ReverseProxy
metadata: {name: site}
spec:
  listeners: [{name: http, port: 80}]
  hosts:
    - hostname: www.example.com
      routes: [{name: ROUTE, backends: [{service: web, port: 80}]}]
"""


def _render(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str],
            *extra: str) -> tuple[int, str, str]:
    path = tmp_path / "in.yaml"
    path.write_text(text)
    code = main(["render", "-f", str(path), "--haproxy-cfg", *extra])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("text,bind", [
    (LB.replace("PORT", "08080"), "bind :8080"),  # PyYAML 1.1: the string "08080"
    (LB.replace("PORT", "80.0"), "bind :80"),  # the JSON number 80
    (LB.replace("PORT", "1e3"), "bind :1000"),  # PyYAML 1.1: the string "1e3"
    (RP.replace("ROUTE", "2024-01-01"), "bind :80"),  # PyYAML 1.1: a date, then a crash
])
def test_numbers_and_names_are_what_kubectl_sends(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, bind: str) -> None:
    code, out, err = _render(tmp_path, text, capsys)
    assert code == 0, err
    assert f"{bind}\n" in out


@pytest.mark.parametrize("text,message", [
    # Not a mapping where one is needed: a message, not an AttributeError.
    (LB.replace("metadata: {name: web}", "metadata: [web]"),
     'metadata: Invalid value: "array": must be of type object'),
    (LB.replace("metadata: {name: web}", "metadata: web"),
     'metadata: Invalid value: "web": must be of type object'),
    (LB.replace("metadata: {name: web}", "metadata: {name: 2024}"),
     "metadata.name: Invalid value: 2024: must be of type string"),
    # 10,000 nested lists: the YAML composer would overflow the stack.
    (LB.replace("[{name: http, port: PORT}]", "[" * 10_000 + "]" * 10_000),
     "spec.listeners[0][0]"),
    (LB.replace("PORT", "80.5"), "spec.listeners[0].port: Invalid value: 80.5: must be of "
     "type integer"),
    (LB.replace("PORT", ".nan"), "spec.listeners[0].port: json: unsupported value: nan"),
    # y is a boolean to kubectl: a string field refuses it.
    (LB.replace("name: http", "name: y").replace("PORT", "80"),
     "spec.listeners[0].name: Invalid value: true: must be of type string"),
    # What the API server refuses before its schema: kubectl's strict field validation,
    # an apiVersion the CRD does not serve.
    (LB.replace("PORT", "80") + "  proxy: {replica: 3}\n",
     'spec.proxy.replica: unknown field "spec.proxy.replica"'),
    (LB.replace("PORT", "80") + "extra: 1\n", 'extra: unknown field "extra"'),
    (LB.replace("PORT", "80").replace("metadata: {name: web}",
                                      "metadata: {name: web, label: {a: b}}"),
     'metadata.label: unknown field "metadata.label"'),
    (LB.replace("PORT", "80").replace("v1alpha1", "v1"),
     'apiVersion: Invalid value: "roundhouse.dev/v1": must be roundhouse.dev/v1alpha1'),
    (LB.replace("PORT", "80").replace("apiVersion: roundhouse.dev/v1alpha1\n", ""),
     "apiVersion: Required value"),
    # Python's $ would let a trailing newline through.
    (LB.replace("PORT", "80").replace("name: http", 'name: "http\\n"'),
     "spec.listeners[0].name"),
    (LB.replace("PORT", "80").replace("metadata: {name: web}",
                                      "metadata: {name: web, labels: {app: 'a b'}}"),
     "metadata.labels.app: Invalid value: \"a b\": a valid label must be an empty string"),
    (LB.replace("PORT", "80") + "  proxy: {nodeSelector: {pool: 'edge proxies'}}\n",
     "spec.proxy.nodeSelector.pool: Invalid value"),
    (LB.replace("PORT", "8404"), "spec.listeners[0].port: port 8404 is reserved by the "
     "proxy Pod"),
])
def test_bad_input_exits_2_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            text: str, message: str) -> None:
    code, out, err = _render(tmp_path, text, capsys)
    assert code == 2, (out, err)
    assert message in err, err
    assert "Traceback" not in err


def test_an_oversized_object_is_refused(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Valid field by field, but more than the API server can store."""
    big = "x" * 4000
    headers = ", ".join(f"X-H{i}: {big}" for i in range(16))
    routes = ", ".join(f"{{name: r{i}, match: {{path: {{value: /r{i}}}}}, "
                       f"requestHeaders: {{set: {{{headers}}}}}, "
                       f"backends: [{{service: web, port: 80}}]}}" for i in range(20))
    text = RP.replace("routes: [{name: ROUTE, backends: [{service: web, port: 80}]}]",
                      f"routes: [{routes}]")
    code, _, err = _render(tmp_path, text, capsys)
    assert code == 2
    assert "<root>: Too long: the object is 1285897 bytes as JSON" in err
