"""What the READMEs count is what the repository holds: the invalid-case tables, the routing
table and the e2e tests that need the local harness (their numbers drifted once)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
KIND_README = (REPO / "e2e" / "kind" / "README.md").read_text()
CASES = REPO / "tests" / "cases"
E2E = REPO / "tests" / "e2e"
NUMBER_WORDS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
                "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}


def case_count(name: str) -> int:
    return len(yaml.safe_load((CASES / name).read_text())["cases"])


def number(text: str) -> int:
    return int(text) if text.isdigit() else NUMBER_WORDS[text.lower()]


def marked_tests(marker: str) -> list[str]:
    """The e2e tests decorated with `@<marker>(...)`, by name."""
    found = []
    for path in sorted(E2E.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(
                    isinstance(d, ast.Call) and isinstance(d.func, ast.Name)
                    and d.func.id == marker for d in node.decorator_list):
                found.append(node.name)
    return found


def test_invalid_case_counts_match_the_tables() -> None:
    said = re.findall(r"on (\d+) \+ (\d+) invalid specs", README)
    assert said, "README no longer counts the invalid specs: update this test"
    expected = (case_count("invalid-loadbalancers.yaml"), case_count("invalid-reverseproxies.yaml"))
    for lbs, rps in said:
        assert (int(lbs), int(rps)) == expected, (
            f"README says {lbs} + {rps} invalid specs; tests/cases holds {expected[0]} + "
            f"{expected[1]}")


def test_routing_table_counts_match_the_table() -> None:
    said = re.findall(r"(\d+)-case routing table", README)
    said += re.findall(r"routing-table\.yaml` holds (\d+) request", README)
    assert len(said) >= 3, "README no longer counts the routing table: update this test"
    cases = case_count("routing-table.yaml")
    assert {int(n) for n in said} == {cases}, f"README says {said}; the table has {cases}"


def test_local_only_count_matches_the_marked_tests() -> None:
    said = re.search(r"\b(\w+)\s+tests\s+that\s+need\s+the\s+local\s+harness", README)
    assert said, "README no longer counts the local-only e2e tests: update this test"
    local = marked_tests("local_only")
    assert len(local) >= 5, f"the decorator scan lost the local-only tests: {local}"
    assert number(said.group(1)) == len(local), (
        f"README says {said.group(1)}; tests/e2e has {len(local)}: {local}")


def test_kind_readme_names_every_local_only_test() -> None:
    missing = [name for name in marked_tests("local_only") if f"`{name}`" not in KIND_README]
    assert not missing, f"e2e/kind/README.md does not say why these are local only: {missing}"

