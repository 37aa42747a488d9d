"""kopf wiring: settings, handler registration, and the operator's main loop."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import kopf

from roundhouse import API_GROUP

log = logging.getLogger(__name__)


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
    from roundhouse import kube

    kube.client()  # fail early, with the kubeconfig error, before kopf starts
    stop = threading.Event()
    if leader_election_namespace:
        from roundhouse.leader import LeaderElector

        elector = LeaderElector(leader_election_namespace)
        elector.wait_for_leadership()
        elector.keep_renewing(stop)
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    stop_flag = loop.create_future()

    def release() -> None:
        if not stop_flag.done():
            stop_flag.set_result(None)

    def watch_lease() -> None:
        stop.wait()
        loop.call_soon_threadsafe(release)

    threading.Thread(target=watch_lease, daemon=True).start()
    loop.run_until_complete(kopf.operator(
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
        standalone=True,  # no kopf peering: leader election is ours
        stop_flag=stop_flag,
    ))
    return 1 if stop.is_set() else 0
