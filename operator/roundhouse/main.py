"""kopf wiring: settings, handler registration, and the operator's main loop."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from roundhouse import API_GROUP

log = logging.getLogger(__name__)


@kopf.on.login()
async def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf logs in with the same client and config as ours (kube.py), wherever the
    synchronous `kubernetes` package happens to be installed too (tests): in-cluster, a 401
    makes kopf call this again, which re-reads the rotated service account token."""
    info: kopf.ConnectionInfo | None = await kopf.login_via_async_client(**kwargs)
    return info


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # Keep kopf's bookkeeping in our own annotations, never in status (which has a schema).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=API_GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=API_GROUP, key="last-handled-configuration")
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    # Back-off after an unexpected error in kopf's per-object worker (kopf >= 1.42 calls
    # this `queueing`; `batching`, its old name, warns on every start).
    settings.queueing.error_delays = [1, 2, 5, 10, 30]


def run_operator(namespaces: list[str], liveness: str | None,
                 leader_election_namespace: str | None, metrics_port: int) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    import roundhouse.handlers  # noqa: F401  (registers the handlers)

    # One event loop for everything: the API client (aiohttp) is bound to the loop it is
    # created in, so the Lease and kopf's handlers share this one.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_operate(namespaces, liveness, leader_election_namespace,
                                                metrics_port))
    finally:
        loop.close()


async def _operate(namespaces: list[str], liveness: str | None,
                   leader_election_namespace: str | None, metrics_port: int) -> int:
    from roundhouse import kube, metrics

    api = await kube.client()  # fail early, with the kubeconfig error, before kopf starts
    stop_flag = asyncio.get_running_loop().create_future()
    lost = False

    def on_lost() -> None:
        nonlocal lost
        lost = True
        if not stop_flag.done():
            stop_flag.set_result(None)

    metrics.serve(metrics_port)  # before the election: standbys are scraped too
    renewal: asyncio.Task[None] | None = None
    if leader_election_namespace:
        from roundhouse.leader import LeaderElector

        elector = LeaderElector(leader_election_namespace, api)
        await elector.wait_for_leadership()
        renewal = asyncio.create_task(elector.keep_renewing(on_lost), name="lease-renewal")
    else:
        metrics.set_leader(True)  # the only replica
    try:
        await kopf.operator(
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=liveness,
            standalone=True,  # no kopf peering: leader election is ours
            stop_flag=stop_flag,
        )
    finally:
        if renewal is not None:
            renewal.cancel()
        await kube.close()
    return 1 if lost else 0
