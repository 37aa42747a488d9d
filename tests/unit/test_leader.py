"""Leader election against an in-memory Lease API with the API server's compare-and-swap:
a restarted replica of the same identity takes the Lease back at once, a released Lease
is free at once, an unreachable API server is waited out, and a Lease another replica
took is noticed at the next renewal."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from roundhouse import leader
from roundhouse.leader import LeaderElector

NS = "roundhouse-system"


class FakeLeases:
    """read / create / replace of one Lease, refusing a replace of a stale version (409)."""

    def __init__(self) -> None:
        self.lease: k8s.V1Lease | None = None
        self.version = 0
        self.down = 0  # the next `down` calls fail as an unreachable API server would

    def _maybe_down(self) -> None:
        if self.down:
            self.down -= 1
            raise ConnectionRefusedError("connection refused")

    async def read_namespaced_lease(self, name: str, namespace: str, **_: Any) -> k8s.V1Lease:
        self._maybe_down()
        if self.lease is None:
            raise ApiException(status=404)
        return copy.deepcopy(self.lease)

    async def create_namespaced_lease(self, namespace: str, body: k8s.V1Lease,
                                      **_: Any) -> k8s.V1Lease:
        self._maybe_down()
        if self.lease is not None:
            raise ApiException(status=409)
        return self._store(body)

    async def replace_namespaced_lease(self, name: str, namespace: str, body: k8s.V1Lease,
                                       **_: Any) -> k8s.V1Lease:
        self._maybe_down()
        assert self.lease is not None
        if body.metadata.resource_version != self.lease.metadata.resource_version:
            raise ApiException(status=409)
        return self._store(body)

    def _store(self, body: k8s.V1Lease) -> k8s.V1Lease:
        self.version += 1
        self.lease = copy.deepcopy(body)
        self.lease.metadata.resource_version = str(self.version)
        return copy.deepcopy(self.lease)

    def hold(self, holder: str, age_seconds: float, transitions: int = 3) -> None:
        renewed = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age_seconds)
        self._store(k8s.V1Lease(metadata=k8s.V1ObjectMeta(name=leader.LEASE_NAME),
                                spec=k8s.V1LeaseSpec(
                                    holder_identity=holder, lease_duration_seconds=15,
                                    acquire_time=renewed, renew_time=renewed,
                                    lease_transitions=transitions)))


def elector(leases: FakeLeases, me: str, monkeypatch: pytest.MonkeyPatch) -> LeaderElector:
    monkeypatch.setenv("POD_NAME", me)
    chosen = LeaderElector(NS, object())  # type: ignore[arg-type]  (replaced below)
    chosen.api = leases  # type: ignore[assignment]
    return chosen


def spec(leases: FakeLeases) -> k8s.V1LeaseSpec:
    assert leases.lease is not None
    return leases.lease.spec


def test_a_restarted_replica_of_the_same_identity_takes_its_lease_back_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    leases = FakeLeases()
    leases.hold("op-0", age_seconds=1)  # renewed a second ago by this Pod before its restart

    async def scenario() -> None:
        assert await elector(leases, "op-0", monkeypatch).try_acquire()
        assert not await elector(leases, "op-1", monkeypatch).try_acquire()  # still held

    asyncio.run(scenario())
    assert spec(leases).holder_identity == "op-0"
    assert spec(leases).lease_transitions == 3  # no transition: the same holder
    assert (dt.datetime.now(dt.UTC) - spec(leases).renew_time).total_seconds() < 1


def test_another_replica_waits_for_expiry_or_release(monkeypatch: pytest.MonkeyPatch) -> None:
    leases = FakeLeases()

    async def scenario() -> None:
        leases.hold("op-0", age_seconds=14)
        assert not await elector(leases, "op-1", monkeypatch).try_acquire()
        leases.hold("op-0", age_seconds=16)  # ran out
        assert await elector(leases, "op-1", monkeypatch).try_acquire()
        assert spec(leases).lease_transitions == 4
        # The leader releases it on SIGTERM: free at once, not 15 s later.
        first = elector(leases, "op-1", monkeypatch)
        assert await first.try_acquire()
        first.leading = True
        await first.release()
        assert not first.leading and not spec(leases).holder_identity
        assert spec(leases).lease_duration_seconds == 1
        assert await elector(leases, "op-2", monkeypatch).try_acquire()

    asyncio.run(scenario())
    assert spec(leases).holder_identity == "op-2"


def test_the_campaign_waits_out_an_unreachable_api_server(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leader, "RETRY_SECONDS", 0.01)
    leases = FakeLeases()
    leases.down = 3

    async def scenario() -> LeaderElector:
        me = elector(leases, "op-0", monkeypatch)
        await asyncio.wait_for(me.wait_for_leadership(), 5)
        return me

    assert asyncio.run(scenario()).leading
    assert leases.down == 0 and spec(leases).holder_identity == "op-0"


def test_a_lease_taken_by_another_replica_is_lost_at_the_next_renewal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leader, "RENEW_SECONDS", 0.02)
    leases = FakeLeases()

    async def scenario() -> tuple[bool, float]:
        me = elector(leases, "op-0", monkeypatch)
        await me.wait_for_leadership()
        lost = asyncio.Event()
        renewing = asyncio.create_task(me.keep_renewing(lost.set))
        await asyncio.sleep(0.1)
        assert not lost.is_set()  # renewals succeed
        leases.hold("op-1", age_seconds=0)  # e.g. after this replica's API calls hung
        loop = asyncio.get_running_loop()
        taken = loop.time()
        await asyncio.wait_for(lost.wait(), 5)
        await renewing
        return me.leading, loop.time() - taken

    leading, after = asyncio.run(scenario())
    # Not the 10 s renewal deadline: another holder is seen at the next renewal.
    assert not leading and after < 1


def test_renewals_failing_past_the_deadline_lose_the_lease(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leader, "RENEW_SECONDS", 0.02)
    monkeypatch.setattr(leader, "LEASE_SECONDS", 0.1)
    leases = FakeLeases()

    async def scenario() -> int:
        me = elector(leases, "op-0", monkeypatch)
        await me.wait_for_leadership()
        leases.down = 1000  # the API server goes away
        lost = asyncio.Event()
        await asyncio.wait_for(me.keep_renewing(lost.set), 5)
        assert lost.is_set()
        return 1000 - leases.down

    assert asyncio.run(scenario()) >= 2  # it tried more than once before giving up
