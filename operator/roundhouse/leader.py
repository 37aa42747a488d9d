"""Lease-based leader election, so the operator can run as several replicas.

kopf has no leader election of its own (its peering only pauses operators), so
`roundhouse run --leader-election-namespace NS` holds a coordination.k8s.io Lease:
standbys wait; a leader that cannot renew in time exits, and a standby takes over.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time

import kubernetes
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)
LEASE_NAME = "roundhouse-operator"
LEASE_SECONDS = 15
RENEW_SECONDS = 5


def identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class LeaderElector:
    def __init__(self, namespace: str, api: kubernetes.client.CoordinationV1Api | None = None,
                 name: str = LEASE_NAME) -> None:
        self.namespace = namespace
        self.name = name
        self.me = identity()
        self.api = api or kubernetes.client.CoordinationV1Api()

    def _spec(self, transitions: int) -> kubernetes.client.V1LeaseSpec:
        now = _now()
        return kubernetes.client.V1LeaseSpec(
            holder_identity=self.me, lease_duration_seconds=LEASE_SECONDS,
            acquire_time=now, renew_time=now, lease_transitions=transitions)

    def try_acquire(self) -> bool:
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as error:
            if error.status != 404:
                raise
            body = kubernetes.client.V1Lease(
                metadata=kubernetes.client.V1ObjectMeta(name=self.name), spec=self._spec(0))
            try:
                self.api.create_namespaced_lease(self.namespace, body)
                return True
            except ApiException as conflict:
                if conflict.status == 409:
                    return False
                raise
        spec = lease.spec or kubernetes.client.V1LeaseSpec()
        holder = spec.holder_identity
        renewed = spec.renew_time or spec.acquire_time
        expired = renewed is None or (_now() - renewed).total_seconds() > (
            spec.lease_duration_seconds or LEASE_SECONDS)
        if holder != self.me and not expired:
            return False
        transitions = (spec.lease_transitions or 0) + (0 if holder == self.me else 1)
        new_spec = self._spec(transitions)
        if holder == self.me:
            new_spec.acquire_time = spec.acquire_time
        lease.spec = new_spec
        try:  # resourceVersion in the body makes this a compare-and-swap
            self.api.replace_namespaced_lease(self.name, self.namespace, lease)
            return True
        except ApiException as conflict:
            if conflict.status == 409:
                return False
            raise

    def wait_for_leadership(self) -> None:
        announced = False
        while not self.try_acquire():
            if not announced:
                log.info("standing by: Lease %s/%s is held by another replica",
                         self.namespace, self.name)
                announced = True
            time.sleep(RENEW_SECONDS)
        log.info("leading as %s (Lease %s/%s)", self.me, self.namespace, self.name)

    def keep_renewing(self, on_lost: threading.Event) -> threading.Thread:
        def loop() -> None:
            last_ok = time.monotonic()
            while not on_lost.is_set():
                time.sleep(RENEW_SECONDS)
                try:
                    if self.try_acquire():
                        last_ok = time.monotonic()
                        continue
                except Exception:  # the API may blip; the lease duration is the limit
                    log.warning("renewing the Lease failed", exc_info=True)
                if time.monotonic() - last_ok > LEASE_SECONDS - RENEW_SECONDS:
                    log.error("lost the Lease %s/%s: stopping", self.namespace, self.name)
                    on_lost.set()
        thread = threading.Thread(target=loop, name="lease-renewal", daemon=True)
        thread.start()
        return thread
