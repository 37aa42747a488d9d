"""`roundhouse run --gateway-api`: ROUNDHOUSE_GATEWAY_API=1 is in the environment before the
operator's handlers are imported (roundhouse.main imports them), and an
ROUNDHOUSE_GATEWAY_API already set is left alone."""

from __future__ import annotations

import os
import sys
import types
from typing import Any

import pytest

from roundhouse import cli

ENV = "ROUNDHOUSE_GATEWAY_API"


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A stand-in roundhouse.main that records the environment it is imported and run with."""
    record: dict[str, Any] = {}
    fake = types.ModuleType("roundhouse.main")

    def run_operator(**kwargs: Any) -> int:
        record["env"] = os.environ.get(ENV)
        record["kwargs"] = kwargs
        return 0

    fake.run_operator = run_operator  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "roundhouse.main", fake)
    # cmd_run keeps the synchronous client out; leave sys.modules as it was afterwards.
    monkeypatch.setitem(sys.modules, "kubernetes", sys.modules.get("kubernetes"))
    # Recorded by monkeypatch whatever it was, so what cmd_run sets is undone afterwards.
    monkeypatch.setenv(ENV, "")
    monkeypatch.delenv(ENV)
    return record


def run(*argv: str) -> int:
    return cli.main(["run", "--metrics-port", "0", *argv])


def test_flag_sets_the_environment_before_the_handlers_load(seen: dict[str, Any]) -> None:
    assert run("--gateway-api") == 0
    assert seen["env"] == "1"
    assert seen["kwargs"]["metrics_port"] == 0


def test_without_the_flag_nothing_is_set(seen: dict[str, Any]) -> None:
    assert run() == 0
    assert seen["env"] is None


def test_an_environment_already_set_is_kept(seen: dict[str, Any],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "1")
    assert run() == 0
    assert seen["env"] == "1"


def test_help_describes_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert "--gateway-api" in capsys.readouterr().out
