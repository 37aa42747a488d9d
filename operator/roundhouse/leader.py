"""Lease-based leader election, so the operator can run as several replicas.

kopf has no leader election of its own (its peering only pauses operators), so
`roundhouse run --leader-election-namespace NS` holds a coordination.k8s.io Lease.
Standbys look every RETRY_SECONDS and take it once it has run out or been released; a
replica whose identity is the holder's (its Pod restarted) takes it back at once. A
leader that cannot renew in time, or sees another holder, stops reconciling and
campaigns again in the same process (main.py); one stopped with SIGTERM releases the
Lease so a standby takes over at once instead of waiting it out.
Runs on the operator's event loop with its ApiClient, outside kube.request's gate:
a renewal must never queue behind a burst of writes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Callable

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from roundhouse import metrics

log = logging.getLogger(__name__)
LEASE_NAME = "roundhouse-operator"
LEASE_SECONDS = 15
RENEW_SECONDS = 5
RETRY_SECONDS = 2  # a standby's look at the Lease (one GET)
REQUEST_TIMEOUT = 5  # a renewal stuck longer than this is as good as failed


def identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class LeaderElector:
    def __init__(self, namespace: str, api_client: k8s.ApiClient,
                 name: str = LEASE_NAME) -> None:
        self.namespace = namespace
        self.name = name
        self.me = identity()
        self.api = k8s.CoordinationV1Api(api_client)
        self.holder: str | None = None  # as last read
        self.leading = False

    def _spec(self, transitions: int) -> k8s.V1LeaseSpec:
        now = _now()
        return k8s.V1LeaseSpec(
            holder_identity=self.me, lease_duration_seconds=LEASE_SECONDS,
            acquire_time=now, renew_time=now, lease_transitions=transitions)

    async def try_acquire(self) -> bool:
        try:
            lease = await self.api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT)
        except ApiException as error:
            if error.status != 404:
                raise
            body = k8s.V1Lease(metadata=k8s.V1ObjectMeta(name=self.name), spec=self._spec(0))
            try:
                await self.api.create_namespaced_lease(self.namespace, body,
                                                       _request_timeout=REQUEST_TIMEOUT)
                self.holder = self.me
                return True
            except ApiException as conflict:
                if conflict.status == 409:
                    return False
                raise
        spec = lease.spec or k8s.V1LeaseSpec()
        holder = self.holder = spec.holder_identity or None  # "" or None: released
        renewed = spec.renew_time or spec.acquire_time
        expired = renewed is None or (_now() - renewed).total_seconds() > (
            spec.lease_duration_seconds or LEASE_SECONDS)
        if holder not in (None, self.me) and not expired:
            return False
        transitions = (spec.lease_transitions or 0) + (0 if holder == self.me else 1)
        new_spec = self._spec(transitions)
        if holder == self.me:  # a renewal, or this identity's restarted Pod taking it back
            new_spec.acquire_time = spec.acquire_time or new_spec.acquire_time
        lease.spec = new_spec
        try:  # resourceVersion in the body makes this a compare-and-swap
            await self.api.replace_namespaced_lease(self.name, self.namespace, lease,
                                                    _request_timeout=REQUEST_TIMEOUT)
            self.holder = self.me
            return True
        except ApiException as conflict:
            if conflict.status == 409:
                return False
            raise

    async def wait_for_leadership(self) -> None:
        """Campaign until this replica holds the Lease; API errors (an API server that is
        down) are waited out, never raised."""
        log.info("campaigning for the Lease %s/%s as %s", self.namespace, self.name, self.me)
        announced = failing = False
        while True:
            try:
                if await self.try_acquire():
                    break
                failing = False
            except Exception as error:  # down, timed out, refused: try again
                if not failing:
                    log.warning("campaigning for the Lease %s/%s: %s", self.namespace,
                                self.name, error)
                failing = True
            if not announced and self.holder not in (None, self.me):
                log.info("standing by: Lease %s/%s is held by %s", self.namespace, self.name,
                         self.holder)
                announced = True
            # An API server that is down costs nothing to ask: look again sooner, so the
            # operator leads again within a second of its return.
            await asyncio.sleep(RETRY_SECONDS / 2 if failing else RETRY_SECONDS)
        self.leading = True
        log.info("leading as %s (Lease %s/%s)", self.me, self.namespace, self.name)
        metrics.set_leader(True)

    async def keep_renewing(self, on_lost: Callable[[], None]) -> None:
        """Renew every RENEW_SECONDS; when that has failed for too long, or another replica
        holds the Lease, call `on_lost`."""
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            try:
                if await self.try_acquire():
                    last_ok = time.monotonic()
                    continue
            except Exception:  # the API may blip; the lease duration is the limit
                log.warning("renewing the Lease failed", exc_info=True)
            taken = self.holder not in (None, self.me)
            if taken or time.monotonic() - last_ok > LEASE_SECONDS - RENEW_SECONDS:
                log.error("lost the Lease %s/%s (%s): stopping reconciling, campaigning again",
                          self.namespace, self.name,
                          f"held by {self.holder}" if taken else "not renewed in time")
                self.leading = False
                metrics.set_leader(False)
                on_lost()
                return

    async def release(self) -> None:
        """Give the Lease up (on SIGTERM) so a standby need not wait for it to run out:
        no holder, renewed now, lasting one second (as client-go releases it)."""
        if not self.leading:
            return
        self.leading = False
        try:
            lease = await self.api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT)
            spec = lease.spec
            if spec is None or spec.holder_identity != self.me:
                return
            spec.holder_identity = ""
            spec.lease_duration_seconds = 1
            spec.renew_time = _now()
            await self.api.replace_namespaced_lease(self.name, self.namespace, lease,
                                                    _request_timeout=REQUEST_TIMEOUT)
            log.info("released the Lease %s/%s", self.namespace, self.name)
        except Exception as error:  # it then runs out on its own
            log.warning("releasing the Lease %s/%s failed: %s", self.namespace, self.name,
                        error)
