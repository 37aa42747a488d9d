"""The operator's main loop (main._operate) with kopf and the Lease replaced by fakes: a
lost Lease stops kopf, cancels what the triggers scheduled and campaigns again in the
same process; /healthz answers while standing by; SIGTERM releases the Lease and exits
with 0."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

import roundhouse.handlers
from roundhouse import kube, leader, main


class FakeElector:
    """Term 1: the Lease is lost soon after it is won. Term 2: kept until SIGTERM."""

    def __init__(self, namespace: str, api: Any) -> None:
        self.terms = 0
        self.leading = False
        self.released = 0
        self.health_while_standing_by: list[int] = []
        FakeElector.last = self

    last: FakeElector

    async def wait_for_leadership(self) -> None:
        if self.terms:  # campaigning again: a standby must pass the liveness probe
            self.health_while_standing_by.append(await get_health())
        self.terms += 1
        self.leading = True

    async def keep_renewing(self, on_lost: Callable[[], None]) -> None:
        if self.terms == 1:
            await asyncio.sleep(0.05)
            self.leading = False
            on_lost()
            return
        await asyncio.Event().wait()

    async def release(self) -> None:
        if self.leading:
            self.released += 1
            self.leading = False


PORT: list[int] = []


async def get_health() -> int:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{PORT[0]}/healthz") as response:
        return response.status


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_lost_lease_campaigns_again_in_the_same_process_and_sigterm_releases_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    PORT[:] = [port]
    signals: list[Callable[[], None]] = []
    runs: list[int] = []
    stopped: list[int] = []

    async def fake_client() -> object:
        return object()

    async def fake_close() -> None:
        return None

    async def fake_kopf(stop_flag: asyncio.Future[None], **_: Any) -> None:
        runs.append(FakeElector.last.terms)
        if FakeElector.last.terms == 2:  # the second term ends with SIGTERM
            asyncio.get_running_loop().call_later(0.05, signals[-1])
        await stop_flag

    monkeypatch.setattr(kube, "client", fake_client)
    monkeypatch.setattr(kube, "close", fake_close)
    monkeypatch.setattr(leader, "LeaderElector", FakeElector)
    monkeypatch.setattr(main.kopf, "operator", fake_kopf)
    monkeypatch.setattr(main, "_on_signals", signals.append)
    monkeypatch.setattr(roundhouse.handlers, "stop_reconciling",
                        lambda: stopped.append(FakeElector.last.terms))

    code = asyncio.run(asyncio.wait_for(main._operate(
        [], f"http://127.0.0.1:{port}/healthz", "roundhouse-system", 0), 10))
    elector = FakeElector.last
    assert code == 0
    assert runs == [1, 2]  # kopf ran again after the loss, in this process
    assert stopped and set(stopped) == {1}  # pending work cancelled when the Lease went
    assert elector.health_while_standing_by == [200]
    assert elector.released == 1  # SIGTERM gave the Lease up
